"""Is a checkpoint's content what was saved? Fingerprints and quiet failures.

`fingerprint(tree)` is one uint32 checksum per array leaf, computed on the
devices and stored in a checkpoint's metadata; `verify(restored, meta)`
raises `CheckpointCorruptError` when the arrays read back differ from it
(orbax stores no checksums, so a flipped byte would otherwise read back as a
wrong number, silently).

A damaged checkpoint makes orbax's parallel reads fail in a way that prints
tracebacks long after the failure was handled: `install_log_filters()` drops
that debris (asyncio's "Task exception was never retrieved" log records and
`sys.unraisablehook` reports). `Checkpointer` installs them when created;
importing this module changes no process setting.
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Any

import jax
import jax.numpy as jnp

# Odd constants (murmur3, golden ratio): multiplying by an odd number is a
# bijection on uint32, so changing any one word changes the fingerprint.
_M1, _GOLDEN = 0x85EBCA6B, 0x9E3779B9


class CheckpointCorruptError(RuntimeError):
  """A checkpoint's arrays read back differently from what was saved."""


# ----------------------------------------------------------------------------
# Fingerprints.


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
  """A uint32 scalar: the mixed, position-weighted words of `x`, summed."""
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


def verify(restored: dict[str, Any], meta: dict[str, Any]) -> None:
  """Raises if the arrays differ from the fingerprint saved with them.

  Checkpoints without a fingerprint (none are written any more) are accepted
  as they are.

  Args:
    restored: the restored state tree, leaves in the order they were saved.
    meta: the checkpoint's metadata; `meta['fingerprint']` is the list of
      `fingerprint` values written with the arrays.

  Raises:
    CheckpointCorruptError: naming the leaves whose fingerprint differs.
  """
  expected = meta.get('fingerprint')
  if expected is None:
    return
  found = fingerprint(restored)
  if found == list(expected):
    return
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(restored)[0]]
  bad = []
  if len(found) == len(expected):
    bad = [p for p, a, b in zip(paths, found, expected, strict=True)
           if a != b]
  raise CheckpointCorruptError(
      f'the arrays do not match the fingerprint saved with them '
      f'(differing: {bad or "the number of arrays"})')


# ----------------------------------------------------------------------------
# The debris of a failed restore.


class QuietDamagedReads(std_logging.Filter):
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


def _is_abandoned_read(unraisable) -> bool:
  """Whether an unraisable exception is debris of a failed orbax restore.

  When one array of a checkpoint fails to read, orbax's event loop ends while
  the other reads are still in flight. Their late completions report
  "RuntimeError: Event loop is closed", and their coroutines, collected
  later, report the read error again; both come with a traceback, through
  `sys.unraisablehook`, and look like a crash although the failure was
  handled (and reported once, by `Checkpointer`).
  """
  value, obj = unraisable.exc_value, unraisable.object
  if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
    return True
  code = getattr(obj, 'cr_code', None)
  return code is not None and '/orbax/' in code.co_filename.replace('\\', '/')


def quiet_abandoned_reads() -> None:
  """Wraps `sys.unraisablehook` (once) to drop `_is_abandoned_read` debris.

  Idempotent; call it again before finalising a failed read, since a caller
  (pytest, for one) may have swapped the hook out in between.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_abandoned_reads', False):
    return

  def hook(unraisable):
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook


def install_log_filters() -> None:
  """Installs `QuietDamagedReads` on asyncio's logger and the unraisable hook.

  Idempotent: each is installed at most once per process.
  """
  asyncio_logger = std_logging.getLogger('asyncio')
  if not any(isinstance(f, QuietDamagedReads)
             for f in asyncio_logger.filters):
    asyncio_logger.addFilter(QuietDamagedReads())
  quiet_abandoned_reads()
