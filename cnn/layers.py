"""Building blocks shared by every model family: the research vocabulary.

Activations, pooling, flattening, and the factories that hand every family
its convolution and batch-norm constructors (flax's examples/imagenet
pattern: `conv = partial(nn.Conv, ...)`, `norm = partial(nn.BatchNorm,
...)`, decided once at the top of a model and passed down to its blocks).
The constructors build the layers of `cnn.kernels.forms`, which have
`nn.Conv`'s and `nn.BatchNorm`'s parameters and compute them in the fastest
form for the backend; how is that module's business, chosen process-wide
with `forms.use_conv_impl` (or CNN_CONV_IMPL), never per model.

Pooling is a module (not a bare function) so that size accounting and
inspection can see it through `flax.linen.intercept_methods`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn.common import errors
from cnn.kernels import forms

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
    # Self-normalising (Klambauer et al. 2017): lambda * x for x > 0, lambda *
    # alpha * (e^x - 1) below, lambda ~ 1.0507, alpha ~ 1.6733; only with
    # LeCun-normal kernels (`kernel_init_for`) and no batch norm.
    'selu': nn.selu,
    # No non-linearity: a stack of layers collapses to one linear map
    # (`cnn.fundamentals.compose_conv_kernels`).
    'identity': lambda x: x,
}

# Kernel initialisers an activation needs, overriding its family's own:
# SELU self-normalises only from LeCun-normal weights (variance 1 / fan_in).
ACTIVATION_KERNEL_INITS: dict[str, Callable] = {
    'selu': nn.initializers.lecun_normal(),
}


def kernel_init_for(activation: str, family_init: Callable) -> Callable:
  """The kernel initialiser of a family's weighted layers before
  `activation`: `ACTIVATION_KERNEL_INITS[activation]` where the activation
  asks for one (selu: LeCun normal), else `family_init` itself (the same
  object, so every other activation initialises exactly as before).

  The activation's name selects it rather than a separate backbone option, so
  configs and the identity of existing checkpoints are unchanged.
  """
  return ACTIVATION_KERNEL_INITS.get(activation, family_init)


def get_activation(name: str, *, stored: bool = False
                   ) -> Callable[[Array], Array]:
  """Returns the activation function called `name` (see `ACTIVATIONS`).

  Args:
    name: a key of `ACTIVATIONS`.
    stored: the activation's output is written to memory once rather than
      recomputed by each of its consumers (`forms.materialize`; the same
      values). Residual networks want this after every batch norm +
      activation: otherwise XLA on CPU recomputes a stage's whole chain of
      norms, activations and additions inside each convolution's gradient
      (benchmarks/FINDINGS.md §3).
  """
  try:
    act = ACTIVATIONS[name]
  except KeyError:
    raise errors.UserError(
        f'Unknown activation {name!r}; valid names: {sorted(ACTIVATIONS)}.'
    ) from None
  if stored:
    return lambda x: store(act(x))
  return act


def store(x: Array) -> Array:
  """`x` itself, written to memory once rather than recomputed by each of
  its consumers (see `get_activation`); for a residual block's input."""
  return forms.materialize(x)


def as_dtype(dtype: Any) -> Any:
  """Accepts 'float32'/'bfloat16' strings (from configs) or dtypes."""
  return jnp.dtype(dtype) if isinstance(dtype, str) else dtype


def _pool_padding(padding: str | Sequence[tuple[int, int]]):
  return padding.upper() if isinstance(padding, str) else tuple(padding)


def conv(dtype: Any, *, use_bias: bool = True,
         kernel_init: Callable = nn.linear.default_kernel_init
         ) -> Callable[..., nn.Conv]:
  """The convolution constructor of a family: `nn.Conv`'s arguments.

  `conv(dtype)(features, kernel_size, strides, padding, name=...)` builds an
  `nn.Conv` (a `forms.Conv`: the same parameters, computed in the form the
  process-wide switch picks) with this compute dtype, bias and initialiser.
  For the families with biased convolutions (AlexNet, VGG, ViT's patch
  embedding, LeNet-5 without batch norm); the batch-norm families take
  `conv_and_norm`.
  """
  return functools.partial(forms.Conv, use_bias=use_bias, dtype=dtype,
                           kernel_init=kernel_init)


