"""GoogLeNet / Inception v1 (Szegedy et al., 2014), torchvision's layout.

Stem (the lecture's "aggressive stem", 224 -> 28 pixels):
  conv 7x7/2 64 -> max-pool 3x3/2 -> conv 1x1 64 -> conv 3x3 192 -> max-pool
  3x3/2. The paper's local response normalisation is left out, as in
  torchvision (batch norm after every conv does its job).
Inception modules, with the published channel table (#1x1, #3x3 reduce, #3x3,
#5x5 reduce, #5x5, pool proj):
  stage1 (28x28): 3a, 3b;  max-pool 3x3/2
  stage2 (14x14): 4a, 4b, 4c, 4d, 4e;  max-pool 2x2/2
  stage3 (7x7):   5a, 5b
then global average pooling (7x7 -> 1024 features), dropout 0.4 (the
registry's head dropout) and the head: no large FC layers.

Auxiliary classifiers after 4a and 4d (training only): 5x5/3 average pool
(14x14 -> 4x4) -> 1x1 conv 128 -> FC 1024 -> ReLU -> dropout 0.7 -> FC
num_classes. In training mode `out['aux_logits'] = [aux1, aux2]` (float32);
the trainer adds 0.3 x their cross-entropy to the loss. They are absent in
evaluation mode (their parameters are still created at init, so one set of
variables serves both modes).

Every conv is torchvision's BasicConv2d: conv without bias -> batch norm
(epsilon 1e-3) -> ReLU. Max-pools round their output size up (PyTorch's
`ceil_mode=True`, 112 -> 56 -> 28 -> 14 -> 7). torchvision's "5x5" branch
actually uses a 3x3 kernel (a bug kept for its pretrained weights); `googlenet`
does the same (`large_kernel=3`) so that it has exactly torchvision's
6,624,904 parameters without and 13,004,888 with the auxiliary heads (the
paper's 5x5 kernels add 380,928). `googlenet_small` and `InceptionModule`
default to the paper's 5x5.

`bottleneck=False` gives the lecture's naive inception module (parallel 1x1,
3x3, 5x5 convs and a 3x3 max-pool on the input, concatenated, without 1x1
reductions), so output depth grows by the input depth at every module.

`googlenet_small` is for 32x32 images: a stem of 3x3 stride-1 convs without
pools (inception stages at 32, 16 and 8 pixels) and half the channels
(`width=0.5`, also applied to the auxiliary heads).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.common import errors
from cnn.models import registry

Array = jax.Array

# torchvision: trunc_normal_(std=0.01) for convs and linear layers.
kernel_init = nn.initializers.truncated_normal(0.01)

# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), Szegedy et al.
# table 1; each stage is a list of modules.
INCEPTION_STAGES = (
    (('3a', (64, 96, 128, 16, 32, 32)),
     ('3b', (128, 128, 192, 32, 96, 64))),
    (('4a', (192, 96, 208, 16, 48, 64)),
     ('4b', (160, 112, 224, 24, 64, 64)),
     ('4c', (128, 128, 256, 24, 64, 64)),
     ('4d', (112, 144, 288, 32, 64, 64)),
     ('4e', (256, 160, 320, 32, 128, 128))),
    (('5a', (256, 160, 320, 32, 128, 128)),
     ('5b', (384, 192, 384, 48, 128, 128))),
)


def ceil_max_pool(x: Array, window: int, strides: int, name: str) -> Array:
  """PyTorch's `MaxPool2d(window, strides, ceil_mode=True)` on [B, H, W, C].

  The output size is ceil((size - window) / strides) + 1: the last window
  may run past the input, so the bottom/right are padded (with -inf).
  """
  pads = []
  for size in x.shape[1:3]:
    if size < window:
      raise errors.UserError(
          f'A {window}x{window} max-pool ({name}) got a {x.shape[1]}x'
          f'{x.shape[2]} feature map: the input image is too small for this '
          'model (see its min_input_size).')
    n = -(-(size - window) // strides) + 1
    pads.append((0, (n - 1) * strides + window - size))
  return layers.Pool('max', (window, window), (strides, strides),
                     padding=tuple(pads), name=name)(x)


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BN (eps 1e-3) -> activation.

  [batch, H, W, C_in] -> [batch, H / strides, W / strides, features], with
  symmetric padding kernel // 2.
  """

  features: int
  kernel: int = 1
  strides: int = 1
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    conv, norm = layers.conv_and_norm(layers.as_dtype(self.dtype), train,
                                      kernel_init, epsilon=1e-3)
    p = self.kernel // 2
    x = conv(self.features, (self.kernel, self.kernel),
             (self.strides, self.strides), padding=((p, p), (p, p)),
             name='conv')(x)
    x = norm(name='bn')(x)
    return layers.get_activation(self.activation)(x)


