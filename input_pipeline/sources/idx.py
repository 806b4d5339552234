"""Reader (and writer, for tests and tools) of IDX files, gzip or raw.

IDX is the MNIST/Fashion-MNIST format: a big-endian header (magic number,
then one uint32 per dimension) followed by the array bytes. Only unsigned
bytes (type code 0x08) occur in these data sets, so only they are supported:
magic 0x00000801 for labels [N] and 0x00000803 for images [N, H, W].
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from input_pipeline.errors import FASHION_MNIST_FIX, DatasetError

LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803
_GZIP_MAGIC = b'\x1f\x8b'


def _read_bytes(path: str, fix: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      head = f.read(2)
    opener = gzip.open if head == _GZIP_MAGIC else open
    with opener(path, 'rb') as f:
      return f.read()
  except FileNotFoundError:
    raise DatasetError(f'IDX file {path} does not exist. {fix}') from None
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    # A truncated gzip stream raises EOFError; a damaged one OSError.
    raise DatasetError(
        f'IDX file {path} could not be read ({type(e).__name__}: {e}); it is '
        f'probably truncated or corrupt. {fix}') from e


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None,
             fix: str = FASHION_MNIST_FIX) -> np.ndarray:
  """Reads one IDX file of unsigned bytes.

  Args:
    path: file name; gzip-compressed files are recognised by their content,
      not their suffix.
    expected_ndim: 1 for labels (magic 0x801), 3 for images (magic 0x803);
      None accepts either.
    fix: how to repair a bad file, appended to every error message.

  Returns:
    uint8 array, [N] for labels or [N, height, width] for images.

  Raises:
    DatasetError: missing file, unknown magic number, wrong rank, or a payload
      whose length differs from what the header promises.
  """
  path = os.fspath(path)
  data = _read_bytes(path, fix)
  if len(data) < 4:
    raise DatasetError(
        f'IDX file {path} is truncated: {len(data)} bytes, no header. {fix}')
  (magic,) = struct.unpack('>I', data[:4])
  valid = {LABELS_MAGIC: 1, IMAGES_MAGIC: 3}
  if magic not in valid:
    raise DatasetError(
        f'IDX file {path} has magic number 0x{magic:08x}; expected '
        f'0x{LABELS_MAGIC:08x} (labels) or 0x{IMAGES_MAGIC:08x} (images), so '
        f'it is not an IDX file of unsigned bytes or it is corrupt. {fix}')
  ndim = valid[magic]
  if expected_ndim is not None and ndim != expected_ndim:
    kind = 'labels' if expected_ndim == 1 else 'images'
    raise DatasetError(
        f'IDX file {path} holds a {ndim}-D array (magic 0x{magic:08x}) where '
        f'{kind} ({expected_ndim}-D) were expected; are the file names '
        f'swapped? {fix}')
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise DatasetError(
        f'IDX file {path} is truncated inside its header ({len(data)} bytes). '
        f'{fix}')
  dims = struct.unpack(f'>{ndim}I', data[4:header_len])
  expected = int(np.prod(dims, dtype=np.int64))
  actual = len(data) - header_len
  if actual != expected:
    what = 'truncated' if actual < expected else 'longer than its header says'
    raise DatasetError(
        f'IDX file {path} is {what}: header dims {dims} need {expected} bytes '
        f'of data, found {actual}. {fix}')
  return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray, *,
              compress: bool | None = None) -> None:
  """Writes a uint8 array [N] or [N, H, W] as IDX (gzip if `compress`).

  `compress=None` follows the file name: gzip when it ends in '.gz'.
  """
  array = np.asarray(array)
  if array.dtype != np.uint8 or array.ndim not in (1, 3):
    raise ValueError(
        f'write_idx takes uint8 [N] or [N, H, W], got {array.dtype} '
        f'{array.shape}.')
  path = os.fspath(path)
  magic = LABELS_MAGIC if array.ndim == 1 else IMAGES_MAGIC
  payload = (struct.pack(f'>I{array.ndim}I', magic, *array.shape)
             + np.ascontiguousarray(array).tobytes())
  if compress is None:
    compress = path.endswith('.gz')
  opener = gzip.open if compress else open
  with opener(path, 'wb') as f:
    f.write(payload)
