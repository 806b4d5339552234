"""Evaluation batches that cover every example exactly once (numpy, no TF).

Batches have a fixed shape (one compilation of the eval step): the last one
is zero-padded and `mask` marks its real rows. Nothing is ever dropped, so
metrics computed as sum(metric * mask) / sum(mask) are exact.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from input_pipeline import errors, preprocess


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  """Batches needed to cover `num_examples` (the last may be padded)."""
  return math.ceil(num_examples / batch_size)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None,
                 process_index: int = 0, process_count: int = 1,
                 with_index: bool = False
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Yields fixed-shape batches over all examples, in order.

  Args:
    images: [N, H, W, C]; uint8 0..255 is converted to float32 0..1, float
      input is taken as already on the 0..1 scale.
    labels: int [N].
    batch_size: global batch size (all processes together).
    mean, std: per-channel statistics (0..1 scale); if given, images are
      normalised with `preprocess.normalize`.
    process_index, process_count: this process yields rows
      [p * B_local, (p + 1) * B_local) of every global batch.
    with_index: also yield 'index', int64 [B_local], the example index of each
      row (-1 on padding rows); useful for per-example analysis.

  Yields:
    {'image': float32 [B_local, H, W, C], 'label': int32 [B_local],
     'mask': float32 [B_local] (1.0 real row, 0.0 padding)}, where
    B_local = batch_size // process_count; padded rows are all zero.
  """
  if batch_size <= 0 or batch_size % process_count:
    raise errors.InputConfigError(
        f'Eval batch size {batch_size} must be positive and divisible by the '
        f'{process_count} processes.')
  n = len(images)
  if len(labels) != n:
    raise ValueError(f'{n} images but {len(labels)} labels.')
  local = batch_size // process_count
  for start in range(0, n, batch_size):
    lo = min(start + process_index * local, n)
    hi = min(lo + local, n)
    real = hi - lo
    image = np.zeros((local,) + tuple(images.shape[1:]), np.float32)
    label = np.zeros((local,), np.int32)
    mask = np.zeros((local,), np.float32)
    chunk = images[lo:hi]
    if chunk.dtype == np.uint8:
      chunk = preprocess.to_unit_float(chunk)
    if mean is not None and std is not None:
      chunk = preprocess.normalize(chunk, mean, std)
    image[:real] = chunk
    label[:real] = labels[lo:hi]
    mask[:real] = 1.0
    batch = {'image': image, 'label': label, 'mask': mask}
    if with_index:
      index = np.full((local,), -1, np.int64)
      index[:real] = np.arange(lo, hi)
      batch['index'] = index
    yield batch