class InceptionModule(nn.Module):
  """Inception module: parallel branches concatenated along channels.

  [batch, H, W, C_in] -> [batch, H, W, C_out]. With `bottleneck`
  (dimension reduction, the GoogLeNet module): 1x1 `c1` | 1x1 `c3_reduce` ->
  3x3 `c3` | 1x1 `c5_reduce` -> large `c5` | 3x3/1 max-pool -> 1x1
  `pool_proj`; C_out = c1 + c3 + c5 + pool_proj. Naive (`bottleneck=False`):
  1x1 `c1` | 3x3 `c3` | large `c5` | 3x3/1 max-pool, all on the input; the
  reduce/proj sizes are unused and C_out = c1 + c3 + c5 + C_in.

  Attributes:
    c1, c3_reduce, c3, c5_reduce, c5, pool_proj: filters of each conv.
    bottleneck: use the 1x1 reductions and pool projection.
    large_kernel: kernel size of the "5x5" branch (torchvision uses 3).
    activation: name in `cnn.layers.ACTIVATIONS`.
    dtype: compute dtype.
  """

  c1: int
  c3_reduce: int
  c3: int
  c5_reduce: int
  c5: int
  pool_proj: int
  bottleneck: bool = True
  large_kernel: int = 5
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    conv = lambda f, k, name: ConvBN(f, k, activation=self.activation,
                                     dtype=self.dtype, name=name)
    b1 = conv(self.c1, 1, 'branch1')(x, train=train)
    b2, b3 = x, x
    if self.bottleneck:
      b2 = conv(self.c3_reduce, 1, 'branch2_reduce')(b2, train=train)
      b3 = conv(self.c5_reduce, 1, 'branch3_reduce')(b3, train=train)
    b2 = conv(self.c3, 3, 'branch2')(b2, train=train)
    b3 = conv(self.c5, self.large_kernel, 'branch3')(b3, train=train)
    b4 = layers.Pool('max', (3, 3), (1, 1), 'SAME', name='branch4_pool')(x)
    if self.bottleneck:
      b4 = conv(self.pool_proj, 1, 'branch4_proj')(b4, train=train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class AuxHead(nn.Module):
  """Auxiliary classifier: [batch, H, W, C] (H, W >= 5) -> logits float32.

  5x5/3 average pool -> 1x1 conv `conv` -> FC `fc` -> activation -> dropout
  -> FC num_classes.
  """

  num_classes: int
  conv: int = 128
  fc: int = 1024
  dropout: float = 0.7
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    dtype = layers.as_dtype(self.dtype)
    if min(x.shape[1:3]) < 5:
      raise errors.UserError(
          f'The auxiliary classifier needs a feature map of at least 5x5, got '
          f'{x.shape[1]}x{x.shape[2]}: the input image is too small (or use '
          'aux_heads=False).')
    x = layers.Pool('avg', (5, 5), (3, 3), name='pool')(x)
    x = ConvBN(self.conv, 1, activation=self.activation, dtype=dtype,
               name='conv')(x, train=train)
    x = layers.Flatten(name='flatten')(x)
    x = nn.Dense(self.fc, dtype=dtype, kernel_init=kernel_init, name='fc1')(x)
    x = layers.get_activation(self.activation)(x)
    x = nn.Dropout(self.dropout, deterministic=not train, name='dropout')(x)
    x = nn.Dense(self.num_classes, dtype=dtype, kernel_init=kernel_init,
                 name='fc2')(x)
    return x.astype(jnp.float32)


class GoogLeNet(nn.Module):
  """GoogLeNet backbone: images [batch, H, W, C] -> pooled [batch, 1024].

  Parameter groups: `stem` (`stem_conv1`, `stem_conv2`, `stem_conv3`),
  `stage1` (`stage1_3a`, `stage1_3b`), `stage2` (4a-4e), `stage3` (5a, 5b),
  `aux1`, `aux2`. `out` holds `stem` (after the stem's last pool), `stage1`
  ... `stage3` (after each stage's last module) and, in training mode with
  `aux_heads`, `aux_logits`.

  Attributes:
    num_classes: classes of the auxiliary heads (filled by `create_model`).
    activation: name in `cnn.layers.ACTIVATIONS`.
    bottleneck: inception modules with 1x1 reductions (False: naive modules).
    aux_heads: add the two auxiliary classifiers (after 4a and 4d).
    large_kernel: kernel of the "5x5" branches (3 in torchvision).
    width: channel multiplier for all convs and the auxiliary heads.
    stem_kernel: kernel of the first conv (7; 3 for small images).
    stem_stride: stride of the first conv (2; 1 for small images).
    stem_pool: the stem's two 3x3/2 max-pools (False for small images).
    stages: the inception table, one tuple of (label, (#1x1, #3x3 reduce,
      #3x3, #5x5 reduce, #5x5, pool proj)) per stage; stages after the first
      start with a max-pool (3x3/2, then 2x2/2 as in torchvision).
    aux_after: labels of the modules followed by an auxiliary classifier.
    dtype: compute dtype.
  """

  num_classes: int = 1000
  activation: str = 'relu'
  bottleneck: bool = True
  aux_heads: bool = True
  large_kernel: int = 5
  width: float = 1.0
  stem_kernel: int = 7
  stem_stride: int = 2
  stem_pool: bool = True
  stages: Sequence[Sequence[tuple[str, Sequence[int]]]] = INCEPTION_STAGES
  aux_after: Sequence[str] = ('4a', '4d')
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    dtype = layers.as_dtype(self.dtype)
    scale = lambda c: max(1, round(c * self.width))
    conv = lambda f, k, s, name: ConvBN(scale(f), k, s, self.activation, dtype,
                                        name=name)
    x = x.astype(dtype)
    out = {}
    x = conv(64, self.stem_kernel, self.stem_stride, 'stem_conv1')(
        x, train=train)
    if self.stem_pool:
      x = ceil_max_pool(x, 3, 2, 'stem_pool1')
    x = conv(64, 1, 1, 'stem_conv2')(x, train=train)
    x = conv(192, 3, 1, 'stem_conv3')(x, train=train)
    if self.stem_pool:
      x = ceil_max_pool(x, 3, 2, 'stem_pool2')
    out['stem'] = x
    # Aux heads run in training only, but also at init so that their
    # parameters exist whichever mode the variables were created in.
    run_aux = self.aux_heads and (train or self.is_initializing())
    aux_logits = []
    for s, modules in enumerate(self.stages, start=1):
      if s > 1:
        x = ceil_max_pool(x, 3 if s == 2 else 2, 2, f'stage{s}_pool')
      for label, channels in modules:
        x = InceptionModule(
            *(scale(c) for c in channels), bottleneck=self.bottleneck,
            large_kernel=self.large_kernel, activation=self.activation,
            dtype=dtype, name=f'stage{s}_{label}')(x, train=train)
        if run_aux and label in self.aux_after:
          k = list(self.aux_after).index(label) + 1
          aux_logits.append(AuxHead(
              self.num_classes, conv=scale(128), fc=scale(1024),
              activation=self.activation, dtype=dtype,
              name=f'aux{k}')(x, train=train))
      out[f'stage{s}'] = x
    if train and aux_logits:
      out['aux_logits'] = aux_logits
    last = f'stage{len(self.stages)}'
    return layers.GlobalAvgPool(name=f'{last}_avgpool')(x), out


registry.register(
    'googlenet', GoogLeNet, input_shape=(224, 224, 3), num_classes=1000,
    min_input_size=79, head_dropout=0.4, reference_params=13_004_888,
    description='GoogLeNet / Inception v1 (torchvision, BN, with auxiliary '
                'heads): 13.0M parameters, 6.6M without aux heads',
    large_kernel=3)

registry.register(
    'googlenet_small', GoogLeNet, input_shape=(32, 32, 3), num_classes=10,
    min_input_size=10, head_dropout=0.4,
    description='GoogLeNet for 32x32 images: 3x3 stride-1 stem without pools, '
                'half width, 5x5 branches, auxiliary heads',
    width=0.5, stem_kernel=3, stem_stride=1, stem_pool=False)
