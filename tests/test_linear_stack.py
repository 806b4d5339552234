"""Depth without a non-linearity adds nothing: two stacked convolutions are
one convolution (`cnn.fundamentals.compose_conv_kernels`), checked against
the numpy reference `conv2d_nhwc`."""

import numpy as np
import pytest

from cnn import fundamentals as F


@pytest.mark.parametrize('k1_size,k2_size', [(3, 3), (5, 3), (1, 2)])
def test_two_linear_convs_are_one(k1_size, k2_size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 8, 3))
  k1 = rng.normal(size=(k1_size, k1_size, 3, 4))
  k2 = rng.normal(size=(k2_size, k2_size, 4, 5))
  k = F.compose_conv_kernels(k1, k2)
  assert k.shape == (k1_size + k2_size - 1,) * 2 + (3, 5)
  stacked = F.conv2d_nhwc(F.conv2d_nhwc(x, k1), k2)
  np.testing.assert_allclose(F.conv2d_nhwc(x, k), stacked, rtol=1e-10,
                             atol=1e-10)


def test_one_channel_composition_is_full_convolution():
  # Per channel, the composed kernel is the full convolution of the two
  # (cross-correlation twice = correlation with their convolution).
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(3, 3)), rng.normal(size=(2, 2))
  k = F.compose_conv_kernels(a[..., None, None], b[..., None, None])
  np.testing.assert_allclose(k[..., 0, 0], F.convolve(a, b, 'full'),
                             atol=1e-12)


def test_relu_between_breaks_the_collapse():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 7, 7, 2))
  k1, k2 = rng.normal(size=(3, 3, 2, 3)), rng.normal(size=(3, 3, 3, 2))
  nonlinear = F.conv2d_nhwc(np.maximum(F.conv2d_nhwc(x, k1), 0), k2)
  one = F.conv2d_nhwc(x, F.compose_conv_kernels(k1, k2))
  assert not np.allclose(nonlinear, one)


def test_mismatched_channels_fail():
  with pytest.raises(ValueError, match='channels'):
    F.compose_conv_kernels(np.zeros((3, 3, 1, 4)), np.zeros((3, 3, 2, 1)))
