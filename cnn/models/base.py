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

import dataclasses
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


def param_group(path: tuple[str, ...]) -> str:
  """The parameter group of a parameter path, e.g. ('backbone',
  'stage2_block1', 'conv1', 'kernel') -> 'stage2'; ('head', 'bias') -> 'head'.

  Groups are what freezing and per-group learning rates act on: the head, and
  the backbone's top-level modules up to the first '_' (`stem`, `stage1`, ...,
  `aux1`; LeNet-5's layers `c1`, `s2`, ...).
  """
  if path[0] != 'backbone':
    return path[0]
  return path[1].split('_')[0]


def backbone_groups(model: nn.Module, image_shape: tuple[int, ...]
                    ) -> list[str]:
  """The backbone's parameter groups in the order the network applies them
  to an image of `image_shape` (H, W, C): ['stem', 'stage1', ...].

  Read off a shape-only trace of `model.init`: parameter trees come back
  with their keys sorted ('stage1' < 'stem'), so their order says nothing.
  Groups never applied in eval mode (auxiliary heads) come last, sorted.
  """
  order = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if len(path) >= 2 and path[0] == 'backbone':
      group = param_group(tuple(path))
      if group not in order:
        order.append(group)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    params = jax.eval_shape(lambda: model.init(
        {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
        jnp.zeros((1, *image_shape), jnp.float32), train=False))['params']
  with_params = {param_group(('backbone', k)) for k in params.get('backbone',
                                                                  {})}
  return ([g for g in order if g in with_params] +
          sorted(with_params - set(order)))


def param_group_labels(params) -> Any:
  """A pytree like `params` whose leaves are their group names (the labels
  `optax.multi_transform` takes)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_group(tuple(k.key for k in path)), params)


def replace_head(model: Classifier, variables: dict, num_classes: int,
                 rng: jax.Array, input_shape: tuple[int, int, int]
                 ) -> tuple[Classifier, dict]:
  """The same network with a new `num_classes`-way head (transfer learning).

  The backbone's variables are kept; the head (and auxiliary heads, whose
  shapes depend on the class count) are freshly initialised from `rng`.

  Args:
    model: a `Classifier` from `registry.create_model`.
    variables: its variables ({'params': ..., 'batch_stats': ...}).
    num_classes: the new number of classes.
    rng: PRNG key for the new head.
    input_shape: (height, width, channels) of the inputs, for initialisation.

  Returns:
    (new model, new variables).
  """
  backbone = model.backbone
  if 'num_classes' in {f.name for f in dataclasses.fields(backbone)}:
    backbone = backbone.clone(num_classes=num_classes)
  new_model = model.clone(backbone=backbone, num_classes=num_classes)
  fresh = jax.jit(lambda key: new_model.init(
      {'params': key, 'dropout': key},
      jnp.zeros((1, *input_shape), jnp.float32)))(rng)

  def keep_old(path, new_leaf):
    old_leaf = _get(variables, [k.key for k in path])
    same = old_leaf is not None and old_leaf.shape == new_leaf.shape
    keep = same and param_group(tuple(k.key for k in path[1:])) != 'head'
    return old_leaf if keep else new_leaf

  return new_model, jax.tree_util.tree_map_with_path(keep_old, fresh)


def _get(tree, keys):
  for k in keys:
    if not hasattr(tree, 'get') or k not in tree:
      return None
    tree = tree[k]
  return tree
