"""The oneDNN convolution kernel (cnn/kernels) against `lax.conv`."""

from __future__ import annotations

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn.common import errors
from cnn.kernels import forms, onednn
from tests.helpers import assert_conv_matches_lax

DN = ('NHWC', 'HWIO', 'NHWC')
LINUX_X86 = sys.platform.startswith('linux') and platform.machine() == 'x86_64'


def test_kernel_is_built_where_setup_builds_it():
  # scripts/setup.sh builds it on Linux x86-64; a silent fallback to XLA's
  # convolutions would cost CIFAR ResNets 2.5x of their CPU speed.
  if not LINUX_X86:
    pytest.skip('the kernel is built on Linux x86-64 only')
  assert onednn.available(), 'run python -m cnn.kernels.build'


needs_kernel = pytest.mark.skipif(
    not onednn.available(), reason='oneDNN kernel not built')


@needs_kernel
@pytest.mark.parametrize('x_shape, k_shape, strides, pads', [
    ((4, 32, 32, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1))),  # CIFAR
    ((4, 32, 32, 16), (3, 3, 16, 32), (2, 2), ((1, 1), (1, 1))),  # downsample
    ((4, 16, 16, 16), (1, 1, 16, 32), (2, 2), ((0, 0), (0, 0))),  # option B
    ((2, 35, 33, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),     # 7x7 stem
    ((3, 9, 11, 5), (3, 2, 5, 7), (2, 3), ((0, 1), (1, 0))),      # asymmetric
    ((1, 5, 5, 1), (5, 5, 1, 1), (1, 1), ((0, 0), (0, 0))),       # 1x1 output
    ((7, 12, 12, 6), (3, 3, 6, 10), (2, 2), ((1, 1), (1, 1))),    # ragged
])
def test_conv2d_matches_lax_conv_and_its_gradients(x_shape, k_shape, strides,
                                                   pads):
  assert_conv_matches_lax(lambda x, k: onednn.conv2d(x, k, strides, pads),
                          x_shape, k_shape, strides, pads)


@needs_kernel
def test_conv2d_under_remat_and_second_call_reuses_the_plan():
  x = jnp.ones((2, 8, 8, 4))
  k = jnp.full((3, 3, 4, 4), 0.1)
  pads = ((1, 1), (1, 1))

  def loss(k):
    y = jax.checkpoint(lambda k: onednn.conv2d(x, k, (1, 1), pads))(k)
    return jnp.sum(jax.nn.relu(y) ** 2)

  def reference(k):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=DN)
    return jnp.sum(jax.nn.relu(y) ** 2)

  for _ in range(2):
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(k),
                               jax.grad(reference)(k), rtol=1e-5)


@needs_kernel
def test_conv2d_under_vmap_matches_lax_conv():
  rng = np.random.default_rng(6)
  xs = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
  pads = ((1, 1), (1, 1))
  loss = lambda conv: lambda k, x: jnp.sum(conv(x, k) ** 2)
  ours = lambda x, k: onednn.conv2d(x, k, (1, 1), pads)
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), pads,
                                                  dimension_numbers=DN)
  got = jax.vmap(jax.grad(loss(ours)), (None, 0))(k, xs)
  want = jax.vmap(jax.grad(loss(ref)), (None, 0))(k, xs)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_weight_gradient_is_deterministic():
  # Chunks run on whichever thread takes them; their partial sums are added
  # in chunk order, so repeated calls agree bit for bit.
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(33, 16, 16, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 16, 16)), jnp.float32)
  grad = jax.jit(jax.grad(
      lambda k: jnp.sum(onednn.conv2d(x, k, (1, 1), ((1, 1), (1, 1))) ** 2)))
  first = np.asarray(grad(k))
  for _ in range(5):
    np.testing.assert_array_equal(np.asarray(grad(k)), first)


@needs_kernel
def test_auto_chooses_onednn_for_resnet_convolutions_on_cpu():
  if jax.default_backend() != 'cpu' or jax.device_count() != 1:
    pytest.skip('one CPU device')
  conv = forms.Conv(16, (3, 3), padding=1)
  assert conv.choose_impl(32, 16) == 'onednn'
  assert conv.choose_impl(32, 16, jnp.bfloat16) == (
      'onednn' if onednn.supports(jnp.bfloat16) else 'xla')
  assert conv.choose_impl(32, 16, jnp.float16) == 'xla'
  grouped = forms.Conv(16, (3, 3), padding=1, feature_group_count=16)
  assert grouped.choose_impl(32, 16) == 'xla'
  with forms.reference_convolutions():
    assert conv.choose_impl(32, 16) == 'xla'


@needs_kernel
def test_onednn_impl_refuses_an_unsupported_dtype_with_a_clear_message():
  conv = forms.Conv(16, (3, 3), padding=1)
  with forms.use_conv_impl('onednn'), pytest.raises(
      errors.UserError, match='cannot compute in float16'):
    conv.choose_impl(32, 16, jnp.float16)
  with pytest.raises(TypeError, match='one dtype'):
    onednn.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1), jnp.bfloat16),
                  (1, 1), ((1, 1), (1, 1)))


@pytest.mark.skipif(not onednn.supports(jnp.bfloat16),
                    reason='no oneDNN bfloat16 kernels on this CPU')
def test_bfloat16_conv2d_is_close_to_float32_and_keeps_its_dtype():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(9, 16, 16, 16)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(3, 3, 16, 32)) * 0.1, jnp.bfloat16)
  pads = ((1, 1), (1, 1))

  def ours(x, k):
    return onednn.conv2d(x, k, (2, 2), pads)

  def reference(x, k):  # the same bfloat16 inputs, computed in float32
    return jax.lax.conv_general_dilated(
        x.astype(jnp.float32), k.astype(jnp.float32), (2, 2), pads,
        dimension_numbers=DN)

  got, want = jax.jit(ours)(x, k), reference(x, k)
  assert got.dtype == jnp.bfloat16
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.01 * scale)
  cot = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  grads = jax.vjp(ours, x, k)[1](cot.astype(jnp.bfloat16))
  grads_want = jax.vjp(reference, x.astype(jnp.float32),
                       k.astype(jnp.float32))[1](cot)
  for g, w in zip(grads, grads_want, strict=True):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(jnp.float32), w,
                               atol=0.01 * float(jnp.abs(w).max()))


def test_unknown_conv_impl_is_refused():
  with pytest.raises(errors.UserError, match="'auto', 'xla'"):
    with forms.use_conv_impl('cudnn'):
      pass


@needs_kernel
def test_bfloat16_support_is_probed_even_when_first_asked_while_tracing():
  # Models ask while they are traced; a probe staged into that trace would
  # never fail, and an unsupported dtype would then fail at run time.
  outside = onednn.supports(jnp.bfloat16)
  onednn.supports.cache_clear()
  inside = []
  try:
    jax.jit(lambda x: inside.append(onednn.supports(jnp.bfloat16)) or x)(1.0)
  finally:
    onednn.supports.cache_clear()
  assert inside == [outside]
