"""Keeps freed host memory inside the process (glibc malloc settings).

Why: XLA on CPU allocates each step's temporary buffer in one block (300 MB
for a CIFAR ResNet-20 step at batch 128) from its own threads. glibc serves a
block that large from a thread's arena with a fresh `mmap` and unmaps it when
freed, so every step faults in every page again: 73,000 page faults and 125 ms
of kernel time per 190 ms ResNet-20 step on the 2-core development machine,
40 % of a LeNet-5 step (benchmarks/FINDINGS.md). PyTorch loses less (its
tensors are smaller) but still measurably.

`keep_freed_memory()` makes every thread allocate from the main arena
(`M_ARENA_MAX=1`), serves large blocks from the heap instead of `mmap`
(`M_MMAP_MAX=0`) and never trims freed memory back to the OS
(`M_TRIM_THRESHOLD=-1`, mallopt(3)'s "disables trimming completely"), so a
step reuses the pages of the previous one. The cost: the process keeps its
peak heap size until it exits. (A finite threshold is not enough: it is an
int, at most 2 GiB, and a ResNet-56 step at batch 128 frees more than that at
once: glibc then trimmed the heap from 2.8 GiB to 0.4 GiB every so often and
the next step faulted 400,000 pages back in.)

It must run before JAX's threads first allocate (threads keep the arena they
started with), hence `cnn/__init__.py` calls it on import. It stays off where
JAX computes on an accelerator (a GPU/TPU plugin is installed, or
`JAX_PLATFORMS` names no CPU): there the step's buffers live on the device, and
one arena would only make host threads (input pipelines) queue for malloc's
lock. Set `CNN_KEEP_FREED_MEMORY=0` to leave glibc's defaults (e.g. to
compare), `=1` to force the settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys

ENV = 'CNN_KEEP_FREED_MEMORY'

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = False


def computes_on_cpu() -> bool:
  """Whether JAX will (most likely) run the steps on the CPU backend.

  Decided without initialising JAX: `JAX_PLATFORMS` starting with 'cpu', or
  no accelerator plugin importable (GPU plugins live in the `jax_plugins`
  namespace package, TPUs need `libtpu`).
  """
  platforms = os.environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return platforms.split(',')[0] == 'cpu'
  return not any(importlib.util.find_spec(name) is not None
                 for name in ('jax_plugins', 'libtpu'))


def keep_freed_memory() -> bool:
  """Applies the settings once per process; True if they are in force.

  A no-op (False) off Linux/glibc, where JAX computes on an accelerator, or
  when `CNN_KEEP_FREED_MEMORY=0`.
  """
  global _applied
  if _applied:
    return True
  choice = os.environ.get(ENV, 'auto')
  if choice == '0' or not sys.platform.startswith('linux'):
    return False
  if choice != '1' and not computes_on_cpu():
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  ok = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1 and
        mallopt(_M_TRIM_THRESHOLD, -1) == 1)
  _applied = ok
  return ok
