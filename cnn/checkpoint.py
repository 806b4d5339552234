"""Checkpoints of the `TrainState` with orbax's `CheckpointManager`.

Layout: `workdir/checkpoints/<step>/{state,meta}`. `state` holds the arrays
(step, params, batch_stats, opt_state, rng); `meta` is JSON describing what
was trained (model, data set, ...), so a workdir holding another experiment
is refused instead of being silently overwritten, plus a fingerprint of every
array, so damaged bytes are noticed rather than trained on.

Restore walks the saved steps from newest to oldest: a checkpoint that fails
to restore (truncated, corrupt or half-written) is reported and moved to
`checkpoints.damaged/`, never deleted.

`load_arrays(workdir)` reads a checkpoint back as numpy arrays, without a
model or a matching device topology (for notebooks and tests).
"""

from __future__ import annotations

import collections
import gc
import logging as std_logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from cnn import errors
from cnn.steps import TrainState

# Orbax writes a step to `<step>.orbax-checkpoint-tmp` and renames it when
# complete; a directory with this in its name is a save that never finished.
_TMP_MARKER = '.orbax-checkpoint-tmp'


class _QuietDamagedReads(std_logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" for orbax reads.

  Restoring a damaged checkpoint fails in one of orbax's parallel array reads;
  the sibling reads that fail too are never awaited, and asyncio prints each
  with a traceback when it is garbage-collected (at a time that depends on
  the thread schedule). `Checkpointer.restore_latest` already reports the
  damage in one line, so these are noise.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    message = record.getMessage()
    if 'exception was never retrieved' not in message:
      return True
    # The task is orbax's read coroutine or asyncio's wrapper around it; the
    # exception is tensorstore's (DATA_LOSS, a zarr/OCDBT read error).
    return not any(mark in message for mark in (
        'async_deserialize', 'DATA_LOSS', 'OCDBT', '.zarray'))


std_logging.getLogger('asyncio').addFilter(_QuietDamagedReads())

# Odd constants (murmur3, golden ratio): multiplying by an odd number is a
# bijection on uint32, so changing any one word changes the fingerprint.
_M1, _GOLDEN = 0x85EBCA6B, 0x9E3779B9


class CheckpointMismatchError(errors.UserError):
  """The workdir holds a checkpoint of a different experiment."""


class CheckpointCorruptError(RuntimeError):
  """A checkpoint's arrays read back differently from what was saved."""


def _state_tree(state: TrainState) -> dict[str, Any]:
  return dict(step=state.step, params=state.params,
              batch_stats=state.batch_stats, opt_state=state.opt_state,
              rng=state.rng)


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as a flat uint32 vector (one word per element)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}
  if size in unsigned:
    x = jax.lax.bitcast_convert_type(x, unsigned[size]).astype(jnp.uint32)
  else:  # 8-byte types (x64 mode) become two words per element.
    x = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return x.reshape(-1)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  words = _words(jnp.asarray(x))
  position = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(_GOLDEN)
  mixed = (words ^ position) * jnp.uint32(_M1)
  # uint32 addition wraps and is associative: the sum is the same bit pattern
  # whatever the reduction order, i.e. on 1 device or 8, in any process.
  return jnp.sum(mixed ^ (mixed >> jnp.uint32(15)), dtype=jnp.uint32)


@jax.jit
def _fingerprint_leaves(tree) -> list[jax.Array]:
  return [_leaf_fingerprint(x) for x in jax.tree.leaves(tree)]


def fingerprint(tree) -> list[int]:
  """One uint32 checksum of the exact bits of each array leaf of `tree`.

  Computed on the devices (no copy of the arrays to the host); independent of
  sharding and device count. Not cryptographic: it catches damaged files,
  not deliberate edits.
  """
  return [int(v) for v in jax.device_get(_fingerprint_leaves(tree))]


