"""The one model interface: backbone and head apart, head replacement,
parameter groups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn.models import base, registry


def _init(name, input_shape, **kw):
  model = registry.create_model(name, **kw)
  variables = jax.jit(lambda k: model.init(
      k, jnp.zeros((1, *input_shape), jnp.float32)))(jax.random.key(0))
  return model, variables


def test_features_then_classify_equals_the_whole_model():
  model, variables = _init('lenet5', (28, 28, 1))
  x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
  logits, out = model.apply(variables, x)
  pre_logits, _ = model.apply(variables, x, method='features')
  again = model.apply(variables, pre_logits, method='classify')
  np.testing.assert_allclose(again, logits, rtol=1e-6)
  np.testing.assert_allclose(out['pre_logits'], pre_logits, rtol=1e-6)
  assert pre_logits.shape == (3, 84)


# A CIFAR ResNet with one block per stage: every group, a third of the ops.
RESNET_ONE_BLOCK = dict(stage_sizes=(1, 1, 1))


def test_parameter_groups_follow_the_stages():
  _, variables = _init('resnet20', (32, 32, 3), **RESNET_ONE_BLOCK)
  labels = base.param_group_labels(variables['params'])
  groups = set(jax.tree.leaves(labels))
  assert groups == {'stem', 'stage1', 'stage2', 'stage3', 'head'}
  # The labels drive optax directly: freeze everything but the head.
  tx = optax.multi_transform(
      {g: optax.set_to_zero() for g in groups - {'head'}} | {
          'head': optax.sgd(0.1)}, labels)
  params = variables['params']
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates['head']['kernel']).sum()) > 0
  assert all(float(jnp.abs(u).sum()) == 0 for u in
             jax.tree.leaves(updates['backbone']))


def test_replace_head_keeps_the_backbone_and_resizes_the_head():
  model, initial = _init('resnet20', (32, 32, 3), **RESNET_ONE_BLOCK)
  # Statistics as training leaves them: the initial ones (mean 0, variance
  # 1) are what a fresh head's initialisation makes too, so keeping them
  # would prove nothing.
  variables = dict(initial, batch_stats=jax.tree.map(
      lambda s: 1.5 * s + 0.25, initial['batch_stats']))
  new_model, new_vars = base.replace_head(
      model, variables, 7, jax.random.key(5), (32, 32, 3))
  assert new_vars['params']['head']['kernel'].shape == (64, 7)
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                      variables['params']['backbone'],
                      new_vars['params']['backbone'])
  assert all(jax.tree.leaves(same))
  kept = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                      variables['batch_stats'], new_vars['batch_stats'])
  assert jax.tree.leaves(kept) and all(jax.tree.leaves(kept))
  reset = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                       initial['batch_stats'], new_vars['batch_stats'])
  assert not any(jax.tree.leaves(reset))
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  logits, _ = new_model.apply(new_vars, x)
  assert logits.shape == (2, 7)
  # Evaluation uses the statistics: the features are those of the old model.
  old_pre, _ = model.apply(variables, x, method='features')
  new_pre, _ = new_model.apply(new_vars, x, method='features')
  np.testing.assert_array_equal(old_pre, new_pre)
