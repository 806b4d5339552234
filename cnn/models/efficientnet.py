"""EfficientNet (Tan & Le, 2019): MBConv blocks scaled by width and depth.

The MBConv block is MobileNetV2's inverted residual (`mobilenet.
InvertedResidual`) with 3x3 or 5x5 depthwise kernels, squeeze-excitation
(width 1/4 of the block's input channels) and SiLU, plus stochastic depth on
the residual branches (rate growing linearly with depth up to
`stochastic_depth`, as torchvision). B0 was found by architecture search; Bn
scale its width and depth (compound scaling): channels x width rounded to
multiples of 8, repeats x depth rounded up.

Layout as torchvision's efficientnet_b0..b7 (B0: 5,288,548 parameters with
1000 classes): 3x3/2 stem conv with 32 filters, the rows of `B0_SETTINGS`, a
1x1 conv to 4x the last row's channels (1280 for B0), global pooling and
dropout (0.2 for B0) before the head. Parameter counts do not depend on the
resolution; the registered input sizes are the paper's.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.models import registry
from cnn.models.mobilenet import InvertedResidual, conv_init, make_divisible

Array = jax.Array

# (expansion, kernel, first stride, output channels, repeats), paper Table 1.
B0_SETTINGS = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class EfficientNet(nn.Module):
  """EfficientNet backbone: images [batch, H, W, C] -> features [batch, F].

  F = 4 x the last row's channels (1280 for B0). Submodules: `stem_conv`,
  `stem_bn`, `stage{i}_block{j}` (stage i = row i of `block_settings`) and
  `stage{N+1}_conv`/`_bn` for the final 1x1 conv.

  Attributes:
    width: channel multiplier (1.0 for B0).
    depth: repeat multiplier (1.0 for B0).
    block_settings: rows (expansion, kernel, stride, channels, repeats).
    stem_strides: stride of the stem conv (1 for small images).
    se_ratio: squeeze-excitation width / block input channels.
    stochastic_depth: drop rate of the last block's residual branch (block k of
      K drops with rate stochastic_depth * k / K); 0 disables it.
    remat: recompute each block in the backward pass (`nn.remat`).
    activation: name in `cnn.layers.ACTIVATIONS` ('silu' = swish).
    dtype: compute dtype.
  """

  width: float = 1.0
  depth: float = 1.0
  block_settings: Sequence[tuple[int, int, int, int, int]] = B0_SETTINGS
  stem_strides: int = 2
  se_ratio: float = 0.25
  stochastic_depth: float = 0.0
  remat: bool = False
  activation: str = 'silu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    dtype = layers.as_dtype(self.dtype)
    act = layers.get_activation(self.activation)
    conv, norm = layers.conv_and_norm(dtype, train, conv_init)
    block_cls = nn.remat(InvertedResidual) if self.remat else InvertedResidual
    channels = lambda c: make_divisible(c * self.width, 8)
    repeats = [int(math.ceil(row[4] * self.depth))
               for row in self.block_settings]
    total_blocks = sum(repeats)

    out = {}
    x = x.astype(dtype)
    x = conv(channels(32), (3, 3), strides=self.stem_strides,
             padding=((1, 1), (1, 1)), name='stem_conv')(x)
    x = out['stem'] = act(norm(name='stem_bn')(x))
    k = 0  # Index of the block in the whole net, for stochastic depth.
    for i, ((t, kernel, s, c, _), n) in enumerate(
        zip(self.block_settings, repeats, strict=True)):
      for j in range(n):
        x = block_cls(
            channels(c), s if j == 0 else 1, t, conv=conv, norm=norm, act=act,
            kernel=kernel, se_ratio=self.se_ratio,
            drop_path=self.stochastic_depth * k / total_blocks,
            deterministic=not train, name=f'stage{i + 1}_block{j + 1}')(x)
        k += 1
      out[f'stage{i + 1}'] = x
    last = f'stage{len(self.block_settings) + 1}'
    x = conv(4 * x.shape[-1], (1, 1), padding='VALID', name=f'{last}_conv')(x)
    x = out[last] = act(norm(name=f'{last}_bn')(x))
    return layers.GlobalAvgPool(name=f'{last}_avgpool')(x), out


# name -> (width, depth, resolution, head dropout, torchvision parameters).
_VARIANTS = {
    'b0': (1.0, 1.0, 224, 0.2, 5_288_548),
    'b1': (1.0, 1.1, 240, 0.2, 7_794_184),
    'b2': (1.1, 1.2, 260, 0.3, 9_109_994),
    'b3': (1.2, 1.4, 300, 0.3, 12_233_232),
    'b4': (1.4, 1.8, 380, 0.4, 19_341_616),
    'b5': (1.6, 2.2, 456, 0.4, 30_389_784),
    'b6': (1.8, 2.6, 528, 0.5, 43_040_704),
    'b7': (2.0, 3.1, 600, 0.5, 66_347_960),
}

for _name, (_width, _depth, _res, _dropout, _params) in _VARIANTS.items():
  registry.register(
      f'efficientnet_{_name}', EfficientNet, input_shape=(_res, _res, 3),
      # Padded convs never reach zero size; 32 is the total stride.
      num_classes=1000, min_input_size=32, head_dropout=_dropout,
      reference_params=_params,
      description=f'EfficientNet-{_name.upper()} (width {_width}, depth '
      f'{_depth}, {_res}px, torchvision), {_params:,} params',
      width=_width, depth=_depth, stochastic_depth=0.2)
