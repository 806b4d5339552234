"""`cnn.kernels.forms.BatchNorm` against `flax.linen.BatchNorm`: the same layer
(variables, outputs, gradients, running averages), applied in a form that
keeps one activation fewer for the backward pass."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn.kernels import forms

# Non-zero mean and non-unit spread per channel, as a convolution's output.
X = jnp.asarray(np.random.default_rng(0).normal(
    loc=np.linspace(-2, 3, 6), scale=np.linspace(0.5, 2, 6),
    size=(8, 5, 5, 6)).astype(np.float32))


def _both(**kwargs):
  return (nn.BatchNorm(momentum=0.9, **kwargs),
          forms.BatchNorm(momentum=0.9, **kwargs))


def _train_step(module, variables, x):
  """Output, updated batch stats and gradients of a scalar loss."""
  def loss(x, params):
    y, updates = module.apply({'params': params,
                               'batch_stats': variables['batch_stats']},
                              x, use_running_average=False,
                              mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y)), (y, updates['batch_stats'])
  (_, (y, stats)), grads = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(x, variables['params'])
  return y, stats, grads


@pytest.mark.parametrize('kwargs', [
    {},
    {'use_fast_variance': False},
    {'use_scale': False},
    {'use_bias': False, 'epsilon': 1e-3},
    {'axis': (-1,)},
])
def test_matches_flax_batch_norm_in_training_and_evaluation(kwargs):
  reference, ours = _both(**kwargs)
  variables = reference.init(jax.random.key(0), X, use_running_average=False)
  ours_variables = ours.init(jax.random.key(0), X, use_running_average=False)
  def layout(tree):
    return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)
  assert layout(ours_variables) == layout(variables)
  # Non-trivial parameters, so that scale and bias take part.
  variables = jax.tree_util.tree_map(lambda a: a * 1.5 + 0.25, variables)
  expected = _train_step(reference, variables, X)
  got = _train_step(ours, variables, X)
  for e, g in zip(jax.tree_util.tree_leaves(expected),
                  jax.tree_util.tree_leaves(got), strict=True):
    np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(
      ours.apply(variables, X, use_running_average=True),
      reference.apply(variables, X, use_running_average=True),
      rtol=1e-5, atol=1e-5)


def test_bfloat16_computation_keeps_float32_statistics():
  reference, ours = _both(dtype=jnp.bfloat16)
  variables = reference.init(jax.random.key(0), X, use_running_average=False)
  x = X.astype(jnp.bfloat16)
  y_ref, stats_ref, _ = _train_step(reference, variables, x)
  y, stats, _ = _train_step(ours, variables, x)
  assert y.dtype == y_ref.dtype == jnp.bfloat16
  assert stats['mean'].dtype == jnp.float32
  np.testing.assert_allclose(y.astype(np.float32), y_ref.astype(np.float32),
                             atol=0.05)
  for k in ('mean', 'var'):
    np.testing.assert_allclose(stats[k], stats_ref[k], rtol=1e-5, atol=1e-6)


def test_statistics_over_a_named_axis_match_flax():
  # Under vmap with axis_name (or shard_map), the moments are averaged over
  # the named axis as flax does.
  reference, ours = _both(axis_name='shards')
  variables = reference.init(jax.random.key(0), X, use_running_average=False)
  shards = X.reshape(2, 4, 5, 5, 6)

  def apply(module):
    return jax.vmap(
        lambda x: module.apply(variables, x, use_running_average=False,
                               mutable=['batch_stats']),
        axis_name='shards')(shards)

  (y_ref, stats_ref), (y, stats) = apply(reference), apply(ours)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(stats),
                  jax.tree_util.tree_leaves(stats_ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reference_mode_is_flax_batch_norm_exactly():
  reference, ours = _both()
  variables = reference.init(jax.random.key(0), X, use_running_average=False)
  with forms.reference_convolutions():
    got = _train_step(ours, variables, X)
  expected = _train_step(reference, variables, X)
  for e, g in zip(jax.tree_util.tree_leaves(expected),
                  jax.tree_util.tree_leaves(got), strict=True):
    np.testing.assert_array_equal(g, e)


def test_mask_is_refused_clearly():
  _, ours = _both()
  variables = ours.init(jax.random.key(0), X, use_running_average=True)
  with pytest.raises(NotImplementedError, match='mask'):
    ours.apply(variables, X, use_running_average=True,
               mask=jnp.ones(X.shape, bool))


class _ConvNormStack(nn.Module):
  norm: type

  @nn.compact
  def __call__(self, x):
    for _ in range(4):
      x = nn.Conv(8, (3, 3), use_bias=False)(x)
      x = nn.relu(self.norm(use_running_average=False)(x))
    return x.sum()


def test_gradient_program_keeps_one_activation_fewer_per_layer():
  # The reason for the layer: flax's form makes XLA keep `x - mean` besides
  # `x` for the backward pass (measured: 13 vs 9 activation-sized temporary
  # buffers for four conv + batch-norm + ReLU layers on CPU).
  x = jnp.asarray(np.random.default_rng(1).normal(
      size=(32, 16, 16, 8)).astype(np.float32))

  def temp_bytes(norm):
    model = _ConvNormStack(norm)
    variables = model.init(jax.random.key(0), x)

    def loss(params):
      return model.apply({'params': params,
                          'batch_stats': variables['batch_stats']}, x,
                         mutable=['batch_stats'])[0]
    compiled = jax.jit(jax.grad(loss)).lower(variables['params']).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  flax_bytes, ours_bytes = temp_bytes(nn.BatchNorm), temp_bytes(
      forms.BatchNorm)
  assert ours_bytes <= flax_bytes - 3 * x.nbytes, (ours_bytes, flax_bytes)