def _is_abandoned_read(unraisable) -> bool:
  """Whether an unraisable exception is debris of a failed orbax restore.

  When one array of a checkpoint fails to read, orbax's event loop ends while
  the other reads are still in flight. Their late completions report
  "RuntimeError: Event loop is closed", and their coroutines, collected
  later, report the read error again; both come with a traceback, through
  `sys.unraisablehook`, and look like a crash although the failure was
  handled (and reported once, by `Checkpointer._set_aside`).
  """
  value, obj = unraisable.exc_value, unraisable.object
  if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
    return True
  code = getattr(obj, 'cr_code', None)
  return code is not None and '/orbax/' in code.co_filename.replace('\\', '/')


def _quiet_abandoned_reads() -> None:
  """Wraps `sys.unraisablehook` (once) to drop `_is_abandoned_read` debris."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_abandoned_reads', False):
    return

  def hook(unraisable):
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook


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
    # Before the first read: a failed read's debris can arrive at once.
    _quiet_abandoned_reads()
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
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))['state']
        self._verify(restored, meta)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises many kinds of errors for damaged files; none of them
        # should end the run while an older good checkpoint exists.
        self._set_aside(step, e)
        continue
      return target.replace(**restored), meta
    return None, None

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
    layout = lambda tree: sorted(
        (tuple(int(d) for d in a.shape), np.dtype(a.dtype).name)
        for a in jax.tree.leaves(tree))
    have, want = layout(saved), layout(abstract)
    if have != want:
      extra = list((collections.Counter(have) - collections.Counter(want)
                    ).elements())[:3]
      missing = list((collections.Counter(want) - collections.Counter(have)
                      ).elements())[:3]
      raise CheckpointMismatchError(
          f'The checkpoint at step {step} in {self.directory} holds other '
          f'arrays than this code builds for the config ({len(have)} saved, '
          f'{len(want)} expected; (shape, dtype) only saved: {extra}, only '
          f'expected: {missing}): it was written by another version of the '
          'model or optimizer code. Nothing was changed. Use a new --workdir, '
          'or the code that wrote it.')

  @staticmethod
  def _verify(restored: dict[str, Any], meta: dict[str, Any]) -> None:
    """Raises if the arrays differ from the fingerprint saved with them.

    Orbax stores no checksums: a flipped byte inside an array file reads back
    as a wrong number, silently. Checkpoints without a fingerprint (none are
    written any more) are accepted as they are.
    """
    expected = meta.get('fingerprint')
    if expected is None:
      return
    found = fingerprint(restored)
    if found != list(expected):
      paths = [jax.tree_util.keystr(p) for p, _ in
               jax.tree_util.tree_flatten_with_path(restored)[0]]
      bad = [p for p, a, b in zip(paths, found, expected, strict=True)
             if a != b]
      raise CheckpointCorruptError(
          f'the arrays do not match the fingerprint saved with them '
          f'(differing: {bad or "the number of arrays"})')

  def _move_to_damaged(self, name: str) -> str:
    damaged = self.directory + '.damaged'
    dest = os.path.join(damaged, name)
    suffix = 0
    while os.path.exists(dest):
      suffix += 1
      dest = os.path.join(damaged, f'{name}.{suffix}')
    if jax.process_index() == 0:
      os.makedirs(damaged, exist_ok=True)
      os.replace(os.path.join(self.directory, name), dest)
    return dest

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves a damaged checkpoint to `checkpoints.damaged/` (kept for a look).

    It must leave `checkpoints/`: otherwise the run could not save that step
    again, and keep-last-K would count it while deleting good ones.
    """
    # Finalise the failed read's coroutines now, while the filter is still
    # in place (a caller such as pytest may swap the hook out later).
    _quiet_abandoned_reads()
    gc.collect()
    dest = self._move_to_damaged(str(step))
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
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if _TMP_MARKER in name:
        dest = self._move_to_damaged(name)
        logging.warning('Found a half-written checkpoint %s (the process '
                        'stopped while saving it); moved it to %s.', name,
                        dest)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _array_metadata(path: str) -> Any:
  """The saved tree of `path` (a step's `state/`), one ArrayMetadata a leaf."""
  return ocp.StandardCheckpointHandler().metadata(
      epath.Path(os.path.abspath(path))).tree


def _step_dirs(directory: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


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
