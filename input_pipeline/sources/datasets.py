"""In-memory (numpy) image data sets by name.

Local, offline names: 'fashion_mnist' (IDX files of the Debian package
`dataset-fashion-mnist`) and 'digits' (scikit-learn's 8x8 digits). Any other
name is loaded through tensorflow_datasets (only useful with network access or
an already prepared `data_dir`); 'fashion_mnist_local' is the tfds builder of
this package over the same local IDX files.

Every loader returns images uint8 [N, H, W, C] (0..255) and labels int32 [N].
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import os
from typing import Callable

import numpy as np

from input_pipeline import lazy_tf, preprocess
from input_pipeline.errors import DatasetError
from input_pipeline.sources import digits, fashion_mnist, folder

SPLITS = ('train', 'test')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and trainer need to know about a data set.

  Attributes:
    name: registry name.
    num_train: examples in the full 'train' split.
    num_test: examples in the full 'test' split.
    image_shape: (height, width, channels) of the images as served.
    num_classes: number of labels (labels are 0..num_classes-1).
    class_names: human-readable label names.
    mean: per-channel mean of the train split, 0..1 scale.
    std: per-channel standard deviation of the train split, 0..1 scale.
  """

  name: str
  num_train: int
  num_test: int
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class _LocalDataset:
  info: DatasetInfo
  # (split, data_dir) -> (images, labels); data_dir may be ignored.
  load: Callable[[str, str | None], tuple[np.ndarray, np.ndarray]]


_LOCAL: dict[str, _LocalDataset] = {
    'fashion_mnist': _LocalDataset(
        info=DatasetInfo(
            name='fashion_mnist',
            num_train=fashion_mnist.NUM_EXAMPLES['train'],
            num_test=fashion_mnist.NUM_EXAMPLES['test'],
            image_shape=fashion_mnist.IMAGE_SHAPE,
            num_classes=len(fashion_mnist.CLASS_NAMES),
            class_names=fashion_mnist.CLASS_NAMES,
            mean=fashion_mnist.MEAN, std=fashion_mnist.STD),
        load=fashion_mnist.load),
    'digits': _LocalDataset(
        info=DatasetInfo(
            name='digits',
            num_train=digits.NUM_EXAMPLES['train'],
            num_test=digits.NUM_EXAMPLES['test'],
            image_shape=digits.IMAGE_SHAPE,
            num_classes=len(digits.CLASS_NAMES),
            class_names=digits.CLASS_NAMES,
            mean=digits.MEAN, std=digits.STD),
        load=lambda split, data_dir: digits.load(split)),
}


def local_names() -> list[str]:
  """Names served from local files, without network or TensorFlow."""
  return sorted(_LOCAL)


def check_split(name: str, split: str) -> None:
  if split not in SPLITS:
    raise DatasetError(
        f'Data set {name!r}: unknown split {split!r}; valid: {SPLITS}.')


# ----------------------------------------------------------------- tfds path


def _tfds_fix(name: str, data_dir: str | None) -> str:
  if name.split('/')[0] == 'fashion_mnist_local':
    return ('fashion_mnist_local prepares offline from the local IDX files: '
            'set config.input.download=True (no network is used), or use '
            "dataset='fashion_mnist' (no tfds at all).")
  where = f' --data_dir={data_dir}' if data_dir else ''
  return (
      f'Offline data sets: {", ".join(local_names())}. Other names go through '
      f'tensorflow_datasets: prepare {name!r} on a machine with network '
      f'(`tfds build {name}{where}`) and point config.input.data_dir at it, '
      'or set config.input.download=True; data sets that need manual '
      'downloads read them from config.input.manual_dir.')


def tfds_download_kwargs(tfds, manual_dir: str | None) -> dict:
  if not manual_dir:
    return {}
  return {'download_config': tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir))}


def _import_tfds_for(name: str):
  try:
    tfds = lazy_tf.import_tfds()
  except ImportError as e:
    raise DatasetError(
        f'Unknown local data set {name!r} and tensorflow_datasets is not '
        f'installed. {_tfds_fix(name, None)}') from e
  if name.split('/')[0] == 'fashion_mnist_local':
    # Registers the builder with tfds.
    importlib.import_module('input_pipeline.sources.tfds_builder')
  return tfds


