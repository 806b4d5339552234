"""CPU speed forms: faster formulations of convolution and batch norm.

The research code (`cnn.layers`, `cnn/models/`) names *what* a network
computes; this module holds *how* the CPU computes it fast. Every form here
has the parameters, variables and function of the layer it replaces (up to
float rounding), so models use them unconditionally and checkpoints,
parameter counts and size accounting never see a difference. Why each form
exists is measured in `benchmarks/FINDINGS.md`; the numbers live there only.

  Conv              `nn.Conv` computed as XLA's convolution, oneDNN's
                    (`cnn.kernels.onednn`) or a banded matmul (`banded_conv`),
                    as the implementation switch says.
  BatchNorm         `nn.BatchNorm` applied as one multiply-add per element.
  materialize       an identity that makes XLA on CPU store an activation
                    instead of recomputing it inside every consumer.

Three process-wide switches, all read when a function is traced (a function
already jitted keeps the forms it was traced with; trace it again inside the
context to change them):

  use_conv_impl(name)       the convolution implementation: 'auto' (default),
                            'xla', 'banded' or 'onednn'; outside any
                            `use_conv_impl`, the environment variable
                            CNN_CONV_IMPL.
  reference_convolutions()  the plain network: XLA convolutions whatever the
                            switch says, `materialize` the identity, flax's
                            batch norm (for size accounting and ablations).
  batch_norms_in_eval_mode(paths)
                            the `BatchNorm`s at these module paths normalise
                            with their running statistics and leave them
                            unchanged, even in a training pass (the frozen
                            groups of a transfer run; entered inside the
                            traced step, so it is part of the trace).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn.common import errors
from cnn.kernels import onednn

Array = jax.Array

IMPLS = ('auto', 'xla', 'banded', 'onednn')  # values of the switch
ENV_VAR = 'CNN_CONV_IMPL'  # the switch's default, when set

_CONV_IMPL = contextvars.ContextVar('conv_impl', default=None)
_REFERENCE = contextvars.ContextVar('reference_convolutions', default=False)
_EVAL_MODE_NORMS = contextvars.ContextVar('eval_mode_norms',
                                          default=frozenset())


# --- The switches -------------------------------------------------------------


def _checked_impl(name: Any, source: str) -> str:
  if name not in IMPLS:
    raise errors.UserError(
        f'Unknown convolution implementation {name!r} ({source}); valid: '
        f'{", ".join(repr(i) for i in IMPLS)}.')
  return name


def conv_impl() -> str:
  """The convolution implementation in force: the innermost `use_conv_impl`,
  else the environment variable CNN_CONV_IMPL, else 'auto'."""
  name = _CONV_IMPL.get()
  if name is not None:
    return name
  return _checked_impl(os.environ.get(ENV_VAR) or 'auto',
                       f'environment variable {ENV_VAR}')


@contextlib.contextmanager
def use_conv_impl(name: str) -> Iterator[None]:
  """Within this context every `Conv` traced uses implementation `name`.

  Args:
    name: 'auto' (on CPU oneDNN where built and supported, else banded
      matmuls for small convolutions, else XLA; XLA on other backends),
      'xla', 'banded' or 'onednn'. Anything else raises `errors.UserError`.
  """
  token = _CONV_IMPL.set(_checked_impl(name, 'use_conv_impl'))
  try:
    yield
  finally:
    _CONV_IMPL.reset(token)


@contextlib.contextmanager
def reference_convolutions() -> Iterator[None]:
  """Within this context the CPU forms are off: `Conv` traces `lax.conv`
  (whatever `use_conv_impl` says), `materialize` is the identity and
  `BatchNorm` is flax's. Size accounting sees the network itself (a banded
  matmul does more multiply-adds for the same result; a conditional hides
  the data flow), and ablations measure the forms against it."""
  token = _REFERENCE.set(True)
  try:
    yield
  finally:
    _REFERENCE.reset(token)


@contextlib.contextmanager
def batch_norms_in_eval_mode(paths) -> Iterator[None]:
  """Within this context the `BatchNorm` modules whose path (a tuple of
  module names from the root, as `('backbone', 'stage1_block0', 'bn1')`)
  is in `paths` use and keep their running statistics whatever their
  `use_running_average` says."""
  token = _EVAL_MODE_NORMS.set(frozenset(tuple(p) for p in paths))
  try:
    yield
  finally:
    _EVAL_MODE_NORMS.reset(token)


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


# --- materialize --------------------------------------------------------------


def materialize(x: Array) -> Array:
  """Identity that makes XLA on CPU store `x` instead of recomputing it.

  XLA fuses cheap elementwise producers (batch norm, ReLU, residual adds)
  into every consumer, including the transposed copies that convolution
  weight gradients need, where a residual stage's whole chain is recomputed
  in cache-hostile order (benchmarks/FINDINGS.md §3). XLA CPU strips
  `lax.optimization_barrier` but cannot fuse across a conditional, so `x`
  passes through one whose predicate is only known at run time; both
  branches return `x` exactly (`jnp.copy`: identical branches would be
  simplified away). The identity on other backends (a conditional costs a
  host sync on GPU) and inside `reference_convolutions()`.

  Args:
    x: any array.

  Returns:
    `x`, with the same value, shape and dtype.
  """
  if not _on_cpu() or x.size == 0 or _REFERENCE.get():
    return x
  keep = jnp.isfinite(x.reshape(-1)[0])
  return jax.lax.cond(keep, lambda v: v, jnp.copy, x)


# --- BatchNorm ----------------------------------------------------------------


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` (same attributes, variables, statistics and running
  averages) applied as one multiply-add per element.

  Flax normalises as `(x - mean) * a + bias` with `a = scale / sqrt(var +
  epsilon)`; autodiff then keeps `x - mean` for the scale's gradient, one
  more activation-sized tensor per layer. Here `y = x * a + (bias - mean *
  a)`, whose gradients only need `x` (benchmarks/FINDINGS.md §11). Same
  function up to rounding; inside `reference_convolutions()` it is flax's
  layer.

  Input: [..., features] (statistics over every axis but `axis`). `mask` is
  not supported. Inside `batch_norms_in_eval_mode` a listed module runs on
  its running statistics (this formulation, even under
  `reference_convolutions`).
  """

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None, *,
               mask: Array | None = None) -> Array:
    in_eval_mode = (self.scope is not None and
                    tuple(self.scope.path) in _EVAL_MODE_NORMS.get())
    if _REFERENCE.get() and not in_eval_mode:
      return super().__call__(x, use_running_average, mask=mask)
    if mask is not None:
      raise NotImplementedError('cnn.kernels.forms.BatchNorm has no `mask`; '
                                'use flax.linen.BatchNorm.')
    use_running_average = in_eval_mode or nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
    feature_axes = tuple(sorted(a % x.ndim for a in axis))
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    feature_shape = [x.shape[a] for a in feature_axes]
    stats_dtype = (jnp.float32 if self.force_float32_reductions
                   else self.param_dtype)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, feature_shape,
                            stats_dtype)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, feature_shape,
                           stats_dtype)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = self._batch_stats(x, reduction_axes)
      if not self.is_initializing():
        keep = self.momentum
        ra_mean.value = keep * ra_mean.value + (1 - keep) * mean
        ra_var.value = keep * ra_var.value + (1 - keep) * var
    if not self.force_float32_reductions:
      mean, var = (jnp.asarray(v, self.param_dtype) for v in (mean, var))

    multiplier = jax.lax.rsqrt(var + self.epsilon)
    used = [x]
    if self.use_scale:
      scale = self.param('scale', self.scale_init, feature_shape,
                         self.param_dtype)
      multiplier = multiplier * scale
      used.append(scale)
    shift = -mean * multiplier
    if self.use_bias:
      bias = self.param('bias', self.bias_init, feature_shape,
                        self.param_dtype)
      shift = shift + bias
      used.append(bias)
    broadcast_shape = [x.shape[a] if a in feature_axes else 1
                       for a in range(x.ndim)]
    y = x * multiplier.reshape(broadcast_shape) + shift.reshape(
        broadcast_shape)
    return jnp.asarray(y, self.dtype or jnp.result_type(*used))

  def _batch_stats(self, x: Array, reduction_axes: tuple[int, ...]
                   ) -> tuple[Array, Array]:
    """(mean, variance) over `reduction_axes`, as flax computes them."""
    dtype = jnp.result_type(x) if self.dtype is None else self.dtype
    if self.force_float32_reductions:
      dtype = jnp.promote_types(dtype, jnp.float32)
    x = x.astype(dtype)
    if self.use_fast_variance:
      mean, mean_square = self._mean_over_devices(
          x.mean(reduction_axes), jnp.square(x).mean(reduction_axes))
      return mean, jnp.maximum(0.0, mean_square - jnp.square(mean))
    mean, = self._mean_over_devices(x.mean(reduction_axes))
    variance, = self._mean_over_devices(
        jnp.square(x - mean).mean(reduction_axes))
    return mean, variance

  def _mean_over_devices(self, *moments: Array) -> tuple[Array, ...]:
    """`moments` averaged over `axis_name` (one collective for all)."""
    if self.axis_name is None or self.is_initializing():
      return moments
    return tuple(jax.lax.pmean(jnp.stack(moments), self.axis_name,
                               axis_index_groups=self.axis_index_groups))


