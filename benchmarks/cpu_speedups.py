"""The naive network, for before/after ablations of the adopted CPU forms.

The CPU speed changes measured in `benchmarks/FINDINGS.md` are now part of the
models: convolutions are `cnn.layers.Conv(impl='auto')` (oneDNN, or banded
matmuls, on CPU), the CIFAR ResNets pass every convolution input through
`cnn.layers.materialize`, and batch norm is `cnn.layers.BatchNorm` (one
multiply-add per element). A train step as committed therefore already has
them (variant `jax` of the benchmarks).

`plain(fn)` traces `fn` inside `cnn.layers.reference_convolutions()`, where
`Conv(impl='auto')` is `lax.conv`, `materialize` the identity and
`BatchNorm` flax's: the network as it was before the changes (variant
`jax_plain`). The context only acts at trace time, so wrap the function
before `jax.jit`:

    jax.jit(plain(step_fn))   # the naive network
    jax.jit(step_fn)          # as committed

No XLA flag is part of the adopted changes: the one that helped
(`--xla_cpu_experimental_ynn_fusion_type=`, 1.2x on LeNet-5) gives wrong
gradients in some programs (FINDINGS.md).
"""

from __future__ import annotations

import functools
from typing import Callable

from cnn import layers


def plain(fn: Callable) -> Callable:
  """`fn` traced with the reference (pre-CPU-change) convolutions."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with layers.reference_convolutions():
      return fn(*args, **kwargs)

  return wrapper
