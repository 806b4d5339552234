"""Checkpoints of the `TrainState` with orbax's `CheckpointManager`.

Layout: `workdir/checkpoints/<step>/{state,meta}`. `state` holds the arrays
(step, params, batch_stats, opt_state, rng); `meta` is JSON describing what
was trained (model, data set, ...), so a workdir holding another experiment
is refused instead of being silently overwritten.

Restore walks the saved steps from newest to oldest: a checkpoint that fails
to restore (truncated or half-written) is reported and skipped, never
deleted.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from cnn import errors
from cnn.steps import TrainState


class CheckpointMismatchError(errors.UserError):
  """The workdir holds a checkpoint of a different experiment."""


def _state_tree(state: TrainState) -> dict[str, Any]:
  return dict(step=state.step, params=state.params,
              batch_stats=state.batch_stats, opt_state=state.opt_state,
              rng=state.rng)


class Checkpointer:
  """Saves and restores `TrainState`s under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save),
        item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any], *,
           force: bool = True) -> bool:
    """Starts saving `state` at its step (asynchronously). Idempotent."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)),
                                meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Blocks until asynchronous saves have been committed."""
    self._manager.wait_until_finished()

  def read_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore_latest(self, target: TrainState, check_meta=None
                     ) -> tuple[TrainState | None, dict[str, Any] | None]:
    """Restores the newest checkpoint that reads back cleanly.

    Args:
      target: a state with the right structure, shapes and shardings (for
        example a freshly initialised one); arrays are restored with its
        shardings, so a checkpoint written on 8 devices restores on 1.
      check_meta: called with a checkpoint's metadata before its arrays are
        read; raises (e.g. `CheckpointMismatchError`) to refuse it.

    Returns:
      (state, meta), or (None, None) when there is no usable checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            _state_tree(target))
    for step in reversed(self.all_steps()):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises many kinds of errors for damaged files; none of them
        # should end the run while an older good checkpoint exists.
        self._set_aside(step, e)
        continue
      return target.replace(**restored['state']), meta
    return None, None

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves a damaged checkpoint to `checkpoints.damaged/` (kept for a look).

    It must leave `checkpoints/`: otherwise the run could not save that step
    again, and keep-last-K would count it while deleting good ones.
    """
    damaged = self.directory + '.damaged'
    os.makedirs(damaged, exist_ok=True)
    source = os.path.join(self.directory, str(step))
    dest = os.path.join(damaged, f'{step}')
    suffix = 0
    while os.path.exists(dest):
      suffix += 1
      dest = os.path.join(damaged, f'{step}.{suffix}')
    if jax.process_index() == 0:
      os.replace(source, dest)
    self._manager.reload()
    logging.warning(
        'Checkpoint at step %d could not be restored (%s: %s). It was moved '
        'to %s and an older checkpoint is tried instead.',
        step, type(error).__name__, str(error)[:300], dest)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
