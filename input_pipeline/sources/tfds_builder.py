"""tfds builder 'fashion_mnist_local': Fashion-MNIST from the local IDX files.

tfds' own `fashion_mnist` builder checks the gzip files against registered
checksums, and the Debian package's files (same content, recompressed) fail
that check. This builder instead reads the IDX files through `idx.py`, so
`tfds.load('fashion_mnist_local', data_dir=...)` prepares offline.

The source directory is, in order: the tfds `manual_dir`
(`tfds.download.DownloadConfig(manual_dir=...)`, i.e. `config.input.manual_dir`)
when it holds the files, then $FASHION_MNIST_DIR, then the Debian path.

Configs: 'full' (60,000 / 10,000) and 'small' (first 2,000 / 500, for tests).

Importing this module imports TensorFlow (GPUs hidden) and registers the
builder with tfds.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from input_pipeline import lazy_tf
from input_pipeline.sources import fashion_mnist

tfds = lazy_tf.import_tfds()


@dataclasses.dataclass
class FashionMnistLocalConfig(tfds.core.BuilderConfig):
  """Builder config; `max_*` = 0 keeps the whole split.

  Attributes:
    max_train: keep the first `max_train` training examples.
    max_test: keep the first `max_test` test examples.
  """

  max_train: int = 0
  max_test: int = 0


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST prepared from local IDX files, without network."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Fashion-MNIST from local IDX files.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Optional: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
      't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in manual_dir. '
      'Without them the builder reads $FASHION_MNIST_DIR or the directory of '
      'the Debian package dataset-fashion-mnist.')
  BUILDER_CONFIGS = [
      FashionMnistLocalConfig(
          name='full', description='All 60,000 / 10,000 examples.'),
      FashionMnistLocalConfig(
          name='small', description='First 2,000 / 500 examples (tests).',
          max_train=2000, max_test=500),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Fashion-MNIST: 28x28 grey images of 10 clothing classes.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=fashion_mnist.IMAGE_SHAPE),
            'label': tfds.features.ClassLabel(
                names=list(fashion_mnist.CLASS_NAMES)),
            # Row in the IDX file: tfds stores examples in hashed-key order,
            # and this recovers the original order when it matters.
            'index': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
    )

  def _source_dir(self, dl_manager) -> str:
    try:
      manual = dl_manager.manual_dir  # Raises when absent or empty.
    except AssertionError:
      manual = None
    if manual is not None and any(
        os.path.exists(os.path.join(os.fspath(manual), f'{stem}{ext}'))
        for stem in ('train-images-idx3-ubyte',) for ext in ('.gz', '')):
      return os.fspath(manual)
    return fashion_mnist.resolve_dir(None)

  def _split_generators(self, dl_manager):
    source = self._source_dir(dl_manager)
    return {
        'train': self._generate_examples(
            source, 'train', self.builder_config.max_train),
        'test': self._generate_examples(
            source, 'test', self.builder_config.max_test),
    }

  def _generate_examples(self, source: str, split: str, limit: int):
    images, labels = fashion_mnist.load(split, source)
    if limit:
      images, labels = images[:limit], labels[:limit]
    for i in range(len(images)):
      yield i, {'image': images[i], 'label': int(labels[i]), 'index': i}