def batch_norm(dtype: Any, train: bool, *, epsilon: float = 1e-5
               ) -> Callable[..., nn.BatchNorm]:
  """The batch-norm constructor of a family: `nn.BatchNorm`'s arguments.

  PyTorch's defaults (momentum 0.1 there = 0.9 here, epsilon 1e-5), as the
  reference implementations the parameter counts are checked against;
  `train` selects batch statistics over running ones. Builds a
  `forms.BatchNorm` (`nn.BatchNorm`'s variables, applied faster).
  """
  return functools.partial(forms.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=epsilon, dtype=dtype)


def conv_and_norm(
    dtype: Any, train: bool, kernel_init: Callable, *, epsilon: float = 1e-5
) -> tuple[Callable[..., nn.Conv], Callable[..., nn.BatchNorm]]:
  """The bias-free conv and the batch-norm constructors of the BN families.

  A conv followed by batch norm needs no bias (the norm's shift replaces
  it). See `conv` and `batch_norm`.
  """
  return (conv(dtype, use_bias=False, kernel_init=kernel_init),
          batch_norm(dtype, train, epsilon=epsilon))


class Pool(nn.Module):
  """2-D pooling over [batch, height, width, channels] inputs.

  'blur' is Zhang (2019)'s anti-aliased max pool ("Making Convolutional
  Networks Shift-Invariant Again", MaxBlurPool; adobe/antialiased-cnns'
  `MaxPool2d(kernel_size=2, stride=1)` + `BlurPool`): the max over each
  `window` at stride 1 ('VALID' unless `padding` says otherwise), then a
  fixed, normalised binomial blur of `blur_size` taps per axis ([1, 2, 1] /
  4 for 3, its outer product in 2-D, the same for every channel) evaluated
  only every `strides` pixels, on the max map reflect-padded by
  floor((blur_size - 1) / 2) before and ceil((blur_size - 1) / 2) after
  each axis (antialiased-cnns' default padding). A 2x2/2 blur pool keeps
  the output size of the 2x2/2 max pool (H -> H // 2); its receptive
  field grows by (window - 1) + (blur_size - 1) of its input's unit
  spacing instead of window - 1. The blur has no parameters.

  Size accounting (`cnn.summary`) counts both parts: the receptive field
  grows by the max's window at stride 1, then by blur_size taps at
  `strides`; connections are the stride-1 max's window reads ('VALID')
  plus blur_size^2 reads per output.

  Attributes:
    kind: 'max', 'avg' or 'blur'.
    window: (height, width) of the pooling window, in pixels.
    strides: step between windows; defaults to `window` (non-overlapping).
    padding: 'VALID', 'SAME' or explicit ((top, bottom), (left, right));
      for 'blur', the padding of its stride-1 max.
    blur_size: taps of the binomial blur per axis ('blur' only; 1-7).
  """

  kind: str = 'max'
  window: tuple[int, int] = (2, 2)
  strides: tuple[int, int] | None = None
  padding: Any = 'VALID'
  blur_size: int = 3

  KINDS = ('max', 'avg', 'blur')

  @nn.compact
  def __call__(self, x: Array) -> Array:
    window = tuple(self.window)
    strides = tuple(self.strides) if self.strides is not None else window
    padding = _pool_padding(self.padding)
    if self.kind not in self.KINDS:
      raise errors.UserError(
          f'Pool kind must be one of {list(self.KINDS)}, got {self.kind!r}.')
    if self.kind == 'blur':
      return _max_blur_pool(x, window, strides, padding, self.blur_size)
    _, h, w, c = x.shape
    wh, ww = window
    if (strides == window and padding in ('VALID', ((0, 0), (0, 0)))
        and h % wh == 0 and w % ww == 0):
      # Non-overlapping windows as reshape + reduce: XLA on CPU differentiates
      # it faster than reduce_window's select-and-scatter
      # (benchmarks/FINDINGS.md, "Alternative formulations tried").
      x = x.reshape(x.shape[0], h // wh, wh, w // ww, ww, c)
      return x.max(axis=(2, 4)) if self.kind == 'max' else x.mean(axis=(2, 4))
    if self.kind == 'max':
      return nn.max_pool(x, window, strides, padding)
    return nn.avg_pool(x, window, strides, padding, count_include_pad=False)


def binomial_filter(taps: int) -> np.ndarray:
  """The normalised 1-D binomial filter of `taps` taps: row taps - 1 of
  Pascal's triangle over its sum (3: [1, 2, 1] / 4; 1: [1], no blur)."""
  if not 1 <= taps <= 7:
    raise errors.UserError(
        f'blur_size must be 1..7 taps (antialiased-cnns\' filters), got '
        f'{taps}.')
  row = np.array([math.comb(taps - 1, i) for i in range(taps)], np.float64)
  return row / row.sum()


def _max_blur_pool(x: Array, window: tuple[int, int],
                   strides: tuple[int, int], padding, taps: int) -> Array:
  """Max at stride 1, reflect padding, then the separable binomial blur
  sampled every `strides` pixels (see `Pool`); [N, H, W, C] -> [N, H', W',
  C]."""
  wh, ww = window
  if padding in ('VALID', ((0, 0), (0, 0))):
    # The stride-1 max as the maximum of window-shifted slices: XLA on CPU
    # differentiates it several times faster than reduce_window's
    # select-and-scatter (6 against 40 ms for 128 of LeNet-5's C1 maps).
    h, w = x.shape[1] - wh + 1, x.shape[2] - ww + 1
    x = functools.reduce(jnp.maximum, [x[:, i:i + h, j:j + w]
                                       for i in range(wh) for j in range(ww)])
  else:
    x = nn.max_pool(x, window, (1, 1), padding)
  blur = binomial_filter(taps)
  before, after = (taps - 1) // 2, taps // 2
  for axis, stride in ((1, strides[0]), (2, strides[1])):
    pads = [(0, 0)] * 4
    pads[axis] = (before, after)
    x = jnp.pad(x, pads, mode='reflect')
    # Taps at the kept positions only: out[o] = sum_t blur[t] x[o s + t].
    out = (x.shape[axis] - taps) // stride + 1
    span = stride * (out - 1) + 1
    x = sum(float(weight) * jax.lax.slice_in_dim(x, t, t + span, stride,
                                                 axis=axis)
            for t, weight in enumerate(blur))
  return x


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


class LocallyConnected(nn.Module):
  """A convolution without weight sharing: one filter per output position.

  What lies between a fully connected layer and a convolution (lectures
  000/001; DeepFace's locally connected layers, Keras' LocallyConnected2D):
  each output position (i, j) has its own K_h x K_w x C -> C' filter over
  the same local window a convolution would see.

  Input [batch, H, W, C] -> output [batch, H', W', C'] with H' = (H - K_h)
  // s + 1 ('VALID') or ceil(H / s) ('SAME', zero padding). Parameters:
  `kernel` [H', W', K_h * K_w * C, C'] and `bias` [H', W', C'], i.e.
  H' * W' * (K_h * K_w * C * C' + C') weights; connections (multiply-adds)
  H' * W' * C' * K_h * K_w * C, as the convolution of the same shape.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str = 'VALID'
  use_bias: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    (kh, kw), (sh, sw) = self.kernel_size, self.strides
    if self.padding == 'SAME':
      pad_h = max((-(-x.shape[1] // sh) - 1) * sh + kh - x.shape[1], 0)
      pad_w = max((-(-x.shape[2] // sw) - 1) * sw + kw - x.shape[2], 0)
      x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                      (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    elif self.padding != 'VALID':
      raise errors.UserError(f"LocallyConnected padding must be 'VALID' or "
                             f"'SAME', got {self.padding!r}.")
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    # The windows by slicing ([batch, H', W', K_h * K_w * C], offsets major):
    # no convolution primitive, so the accounting counts only the product.
    patches = jnp.concatenate(
        [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw]
         for i in range(kh) for j in range(kw)], axis=-1)
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(in_axis=-2, out_axis=-1,
                                               batch_axis=(0, 1)),
        (out_h, out_w, patches.shape[-1], self.features))
    dtype = self.dtype or x.dtype
    y = jnp.einsum('nhwk,hwkf->nhwf', patches.astype(dtype),
                   kernel.astype(dtype))
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros,
                        (out_h, out_w, self.features))
      y = y + bias.astype(dtype)
    return y
