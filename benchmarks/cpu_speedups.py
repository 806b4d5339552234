"""The naive network, for before/after ablations of the adopted CPU forms.

The CPU speed changes measured in `benchmarks/FINDINGS.md` are now part of the
models: convolutions are `cnn.kernels.forms.Conv` (oneDNN, or banded matmuls,
on CPU, as `forms.use_conv_impl` says), the ResNets store their activations
with `forms.materialize`, and batch norm is `forms.BatchNorm` (one
multiply-add per element). A train step as committed therefore already has
them (variant `jax` of the benchmarks).

`plain(fn)` traces `fn` inside `forms.reference_convolutions()`, where
`Conv` is `lax.conv`, `materialize` the identity and `BatchNorm` flax's: the
network as it was before the changes (variant `jax_plain`). The context only acts at trace time, so wrap the function
before `jax.jit`:

    jax.jit(plain(step_fn))   # the naive network
    jax.jit(step_fn)          # as committed

No XLA flag is part of the adopted changes: the one that helped
(`--xla_cpu_experimental_ynn_fusion_type=`) gives wrong gradients in some
programs (FINDINGS.md, "XLA flags tried").
"""

from __future__ import annotations

import functools
from typing import Callable

from cnn.kernels import forms


def plain(fn: Callable) -> Callable:
  """`fn` traced with the reference (pre-CPU-change) convolutions."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with forms.reference_convolutions():
      return fn(*args, **kwargs)

  return wrapper
