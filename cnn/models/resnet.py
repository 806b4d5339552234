"""Residual networks (He et al., 2016) and their plain twins.

One `ResNet` module covers every variant through configuration, in the style of
google/flax examples/imagenet/models.py: `stage_sizes` (blocks per stage),
`block` ('basic': two 3x3 convs; 'bottleneck': 1x1 reduce, 3x3, 1x1 expand by
4), the `stem`, the `shortcut` option and `residual` (False gives the "plain"
network of the paper: the same stacked layers without any shortcut).

ImageNet nets follow torchvision exactly, so parameter counts match it: convs
without bias, batch norm after every conv, a 7x7/2 conv + 3x3/2 max-pool stem,
projection shortcuts (option B: 1x1 conv + BN only where the shape changes) and,
in bottleneck blocks, the stride on the 3x3 conv ("ResNet v1.5"). He et al.'s
own layout ("v1", `stride_on='1x1'`: the stride on the first 1x1 conv of a
bottleneck block) is registered as `resnet50_v1`, `resnet101_v1` and
`resnet152_v1`: the same parameters, and the paper's multiply-adds (3.8, 7.6
and 11.3 G in its table 1), since that 1x1 conv then sees a quarter of the
pixels.

CIFAR nets (paper section 4.2) have 6n+2 weighted layers: a 3x3 conv with 16
filters, three stages of n basic blocks with 16/32/64 filters (feature maps
32/16/8), global average pooling and the head. They use option A shortcuts by
default: identity, subsampled with stride 2 and with the missing channels
zero-padded (appended after the existing ones) where the shape changes, so
they add no parameters. Hand count, 10 classes, option A:
  stem 3*3*3*16 + 2*16 = 464;  stage1 2n convs of 3*3*16*16 + 2*16 = 2,336;
  stage2 3*3*16*32 + 64 = 4,672, then 2n-1 of 3*3*32*32 + 64 = 9,280;
  stage3 3*3*32*64 + 128 = 18,560, then 2n-1 of 3*3*64*64 + 128 = 36,992;
  head 64*10 + 10 = 650;  total 97,216 n - 21,926
  -> resnet20 269,722; resnet32 464,154; resnet44 658,586; resnet56 853,018;
     resnet110 1,727,962 (the paper's 0.27M/0.46M/0.66M/0.85M/1.7M).
Option B adds the two projections 16*32 + 64 + 32*64 + 128 = 2,752 parameters
(resnet20: 272,474).

Plain twins (`plainNN`, residual=False) contain the same convolutions and batch
norms as the residual net and nothing else: no shortcut at all, so no
projection either. A plain CIFAR net therefore has exactly the parameters of its
option-A residual net, while an ImageNet plain net (whose residual twin uses
option B) has the residual net's parameters minus its projection convs and their
batch norms (plain18: 11,689,512 - 173,824 = 11,515,688). The first block of a
stage still downsamples with its stride-2 conv and widens with its first conv.

Batch norm: conv -> BN -> activation; in a block the last BN comes before the
addition and the activation after it (the original, "post-activation" order).

`width` multiplies every width, the stem's included, so a narrower net keeps
the shape of the standard one (and option A never has to drop channels).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.common import errors
from cnn.models import registry

Array = jax.Array
ModuleDef = Any

# He et al. initialisation, as torchvision's
# kaiming_normal_(mode='fan_out', nonlinearity='relu'): deep plain nets do not
# train at all from flax's default LeCun init. activation='selu' takes LeCun
# normal instead (`layers.kernel_init_for`).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _same(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # Symmetric padding k//2 as in PyTorch (XLA's 'SAME' pads stride-2 convs
  # asymmetrically, which would shift features by a pixel vs torchvision).
  return ((kernel // 2, kernel // 2),) * 2


class _ResidualBlock(nn.Module):
  """Shared shortcut logic of the basic and bottleneck blocks.

  Attributes:
    filters: width of the block's 3x3 conv (output width for basic blocks,
      output / 4 for bottleneck blocks).
    strides: stride of the block (2 for the first block of stages 2+).
    conv: `nn.Conv` constructor (no bias, dtype, init set).
    norm: `nn.BatchNorm` constructor (train/eval mode set).
    act: activation function.
    residual: add the shortcut; False gives the plain block.
    shortcut: 'A' (parameter-free identity / subsample + zero-pad), 'B'
      (1x1 conv + BN where the shape changes, identity elsewhere) or 'C'
      (1x1 conv + BN on every shortcut).
    zero_init_residual: initialise the last BN scale to 0 so that each block
      starts as the identity (Goyal et al., 2017).
    stride_on: in a bottleneck block, the conv that carries the stride: '3x3'
      (v1.5, torchvision) or '1x1' (the first 1x1 conv: v1, He et al.).
      Basic blocks stride their first 3x3 conv in both layouts.
  """

  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[Array], Array]
  residual: bool = True
  shortcut: str = 'B'
  zero_init_residual: bool = False
  stride_on: str = '3x3'
  output_act: Callable[[Array], Array] | None = None  # default: `act`.

  def finish(self, x: Array, y: Array) -> Array:
    """The block's output: activation of y + shortcut(x)."""
    return (self.output_act or self.act)(self.add_shortcut(x, y))

  def last_norm(self, name: str) -> nn.Module:
    if self.zero_init_residual:
      return self.norm(scale_init=nn.initializers.zeros, name=name)
    return self.norm(name=name)

  def add_shortcut(self, x: Array, y: Array) -> Array:
    """Returns y + shortcut(x) (or y alone in a plain net)."""
    if not self.residual:
      return y
    out_ch = y.shape[-1]
    changes = self.strides != 1 or x.shape[-1] != out_ch
    if self.shortcut == 'C' or (self.shortcut == 'B' and changes):
      x = self.conv(out_ch, (1, 1), strides=self.strides, padding='VALID',
                    name='proj_conv')(x)
      x = self.norm(name='proj_bn')(x)
    elif changes:  # Option A.
      if x.shape[-1] > out_ch:
        raise errors.UserError(
            f'Shortcut option A cannot reduce channels ({x.shape[-1]} -> '
            f"{out_ch}); use shortcut='B'.")
      s = self.strides
      # Pixel (i, j) of a stride-s 3x3 conv with padding 1 is centred on input
      # pixel (s*i, s*j), so plain subsampling keeps the shortcut aligned.
      x = x[:, ::s, ::s, :]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out_ch - x.shape[-1])))
    return y + x.astype(y.dtype)


