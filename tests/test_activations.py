"""The activations issue #35's studies add (selu, identity) and the kernel
initialiser an activation selects (SELU: LeCun normal, Klambauer et al.
2017)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import layers
from cnn.models import registry, resnet

SELU_LAMBDA, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


def test_selu_known_values():
  x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0])
  expected = np.where(x > 0, SELU_LAMBDA * x,
                      SELU_LAMBDA * SELU_ALPHA * np.expm1(np.asarray(x)))
  np.testing.assert_allclose(layers.get_activation('selu')(x), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(layers.get_activation('selu')(jnp.array(1.0)),
                             1.0507, atol=1e-4)


def test_identity_is_no_nonlinearity():
  x = jnp.linspace(-2, 2, 7)
  np.testing.assert_array_equal(layers.get_activation('identity')(x), x)


def test_kernel_init_follows_activation_only_for_selu():
  family = object()
  assert layers.kernel_init_for('relu', family) is family
  assert layers.kernel_init_for('identity', family) is family
  assert layers.kernel_init_for('selu', family) is not family


def _kernel_inits(name, **options):
  """{module path: (kernel shape, the kernel_init the model gave it)} of
  `name`'s backbone, from a shape-only trace (no compile of the model)."""
  model = registry.create_model(name, **options)
  shape = registry.get_spec(name).input_shape
  inits = {}

  def record(next_fun, args, kwargs, context):
    if hasattr(context.module, 'kernel_init'):
      inits['/'.join(context.module.path[1:])] = context.module.kernel_init
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    params = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, *shape))))['params']['backbone']
  return {'/'.join(k.key for k in path[:-1]): (leaf.shape, inits[
      '/'.join(k.key for k in path[:-1])])
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)
          if path[-1].key == 'kernel'}


def _sample(inits, paths):
  """Kernels of `paths` drawn by their initialisers, in one small program."""
  return jax.jit(lambda key: {p: inits[p][1](key, inits[p][0])
                              for p in paths})(jax.random.PRNGKey(0))


@pytest.mark.parametrize('name,big', [('lenet5', 'f5'),
                                      ('plain20', 'stage3_block3/conv2')])
def test_selu_kernels_have_variance_one_over_fan_in(name, big):
  inits = _kernel_inits(name, activation='selu')
  lecun = layers.ACTIVATION_KERNEL_INITS['selu']
  assert len(inits) == {'lenet5': 4, 'plain20': 19}[name]
  assert all(init is lecun for _, init in inits.values()), inits
  # Sampled: variance 1 / fan_in (fan_in = KH * KW * C_in, or the Dense
  # input size), to the sampling error of tens of thousands of weights.
  k = np.asarray(_sample(inits, [big])[big])
  assert abs(k.var() * np.prod(k.shape[:-1]) - 1) < 0.03


def test_resnet_keeps_he_init_for_relu():
  inits = _kernel_inits('plain20')
  assert all(init is resnet.conv_init for _, init in inits.values())
  path = 'stage3_block3/conv2'  # 3x3x64x64, fan_out 576.
  k = np.asarray(_sample(inits, [path])[path])
  fan_out = np.prod(k.shape[:2]) * k.shape[-1]
  assert abs(k.var() * fan_out / 2 - 1) < 0.03
