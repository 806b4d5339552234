"""One small network, several kernel layouts: the lectures' "two stacked 3x3
convolutions see as far as one 5x5".

A 3x3 stem conv (input channels -> `width`), then `num_stages` stages at the
same width, each a *layout* of convolutions (conv -> BN -> activation each)
followed by a 2x2/2 max-pool after every stage but the last; global average
pooling; the head. The layouts of a stage:

  '5x5'      one 5x5 conv: 25 C^2 weights, receptive field +4 (times the
             stage's jump);
  '3x3-3x3'  two stacked 3x3 convs: 2 * 9 C^2 = 18 C^2 weights, the same
             receptive field, one more non-linearity;
  '3x3'      one 3x3 conv: 9 C^2, receptive field +2 (the control).

Every stage maps C -> C channels, so the stage convolutions of '3x3-3x3' and
'5x5' have weights exactly in the ratio 18 : 25 at equal width; a '5x5' net
of width C * sqrt(18 / 25) (`matched_width`: 17 for C = 20) has about the
weights of the 3x3 stack (the width-matched form).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.common import errors
from cnn.models import registry

LAYOUTS = {'5x5': (5,), '3x3-3x3': (3, 3), '3x3': (3,)}

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class KernelStack(nn.Module):
  """Images [batch, H, W, C] -> pooled features [batch, width].

  Submodules: `stem_conv`/`stem_bn`, `stage{i}_conv{j}`/`stage{i}_bn{j}`,
  `stage{i}_pool`.

  Attributes:
    kernel_layout: '5x5', '3x3-3x3' or '3x3' (see the module docstring).
    width: channels of the stem and of every stage.
    num_stages: stages; each but the last halves the resolution.
    activation: name in `cnn.layers.ACTIVATIONS`.
    dtype: compute dtype.
  """

  kernel_layout: str = '3x3-3x3'
  width: int = 20
  num_stages: int = 3
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    if self.kernel_layout not in LAYOUTS:
      raise errors.UserError(
          f'Unknown kernel_layout {self.kernel_layout!r}; valid: '
          f'{list(LAYOUTS)}.')
    dtype = layers.as_dtype(self.dtype)
    act = layers.get_activation(self.activation)
    conv, norm = layers.conv_and_norm(dtype, train, conv_init)
    channels = self.width
    out = {}
    x = conv(self.width, (3, 3), padding=((1, 1), (1, 1)),
             name='stem_conv')(x.astype(dtype))
    x = out['stem'] = act(norm(name='stem_bn')(x))
    for i in range(1, self.num_stages + 1):
      for j, k in enumerate(LAYOUTS[self.kernel_layout], start=1):
        x = conv(channels, (k, k), padding=((k // 2, k // 2),) * 2,
                 name=f'stage{i}_conv{j}')(x)
        x = act(norm(name=f'stage{i}_bn{j}')(x))
      if i < self.num_stages:
        x = layers.Pool('max', (2, 2), name=f'stage{i}_pool')(x)
      out[f'stage{i}'] = x
    return layers.GlobalAvgPool(name=f'stage{self.num_stages}_avgpool')(x), out


def matched_width(width: int) -> int:
  """The '5x5' stage width whose 25 C'^2 is closest to the 3x3 stack's
  18 C^2."""
  return int(round(width * (18 / 25) ** 0.5))


_WIDTH = 20  # matched width 17: 25 * 17^2 = 7,225 vs 18 * 20^2 = 7,200.
for _name, _layout, _width, _what in (
    ('kstack_5x5', '5x5', _WIDTH, 'one 5x5 conv per stage'),
    ('kstack_3x3x2', '3x3-3x3', _WIDTH, 'two stacked 3x3 convs per stage'),
    ('kstack_3x3', '3x3', _WIDTH, 'one 3x3 conv per stage (control)'),
    ('kstack_5x5_matched', '5x5', matched_width(_WIDTH),
     'one 5x5 conv per stage, width-matched to the 3x3 stack')):
  registry.register(
      _name, KernelStack, input_shape=(28, 28, 1), num_classes=10,
      min_input_size=4,
      description=f'kernel-layout study net: {_what}, width {_width}',
      kernel_layout=_layout, width=_width)