def tfds_builder(name: str, data_dir: str | None):
  tfds = _import_tfds_for(name)
  try:
    return tfds, tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(
        name, sorted(set(local_names()) | set(tfds.list_builders())), n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise DatasetError(
        f'Unknown data set {name!r}: neither local nor a tfds builder '
        f'(see `tfds.list_builders()`).{hint} '
        f'{_tfds_fix(name, data_dir)}') from None
  except Exception as e:
    # A name tfds cannot even parse ('a:b', 'x/y/z/w') raises from deep in
    # its name parser; the traceback helps nobody.
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise DatasetError(
        f'Data set name {name!r} is not valid ({type(e).__name__}: {first}); '
        'use an offline name, a tfds name such as cifar10 or '
        "imagenet2012:5.1.0, or 'folder:<dir>' for a folder of images."
    ) from None


def _tfds_load(name: str, split: str, data_dir: str | None,
               manual_dir: str | None, download: bool
               ) -> tuple[np.ndarray, np.ndarray]:
  tfds, builder = tfds_builder(name, data_dir)
  try:
    if download:
      builder.download_and_prepare(
          **tfds_download_kwargs(tfds, manual_dir))
    ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
  except (AssertionError, FileNotFoundError, ValueError, OSError) as e:
    # tfds reports "not prepared" as AssertionError and a missing split as
    # ValueError; both mean the data are not where the config says.
    raise DatasetError(
        f'tfds data set {name!r} split {split!r} is not available in '
        f'data_dir={builder.data_dir} ({type(e).__name__}: {e}). '
        f'{_tfds_fix(name, data_dir)}') from e
  images, labels = tfds.as_numpy(ds)
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8:
    raise DatasetError(
        f'tfds data set {name!r} has {images.dtype} images; only uint8 image '
        'classification data sets are supported.')
  return images, np.asarray(labels).astype(np.int32)


# ------------------------------------------------------------------ public


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split: str, data_dir: str | None,
                 manual_dir: str | None, download: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
  if name in _LOCAL:
    images, labels = _LOCAL[name].load(split, data_dir)
  else:
    images, labels = _tfds_load(name, split, data_dir, manual_dir, download)
  # Shared between callers through the cache: make accidental in-place
  # edits fail loudly instead of corrupting everyone's copy.
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def load_split(name: str, split: str, *, data_dir: str | None = None,
               manual_dir: str | None = None, download: bool = False,
               subset: int = 0, image_size: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split into host memory.

  Args:
    name: 'fashion_mnist', 'digits', or a tfds name (e.g. 'cifar10').
    split: 'train' or 'test'.
    data_dir: fashion_mnist: directory of its IDX files (default
      $FASHION_MNIST_DIR, then the Debian path); tfds: its data_dir.
    manual_dir: tfds manual_dir (data sets needing manual downloads).
    download: let tfds download and prepare missing data (network).
    subset: if > 0, keep only the first `subset` examples.
    image_size: if > 0, resize to [size, size] (bilinear, once, here).

  Returns:
    images uint8 [N, H, W, C] (0..255; read-only, shared via a cache) and
    labels int32 [N].

  Raises:
    DatasetError: unknown name or split, or data missing/corrupt; the message
      says how to fix it.
  """
  check_split(name, split)
  if folder.is_folder(name):
    raise DatasetError(
        f'{name!r} is streamed from disk, never loaded whole: train with it '
        '(config.input.dataset) or use input_pipeline.create_eval_batches.')
  if name == 'fashion_mnist':
    # Resolve before the cache so a changed $FASHION_MNIST_DIR takes effect.
    data_dir = fashion_mnist.resolve_dir(data_dir)
  images, labels = _load_cached(
      name, split, os.fspath(data_dir) if data_dir else None,
      os.fspath(manual_dir) if manual_dir else None, bool(download))
  if subset:
    images, labels = images[:subset], labels[:subset]
  if image_size:
    images = preprocess.resize_images(images, image_size)
  return images, labels


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], ...]:
  x = images.astype(np.float64) / 255.0
  axes = tuple(range(x.ndim - 1))
  return tuple(x.mean(axis=axes).tolist()), tuple(x.std(axis=axes).tolist())


@functools.lru_cache(maxsize=8)
def _tfds_info(name: str, data_dir: str | None, manual_dir: str | None,
               download: bool) -> DatasetInfo:
  images, _ = _load_cached(name, 'train', data_dir, manual_dir, download)
  _, builder = tfds_builder(name, data_dir)
  info = builder.info
  label = info.features['label']
  mean, std = _channel_stats(images)
  return DatasetInfo(
      name=name,
      num_train=info.splits['train'].num_examples,
      num_test=(info.splits['test'].num_examples
                if 'test' in info.splits else 0),
      image_shape=tuple(images.shape[1:]),
      num_classes=label.num_classes,
      class_names=tuple(label.names),
      mean=mean, std=std)


def get_dataset_info(name: str, *, data_dir: str | None = None,
                     manual_dir: str | None = None, download: bool = False,
                     image_size: int = 0) -> DatasetInfo:
  """Returns the `DatasetInfo` of `name`.

  Local names answer without reading any file. A tfds name loads its train
  split (to measure mean/std), so it needs the data to be available.
  `image_size` > 0 changes `image_shape` to the resized shape (mean/std stay
  those of the native images, which resizing hardly moves).
  """
  if folder.is_folder(name):
    raise DatasetError(
        f'{name!r} is a folder of images, read by the streaming pipeline: '
        'use input_pipeline.get_dataset_info, which streams it.')
  if name in _LOCAL:
    info = _LOCAL[name].info
  else:
    info = _tfds_info(name, os.fspath(data_dir) if data_dir else None,
                      os.fspath(manual_dir) if manual_dir else None,
                      bool(download))
  if image_size:
    info = dataclasses.replace(
        info, image_shape=(image_size, image_size, info.image_shape[2]))
  return info
