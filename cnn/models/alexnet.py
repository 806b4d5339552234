"""AlexNet (Krizhevsky et al., 2012), the torchvision variant of the lectures.

The lecture's per-layer table (input 227x227x3; the same sizes follow from
224x224, where conv1 gives 55x55 instead of 56x56):

  layer  filters kernel stride pad   output      params (weights only)
  conv1     64      11     4    2   56x56x64          23k
  pool1             3      2    0   27x27x64
  conv2    192      5      1    2   27x27x192        307k
  pool2             3      2    0   13x13x192
  conv3    384      3      1    1   13x13x384        664k
  conv4    256      3      1    1   13x13x256        885k
  conv5    256      3      1    1   13x13x256        590k
  pool5             3      2    0   6x6x256
  fc6     4096                      4096          37,749k
  fc7     4096                      4096          16,777k
  fc8     1000 (the head)           1000           4,096k

With biases: 23,296 + 307,392 + 663,936 + 884,992 + 590,080 + 37,752,832 +
16,781,312 + 4,097,000 = 61,100,840 parameters (torchvision's count). As in
torchvision there is one tower (no two-GPU split), no local response
normalisation, an adaptive average pool to 6x6 before the classifier (a no-op
at 224 and 227) and dropout 0.5 before fc6 and fc7.

Training recipe of the paper (from the lecture): SGD with momentum 0.9, batch
128, learning rate 1e-2 divided by 10 when validation accuracy plateaus, L2
weight decay 5e-4, dropout 0.5 and heavy data augmentation.

`alexnet_small` keeps the layer pattern for 28x28/32x32 images: 5x5, 5x5, 3x3,
3x3, 3x3 "same" convs with stride 1, the same overlapping 3x3/2 max-pools,
half the channels (`width=0.5`: 32, 96, 192, 128, 128) and 512-512 FCs.

This module also holds the adaptive average pool shared with VGG.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.common import errors
from cnn.models import registry

Array = jax.Array


def check_nonempty(x: Array, where: str) -> None:
  """Fails clearly when a feature map [batch, H, W, C] has shrunk to nothing.

  Without this check a zero-size map flows on silently (a Dense layer then
  gets zero inputs, a mean gets NaN) instead of telling the user the input is
  too small.
  """
  if x.shape[1] < 1 or x.shape[2] < 1:
    raise errors.UserError(
        f'The feature map after {where} is {x.shape[1]}x{x.shape[2]}: the '
        'input image is too small for this model (see its min_input_size).')


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
  # PyTorch's adaptive pooling rule: bin i covers
  # [floor(i * size / out), ceil((i + 1) * size / out)).
  return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


class AdaptiveAvgPool(nn.Module):
  """torchvision's `AdaptiveAvgPool2d((size, size))` where it is a plain pool.

  [batch, H, W, C] -> [batch, size, size, C]. A map that already has the
  target size passes unchanged (AlexNet at 224/227, VGG at 224). Along each
  axis the adaptive bins are either all of one length at a constant stride
  (e.g. 12 -> 6: window 2, stride 2; 13 -> 6: window 3, stride 2; 7 -> 6:
  window 2, stride 1), computed as `layers.Pool('avg')`, or all one pixel wide
  (a map smaller than the target whose size divides it, e.g. 1 -> 6 or 3 -> 6:
  pixels are repeated). Other sizes (e.g. 4 -> 6 or 14 -> 6, whose bins have
  unequal lengths or strides) raise a ValueError.

  Attributes:
    size: target height and width, in pixels.
  """

  size: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    check_nonempty(x, 'the last pool')
    in_h, in_w = x.shape[1:3]
    window, strides = [1, 1], [1, 1]
    for axis in (1, 2):
      if x.shape[axis] == self.size:
        continue
      bins = _adaptive_bins(x.shape[axis], self.size)
      lengths = {end - start for start, end in bins}
      steps = {b[0] - a[0] for a, b in itertools.pairwise(bins)}
      if lengths == {1}:
        # Upsampling by repetition: a gather, no arithmetic.
        x = jnp.take(x, jnp.array([s for s, _ in bins]), axis=axis)
      elif len(lengths) == 1 and len(steps) == 1:
        window[axis - 1], strides[axis - 1] = lengths.pop(), steps.pop()
      else:
        raise errors.UserError(
            f'Adaptive average pooling from {in_h}x{in_w} to '
            f'{self.size}x{self.size} has unequal windows and is not '
            'supported: choose an input size for which the last feature map '
            f'is a multiple of {self.size} or divides it.')
    if window == [1, 1]:
      return x
    return layers.Pool('avg', tuple(window), tuple(strides), name='pool')(x)


class AlexNet(nn.Module):
  """AlexNet backbone: images [batch, H, W, C] -> fc7 features [batch, 4096].

  Stages (parameter groups): `stem` = conv1 + pool1, `stage1` = conv2 +
  pool2, `stage2` = conv3, `stage3` = conv4, `stage4` = conv5 + pool5,
  `classifier` = fc6 and fc7. Submodules carry the lecture's layer names
  (`stem_conv1`, ..., `classifier_fc7`). `out` holds `stem` ... `stage4`
  (after each stage's pool).

  Attributes:
    activation: name in `cnn.layers.ACTIVATIONS` (AlexNet introduced 'relu').
    widths: filters of conv1..conv5 before the `width` multiplier.
    width: channel multiplier for the convs (1.0 = the paper).
    kernels: kernel size of conv1..conv5, in pixels.
    strides: stride of conv1..conv5.
    paddings: zero padding of conv1..conv5, in pixels on each side.
    pool_after: which convs are followed by the 3x3 stride-2 max-pool.
    pool_to: adaptive average pool to this size before flattening (6 as in
      torchvision); None flattens whatever the last pool gives.
    fc: sizes of the hidden fully connected layers (fc6, fc7).
    dropout: dropout rate before each hidden fully connected layer.
    dtype: compute dtype.
  """

  activation: str = 'relu'
  widths: Sequence[int] = (64, 192, 384, 256, 256)
  width: float = 1.0
  kernels: Sequence[int] = (11, 5, 3, 3, 3)
  strides: Sequence[int] = (4, 1, 1, 1, 1)
  paddings: Sequence[int] = (2, 2, 1, 1, 1)
  pool_after: Sequence[bool] = (True, True, False, False, True)
  pool_to: int | None = 6
  fc: Sequence[int] = (4096, 4096)
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    act = layers.get_activation(self.activation)
    dtype = layers.as_dtype(self.dtype)
    conv = layers.conv(dtype)
    x = x.astype(dtype)
    out = {}
    groups = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')
    for i, (group, c, k, s, p, pool) in enumerate(zip(
        groups, self.widths, self.kernels, self.strides, self.paddings,
        self.pool_after, strict=True), start=1):
      x = conv(max(1, round(c * self.width)), (k, k), (s, s),
               padding=((p, p), (p, p)), name=f'{group}_conv{i}')(x)
      x = act(x)
      check_nonempty(x, f'conv{i}')
      if pool:
        # Overlapping pooling (3x3 windows, stride 2), as in the paper.
        x = layers.Pool('max', (3, 3), (2, 2),
                        name=f'{group}_pool{i}')(x)
        check_nonempty(x, f'the pool after conv{i}')
      out[group] = x
    if self.pool_to is not None:
      x = AdaptiveAvgPool(self.pool_to, name='classifier_avgpool')(x)
    x = layers.Flatten(name='classifier_flatten')(x)
    for i, features in enumerate(self.fc, start=6):
      # torchvision: Dropout -> Linear -> ReLU for fc6 and fc7; the head
      # (fc8) follows fc7 without dropout.
      x = nn.Dropout(self.dropout, deterministic=not train,
                     name=f'classifier_dropout{i}')(x)
      x = act(nn.Dense(features, dtype=dtype, name=f'classifier_fc{i}')(x))
    return x, out


registry.register(
    'alexnet', AlexNet, input_shape=(224, 224, 3), num_classes=1000,
    # 63 -> conv1 15 -> pool1 7 -> pool2 3 -> pool5 1 -> repeated to 6x6.
    min_input_size=63, reference_params=61_100_840,
    description='AlexNet (torchvision): 5 convs + 3 FCs, 61.1M parameters')

registry.register(
    'alexnet_small', AlexNet, input_shape=(32, 32, 3), num_classes=10,
    # 15 -> pool1 7 -> pool2 3 -> pool5 1.
    min_input_size=15,
    description='AlexNet layer pattern for 28x28/32x32 images: stride-1 '
                '5x5/3x3 convs, half width, 512-512 FCs (1.5M parameters)',
    kernels=(5, 5, 3, 3, 3), strides=(1, 1, 1, 1, 1), paddings=(2, 2, 1, 1, 1),
    width=0.5, pool_to=None, fc=(512, 512))
