"""LeNet-5 (LeCun et al., 1998) as the lectures draw it.

28x28 inputs are zero-padded to 32x32; C1 conv 5x5x6 -> S2 2x2 pool -> C3 conv
5x5x16 -> S4 2x2 pool -> F5 120 -> F6 84 -> output 10 (the head).
Weights with biases: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706.
Optional batch norm after each convolution adds 2 x (6 + 16) = 44 trainable
scale/shift parameters (plus running statistics).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.models import registry


class LeNet5(nn.Module):
  """LeNet-5 backbone: images [batch, H, W, C] -> F6 features [batch, 84].

  Attributes:
    activation: name in `cnn.layers.ACTIVATIONS` ('tanh' in the 1998 paper).
      It also picks the C1/C3/F5/F6 kernel initialiser
      (`layers.kernel_init_for`): LeCun normal (flax's default) for every
      activation, 'selu' included, as SELU's self-normalisation needs
      (leave `batch_norm` off for it).
    pool: 'max' or 'avg' subsampling.
    batch_norm: batch norm after C1 and C3 (before the activation).
    pad_to: inputs smaller than this are zero-padded to it (32 in the paper).
    widths: (C1, C3, F5, F6) sizes.
    dtype: compute dtype.
  """

  activation: str = 'relu'
  pool: str = 'max'
  batch_norm: bool = False
  pad_to: int = 32
  widths: tuple[int, int, int, int] = (6, 16, 120, 84)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    act = layers.get_activation(self.activation)
    dtype = layers.as_dtype(self.dtype)
    c1, c3, f5, f6 = self.widths
    out = {}
    x = x.astype(dtype)
    ph, pw = max(0, self.pad_to - x.shape[1]), max(0, self.pad_to - x.shape[2])
    if ph or pw:
      x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2),
                      (0, 0)))

    kernel_init = layers.kernel_init_for(self.activation,
                                         nn.linear.default_kernel_init)
    conv = layers.conv(dtype, use_bias=not self.batch_norm,
                       kernel_init=kernel_init)
    norm = layers.batch_norm(dtype, train)

    def conv_block(x, features, name):
      x = conv(features, (5, 5), padding='VALID', name=f'{name}_conv')(x)
      if self.batch_norm:
        x = norm(name=f'{name}_bn')(x)
      return act(x)

    # With batch norm the conv bias is redundant (the norm's shift replaces
    # it), so weights stay 61,706 - 22 biases + 44 scale/shift = 61,728.
    x = out['stem'] = conv_block(x, c1, 'c1')                       # C1
    x = out['stage1'] = layers.Pool(self.pool, name='s2')(x)        # S2
    x = out['stage2'] = conv_block(x, c3, 'c3')                     # C3
    x = out['stage3'] = layers.Pool(self.pool, name='s4')(x)        # S4
    x = layers.Flatten()(x)
    dense = lambda features, name: nn.Dense(
        features, dtype=dtype, kernel_init=kernel_init, name=name)
    x = out['stage4'] = act(dense(f5, 'f5')(x))                     # F5
    x = out['stage5'] = act(dense(f6, 'f6')(x))                     # F6
    return x, out


registry.register(
    'lenet5', LeNet5, input_shape=(28, 28, 1), num_classes=10,
    min_input_size=16, reference_params=61_706,
    description='LeNet-5 (C1-S2-C3-S4-F5-F6-output), 61,706 weights')
