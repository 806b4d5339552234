"""VGG (Simonyan and Zisserman, 2014) as in torchvision, with BN twins.

Design rules from the lecture: every conv is 3x3 stride 1 pad 1, every pool
2x2 stride 2, and the channels double after each pool (64, 128, 256, 512,
512). Five stages, each a run of convs ending in a max-pool; only the number of
convs per stage (`stage_sizes`) changes between the variants:

  vgg11 (A) 1,1,2,2,2   vgg13 (B) 2,2,2,2,2   vgg16 (D) 2,2,3,3,3
  vgg19 (E) 2,2,4,4,4

The classifier is torchvision's: an adaptive average pool to 7x7 (a no-op at
224x224), flatten to 25,088, fc6 4096 -> ReLU -> dropout 0.5 -> fc7 4096 ->
ReLU -> dropout 0.5 (the registry's head dropout) -> head. VGG-16 weights, as
the lecture lists them: 1,728 + 36,864 + 73,728 + 147,456 + 294,912 +
2 x 589,824 + 1,179,648 + 5 x 2,359,296 = 14,710,464 conv weights, and
102,760,448 + 16,777,216 + 4,096,000 FC weights; with 4,224 conv and 9,192
FC biases that is 138,357,544 parameters. Convs keep their bias with batch
norm as in torchvision (`vgg16_bn` adds only BN's scale and shift:
138,365,992).

Small-image variants (`vgg11_small`, `vgg16_small` and their `_bn` twins) keep
all five stages for 32x32 inputs (32 -> 16 -> 8 -> 4 -> 2 -> 1), replace the
7x7 pool + two 4096 FCs by global average pooling and one 512 FC, and halve the
channels (`width=0.5`).

Initialisation is torchvision's: convs He-normal over fan-out, FCs N(0, 0.01),
zero biases. VGG-16 without batch norm does not start learning from flax's
default LeCun init (the paper had to initialise it from a trained VGG-11).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.models import registry
from cnn.models.alexnet import AdaptiveAvgPool, check_nonempty

Array = jax.Array

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_init = nn.initializers.normal(0.01)

STAGE_SIZES = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


class VGG(nn.Module):
  """VGG backbone: images [batch, H, W, C] -> features [batch, fc[-1]].

  Parameter groups: `stage1` ... `stage5` (the conv blocks, e.g.
  `stage3_conv2`, `stage3_bn2`) and `classifier` (the hidden FCs). `out`
  holds `stem` (the first conv's activation map, full resolution: there is no
  separate stem in VGG) and `stage1` ... `stage5` (after each pool).

  Attributes:
    activation: name in `cnn.layers.ACTIVATIONS`.
    stage_sizes: number of 3x3 convs in each stage (see `STAGE_SIZES`).
    widths: filters of each stage before the `width` multiplier.
    width: channel multiplier (1.0 = the paper).
    batch_norm: batch norm between each conv and its activation.
    pool_to: adaptive average pool to this size before flattening (7 as in
      torchvision); None = global average pooling.
    fc: sizes of the hidden fully connected layers.
    dropout: dropout rate after each hidden FC except the last (the last one's
      dropout is the classifier's `head_dropout`).
    dtype: compute dtype.
  """

  activation: str = 'relu'
  stage_sizes: Sequence[int] = STAGE_SIZES[16]
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  width: float = 1.0
  batch_norm: bool = False
  pool_to: int | None = 7
  fc: Sequence[int] = (4096, 4096)
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    act = layers.get_activation(self.activation)
    dtype = layers.as_dtype(self.dtype)
    # Biased convs even with batch norm, as torchvision's.
    conv = layers.conv(dtype, kernel_init=conv_init)
    norm = layers.batch_norm(dtype, train)
    x = x.astype(dtype)
    out = {}
    stages = zip(self.stage_sizes, self.widths, strict=True)
    for s, (n_convs, c) in enumerate(stages, 1):
      features = max(1, round(c * self.width))
      for i in range(1, n_convs + 1):
        x = conv(features, (3, 3), padding=((1, 1), (1, 1)),
                 name=f'stage{s}_conv{i}')(x)
        if self.batch_norm:
          x = norm(name=f'stage{s}_bn{i}')(x)
        x = act(x)
        if 'stem' not in out:
          out['stem'] = x
      x = out[f'stage{s}'] = layers.Pool('max', (2, 2),
                                         name=f'stage{s}_pool')(x)
      check_nonempty(x, f'stage {s}')
    if self.pool_to is None:
      x = layers.GlobalAvgPool(name='classifier_avgpool')(x)
    else:
      x = AdaptiveAvgPool(self.pool_to, name='classifier_avgpool')(x)
      x = layers.Flatten(name='classifier_flatten')(x)
    for i, features in enumerate(self.fc, start=6):
      if i > 6:
        x = nn.Dropout(self.dropout, deterministic=not train,
                       name=f'classifier_dropout{i - 1}')(x)
      x = nn.Dense(features, dtype=dtype, kernel_init=dense_init,
                   name=f'classifier_fc{i}')(x)
      x = act(x)
    return x, out


_REFERENCE = {  # torchvision, 1000 classes.
    (11, False): 132_863_336, (11, True): 132_868_840,
    (13, False): 133_047_848, (13, True): 133_053_736,
    (16, False): 138_357_544, (16, True): 138_365_992,
    (19, False): 143_667_240, (19, True): 143_678_248,
}

for (_depth, _bn), _params in _REFERENCE.items():
  _suffix = '_bn' if _bn else ''
  registry.register(
      f'vgg{_depth}{_suffix}', VGG, input_shape=(224, 224, 3),
      num_classes=1000, min_input_size=32, head_dropout=0.5,
      reference_params=_params,
      description=f'VGG-{_depth}{" with batch norm" if _bn else ""} '
                  f'(torchvision), {_params / 1e6:.1f}M parameters',
      stage_sizes=STAGE_SIZES[_depth], batch_norm=_bn)

for _depth in (11, 16):
  for _bn in (False, True):
    _suffix = '_bn' if _bn else ''
    registry.register(
        f'vgg{_depth}{_suffix}_small', VGG, input_shape=(32, 32, 3),
        num_classes=10, min_input_size=32, head_dropout=0.5,
        description=f'VGG-{_depth}{" with batch norm" if _bn else ""} for '
                    '32x32 images: half width, global average pool, one '
                    '512 FC',
        stage_sizes=STAGE_SIZES[_depth], batch_norm=_bn, width=0.5,
        pool_to=None, fc=(512,))
