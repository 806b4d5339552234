"""LeNet-5 (LeCun et al., 1998) as the lectures draw it.

28x28 inputs are zero-padded to 32x32; C1 conv 5x5x6 -> S2 2x2 pool -> C3 conv
5x5x16 -> S4 2x2 pool -> F5 120 -> F6 84 -> output 10 (the head).
Weights with biases: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706.
Optional batch norm after each convolution adds 2 x (6 + 16) = 44 trainable
scale/shift parameters (plus running statistics).

`connectivity` makes the same network without weight sharing (lectures
000/001: fully connected -> locally connected -> convolution; the
weight-sharing study, configs/weight_sharing_fmnist.py). Only C1 and C3
change; every map keeps its shape (C1 28x28x6, C3 10x10x16), so the three
networks have the same layers and units per position and differ only in
sharing and locality. On a 28x28x1 image, 10 classes, without batch norm
(F5 + F6 + head = 48,120 + 10,164 + 850 = 59,134 weights in all three;
multiply-adds without biases, F5 + F6 + head = 48,000 + 10,080 + 840 =
58,920):
  'conv'   one 5x5 filter bank shared by every position (the paper's).
           C1 25 x 6 + 6 = 156, C3 150 x 16 + 16 = 2,416: 61,706 weights;
           C1 28 x 28 x 6 x 25 = 117,600 and C3 10 x 10 x 16 x 150 =
           240,000 multiply-adds: 416,520 (+ 4,704 + 1,600 pooling reads =
           422,824 connections).
  'local'  the same 5x5 windows, a filter per output position
           (`layers.LocallyConnected`): C1 784 x 156 = 122,304, C3 100 x
           2,416 = 241,600: 423,038 weights, 6.9x the CNN's, with the CNN's
           416,520 multiply-adds.
  'dense'  C1 and C3 fully connected to their whole input, reshaped to the
           same maps: C1 784 x 4,704 + 4,704 = 3,692,640 (the unpadded
           28x28 image: the zero border carries nothing and its weights would
           never get a gradient), C3 1,176 x 1,600 + 1,600 = 1,883,200:
           5,634,974 weights and 3,687,936 + 1,881,600 + 58,920 = 5,628,456
           multiply-adds (the MLP).
With batch norm the C1/C3 biases give way to 12 + 32 scale/shift
parameters: 61,728 / 416,778 / 5,628,714 (tests/test_weight_sharing.py pins
all of these against `cnn.summary`).

`pool` picks S2/S4: 'max' or 'avg' (or any kind `layers.Pool` takes), or
'strided': a learned 2x2 stride-2 convolution with as many channels as its
input (with bias, no non-linearity; 6 x 24 + 6 = 150 and 16 x 64 + 16 =
1,040 more weights) instead of a fixed pooling.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.common import errors
from cnn.models import registry

# C1/C3 without sharing or locality (see the module docstring).
CONNECTIVITIES = ('conv', 'local', 'dense')
KERNEL = (5, 5)  # C1 and C3 windows; the maps shrink by 4 ('VALID').


class LeNet5(nn.Module):
  """LeNet-5 backbone: images [batch, H, W, C] -> F6 features [batch, 84].

  Attributes:
    activation: name in `cnn.layers.ACTIVATIONS` ('tanh' in the 1998 paper).
      It also picks the C1/C3/F5/F6 kernel initialiser
      (`layers.kernel_init_for`): LeCun normal (flax's default) for every
      activation, 'selu' included, as SELU's self-normalisation needs
      (leave `batch_norm` off for it).
    pool: S2/S4 subsampling: 'max', 'avg' (`layers.Pool` kinds, passed
      through) or 'strided' (a learned 2x2 stride-2 convolution, same
      channels).
    batch_norm: batch norm after C1 and C3 (before the activation).
    pad_to: inputs smaller than this are zero-padded to it (32 in the paper).
    widths: (C1, C3, F5, F6) sizes.
    connectivity: C1 and C3 as 'conv' (shared 5x5 filters), 'local' (a 5x5
      filter per output position) or 'dense' (fully connected to the whole
      input, output reshaped to the conv's map [batch, H', W', C']).
    dtype: compute dtype.
  """

  activation: str = 'relu'
  pool: str = 'max'
  batch_norm: bool = False
  pad_to: int = 32
  widths: tuple[int, int, int, int] = (6, 16, 120, 84)
  connectivity: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    if self.connectivity not in CONNECTIVITIES:
      raise errors.UserError(
          f'LeNet-5 connectivity must be one of {CONNECTIVITIES}, got '
          f'{self.connectivity!r}.')
    act = layers.get_activation(self.activation)
    dtype = layers.as_dtype(self.dtype)
    c1, c3, f5, f6 = self.widths
    out = {}
    x = x.astype(dtype)
    ph, pw = max(0, self.pad_to - x.shape[1]), max(0, self.pad_to - x.shape[2])
    # C1's map as the padded image gives it (28x28 from 32x32).
    c1_map = (x.shape[1] + ph - KERNEL[0] + 1, x.shape[2] + pw - KERNEL[1] + 1)
    # A dense C1 sees the image unpadded: a fully connected layer gains
    # nothing from a zero border, whose weights would never get a gradient.
    if (ph or pw) and self.connectivity != 'dense':
      x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2),
                      (0, 0)))

    kernel_init = layers.kernel_init_for(self.activation,
                                         nn.linear.default_kernel_init)
    conv = layers.conv(dtype, use_bias=not self.batch_norm,
                       kernel_init=kernel_init)
    norm = layers.batch_norm(dtype, train)
    dense = lambda features, name, use_bias=True: nn.Dense(
        features, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
        name=name)

    def weighted(x, features, out_map, name):
      """C1/C3: [batch, H, W, C] -> [batch, *out_map, features]."""
      if self.connectivity == 'conv':
        return conv(features, KERNEL, padding='VALID', name=f'{name}_conv')(x)
      if self.connectivity == 'local':
        return layers.LocallyConnected(
            features, KERNEL, padding='VALID', use_bias=not self.batch_norm,
            dtype=dtype, name=f'{name}_local')(x)
      y = dense(out_map[0] * out_map[1] * features, f'{name}_dense',
                use_bias=not self.batch_norm)(layers.Flatten()(x))
      return y.reshape(y.shape[0], *out_map, features)

    def conv_block(x, features, out_map, name):
      x = weighted(x, features, out_map, name)
      if self.batch_norm:
        x = norm(name=f'{name}_bn')(x)
      return act(x)

    def subsample(x, name):
      if self.pool == 'strided':  # learned, linear: pooling's place only.
        return conv(x.shape[-1], (2, 2), strides=(2, 2), padding='VALID',
                    use_bias=True, name=f'{name}_conv')(x)
      return layers.Pool(self.pool, name=name)(x)

    # With batch norm the conv bias is redundant (the norm's shift replaces
    # it), so weights stay 61,706 - 22 biases + 44 scale/shift = 61,728.
    x = out['stem'] = conv_block(x, c1, c1_map, 'c1')               # C1
    x = out['stage1'] = subsample(x, 's2')                          # S2
    c3_map = (x.shape[1] - KERNEL[0] + 1, x.shape[2] - KERNEL[1] + 1)
    x = out['stage2'] = conv_block(x, c3, c3_map, 'c3')             # C3
    x = out['stage3'] = subsample(x, 's4')                          # S4
    x = layers.Flatten()(x)
    x = out['stage4'] = act(dense(f5, 'f5')(x))                     # F5
    x = out['stage5'] = act(dense(f6, 'f6')(x))                     # F6
    return x, out


registry.register(
    'lenet5', LeNet5, input_shape=(28, 28, 1), num_classes=10,
    min_input_size=16, reference_params=61_706,
    description='LeNet-5 (C1-S2-C3-S4-F5-F6-output), 61,706 weights')
