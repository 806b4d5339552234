"""The one interface every model shares: a backbone and a classification head.

A backbone maps images [batch, H, W, C] to `(pre_logits, out)`, where
`pre_logits` is [batch, features] and `out` is a dict of named intermediates
(`stem`, `stage1`, ..., `pre_logits`; models with auxiliary heads add
`aux_logits` in training mode only). Its top-level submodules are named after
the stages (`stem`, `stage1`, ...), so parameter groups for freezing and
per-group learning rates are the top-level keys of `params['backbone']`.

`Classifier` adds the head, a single Dense layer named `head`, so the head can
be replaced for a new number of classes without touching the backbone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers

Array = jax.Array


class Classifier(nn.Module):
  """backbone -> (optional dropout) -> Dense(num_classes) named `head`.

  Attributes:
    backbone: module returning `(pre_logits [batch, F], out dict)`.
    num_classes: number of output logits.
    head_dropout: dropout rate on pre_logits during training.
    dtype: compute dtype of the head (parameters stay float32).
  """

  backbone: nn.Module
  num_classes: int
  head_dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.dropout = nn.Dropout(self.head_dropout)
    self.head = nn.Dense(self.num_classes, dtype=layers.as_dtype(self.dtype))

  def features(self, x: Array, *, train: bool = False) -> tuple[Array, dict]:
    """Backbone only: returns `(pre_logits [batch, F], out)`."""
    return self.backbone(x, train=train)

  def classify(self, pre_logits: Array, *, train: bool = False) -> Array:
    """Head only: [batch, F] -> logits [batch, num_classes] (float32)."""
    x = self.dropout(pre_logits, deterministic=not train)
    return self.head(x).astype(jnp.float32)

  def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, dict]:
    """Images [batch, H, W, C] -> (logits [batch, num_classes], out)."""
    pre_logits, out = self.features(x, train=train)
    logits = self.classify(pre_logits, train=train)
    out = dict(out, pre_logits=pre_logits, logits=logits)
    return logits, out
