"""Vision Transformer (Dosovitskiy et al., 2021).

The image is cut into non-overlapping p x p patches, each linearly embedded
(a p x p conv with stride p), a learned class token is prepended and learned
position embeddings are added; pre-LayerNorm transformer blocks
(x + MHA(LN(x)), x + MLP(LN(x))) follow, and the final LayerNorm of the class
token is the feature vector. There are no convolution stages: `stem` is the
patch embedding [batch, H/p, W/p, hidden] and `stage{i}` the token sequence
[batch, 1 + HW/p^2, hidden] after the i-th group of blocks.

vit_b16 matches torchvision's vit_b_16 (86,567,656 parameters at 224x224 with
1000 classes). Its position embeddings have one row per patch of the natural
input, so a model initialised at one resolution only runs at that resolution.
GELU here is flax's (tanh approximation), torchvision's is exact: same
parameters, slightly different function.
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


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: [batch, tokens, hidden] -> same shape.

  Attributes:
    num_heads: attention heads (hidden must be divisible by it).
    mlp_dim: hidden width of the MLP.
    act: MLP activation.
    dropout: dropout after attention and in the MLP.
    attention_dropout: dropout on attention weights.
    deterministic: no dropout (evaluation).
    dtype: compute dtype.
  """

  num_heads: int
  mlp_dim: int
  act: Callable[[Array], Array]
  dropout: float = 0.0
  attention_dropout: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    hidden = x.shape[-1]
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='ln1')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.attention_dropout, deterministic=self.deterministic,
        name='attention')(y)
    y = nn.Dropout(self.dropout, deterministic=self.deterministic)(y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='ln2')(x)
    y = self.act(nn.Dense(self.mlp_dim, dtype=self.dtype, name='mlp1')(y))
    y = nn.Dropout(self.dropout, deterministic=self.deterministic)(y)
    y = nn.Dense(hidden, dtype=self.dtype, name='mlp2')(y)
    y = nn.Dropout(self.dropout, deterministic=self.deterministic)(y)
    return x + y


class ViT(nn.Module):
  """ViT backbone: images [batch, H, W, C] -> class token features [batch, D].

  Submodules and parameters: `stem_patch_embed` (conv), `stem_cls_token`,
  `stem_pos_embedding`, `stage{i}_block{j}` and `stage{N}_ln` (final norm).

  Attributes:
    patch_size: patch height and width p, in pixels (H, W divisible by p).
    hidden: token width D.
    stage_sizes: encoder blocks per stage (parameter group / `out` entry);
      depth = sum(stage_sizes).
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    dropout: dropout rate after the embeddings, attention and MLP.
    attention_dropout: dropout rate on attention weights.
    remat: recompute each block in the backward pass (`nn.remat`).
    activation: MLP activation, name in `cnn.layers.ACTIVATIONS`.
    dtype: compute dtype.
  """

  patch_size: int = 16
  hidden: int = 768
  stage_sizes: Sequence[int] = (3, 3, 3, 3)
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout: float = 0.0
  attention_dropout: float = 0.0
  remat: bool = False
  activation: str = 'gelu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    dtype = layers.as_dtype(self.dtype)
    act = layers.get_activation(self.activation)
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise errors.UserError(f'Image size {x.shape[1]}x{x.shape[2]} is not '
                       f'divisible by the patch size {p}.')
    block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock

    out = {}
    x = x.astype(dtype)
    x = layers.conv(dtype)(self.hidden, (p, p), strides=p, padding='VALID',
                           name='stem_patch_embed')(x)
    out['stem'] = x
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = self.param('stem_cls_token', nn.initializers.zeros, (1, 1, d))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(dtype), x],
                        axis=1)
    pos = self.param('stem_pos_embedding', nn.initializers.normal(0.02),
                     (1, 1 + h * w, d))
    x = x + pos.astype(dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    n = len(self.stage_sizes)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block_cls(self.num_heads, self.mlp_dim, act, self.dropout,
                      self.attention_dropout, deterministic=not train,
                      dtype=dtype, name=f'stage{i + 1}_block{j + 1}')(x)
      if i == n - 1:
        x = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=f'stage{i + 1}_ln')(x)
      out[f'stage{i + 1}'] = x
    return x[:, 0], out


registry.register(
    'vit_b16', ViT, input_shape=(224, 224, 3), num_classes=1000,
    min_input_size=16, reference_params=86_567_656,
    description='ViT-B/16 (12 blocks, D=768, 12 heads, torchvision), '
    '86,567,656 params at 224x224')

# DeiT-Tiny's width (D=192, 3 heads, MLP 768, 12 blocks) on 32x32 images with
# 4x4 patches: 64 patch tokens + the class token.
registry.register(
    'vit_tiny', ViT, input_shape=(32, 32, 3), num_classes=10, min_input_size=4,
    description='ViT-Tiny for 32x32 (patch 4, 12 blocks, D=192, 3 heads)',
    patch_size=4, hidden=192, stage_sizes=(3, 3, 3, 3), num_heads=3,
    mlp_dim=768)
