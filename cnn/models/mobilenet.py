"""MobileNetV2 (Sandler et al., 2018): inverted residuals, linear bottlenecks.

An inverted residual block expands a thin input by t with a 1x1 conv, filters
each channel separately with a depthwise 3x3 conv (`feature_group_count` =
channels: 9 weights per channel instead of 9 * C), and projects back to a thin
output with a 1x1 conv that has no activation (the "linear bottleneck": a ReLU
on few channels would destroy information). The shortcut joins the thin ends
when stride is 1 and widths match.

Layout as torchvision (3,504,872 parameters with 1000 classes): a 3x3/2 conv
with 32 filters, the rows (t, c, n, s) of `MOBILENET_V2_SETTINGS`, a 1x1 conv to
1280, global pooling and dropout 0.2 before the head. Channels are scaled by
`width` and rounded to multiples of 8.

`InvertedResidual` also takes a kernel size, squeeze-excitation and stochastic
depth, so EfficientNet's MBConv block (efficientnet.py) is the same module.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.models import registry

Array = jax.Array
ModuleDef = Any

# torchvision's kaiming_normal_(mode='fan_out').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# (expansion t, output channels c, repeats n, first stride s), paper Table 2.
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds channels to a multiple of `divisor`, losing at most 10%.

  As torchvision's `_make_divisible` (from the TensorFlow reference code).
  """
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


class SqueezeExcite(nn.Module):
  """Channel gates from global context (Hu et al., 2018).

  [batch, H, W, C] -> same shape, each channel scaled by a gate in (0, 1)
  computed by pool -> Dense(squeeze) -> act -> Dense(C) -> sigmoid.
  """

  squeeze: int
  act: Callable[[Array], Array]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = layers.GlobalAvgPool()(x)
    s = self.act(nn.Dense(self.squeeze, dtype=self.dtype, name='fc1')(s))
    s = nn.sigmoid(nn.Dense(x.shape[-1], dtype=self.dtype, name='fc2')(s))
    return x * s[:, None, None, :]


class InvertedResidual(nn.Module):
  """1x1 expand -> depthwise kxk (stride) -> [SE] -> linear 1x1 project.

  [batch, H, W, C] -> [batch, H/strides, W/strides, features]; adds the input
  when strides == 1 and C == features.

  Attributes:
    features: output channels.
    strides: depthwise conv stride.
    expansion: hidden channels = round(C * expansion); 1 skips the expand conv.
    conv, norm, act: layer factories (conv: no bias, norm: BatchNorm).
    kernel: depthwise kernel size.
    se_ratio: squeeze-excitation width as a fraction of C, the block's input
      channels (EfficientNet: 0.25); 0 disables it.
    drop_path: stochastic depth rate: in training, the residual branch of a
      whole example is dropped with this probability (and scaled by
      1 / (1 - rate) otherwise). Only applies to blocks with a shortcut.
    deterministic: evaluation mode for stochastic depth.
  """

  features: int
  strides: int
  expansion: float
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[Array], Array]
  kernel: int = 3
  se_ratio: float = 0.0
  drop_path: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_ch = x.shape[-1]
    hidden = int(round(in_ch * self.expansion))
    y = x
    if self.expansion != 1:
      y = self.conv(hidden, (1, 1), padding='VALID', name='expand_conv')(y)
      y = self.act(self.norm(name='expand_bn')(y))
    p = self.kernel // 2
    y = self.conv(hidden, (self.kernel, self.kernel), strides=self.strides,
                  padding=((p, p), (p, p)), feature_group_count=hidden,
                  name='dw_conv')(y)
    y = self.act(self.norm(name='dw_bn')(y))
    if self.se_ratio:
      y = SqueezeExcite(max(1, int(in_ch * self.se_ratio)), self.act,
                        dtype=y.dtype, name='se')(y)
    y = self.conv(self.features, (1, 1), padding='VALID',
                  name='project_conv')(y)
    y = self.norm(name='project_bn')(y)  # Linear bottleneck: no activation.
    if self.strides == 1 and in_ch == self.features:
      if self.drop_path:
        # One mask value per example: broadcast over height, width, channels.
        y = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3),
                       deterministic=self.deterministic, name='drop_path')(y)
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 backbone: images [batch, H, W, C] -> features [batch, 1280].

  Submodules: `stem_conv`, `stem_bn`, `stage{i}_block{j}` for the rows of
  `block_settings` (stage i = row i), and `stage{N+1}_conv`/`_bn`, the final
  1x1 conv (a row of its own in the paper's Table 2).

  Attributes:
    width: channel multiplier (alpha); the final conv only grows, never
      shrinks (as the paper and torchvision).
    block_settings: rows (t, c, n, s).
    stem_strides: stride of the stem conv (1 for small images).
    last_features: final 1x1 conv width (before the width multiplier).
    round_nearest: channel rounding.
    remat: recompute each block in the backward pass (`nn.remat`).
    activation: name in `cnn.layers.ACTIVATIONS` ('relu6': robust in low
      precision, the paper's choice).
    dtype: compute dtype.
  """

  width: float = 1.0
  block_settings: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTINGS
  stem_strides: int = 2
  last_features: int = 1280
  round_nearest: int = 8
  remat: bool = False
  activation: str = 'relu6'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    dtype = layers.as_dtype(self.dtype)
    act = layers.get_activation(self.activation)
    conv, norm = layers.conv_and_norm(dtype, train, conv_init)
    block_cls = nn.remat(InvertedResidual) if self.remat else InvertedResidual
    div = functools.partial(make_divisible, divisor=self.round_nearest)

    out = {}
    x = x.astype(dtype)
    x = conv(div(32 * self.width), (3, 3), strides=self.stem_strides,
             padding=((1, 1), (1, 1)), name='stem_conv')(x)
    x = out['stem'] = act(norm(name='stem_bn')(x))
    for i, (t, c, n, s) in enumerate(self.block_settings):
      for j in range(n):
        x = block_cls(div(c * self.width), s if j == 0 else 1, t, conv=conv,
                      norm=norm, act=act, name=f'stage{i + 1}_block{j + 1}')(x)
      out[f'stage{i + 1}'] = x
    last = f'stage{len(self.block_settings) + 1}'
    x = conv(div(self.last_features * max(1.0, self.width)), (1, 1),
             padding='VALID', name=f'{last}_conv')(x)
    x = out[last] = act(norm(name=f'{last}_bn')(x))
    return layers.GlobalAvgPool(name=f'{last}_avgpool')(x), out


registry.register(
    'mobilenet_v2', MobileNetV2, input_shape=(224, 224, 3), num_classes=1000,
    # Padded convs never reach zero size; 32 is the total stride.
    min_input_size=32, head_dropout=0.2, reference_params=3_504_872,
    description='MobileNetV2 1.0 (torchvision layout), 3,504,872 params')

# For 32x32 images: stride-1 stem and second row, total stride 8 (4x4 final
# map) instead of 32 (1x1), as the common CIFAR adaptations do.
registry.register(
    'mobilenet_v2_small', MobileNetV2, input_shape=(32, 32, 3),
    num_classes=10, min_input_size=8, head_dropout=0.2,
    description='MobileNetV2 for 32x32: stride-1 stem and row 2, stride 8',
    stem_strides=1,
    block_settings=tuple(
        (t, c, n, 1 if i == 1 else s)
        for i, (t, c, n, s) in enumerate(MOBILENET_V2_SETTINGS)))