class BasicBlock(_ResidualBlock):
  """3x3 conv (stride) -> BN -> act -> 3x3 conv -> BN -> (+x) -> act.

  [batch, H, W, C] -> [batch, H/strides, W/strides, filters].
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = self.conv(self.filters, (3, 3), strides=self.strides,
                  padding=_same(3), name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), padding=_same(3), name='conv2')(y)
    y = self.last_norm('bn2')(y)
    return self.finish(x, y)


class BottleneckBlock(_ResidualBlock):
  """1x1 reduce -> 3x3 (stride) -> 1x1 expand x4, each with BN; (+x) -> act.

  [batch, H, W, C] -> [batch, H/strides, W/strides, 4 * filters].
  """

  expansion = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # v1.5 strides the 3x3 conv; v1 the 1x1, which then skips 3/4 of its
    # input: the same parameters, fewer multiply-adds, less information.
    s1, s3 = ((self.strides, 1) if self.stride_on == '1x1'
              else (1, self.strides))
    y = self.conv(self.filters, (1, 1), strides=s1, padding='VALID',
                  name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), strides=s3, padding=_same(3),
                  name='conv2')(y)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.filters * self.expansion, (1, 1), padding='VALID',
                  name='conv3')(y)
    y = self.last_norm('bn3')(y)
    return self.finish(x, y)


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


class ResNet(nn.Module):
  """ResNet backbone: images [batch, H, W, C] -> pooled features [batch, F].

  F = round(num_filters * 2**(len(stage_sizes) - 1) * width) (x4 for
  bottleneck).
  Submodules: `stem_conv`, `stem_bn`, `stem_pool` and `stage{i}_block{j}`
  (each with `proj_conv`/`proj_bn` where it has a projection shortcut).

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18. Stage i
      (from 0) has round(num_filters * 2**i * width) filters, the stem those
      of stage 0; stages after the first start with a stride-2 block.
    block: 'basic' or 'bottleneck'.
    num_filters: width of the stem and of the first stage (64 ImageNet, 16
      CIFAR).
    residual: False removes every shortcut (the paper's plain network).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool: 4x downsampling) or
      'cifar' (3x3/1 conv, no pooling).
    shortcut: 'A', 'B' or 'C' (He et al. 2016, section 3.3); see
      `_ResidualBlock`.
    width: multiplier of every width, the stem's and each stage's (as in
      wide ResNets); 1.0 is the standard net.
    zero_init_residual: zero the last BN scale of every block.
    stride_on: '3x3' (v1.5) or '1x1' (v1); see `_ResidualBlock`.
    remat: recompute each block's activations in the backward pass instead of
      storing them (`nn.remat`): less memory for deep nets, about one more
      forward pass of compute.
    activation: name in `cnn.layers.ACTIVATIONS`. It also picks the conv
      kernels' initialiser (`layers.kernel_init_for`): He (`conv_init`), or
      LeCun normal for 'selu' (batch norm stays: these nets always have it,
      so SELU is not self-normalising here, only initialised as it asks).
    dtype: compute dtype.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  num_filters: int = 64
  residual: bool = True
  stem: str = 'imagenet'
  shortcut: str = 'B'
  width: float = 1.0
  zero_init_residual: bool = False
  stride_on: str = '3x3'
  remat: bool = False
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    if self.block not in BLOCKS:
      raise errors.UserError(
          f'Unknown block {self.block!r}; valid: {list(BLOCKS)}.')
    if self.stem not in ('imagenet', 'cifar'):
      raise errors.UserError(
          f"stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
    if self.shortcut not in ('A', 'B', 'C'):
      raise errors.UserError(f"shortcut must be 'A', 'B' or 'C', got "
                             f'{self.shortcut!r}.')
    if self.stride_on not in ('3x3', '1x1'):
      raise errors.UserError(
          f"stride_on must be '3x3' (v1.5) or '1x1' (v1), got "
          f'{self.stride_on!r}.')
    if self.zero_init_residual and not self.residual:
      # Without a shortcut a zero scale would cut the signal at every block.
      raise errors.UserError('zero_init_residual=True needs residual=True.')
    dtype = layers.as_dtype(self.dtype)
    # Stored: each block's input (`layers.store` below) and its inner
    # activations are kept, not recomputed through the residual chain (see
    # layers.get_activation); the stem's and the blocks' outputs are not.
    act = layers.get_activation(self.activation)
    inner_act = layers.get_activation(self.activation, stored=True)
    conv, norm = layers.conv_and_norm(
        dtype, train, layers.kernel_init_for(self.activation, conv_init))
    block_cls = BLOCKS[self.block]
    if self.remat:
      block_cls = nn.remat(block_cls)

    # The stem is as wide as the first stage, as at width 1.0: a block never
    # narrows its input, which option A's shortcut could not follow.
    width = lambda i: max(1, int(round(self.num_filters * 2**i * self.width)))
    base = width(0)
    out = {}
    x = x.astype(dtype)
    if self.stem == 'imagenet':
      x = conv(base, (7, 7), strides=2, padding=_same(7), name='stem_conv')(x)
      x = act(norm(name='stem_bn')(x))
      x = layers.Pool('max', (3, 3), (2, 2), padding=_same(3),
                      name='stem_pool')(x)
    else:
      x = conv(base, (3, 3), padding=_same(3), name='stem_conv')(x)
      x = act(norm(name='stem_bn')(x))
    out['stem'] = x

    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block_cls(
            filters=width(i), strides=2 if i > 0 and j == 0 else 1,
            conv=conv, norm=norm, act=inner_act, output_act=act,
            residual=self.residual, shortcut=self.shortcut,
            zero_init_residual=self.zero_init_residual,
            stride_on=self.stride_on,
            name=f'stage{i + 1}_block{j + 1}')(layers.store(x))
      out[f'stage{i + 1}'] = x
    last = f'stage{len(self.stage_sizes)}'
    return layers.GlobalAvgPool(name=f'{last}_avgpool')(x), out


# ImageNet: depth -> (block, stage_sizes, torchvision parameter count).
_IMAGENET = {
    18: ('basic', (2, 2, 2, 2), 11_689_512),
    34: ('basic', (3, 4, 6, 3), 21_797_672),
    50: ('bottleneck', (3, 4, 6, 3), 25_557_032),
    101: ('bottleneck', (3, 4, 23, 3), 44_549_160),
    152: ('bottleneck', (3, 8, 36, 3), 60_192_808),
}

for _depth, (_block, _sizes, _params) in _IMAGENET.items():
  for _residual in (True, False):
    # Every conv is padded, so no input reaches a zero-size map; below the
    # total stride of 32 the last stage would see less than one input pixel.
    registry.register(
        f'resnet{_depth}' if _residual else f'plain{_depth}', ResNet,
        input_shape=(224, 224, 3), num_classes=1000, min_input_size=32,
        reference_params=_params if _residual else None,
        description=(
            f'ResNet-{_depth} ({_block} blocks {_sizes}, torchvision v1.5, '
            f'{_params:,} params)' if _residual else
            f'plain twin of resnet{_depth}: same layers, no shortcuts or '
            'projections'),
        stage_sizes=_sizes, block=_block, residual=_residual)
  if _block == 'bottleneck':
    # The lectures' (He et al.'s) layout: same parameters, fewer
    # multiply-adds (the strided 1x1 convs see a quarter of the pixels).
    registry.register(
        f'resnet{_depth}_v1', ResNet, input_shape=(224, 224, 3),
        num_classes=1000, min_input_size=32, reference_params=_params,
        description=(f'ResNet-{_depth} v1 (He et al.: stride on the first '
                     f'1x1 conv of a bottleneck block), {_params:,} params'),
        stage_sizes=_sizes, block=_block, stride_on='1x1')

# CIFAR (6n+2 layers): n -> parameter count with option A and 10 classes,
# 97,216 n - 21,926 (see the module docstring).
_CIFAR = {3: 269_722, 5: 464_154, 7: 658_586, 9: 853_018, 18: 1_727_962}

for _n, _params in _CIFAR.items():
  for _residual in (True, False):
    _depth = 6 * _n + 2
    # A plain net has exactly the parameters of the option-A residual net.
    registry.register(
        f'resnet{_depth}' if _residual else f'plain{_depth}', ResNet,
        input_shape=(32, 32, 3), num_classes=10, min_input_size=4,
        reference_params=_params,
        description=(
            f'CIFAR ResNet-{_depth} (3 x {_n} basic blocks, 16/32/64 filters, '
            f'shortcut A, {_params:,} params)' if _residual else
            f'CIFAR plain-{_depth}: resnet{_depth} without shortcuts'),
        stage_sizes=(_n, _n, _n), block='basic', num_filters=16,
        stem='cifar', shortcut='A', residual=_residual)
