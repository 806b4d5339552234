"""Building blocks shared by every model family.

Pooling is a module (not a bare function) so that size accounting and
inspection can see it through `flax.linen.intercept_methods`, and so that the
fast implementation for non-overlapping windows lives in one place.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import errors
from cnn.kernels import onednn

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'leaky_relu': lambda x: nn.leaky_relu(x, negative_slope=0.01),
    'elu': nn.elu,
    'gelu': nn.gelu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'relu6': nn.relu6,
    'silu': nn.silu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  """Returns the activation function called `name` (see `ACTIVATIONS`)."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise errors.UserError(
        f'Unknown activation {name!r}; valid names: {sorted(ACTIVATIONS)}.'
    ) from None


def as_dtype(dtype: Any) -> Any:
  """Accepts 'float32'/'bfloat16' strings (from configs) or dtypes."""
  return jnp.dtype(dtype) if isinstance(dtype, str) else dtype


def _pool_padding(padding: str | Sequence[tuple[int, int]]):
  return padding.upper() if isinstance(padding, str) else tuple(padding)


def conv_and_norm(
    dtype: Any, train: bool, kernel_init: Callable, impl: str = 'auto'
) -> tuple[Callable[..., nn.Conv], Callable[..., BatchNorm]]:
  """The bias-free conv and batch-norm constructors of the BN families.

  Batch norm follows PyTorch's defaults (momentum 0.1 there = 0.9 here,
  epsilon 1e-5), as the reference implementations the parameter counts are
  checked against; `train` selects batch statistics over running ones. The
  convolutions are `Conv` (`nn.Conv`'s parameters) with implementation `impl`.
  """
  conv = functools.partial(Conv, use_bias=False, dtype=dtype,
                           kernel_init=kernel_init, impl=impl)
  norm = functools.partial(BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=dtype)
  return conv, norm


