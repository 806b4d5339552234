"""Checkpoints of the `TrainState` with orbax's `CheckpointManager`.

Layout: `workdir/checkpoints/<step>/{state,meta}`. `state` holds the arrays
(step, params, batch_stats, opt_state, rng); `meta` is JSON describing what
was trained (model, data set, ...: `cnn/training/experiment_identity.py`), so a
workdir holding another experiment is refused instead of being silently
overwritten, plus a fingerprint of every array
(`cnn/training/checkpoint_integrity.py`), so damaged bytes are noticed rather than
trained on.

Restore walks the saved steps from newest to oldest: a checkpoint that fails
to restore (truncated, corrupt or half-written) is reported and moved to
`checkpoints.damaged/`, never deleted.

`load_arrays(workdir)` reads a checkpoint back as numpy arrays, without a
model or a matching device topology (for notebooks and tests).
"""

from __future__ import annotations

import collections
import gc
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from cnn.common import errors
from cnn.training import checkpoint_integrity
from cnn.training import experiment_identity as identity_lib
from cnn.training.steps import TrainState

# Re-exported: the trainer finds the checkpoint errors, the checksum and the
# identity check of `restore_latest` here.
CheckpointCorruptError = checkpoint_integrity.CheckpointCorruptError
CheckpointMismatchError = identity_lib.CheckpointMismatchError
fingerprint = checkpoint_integrity.fingerprint
experiment_identity = identity_lib.experiment_identity
identity_check = identity_lib.identity_check

# Orbax writes a step to `<step>.orbax-checkpoint-tmp` and renames it when
# complete; a directory with this in its name is a save that never finished.
_TMP_MARKER = '.orbax-checkpoint-tmp'


def _state_tree(state: TrainState) -> dict[str, Any]:
  return dict(step=state.step, params=state.params,
              batch_stats=state.batch_stats, opt_state=state.opt_state,
              rng=state.rng)


# ----------------------------------------------------------------------------
# Layout: which arrays a checkpoint holds.


def _array_metadata(path: str) -> Any:
  """The saved tree of `path` (a step's `state/`), one ArrayMetadata a leaf."""
  return ocp.StandardCheckpointHandler().metadata(
      epath.Path(os.path.abspath(path))).tree


def _layout(tree) -> list[tuple[tuple[int, ...], str]]:
  """Sorted (shape, dtype name) of every leaf: what a tree holds, not where."""
  return sorted((tuple(int(d) for d in a.shape), np.dtype(a.dtype).name)
                for a in jax.tree.leaves(tree))


def _layout_difference(have: list, want: list, limit: int = 3
                       ) -> tuple[list, list]:
  """(only in `have`, only in `want`), at most `limit` entries each."""
  have_count, want_count = collections.Counter(have), collections.Counter(want)
  return (list((have_count - want_count).elements())[:limit],
          list((want_count - have_count).elements())[:limit])


# ----------------------------------------------------------------------------
# Quarantine: damaged checkpoints leave `checkpoints/` but are never deleted.


def _move_to_damaged(directory: str, name: str) -> str:
  """Moves `directory/name` into `directory.damaged/`; returns where to.

  A name already taken there gets a suffix (`.1`, `.2`, ...). Only process 0
  moves files; every process returns the same destination.
  """
  damaged = directory + '.damaged'
  dest = os.path.join(damaged, name)
  suffix = 0
  while os.path.exists(dest):
    suffix += 1
    dest = os.path.join(damaged, f'{name}.{suffix}')
  if jax.process_index() == 0:
    os.makedirs(damaged, exist_ok=True)
    os.replace(os.path.join(directory, name), dest)
  return dest


def _unfinished_saves(directory: str) -> list[str]:
  """Names in `directory` of saves that never finished (sorted)."""
  if not os.path.isdir(directory):
    return []
  return [n for n in sorted(os.listdir(directory)) if _TMP_MARKER in n]