# --- Convolution --------------------------------------------------------------


def explicit_padding(padding: Any, kernel_size: tuple[int, int],
                     strides: tuple[int, int],
                     in_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
  """'SAME' / 'VALID' / int / pairs -> ((top, bottom), (left, right))."""
  if isinstance(padding, str):
    return tuple(jax.lax.padtype_to_pads(in_size, kernel_size, strides,
                                         padding.upper()))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def banded_conv(x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                padding: Any = 'VALID') -> Array:
  """2-D convolution as a single matmul with a banded matrix along the width.

  Same result as `lax.conv_general_dilated(x, kernel, strides, padding,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`. Each output row is computed
  from the `kh` input rows it sees, flattened to `kh * W_in * C_in` numbers,
  times a (block-Toeplitz) matrix whose band holds the kernel:

    y[b, h, w, o] = sum_{i, w', c} x[b, s_h h + i, w', c] T[i, w', c, w, o],
    T[i, w', c, w, o] = kernel[i, w' - s_w w, c, o]  (0 <= w' - s_w w < kw).

  The matmul does `banded_conv_redundancy` times the convolution's
  multiply-adds, but for small channel counts (LeNet-5's) it beats XLA's CPU
  convolution kernels, its gradients are plain matmuls, and it stays fast
  inside `lax.scan` loop bodies, where XLA CPU leaves weight-gradient
  convolutions in a slow generic form (benchmarks/FINDINGS.md §1, §4).

  Args:
    x: [batch, height, width, in_channels].
    kernel: [kh, kw, in_channels, out_channels].
    strides: (s_h, s_w).
    padding: 'SAME', 'VALID', an int or ((top, bottom), (left, right)).

  Returns:
    [batch, out_height, out_width, out_channels], in the promoted dtype of
    `x` and `kernel`.
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  pads = explicit_padding(padding, (kh, kw), (sh, sw), x.shape[1:3])
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  b, h_in, w_in, _ = x.shape
  h_out = (h_in - kh) // sh + 1
  w_out = (w_in - kw) // sw + 1
  # Rows of the input seen by kernel row i, for every output row.
  rows = jnp.concatenate(
      [x[:, i:i + sh * (h_out - 1) + 1:sh].reshape(b, h_out, w_in * cin)
       for i in range(kh)], axis=-1)
  # Band matrix: tap index w' - s_w * w, valid inside the kernel's width.
  tap = jnp.arange(w_in)[:, None] - sw * jnp.arange(w_out)[None, :]
  inside = (tap >= 0) & (tap < kw)
  band = jnp.where(inside[None, :, :, None, None],
                   # [kh, W_in, W_out, in, out]
                   kernel[:, jnp.clip(tap, 0, kw - 1)],
                   jnp.zeros((), kernel.dtype))
  band = band.transpose(0, 1, 3, 2, 4).reshape(kh * w_in * cin, w_out * cout)
  y = rows.reshape(b * h_out, kh * w_in * cin) @ band
  return y.reshape(b, h_out, w_out, cout)


def banded_conv_redundancy(in_width: int, kernel_width: int) -> float:
  """Multiply-adds of `banded_conv` / those of a direct convolution.

  The band matrix has `in_width` rows for each output column, of which only
  `kernel_width` are non-zero, whatever the stride.
  """
  return in_width / kernel_width


def _pair(v: Any) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class Conv(nn.Conv):
  """`nn.Conv` computed in the form the implementation switch picks.

  A subclass with no attributes of its own and the same parameters
  (`kernel` [kh, kw, in, features], `bias` [features]), so checkpoints,
  parameter counts and size accounting treat it as `nn.Conv`. Inputs are
  [batch, height, width, channels].

  The switch (`use_conv_impl`, read when the call is traced): 'xla'
  (`nn.Conv`), 'banded' (`banded_conv`), 'onednn' (`onednn.conv2d`: oneDNN
  through XLA's FFI) or 'auto'. On the CPU backend 'auto' picks oneDNN where
  the kernel library is built, supports the compute dtype and there is one
  device (its custom call has no sharding rule); otherwise a banded matmul
  for small convolutions (kernel contraction kh * kw * in <= 160 and
  `banded_conv_redundancy` <= 8, e.g. LeNet-5's), else XLA; XLA on other
  backends and inside `reference_convolutions()` (benchmarks/FINDINGS.md
  §1, §7). Neither banded nor oneDNN supports dilation or groups: those
  convolutions are always XLA's.
  """

  def choose_impl(self, in_width: int, in_channels: int,
                  compute_dtype: Any = jnp.float32) -> str:
    """The implementation used for an input of this width, depth and dtype."""
    impl = conv_impl()
    plain = (self.feature_group_count == 1
             and self.input_dilation in (1, None)
             and self.kernel_dilation in (1, None)
             and len(self.kernel_size) == 2
             and not (isinstance(self.padding, str) and
                      self.padding.upper() in ('CIRCULAR', 'CAUSAL')))
    if impl == 'xla' or not plain or _REFERENCE.get():
      return 'xla'
    if impl == 'banded':
      return 'banded'
    if impl == 'onednn':
      if not onednn.available():
        raise errors.UserError(
            "Convolution implementation 'onednn' needs the kernel library: "
            'run python -m cnn.kernels.build (scripts/setup.sh does), or use '
            "'auto'.")
      if not onednn.supports(compute_dtype):
        raise errors.UserError(
            "Convolution implementation 'onednn' cannot compute in "
            f"{jnp.dtype(compute_dtype)} on this machine; use 'auto'.")
      return 'onednn'
    if not _on_cpu():
      return 'xla'
    if jax.device_count() == 1 and onednn.supports(compute_dtype):
      return 'onednn'
    kh, kw = self.kernel_size
    strides = _pair(self.strides)
    pads = explicit_padding(self.padding, (kh, kw), strides, (1, in_width))
    padded_width = in_width + sum(pads[1])
    if (kh * kw * in_channels <= 160 and
        banded_conv_redundancy(padded_width, kw) <= 8):
      return 'banded'
    return 'xla'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    compute_dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
    impl = self.choose_impl(x.shape[2], x.shape[3], compute_dtype)
    if impl == 'xla':
      return super().__call__(x)
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, x.shape[-1], self.features), self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    strides = _pair(self.strides)
    if impl == 'banded':
      y = banded_conv(x, kernel, strides, self.padding)
    else:
      pads = explicit_padding(self.padding, (kh, kw), strides, x.shape[1:3])
      y = onednn.conv2d(x, kernel, strides, pads)
    return y if bias is None else y + bias
