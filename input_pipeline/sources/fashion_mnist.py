"""Fashion-MNIST from local IDX files (Debian package `dataset-fashion-mnist`).

The directory is chosen as: explicit argument (`config.input.data_dir`) >
environment variable FASHION_MNIST_DIR > the Debian package's directory.
"""

from __future__ import annotations

import os

import numpy as np

from input_pipeline.errors import (
  DEFAULT_FASHION_MNIST_DIR,
  FASHION_MNIST_ENV,
  FASHION_MNIST_FIX,
  DatasetError,
)
from input_pipeline.sources import idx

CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
               'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
NUM_EXAMPLES = {'train': 60_000, 'test': 10_000}
IMAGE_SHAPE = (28, 28, 1)
# Per-channel statistics of the train split on the 0..1 scale (60,000 images;
# `tests/test_input_pipeline.py` recomputes them from the files).
MEAN = (0.2860,)
STD = (0.3530,)

_PREFIX = {'train': 'train', 'test': 't10k'}


def resolve_dir(data_dir: str | os.PathLike | None = None) -> str:
  """Returns the directory to read: argument > $FASHION_MNIST_DIR > default."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR


def _find(directory: str, stem: str) -> str:
  for name in (stem + '.gz', stem):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise DatasetError(
      f'Fashion-MNIST file {stem}[.gz] is missing from {directory}. '
      f'{FASHION_MNIST_FIX}')


def load(split: str, data_dir: str | os.PathLike | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from IDX files.

  Args:
    split: 'train' (60,000 examples) or 'test' (10,000).
    data_dir: directory of the IDX files (see `resolve_dir`).

  Returns:
    images uint8 [N, 28, 28, 1] (0..255) and labels int32 [N] (0..9).

  Raises:
    DatasetError: missing directory or files, or corrupt files.
  """
  if split not in _PREFIX:
    raise DatasetError(
        f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
  directory = resolve_dir(data_dir)
  if not os.path.isdir(directory):
    raise DatasetError(
        f'Fashion-MNIST directory {directory} does not exist. '
        f'{FASHION_MNIST_FIX}')
  prefix = _PREFIX[split]
  images_path = _find(directory, f'{prefix}-images-idx3-ubyte')
  labels_path = _find(directory, f'{prefix}-labels-idx1-ubyte')
  images = idx.read_idx(images_path, expected_ndim=3)
  labels = idx.read_idx(labels_path, expected_ndim=1)
  if images.shape[0] != labels.shape[0]:
    raise DatasetError(
        f'{images_path} has {images.shape[0]} images but {labels_path} has '
        f'{labels.shape[0]} labels. {FASHION_MNIST_FIX}')
  if labels.size and labels.max() >= len(CLASS_NAMES):
    raise DatasetError(
        f'{labels_path} holds label {labels.max()}, outside 0..9. '
        f'{FASHION_MNIST_FIX}')
  return images[..., None], labels.astype(np.int32)
