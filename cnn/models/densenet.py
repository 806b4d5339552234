"""Densely connected networks (Huang et al., 2017).

Inside a dense block every layer sees the concatenation of the block input and
all earlier layers' outputs, and adds `growth_rate` new channels. Layers use the
pre-activation order BN -> ReLU -> conv; the "BC" variant has a bottleneck
(BN-ReLU-1x1 conv to bn_size * growth_rate channels before the 3x3 conv) and
transitions that compress the channels by `compression` (BN-ReLU-1x1 conv then
2x2 average pooling). Since every layer is pre-activated, the last block is
followed by a final BN (and ReLU) before global pooling.

DenseNet-121 follows torchvision (growth 32, blocks (6, 12, 24, 16), bn_size 4,
compression 0.5, 64-channel 7x7/2 conv + BN + ReLU + 3x3/2 max-pool stem):
7,978,856 parameters with 1000 classes. CIFAR variants (paper section 3) use a
single 3x3 conv stem with 2 * growth_rate filters and three blocks.

Stages: stage 1 is dense block 1; stage i > 1 is transition i-1 (which halves
the resolution) followed by dense block i, like a ResNet stage that starts by
downsampling. The final BN + ReLU belong to the last stage.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.common import errors
from cnn.models import registry

Array = jax.Array
ModuleDef = Any

# torchvision's kaiming_normal_ (mode='fan_in').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class DenseLayer(nn.Module):
  """[batch, H, W, C] -> [batch, H, W, C + growth_rate] (input concatenated).

  Attributes:
    growth_rate: new channels.
    bn_size: bottleneck width in multiples of growth_rate; None or 0: no 1x1
      bottleneck (plain DenseNet layer BN-ReLU-3x3 conv).
    drop_rate: dropout on the new channels (0 in torchvision and DenseNet-BC).
    conv, norm, act: layer factories (see `ResNet`).
    deterministic: no dropout (evaluation).
  """

  growth_rate: int
  bn_size: int | None
  drop_rate: float
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[Array], Array]
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = x
    if self.bn_size:
      y = self.act(self.norm(name='bn1')(y))
      y = self.conv(self.bn_size * self.growth_rate, (1, 1), padding='VALID',
                    name='conv1')(y)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)),
                  name='conv2')(y)
    if self.drop_rate:
      y = nn.Dropout(self.drop_rate, deterministic=self.deterministic)(y)
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Transition(nn.Module):
  """BN -> act -> 1x1 conv to `features` -> 2x2/2 average pool.

  [batch, H, W, C] -> [batch, floor(H/2), floor(W/2), features].
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[Array], Array]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = self.act(self.norm(name='bn')(x))
    x = self.conv(self.features, (1, 1), padding='VALID', name='conv')(x)
    return layers.Pool('avg', (2, 2), name='pool')(x)


class DenseNet(nn.Module):
  """DenseNet backbone: images [batch, H, W, C] -> features [batch, F].

  F = channels after the last block. Submodules: `stem_conv`, `stem_bn`,
  `stem_pool`, `stage{i}_transition`, `stage{i}_layer{j}`, `stage{N}_bn`.

  Attributes:
    stage_sizes: dense layers per block, e.g. (6, 12, 24, 16).
    growth_rate: channels each layer adds (k).
    bn_size: bottleneck width factor (None or 0: no bottleneck).
    compression: fraction of channels a transition keeps (theta).
    num_init_features: stem conv filters.
    stem: 'imagenet' (7x7/2 conv, BN, act, 3x3/2 max-pool) or 'cifar' (one
      3x3/1 conv, as in the paper's CIFAR nets).
    drop_rate: dropout after each new feature map.
    remat: recompute each dense layer in the backward pass (`nn.remat`); the
      concatenations make DenseNet memory grow quadratically with depth.
    activation: name in `cnn.layers.ACTIVATIONS`.
    dtype: compute dtype.
  """

  stage_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int | None = 4
  compression: float = 0.5
  num_init_features: int = 64
  stem: str = 'imagenet'
  drop_rate: float = 0.0
  remat: bool = False
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    if self.stem not in ('imagenet', 'cifar'):
      raise errors.UserError(
          f"stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
    dtype = layers.as_dtype(self.dtype)
    act = layers.get_activation(self.activation)
    conv, norm = layers.conv_and_norm(dtype, train, conv_init)
    layer_cls = nn.remat(DenseLayer) if self.remat else DenseLayer

    out = {}
    x = x.astype(dtype)
    if self.stem == 'imagenet':
      x = conv(self.num_init_features, (7, 7), strides=2,
               padding=((3, 3), (3, 3)), name='stem_conv')(x)
      x = act(norm(name='stem_bn')(x))
      x = layers.Pool('max', (3, 3), (2, 2), padding=((1, 1), (1, 1)),
                      name='stem_pool')(x)
    else:
      x = conv(self.num_init_features, (3, 3), padding=((1, 1), (1, 1)),
               name='stem_conv')(x)
    out['stem'] = x

    n = len(self.stage_sizes)
    for i, num_layers in enumerate(self.stage_sizes):
      stage = f'stage{i + 1}'
      if i > 0:
        features = int(math.floor(x.shape[-1] * self.compression))
        x = Transition(features, conv=conv, norm=norm, act=act,
                       name=f'{stage}_transition')(x)
      for j in range(num_layers):
        x = layer_cls(self.growth_rate, self.bn_size, self.drop_rate,
                      conv=conv, norm=norm, act=act, deterministic=not train,
                      name=f'{stage}_layer{j + 1}')(x)
      if i == n - 1:
        x = act(norm(name=f'{stage}_bn')(x))
      out[stage] = x
    return layers.GlobalAvgPool(name=f'stage{n}_avgpool')(x), out


registry.register(
    'densenet121', DenseNet, input_shape=(224, 224, 3), num_classes=1000,
    # 29 -> 15 (stem conv) -> 8 (pool) -> 4 -> 2 -> 1 (transitions, floor).
    min_input_size=29, reference_params=7_978_856,
    description='DenseNet-121 (k=32, blocks 6/12/24/16, BC, torchvision), '
    '7,978,856 params')

# CIFAR DenseNet-BC (paper, section 3): depth L = 6 n + 4 with n bottleneck
# layers per block, first conv 2k filters.
registry.register(
    'densenet_small', DenseNet, input_shape=(32, 32, 3), num_classes=10,
    min_input_size=4,
    description='CIFAR DenseNet-BC (L=40, k=12): 3 blocks of 6 layers',
    stage_sizes=(6, 6, 6), growth_rate=12, num_init_features=24, stem='cifar')
registry.register(
    'densenet_bc100', DenseNet, input_shape=(32, 32, 3), num_classes=10,
    min_input_size=4,
    description='CIFAR DenseNet-BC (L=100, k=12) of the paper, ~0.8M params',
    stage_sizes=(16, 16, 16), growth_rate=12, num_init_features=24,
    stem='cifar')
