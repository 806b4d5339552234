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
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
      # it faster than reduce_window's select-and-scatter
      # (benchmarks/FINDINGS.md, "Alternative formulations tried").
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
