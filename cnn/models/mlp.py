"""A multilayer perceptron on raw pixels: the baseline conv nets improve on.

Images are flattened to vectors, so every hidden unit sees the whole image and
no weight is shared between locations. The lectures' count: a fully connected
layer from a W x H x J map to a W x H x I map has W^2 H^2 I J weights, a
K x K convolution between the same maps only K^2 I J; e.g. a 200x200x3 image
into 1,000 hidden units already takes 120 million weights.

Default `mlp` (28x28x1 images, 10 classes): 784 -> 512 -> 256 -> 10, i.e.
784*512 + 512 + 512*256 + 256 + 256*10 + 10 = 535,818 parameters.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.models import registry


class MLP(nn.Module):
  """Flatten -> hidden Dense layers: images [batch, H, W, C] -> [batch, F].

  Parameter groups: `stage1`, `stage2`, ... (one per hidden layer,
  `stage1_dense`). `out` holds `stem` (the flattened image [batch, H*W*C])
  and `stage1`, ... (each hidden layer's activations).

  Attributes:
    activation: name in `cnn.layers.ACTIVATIONS`.
    hidden: sizes of the hidden layers; F = hidden[-1] (the input size when
      empty, which makes the model a linear classifier).
    dropout: dropout rate after each hidden layer but the last (the last one's
      is the classifier's `head_dropout`).
    dtype: compute dtype.
  """

  activation: str = 'relu'
  hidden: Sequence[int] = (512, 256)
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    act = layers.get_activation(self.activation)
    dtype = layers.as_dtype(self.dtype)
    x = layers.Flatten(name='stem_flatten')(x.astype(dtype))
    out = {'stem': x}
    for i, features in enumerate(self.hidden, start=1):
      if i > 1 and self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train,
                       name=f'stage{i}_dropout')(x)
      x = out[f'stage{i}'] = act(
          nn.Dense(features, dtype=dtype, name=f'stage{i}_dense')(x))
    return x, out


registry.register(
    'mlp', MLP, input_shape=(28, 28, 1), num_classes=10, min_input_size=1,
    reference_params=535_818,
    description='Multilayer perceptron on pixels: 784-512-256-10 '
                '(535,818 parameters), the fully connected baseline')