class Pool(nn.Module):
  """2-D pooling over [batch, height, width, channels] inputs.

  Attributes:
    kind: 'max' or 'avg'.
    window: (height, width) of the pooling window, in pixels.
    strides: step between windows; defaults to `window` (non-overlapping).
    padding: 'VALID', 'SAME' or explicit ((top, bottom), (left, right)).
  """

  kind: str = 'max'
  window: tuple[int, int] = (2, 2)
  strides: tuple[int, int] | None = None
  padding: Any = 'VALID'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    window = tuple(self.window)
    strides = tuple(self.strides) if self.strides is not None else window
    padding = _pool_padding(self.padding)
    if self.kind not in ('max', 'avg'):
      raise ValueError(f"Pool kind must be 'max' or 'avg', got {self.kind!r}.")
    _, h, w, c = x.shape
    wh, ww = window
    if (strides == window and padding in ('VALID', ((0, 0), (0, 0)))
        and h % wh == 0 and w % ww == 0):
      # Non-overlapping windows as reshape + reduce: XLA on CPU differentiates
      # this about 2x faster than reduce_window's select-and-scatter.
      x = x.reshape(x.shape[0], h // wh, wh, w // ww, ww, c)
      return x.max(axis=(2, 4)) if self.kind == 'max' else x.mean(axis=(2, 4))
    if self.kind == 'max':
      return nn.max_pool(x, window, strides, padding)
    return nn.avg_pool(x, window, strides, padding, count_include_pad=False)


class GlobalAvgPool(nn.Module):
  """Mean over height and width: [batch, H, W, C] -> [batch, C]."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return x.mean(axis=(1, 2))


class Flatten(nn.Module):
  """[batch, ...] -> [batch, prod(...)]."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return x.reshape(x.shape[0], -1)


# --- Speed on CPU -------------------------------------------------------------
# The functions below are drop-in alternatives for the XLA CPU backend, where
# measurements (benchmarks/FINDINGS.md) show a naive step losing time. Each one
# is a no-op or an exact re-formulation elsewhere, so models may use them
# unconditionally.


_REFERENCE_CONVOLUTIONS = contextvars.ContextVar('reference_convolutions',
                                                 default=False)


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def materialize(x: Array) -> Array:
  """Identity that makes XLA on CPU store `x` instead of recomputing it.

  XLA fuses cheap elementwise producers (batch norm, ReLU, residual adds) into
  every consumer. When a consumer is the transposed copy that a convolution's
  weight gradient needs, the whole chain (for a ResNet: every block of the
  stage so far) is recomputed in transposed, cache-hostile order: about a
  third of a CIFAR ResNet-20 step on CPU (benchmarks/FINDINGS.md). XLA CPU
  strips `lax.optimization_barrier`, but cannot fuse across a conditional, so
  `x` is passed through one whose predicate is only known at run time. Both
  branches return `x` exactly (`jnp.copy`; identical branches would be
  simplified away). On other backends it returns `x` (a conditional costs a
  host sync on GPU).

  Args:
    x: any array (at least one element).

  Returns:
    `x`, with the same value, shape and dtype.
  """
  if not _on_cpu() or x.size == 0 or _REFERENCE_CONVOLUTIONS.get():
    return x
  keep = jnp.isfinite(x.reshape(-1)[0])
  return jax.lax.cond(keep, lambda v: v, jnp.copy, x)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` (same attributes, variables, statistics and running
  averages) applied as one multiply-add per element.

  Flax normalises as `(x - mean) * a + bias` with `a = scale / sqrt(var +
  epsilon)`; autodiff then keeps `x - mean` as the residual for the scale's
  gradient, so XLA writes and later reads one more activation-sized tensor per
  layer (on top of `x`, which the convolution's weight gradient keeps anyway).
  Here `y = x * a + (bias - mean * a)`: the gradients only need `x`. Same
  function up to rounding; CIFAR ResNet-20 / ResNet-56 train steps on the
  2-core CPU are 8-11 % faster (benchmarks/FINDINGS.md). Inside
  `reference_convolutions()` it is flax's layer, for ablations.

  Input: [..., features] (statistics over every axis but `axis`). `mask` is
  not supported.
  """

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None, *,
               mask: Array | None = None) -> Array:
    if _REFERENCE_CONVOLUTIONS.get():
      return super().__call__(x, use_running_average, mask=mask)
    if mask is not None:
      raise NotImplementedError('cnn.layers.BatchNorm has no `mask`; use '
                                'flax.linen.BatchNorm.')
    use_running_average = nn.merge_param(
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


def _explicit_padding(padding: Any, kernel_size: tuple[int, int],
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

  The matmul does about `W_in / kw` times the convolution's multiply-adds, but
  for small channel counts (LeNet's 1 -> 6 and 6 -> 16) its forward pass and
  gradients run 1.5-3.5x faster than XLA's CPU convolution kernels (c3's
  forward pass: equal; benchmarks/conv_ops.py), its gradients are plain
  matmuls (no layout transposes), and it stays fast inside `lax.scan` loop
  bodies, where XLA CPU leaves weight-gradient convolutions in a slow generic
  form.

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
  pads = _explicit_padding(padding, (kh, kw), (sh, sw), x.shape[1:3])
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


@contextlib.contextmanager
def reference_convolutions():
  """Within this context `Conv(impl='auto')` traces `lax.conv`,
  `materialize` is the identity and `BatchNorm` is flax's, so that size
  accounting and inspection see the plain network, not its re-formulations
  for speed (a banded matmul does more multiply-adds for the same result; a
  conditional hides the data flow), and ablations can measure them."""
  token = _REFERENCE_CONVOLUTIONS.set(True)
  try:
    yield
  finally:
    _REFERENCE_CONVOLUTIONS.reset(token)


IMPLS = ('auto', 'xla', 'banded', 'onednn')  # `Conv.impl` values


class Conv(nn.Conv):
  """`nn.Conv` that may compute itself faster on CPU.

  A subclass, with the same parameters (`kernel` [kh, kw, in, features],
  `bias` [features]), so checkpoints, parameter counts and size accounting
  treat it as `nn.Conv`. Inputs are [batch, height, width, channels].

  Attributes:
    impl: 'xla' (`nn.Conv`), 'banded' (`banded_conv`), 'onednn'
      (`cnn.kernels.onednn.conv2d`: oneDNN through XLA's FFI) or 'auto'. On
      the CPU backend 'auto' picks oneDNN where the kernel library is built,
      supports the compute dtype (float32; bfloat16 on CPUs with bf16
      kernels) and there is one device (LeNet-5 +40 %, CIFAR ResNets 2.5x
      over XLA's kernels); otherwise banded for small convolutions (kernel
      contraction kh * kw * in <= 160 and `banded_conv_redundancy` <= 8, e.g.
      both LeNet-5 convolutions), else xla; xla on other backends
      (benchmarks/FINDINGS.md). Neither banded nor oneDNN supports dilation or
      groups.
  """

  impl: str = 'auto'

  def choose_impl(self, in_width: int, in_channels: int,
                  compute_dtype: Any = jnp.float32) -> str:
    """The implementation used for an input of this width, depth and dtype."""
    if self.impl not in IMPLS:
      raise errors.UserError(f'Conv impl must be one of {IMPLS}, got '
                             f'{self.impl!r}.')
    plain = (self.feature_group_count == 1
             and self.input_dilation in (1, None)
             and self.kernel_dilation in (1, None)
             and len(self.kernel_size) == 2
             and not (isinstance(self.padding, str) and
                      self.padding.upper() in ('CIRCULAR', 'CAUSAL')))
    if self.impl == 'xla' or not plain:
      return 'xla'
    if self.impl == 'banded':
      return 'banded'
    if self.impl == 'onednn':
      if not onednn.available():
        raise errors.UserError(
            "Conv impl 'onednn' needs the kernel library: run python -m "
            "cnn.kernels.build (scripts/setup.sh does), or use impl 'auto'.")
      if not onednn.supports(compute_dtype):
        raise errors.UserError(
            f"Conv impl 'onednn' cannot compute in {jnp.dtype(compute_dtype)} "
            "on this machine; use impl 'auto'.")
      return 'onednn'
    if not _on_cpu() or _REFERENCE_CONVOLUTIONS.get():
      return 'xla'
    if jax.device_count() == 1 and onednn.supports(compute_dtype):
      return 'onednn'
    kh, kw = self.kernel_size
    strides = _pair(self.strides)
    pads = _explicit_padding(self.padding, (kh, kw), strides, (1, in_width))
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
      pads = _explicit_padding(self.padding, (kh, kw), strides, x.shape[1:3])
      y = onednn.conv2d(x, kernel, strides, pads)
    return y if bias is None else y + bias



def _pair(v: Any) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)
