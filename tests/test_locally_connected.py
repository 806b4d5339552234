"""`cnn.layers.LocallyConnected`: a filter per output position, against a
numpy loop, against a convolution when every position shares one filter,
and counted by the size accounting as by hand."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import layers, summary


def _numpy_locally_connected(x, kernel, bias, k, stride):
  """out[n, i, j, f] = sum over the window at (i, j) of x * kernel[i, j]."""
  n, _, _, c = x.shape
  out_h, out_w, _, f = kernel.shape
  out = np.zeros((n, out_h, out_w, f))
  for i in range(out_h):
    for j in range(out_w):
      window = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j] = window.reshape(n, k * k * c) @ kernel[i, j] + bias[i, j]
  return out


@pytest.mark.parametrize('stride', [1, 2])
def test_matches_a_numpy_loop(stride):
  x = np.random.default_rng(0).normal(size=(2, 7, 7, 2)).astype(np.float32)
  module = layers.LocallyConnected(4, (3, 3), strides=(stride, stride))
  variables = module.init(jax.random.PRNGKey(0), x)
  variables = jax.tree.map(  # a non-zero bias too.
      lambda v: v + np.float32(0.1), variables)
  got = module.apply(variables, x)
  want = _numpy_locally_connected(x, np.asarray(variables['params']['kernel']),
                                  np.asarray(variables['params']['bias']), 3,
                                  stride)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_one_shared_filter_is_a_convolution():
  x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
  conv = nn.Conv(5, (3, 3), padding='SAME')
  conv_vars = conv.init(jax.random.PRNGKey(1), x)
  kernel = conv_vars['params']['kernel']  # [3, 3, C, F], offsets major.
  local = layers.LocallyConnected(5, (3, 3), padding='SAME')
  shared = {'params': {
      'kernel': jnp.broadcast_to(kernel.reshape(1, 1, 27, 5), (6, 6, 27, 5)),
      'bias': jnp.broadcast_to(conv_vars['params']['bias'], (6, 6, 5))}}
  np.testing.assert_allclose(local.apply(shared, x), conv.apply(conv_vars, x),
                             rtol=1e-5, atol=1e-5)


class _Tiny(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    return layers.LocallyConnected(3, (3, 3))(x)


def test_size_accounting_by_hand():
  # 8x8x2 -> 6x6x3 with 3x3 windows: 36 positions, each with its own
  # 3*3*2 x 3 filter (54 weights) and 3 biases.
  (row,) = summary.summarize(_Tiny(), (8, 8, 2)).rows
  assert row.type == 'LocallyConnected'
  assert row.params == 36 * (54 + 3) == 2052
  assert row.params_without_bias == 36 * 54
  # The convolution of the same shape has the same connections (1,944)
  # with 57 weights instead of 2,052: weight sharing saves the factor 36.
  assert row.connections == row.macs == 36 * 3 * 18 == 1944
  assert row.units == 108 and row.rf == (3, 3)