class Checkpointer:
  """Saves and restores `TrainState`s under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    # A damaged checkpoint's failed reads print tracebacks later on; the
    # restore reports the damage itself, in one line.
    checkpoint_integrity.install_log_filters()
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
    """Starts saving `state` at its step (asynchronously). Idempotent.

    `meta` (JSON) is stored with the arrays, together with their
    `fingerprint`, which `restore_latest` checks.
    """
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    tree = _state_tree(state)
    meta = dict(meta, fingerprint=fingerprint(tree))
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Blocks until asynchronous saves have been committed."""
    self._manager.wait_until_finished()

  def read_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore_latest(
      self, target: TrainState,
      check_meta: Callable[[dict[str, Any]], None] | None = None,
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
    # Before the first read: a failed read's debris can arrive at once.
    checkpoint_integrity.quiet_abandoned_reads()
    self._set_aside_unfinished()
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
      self._check_layout(step, abstract)
      try:
        restored = self._read_state(step, abstract, meta)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises many kinds of errors for damaged files; none of them
        # should end the run while an older good checkpoint exists.
        self._set_aside(step, e)
        continue
      return target.replace(**restored), meta
    return None, None

  def _read_state(self, step: int, abstract: dict[str, Any],
                  meta: dict[str, Any]) -> dict[str, Any]:
    """The arrays of `step`, checked against their saved fingerprint."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']
    checkpoint_integrity.verify(restored, meta)
    return restored

  def _check_layout(self, step: int, abstract: dict[str, Any]) -> None:
    """Refuses a checkpoint whose arrays are not the ones `target` has.

    Same config but other arrays means other code (a changed model or
    optimizer), not damage: moving such checkpoints aside would quietly
    restart training, so the run stops instead and leaves them in place.
    Unreadable metadata is left to the restore, which sets the step aside.
    """
    try:
      saved = _array_metadata(os.path.join(self.directory, str(step), 'state'))
    except Exception:  # pylint: disable=broad-except
      return
    have, want = _layout(saved), _layout(abstract)
    if have == want:
      return
    extra, missing = _layout_difference(have, want)
    raise CheckpointMismatchError(
        f'The checkpoint at step {step} in {self.directory} holds other '
        f'arrays than this code builds for the config ({len(have)} saved, '
        f'{len(want)} expected; (shape, dtype) only saved: {extra}, only '
        f'expected: {missing}): it was written by another version of the '
        'model or optimizer code. Nothing was changed. Use a new --workdir, '
        'or the code that wrote it.')

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves a damaged checkpoint to `checkpoints.damaged/` (kept for a look).

    It must leave `checkpoints/`: otherwise the run could not save that step
    again, and keep-last-K would count it while deleting good ones.
    """
    # Finalise the failed read's coroutines now, while the filter is still
    # in place (a caller such as pytest may swap the hook out later).
    checkpoint_integrity.quiet_abandoned_reads()
    gc.collect()
    dest = _move_to_damaged(self.directory, str(step))
    self._manager.reload()
    logging.warning(
        'Checkpoint at step %d could not be restored (%s: %s). It was moved '
        'to %s and an older checkpoint is tried instead.',
        step, type(error).__name__, str(error)[:300], dest)

  def _set_aside_unfinished(self) -> None:
    """Moves saves that never finished (the process died while writing).

    Orbax ignores them, but they would stay forever and hold disk space; the
    move keeps the policy that nothing is deleted.
    """
    for name in _unfinished_saves(self.directory):
      dest = _move_to_damaged(self.directory, name)
      logging.warning('Found a half-written checkpoint %s (the process '
                      'stopped while saving it); moved it to %s.', name, dest)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _step_dirs(directory: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir/checkpoints/` holds a saved step (read from the
  listing only; nothing is opened or created)."""
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and bool(_step_dirs(directory))


def load_arrays(workdir: str, step: int | None = None
                ) -> tuple[int, dict[str, Any]]:
  """Reads a checkpoint's arrays as numpy, for analysis.

  Needs no model, config or devices: a checkpoint written on 8 devices or by
  several processes loads in any process.

  Args:
    workdir: a training workdir (or its `checkpoints/` directory).
    step: which checkpoint; default the newest.

  Returns:
    (step, {'step', 'params', 'batch_stats', 'opt_state', 'rng'}) with numpy
    leaves (opt_state in orbax's nested dict/list form).
  """
  directory = os.path.abspath(workdir)
  if os.path.basename(directory) != 'checkpoints':
    directory = os.path.join(directory, 'checkpoints')
  steps = _step_dirs(directory) if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f'No checkpoints in {directory}.')
  step = steps[-1] if step is None else step
  path = os.path.join(directory, str(step), 'state')
  tree = _array_metadata(path)
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  arrays = ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  # Restored without a target, orbax returns scalars as shape [1].
  return step, jax.tree.map(lambda x, m: np.reshape(x, m.shape), arrays, tree)


def load_variables(workdir: str, *, verify: bool = True
                   ) -> tuple[int, dict[str, Any]]:
  """The model variables of a workdir's newest checkpoint, for reuse.

  Args:
    workdir: a training workdir.
    verify: check the arrays against the fingerprint saved with them
      (`checkpoint_integrity.verify`: damaged bytes are never used).

  Returns:
    (step, {'params', 'batch_stats'}) with numpy leaves; batch_stats is {}
    for a network without batch norm.

  Raises:
    errors.UserError: the workdir has no checkpoint (one line naming the
      command that makes one).
  """
  try:
    step, arrays = load_arrays(workdir)
  except FileNotFoundError:
    raise errors.UserError(
        f'No checkpoint in {os.path.join(workdir, "checkpoints")}: train '
        f'first (python main.py --config=... --workdir={workdir}) or point '
        'at a trained run.') from None
  if verify:
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
      checkpoint_integrity.verify(arrays, checkpointer.read_meta(step))
    finally:
      checkpointer.close()
  return int(step), {'params': arrays['params'],
                     'batch_stats': arrays.get('batch_stats') or {}}
