"""Exceptions for data that cannot be found or read, and for input configs
that cannot work; the messages say how to fix them."""

from __future__ import annotations

DEBIAN_PACKAGE = 'dataset-fashion-mnist'
DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_ENV = 'FASHION_MNIST_DIR'

# Appended to every Fashion-MNIST file error: the reader of the message is
# usually someone who just wants training to start, so say how to fix it.
FASHION_MNIST_FIX = (
    f'Fix: reinstall the Debian package (`sudo apt-get install --reinstall '
    f'{DEBIAN_PACKAGE}`, files in {DEFAULT_FASHION_MNIST_DIR}), or point '
    f'`config.input.data_dir` or the environment variable {FASHION_MNIST_ENV} '
    'at a directory holding train-images-idx3-ubyte[.gz], '
    'train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and '
    't10k-labels-idx1-ubyte[.gz].'
)


class DatasetError(ValueError):
  """A data set is missing, unknown, or its files are corrupt.

  The message always says what is wrong, where, and how to fix it.
  """


class InputConfigError(ValueError):
  """An input setting that cannot work (batch size, pipeline name, ...)."""
