"""Where metrics go: `workdir/metrics.jsonl`, TensorBoard events, a console bar.

Only process 0 writes. On resume, lines of `metrics.jsonl` past the restored
step are dropped (they will be computed again), so the file always describes
one consistent run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
from absl import logging


class MetricWriter:
  """Appends one JSON object per evaluation and per training-log step
  (`kind: "train"`); mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._active = jax.process_index() == 0
    self._tb = None
    if self._active and tensorboard:
      try:
        # tensorboardX writes event files without TensorFlow; it is optional
        # so the GPU image (no tensorboardX) still trains.
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        logging.info('tensorboardX not installed: no TensorBoard events.')

  def truncate_after(self, step: int) -> None:
    """Drops records with `step` > step (a resumed run recomputes them)."""
    if not self._active or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in records if r.get('step', 0) <= step]
    if len(kept) != len(records):
      with open(self.path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in kept)

  def write(self, record: dict[str, Any]) -> None:
    if not self._active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for key, value in record.items():
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and key != 'step'):
          self._tb.add_scalar(key, value, record['step'])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def is_evaluation(record: dict[str, Any]) -> bool:
  """An evaluation line (test metrics), not a training-log line."""
  return record.get('kind', 'eval') == 'eval'


def read_metrics(workdir: str, *, kind: str = 'eval'
                 ) -> list[dict[str, Any]]:
  """Records of `workdir/metrics.jsonl` (for notebooks, analysis, tests).

  Args:
    workdir: a training workdir.
    kind: 'eval' (one line per evaluation: test and train metrics), 'train'
      (one line every `log_every_steps` between evaluations: `train_loss`,
      `train_accuracy` over the steps since the previous line, learning
      rate) or 'all' (both, in step order).

  A half-written last line (a killed run) is ignored.
  """
  if kind not in ('eval', 'train', 'all'):
    raise ValueError(f"kind must be 'eval', 'train' or 'all', got {kind!r}.")
  path = os.path.join(workdir, 'metrics.jsonl')
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          break
  if kind == 'all':
    return records
  return [r for r in records if is_evaluation(r) == (kind == 'eval')]


def progress_bar(total: int, initial: int, enabled: bool):
  """A tqdm bar on stderr, silent when stderr is not a terminal."""
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit='step',
                   dynamic_ncols=True,
                   disable=not (enabled and sys.stderr.isatty()
                                and jax.process_index() == 0))
