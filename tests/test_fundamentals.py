"""Tests for cnn.fundamentals: lecture examples and agreement with libraries."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from cnn import fundamentals as F

MODES = ('full', 'valid', 'same')
_rng = np.random.default_rng(0)


def _rand(*shape: int) -> np.ndarray:
  return _rng.standard_normal(shape)


# --- Lecture worked examples (CSC421 lecture 4 and the CNN lecture). -------


def test_lecture_1d_example():
  np.testing.assert_array_equal(
      F.convolve([2, -1, 1], [1, 1, 2]), [2, 1, 4, -1, 2])
  # Convolution is commutative, so either operand can play the kernel.
  np.testing.assert_array_equal(
      F.convolve([1, 1, 2], [2, -1, 1]), [2, 1, 4, -1, 2])


def test_lecture_1d_matrix_form():
  t = F.toeplitz_matrix([1, 1, 2], 3)
  lecture_matrix = [[1, 0, 0], [1, 1, 0], [2, 1, 1], [0, 2, 1], [0, 0, 2]]
  np.testing.assert_array_equal(t, lecture_matrix)
  np.testing.assert_array_equal(t @ [2, -1, 1], [2, 1, 4, -1, 2])


def test_lecture_2d_example():
  a = [[1, 3, 1], [0, -1, 1], [2, 2, -1]]
  b = [[1, 2], [0, -1]]
  expected = [[1, 5, 7, 2], [0, -2, -4, 1], [2, 6, 4, -3], [0, -2, -2, 1]]
  np.testing.assert_array_equal(F.convolve(a, b), expected)
  m = F.doubly_block_toeplitz(np.array(b), (3, 3))
  np.testing.assert_array_equal(
      (m @ np.ravel(a)).reshape(4, 4), expected)


def test_lecture_convolved_feature():
  # The sliding-window example: 5x5 binary image, X-shaped 3x3 filter; the
  # slide shows the first output, 4 (the rest is the standard figure).
  image = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1],
                    [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
  kernel = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
  np.testing.assert_array_equal(
      F.correlate(image, kernel, 'valid'), [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


def test_convolution_is_commutative_and_linear():
  a, b, c = _rand(7), _rand(4), _rand(4)
  np.testing.assert_allclose(F.convolve(a, b), F.convolve(b, a))
  np.testing.assert_allclose(
      F.convolve(a, 2 * b - 3 * c),
      2 * F.convolve(a, b) - 3 * F.convolve(a, c))


# --- Agreement with numpy / scipy. ------------------------------------------


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('k_len', [1, 2, 3, 4, 7])
def test_convolve_1d_matches_numpy(mode, k_len):
  x, k = _rand(9), _rand(k_len)
  np.testing.assert_allclose(F.convolve(x, k, mode), np.convolve(x, k, mode))


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('k_len', [2, 3, 4])
def test_correlate_1d_matches_scipy(mode, k_len):
  x, w = _rand(9), _rand(k_len)
  np.testing.assert_allclose(
      F.correlate(x, w, mode),
      scipy.signal.correlate2d(x[None], w[None], mode)[0])
  if mode != 'same' or k_len % 2:
    # np.correlate anchors even kernels one step the other way in 'same'.
    np.testing.assert_allclose(
        F.correlate(x, w, mode), np.correlate(x, w, mode))


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('k_shape', [(3, 3), (2, 2), (2, 4), (4, 1), (5, 3)])
def test_2d_matches_scipy(mode, k_shape):
  x, k = _rand(6, 7), _rand(*k_shape)
  np.testing.assert_allclose(
      F.convolve(x, k, mode), scipy.signal.convolve2d(x, k, mode))
  np.testing.assert_allclose(
      F.correlate(x, k, mode), scipy.signal.correlate2d(x, k, mode))


@pytest.mark.parametrize('k_shape', [(3,), (4,), (3, 3), (2, 3)])
def test_correlation_is_convolution_with_flipped_kernel(k_shape):
  x, k = _rand(*(6,) * len(k_shape)), _rand(*k_shape)
  for mode in ('full', 'valid'):
    np.testing.assert_allclose(
        F.correlate(x, k, mode), F.convolve(x, F.flip(k), mode))
  if all(n % 2 for n in k_shape):
    np.testing.assert_allclose(
        F.correlate(x, k, 'same'), F.convolve(x, F.flip(k), 'same'))
  # An asymmetric kernel really gives different answers.
  assert not np.allclose(F.correlate(x, k), F.convolve(x, k))


def test_bad_operands_raise():
  with pytest.raises(ValueError, match='valid modes'):
    F.convolve(_rand(5), _rand(3), 'circular')
  with pytest.raises(ValueError, match='both be 1-D or both 2-D'):
    F.correlate(_rand(5, 5), _rand(3))
  with pytest.raises(ValueError, match='fit inside'):
    F.convolve(_rand(3), _rand(5), 'valid')


# --- Matrix-product forms. --------------------------------------------------


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('correlation', [False, True])
@pytest.mark.parametrize('k_len', [1, 2, 3, 4])
def test_toeplitz_matches_direct(mode, correlation, k_len):
  x, k = _rand(8), _rand(k_len)
  direct = (F.correlate if correlation else F.convolve)(x, k, mode)
  np.testing.assert_allclose(
      F.toeplitz_matrix(k, 8, mode, correlation) @ x, direct)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('correlation', [False, True])
@pytest.mark.parametrize('k_shape', [(3, 3), (2, 2), (2, 3), (1, 4)])
def test_doubly_block_toeplitz_matches_direct(mode, correlation, k_shape):
  x, k = _rand(5, 6), _rand(*k_shape)
  direct = (F.correlate if correlation else F.convolve)(x, k, mode)
  m = F.doubly_block_toeplitz(k, x.shape, mode, correlation)
  assert m.shape == (direct.size, x.size)
  np.testing.assert_allclose(m @ x.ravel(), direct.ravel())


def test_doubly_block_toeplitz_blocks_are_toeplitz():
  k = _rand(2, 3)
  m = F.doubly_block_toeplitz(k, (4, 5)).reshape(5, 7, 4, 5)
  for i in range(5):
    for s in range(4):
      expected = (F.toeplitz_matrix(k[i - s], 5) if 0 <= i - s < 2
                  else np.zeros((7, 5)))
      np.testing.assert_array_equal(m[i, :, s, :], expected)


def test_im2col_patches_are_windows():
  x = _rand(2, 6, 7, 3)
  cols = F.im2col(x, (3, 2), stride=2, padding=1)
  assert cols.shape == (2, 3, 4, 3 * 2 * 3)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  np.testing.assert_array_equal(
      cols[1, 2, 3], xp[1, 4:7, 6:8, :].ravel())


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def _lax_conv(x, w, stride, padding, dilation, groups):
  if not isinstance(padding, str):
    padding = F.resolve_padding(padding, x.shape[1:3], w.shape[:2],
                                _pair(stride), _pair(dilation))
  return jax.lax.conv_general_dilated(
      jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
      window_strides=_pair(stride), padding=padding,
      rhs_dilation=_pair(dilation), feature_group_count=groups,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize(
    'x_shape, w_shape, stride, padding, dilation, groups', [
        ((2, 7, 7, 3), (3, 3, 3, 4), 1, 'VALID', 1, 1),
        ((1, 8, 9, 4), (3, 3, 4, 6), 2, 'SAME', 1, 1),
        ((2, 9, 8, 2), (2, 4, 2, 3), (2, 1), 'SAME', 1, 1),
        ((1, 11, 10, 3), (3, 3, 3, 2), 1, 2, 2, 1),
        ((2, 10, 10, 4), (3, 3, 2, 6), (1, 2), ((1, 0), (2, 1)), (2, 1), 2),
        ((1, 8, 8, 6), (3, 3, 1, 6), 1, 'SAME', 1, 6),  # depthwise
        ((1, 12, 12, 4), (5, 5, 2, 4), 3, 'SAME', 2, 2),
        ((1, 227, 227, 3), (11, 11, 3, 2), 4, 2, 1, 1),  # AlexNet conv1
    ])
def test_conv2d_nhwc_matches_lax(x_shape, w_shape, stride, padding, dilation,
                                 groups):
  x, w = _rand(*x_shape), _rand(*w_shape) / np.sqrt(np.prod(w_shape[:3]))
  ours = F.conv2d_nhwc(x, w, stride, padding, dilation, groups)
  theirs = np.asarray(_lax_conv(x, w, stride, padding, dilation, groups))
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('k_shape', [(3, 3), (2, 4)])
def test_conv2d_nhwc_single_channel_is_correlate(k_shape):
  # XLA's 'SAME' and scipy's correlate2d 'same' anchor even kernels alike.
  x, w = _rand(6, 7), _rand(*k_shape)
  for padding, mode in (('VALID', 'valid'), ('SAME', 'same')):
    y = F.conv2d_nhwc(x[None, :, :, None], w[:, :, None, None],
                      padding=padding)
    np.testing.assert_allclose(y[0, :, :, 0], F.correlate(x, w, mode))


def test_conv2d_nhwc_bad_channels_raise():
  with pytest.raises(ValueError, match='Inconsistent channels'):
    F.conv2d_nhwc(_rand(1, 5, 5, 4), _rand(3, 3, 3, 2))
  with pytest.raises(ValueError, match='Inconsistent channels'):
    F.conv2d_nhwc(_rand(1, 5, 5, 4), _rand(3, 3, 2, 3), groups=2)


# --- Output sizes. ----------------------------------------------------------


@pytest.mark.parametrize(
    'in_size, kernel, stride, padding, expected', [
        (5, 3, 1, 0, 3),  # lecture 4: 3 = (5 - 3) + 1
        (5, 3, 1, 1, 5),  # ... with padding 1
        (5, 3, 2, 1, 3),  # ... and stride 2
        (4, 2, 2, 0, 2),  # 2x2 max pooling, stride 2
        (32, 5, 1, 0, 28),  # 32 -> 28 -> 24: volumes shrink
        (28, 5, 1, 0, 24),
        (7, 3, 1, 1, 7),  # pad (F - 1) / 2 keeps the size
        (7, 3, 2, 0, 3),
        (32, 5, 1, 2, 32),  # 10 5x5 filters, stride 1, pad 2
        # AlexNet (227 input) as tabulated in the CNN lecture.
        (227, 11, 4, 2, 56),  # conv1
        (27, 5, 1, 2, 27),  # conv2
        (27, 3, 2, 0, 13),  # pool2
        (13, 3, 1, 1, 13),  # conv3-5
        (13, 3, 2, 0, 6),  # pool5
    ])
def test_conv_output_size_lecture_examples(in_size, kernel, stride, padding,
                                           expected):
  assert F.conv_output_size(in_size, kernel, stride, padding) == expected
  assert F.conv_output_size(in_size, kernel, stride, padding,
                            exact=True) == expected


def test_conv_output_size_floors_like_frameworks():
  # AlexNet conv1 on 224 inputs: (224 - 11 + 4) / 4 + 1 = 55.25 -> 55.
  assert F.conv_output_size(224, 11, 4, 2) == 55
  with pytest.raises(ValueError, match='not an integer'):
    F.conv_output_size(224, 11, 4, 2, exact=True)
  # AlexNet pool1: (56 - 3) / 2 + 1 = 27.5 -> 27, as in the lecture's table.
  assert F.conv_output_size(56, 3, 2) == 27


def test_conv_output_size_dilation_and_errors():
  assert F.effective_kernel_size(3, 2) == 5
  assert F.conv_output_size(7, 3, dilation=2) == 3
  assert F.conv_output_size(7, 3, padding=(2, 0), dilation=2) == 5
  with pytest.raises(ValueError, match='larger than the padded input'):
    F.conv_output_size(4, 3, dilation=2)
  with pytest.raises(ValueError, match='positive sizes'):
    F.conv_output_size(8, 3, stride=0)


@pytest.mark.parametrize('in_size, kernel, stride, dilation', [
    (7, 3, 1, 1), (8, 4, 1, 1), (7, 4, 2, 1), (8, 3, 2, 1), (9, 3, 3, 2),
    (224, 7, 2, 1), (10, 5, 1, 3),
])
def test_same_padding_matches_lax(in_size, kernel, stride, dilation):
  pads = F.same_padding(in_size, kernel, stride, dilation)
  k_eff = F.effective_kernel_size(kernel, dilation)
  assert [pads] == jax.lax.padtype_to_pads(
      (in_size,), (k_eff,), (stride,), 'SAME')
  assert F.conv_output_size(in_size, kernel, stride, pads,
                            dilation) == -(-in_size // stride)


@pytest.mark.parametrize('kernel', [1, 3, 5, 7])
def test_same_padding_odd_kernel_is_half(kernel):
  assert F.same_padding(32, kernel) == ((kernel - 1) // 2,) * 2


def test_conv_layer_counts_lecture_tables():
  # LeNet-5 (lecture 4 table): C1 and C3, weights without biases.
  assert F.conv_layer_counts(32, 1, 6, 5) == (4704, 150, 117_600)
  assert F.conv_layer_counts(14, 6, 16, 5) == (1600, 2400, 240_000)
  # 32x32x3 input, 10 5x5 filters, stride 1, pad 2: 76 * 10 = 760 params.
  assert F.conv_layer_counts(32, 3, 10, 5, 1, 2, bias=True).weights == 760


# --- Receptive fields. ------------------------------------------------------


@pytest.mark.parametrize('num_layers, kernel', [(1, 3), (2, 3), (3, 3),
                                                (4, 5), (10, 3)])
def test_stacked_receptive_field(num_layers, kernel):
  expected = 1 + num_layers * (kernel - 1)
  assert F.stacked_receptive_field(num_layers, kernel) == expected
  rf = F.receptive_fields([(kernel, 1, (kernel - 1) // 2)] * num_layers)
  assert [r.size for r in rf] == [1 + (i + 1) * (kernel - 1)
                                  for i in range(num_layers)]
  assert rf[-1].jump == 1 and rf[-1].start == 0.0  # 'same' padding


def test_receptive_field_strided_stack():
  # conv3 - pool2 - conv3 - pool2 - conv3, VGG-style with 'same' convs.
  layers = [F.ConvLayer(3, 1, 1), F.ConvLayer(2, 2), F.ConvLayer(3, 1, 1),
            F.ConvLayer(2, 2), F.ConvLayer(3, 1, 1)]
  rf = F.receptive_fields(layers)
  assert [r.size for r in rf] == [3, 4, 8, 10, 18]
  assert [r.jump for r in rf] == [1, 2, 2, 4, 4]
  assert [r.start for r in rf] == [0.0, 0.5, 0.5, 1.5, 1.5]


def _input_support(layers: list[F.ConvLayer], in_len: int,
                   unit: int) -> np.ndarray:
  """Input positions that output `unit` of a 1-D stack depends on."""

  def net(x):
    y = x[None, :, None]
    for layer in layers:
      y = jax.lax.conv_general_dilated(
          y, jnp.ones((layer.kernel_size, 1, 1)), (layer.stride,),
          [(layer.padding, layer.padding)], rhs_dilation=(layer.dilation,),
          dimension_numbers=('NWC', 'WIO', 'NWC'))
    return y[0, unit, 0]

  grad = jax.grad(net)(jnp.ones(in_len))
  return np.flatnonzero(np.asarray(grad))


@pytest.mark.parametrize('layers', [
    [F.ConvLayer(3, 1, 1), F.ConvLayer(2, 2), F.ConvLayer(3, 1, 1),
     F.ConvLayer(2, 2), F.ConvLayer(3, 1, 1)],
    [F.ConvLayer(7, 2, 3), F.ConvLayer(3, 2, 1), F.ConvLayer(3, 1, 1)],
    [F.ConvLayer(3, 1, 0, 1), F.ConvLayer(3, 1, 0, 2),
     F.ConvLayer(3, 1, 0, 4)],  # dilated (WaveNet-style): 3, 7, 15
])
def test_receptive_field_matches_gradient_support(layers):
  rf = F.receptive_fields(layers)[-1]
  # The first unit whose field lies wholly inside the input (no padding).
  unit = int(np.ceil(((rf.size - 1) / 2 - rf.start) / rf.jump))
  support = _input_support(layers, 64, unit)
  centre = rf.start + unit * rf.jump
  assert len(support) == rf.size
  assert support[0] == centre - (rf.size - 1) / 2
  assert support[-1] == centre + (rf.size - 1) / 2


def test_stacked_vs_single():
  # Two 3x3 convs see 5x5 with 18 C^2 weights instead of 25 C^2.
  assert F.stacked_vs_single(2, 3, channels=64) == (
      5, 2 * 9 * 64**2, 25 * 64**2, 2)
  # Three 3x3 convs see 7x7 with 27 C^2 weights instead of 49 C^2.
  assert F.stacked_vs_single(3, 3, channels=64) == (
      7, 3 * 9 * 64**2, 49 * 64**2, 3)


# --- Classic kernels. -------------------------------------------------------


def test_kernel_registry():
  assert {'identity', 'box_blur', 'gaussian_blur', 'sharpen', 'edge',
          'sobel_x', 'sobel_y'} <= set(F.KERNELS)
  with pytest.raises(ValueError, match="valid names: .*'sobel_x'"):
    F.get_kernel('sobel')
  for name in F.KERNELS:
    assert F.get_kernel(name).ndim == 2


def test_kernel_values():
  for name in ('identity', 'box_blur', 'gaussian_blur', 'sharpen'):
    assert F.get_kernel(name).sum() == pytest.approx(1.0)
  for name in ('edge', 'sobel_x', 'sobel_y'):
    assert F.get_kernel(name).sum() == 0.0
  identity, edge = F.get_kernel('identity'), F.get_kernel('edge')
  np.testing.assert_array_equal(F.get_kernel('sharpen'), identity + edge)
  np.testing.assert_array_equal(
      F.get_kernel('lecture_sharpen'), 4 * identity + edge)
  assert F.get_kernel('lecture_blur').sum() == 8.0
  g = F.get_kernel('gaussian_blur', size=7, sigma=1.5)
  assert g.shape == (7, 7) and g.argmax() == 24  # peak at the centre
  np.testing.assert_allclose(g, g.T)
  np.testing.assert_allclose(g, F.flip(g))
  assert F.get_kernel('box_blur', size=5).shape == (5, 5)


def test_identity_and_blur_on_image():
  x = _rand(6, 6)
  np.testing.assert_array_equal(
      F.convolve(x, F.get_kernel('identity', size=5), 'same'), x)
  flat = np.full((6, 6), 3.0)
  np.testing.assert_allclose(
      F.convolve(flat, F.get_kernel('gaussian_blur'), 'valid'), 3.0)


def test_sobel_on_step_image():
  # Dark left half, bright right half: a vertical edge between columns 3, 4.
  step = np.zeros((6, 8))
  step[:, 4:] = 1.0
  gx = F.convolve(step, F.get_kernel('sobel_x'), 'valid')
  gy = F.convolve(step, F.get_kernel('sobel_y'), 'valid')
  # Valid output column c covers input columns c..c+2, so c = 2 and 3
  # straddle the edge; 1 + 2 + 1 = 4 is the full response.
  np.testing.assert_array_equal(gx, np.tile([0, 0, 4, 4, 0, 0], (4, 1)))
  np.testing.assert_array_equal(gy, 0)
  # A DL layer (cross-correlation) with the same numbers sees -d/dx.
  np.testing.assert_array_equal(
      F.correlate(step, F.get_kernel('sobel_x'), 'valid'), -gx)
  # The transposed image has a horizontal edge, found by sobel_y.
  np.testing.assert_array_equal(
      F.convolve(step.T, F.get_kernel('sobel_y'), 'valid'), gx.T)
  # The Laplacian-style edge kernel responds on both sides with opposite
  # signs and is zero in flat regions.
  lap = F.convolve(step, F.get_kernel('edge'), 'valid')
  np.testing.assert_array_equal(lap, np.tile([0, 0, -1, 1, 0, 0], (4, 1)))


# --- Backprop through a convolution (x-bar = y-bar * w). --------------------

_DN2 = ('NHWC', 'HWIO', 'NHWC')
# (stride, padding as numpy takes it, the same for lax, dilation)
_GEOMETRIES = [
    (1, 'VALID', 'VALID', 1),
    (2, 1, ((1, 1), (1, 1)), 1),
    (2, ((0, 1), (2, 0)), ((0, 1), (2, 0)), 1),
    (1, 2, ((2, 2), (2, 2)), 2),
    (3, 'VALID', 'VALID', 1),
]


def _lax_conv_fn(stride, pads, dilation):
  return lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), pads, rhs_dilation=(dilation, dilation),
      dimension_numbers=_DN2)


def test_lecture_1d_backprop_formulas():
  x, w = _rand(9), _rand(3)
  y, pullback = jax.vjp(lambda x, w: jnp.correlate(x, w, 'valid'),
                        jnp.asarray(x, jnp.float32),
                        jnp.asarray(w, jnp.float32))
  dy = _rand(len(y))
  dx, dw = pullback(jnp.asarray(dy, jnp.float32))
  np.testing.assert_allclose(F.correlate_input_grad(dy, w), dx, atol=1e-5)
  np.testing.assert_allclose(F.correlate_weight_grad(x, dy), dw, atol=1e-5)
  # 2-D, single channel: the same two lines.
  x2, w2 = _rand(6, 7), _rand(3, 2)
  dy2 = _rand(4, 6)
  ref = _lax_conv_fn(1, 'VALID', 1)
  _, pull = jax.vjp(ref, jnp.asarray(x2[None, ..., None], jnp.float32),
                    jnp.asarray(w2[..., None, None], jnp.float32))
  dx2, dw2 = pull(jnp.asarray(dy2[None, ..., None], jnp.float32))
  np.testing.assert_allclose(F.correlate_input_grad(dy2, w2), dx2[0, ..., 0],
                             atol=1e-5)
  np.testing.assert_allclose(F.correlate_weight_grad(x2, dy2),
                             dw2[..., 0, 0], atol=1e-5)


@pytest.mark.parametrize('stride,padding,pads,dilation', _GEOMETRIES)
def test_conv2d_grads_match_jax(stride, padding, pads, dilation):
  x, w = _rand(2, 9, 10, 3), _rand(3, 3, 3, 4)
  ref = _lax_conv_fn(stride, pads, dilation)
  y, pullback = jax.vjp(ref, jnp.asarray(x, jnp.float32),
                        jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(
      F.conv2d_nhwc(x, w, stride, padding, dilation), y, rtol=1e-4,
      atol=1e-4)
  dy = _rand(*y.shape)
  dx, dw = pullback(jnp.asarray(dy, jnp.float32))
  np.testing.assert_allclose(
      F.conv2d_input_grad(dy, w, x.shape, stride, padding, dilation), dx,
      rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      F.conv2d_weight_grad(x, dy, (3, 3), stride, padding, dilation), dw,
      rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride,padding,dilation', [
    (1, 'VALID', 1), (2, 1, 1), (1, (2, 0), 2), (2, 'SAME', 1)])
def test_conv1d_grads_match_jax(stride, padding, dilation):
  x, w = _rand(2, 11, 3), _rand(3, 3, 2)
  lax_pad = padding if isinstance(padding, str) else [
      padding if isinstance(padding, tuple) else (padding, padding)]
  ref = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride,), lax_pad, rhs_dilation=(dilation,),
      dimension_numbers=('NWC', 'WIO', 'NWC'))
  y, pullback = jax.vjp(ref, jnp.asarray(x, jnp.float32),
                        jnp.asarray(w, jnp.float32))
  dy = _rand(*y.shape)
  dx, dw = pullback(jnp.asarray(dy, jnp.float32))
  np.testing.assert_allclose(
      F.conv1d_input_grad(dy, w, x.shape, stride, padding, dilation), dx,
      rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      F.conv1d_weight_grad(x, dy, 3, stride, padding, dilation), dw,
      rtol=1e-4, atol=1e-4)


def _fast_impls() -> list[str]:
  from cnn.kernels import onednn  # pylint: disable=g-import-not-at-top
  return ['banded'] + (['onednn'] if onednn.available() else [])


@pytest.mark.parametrize('impl', _fast_impls())
@pytest.mark.parametrize('stride,padding', [(1, 'VALID'), (2, 1),
                                            (1, ((2, 1), (0, 2)))])
def test_conv_grads_match_the_fast_cpu_convolution(impl, stride, padding):
  from cnn.kernels import forms  # pylint: disable=g-import-not-at-top
  x, w = _rand(2, 12, 12, 3), _rand(5, 5, 3, 6)
  pads = padding if not isinstance(padding, int) else ((padding,) * 2,) * 2
  conv = forms.Conv(6, (5, 5), strides=stride, padding=pads, use_bias=False)

  def apply(x, w):
    with forms.use_conv_impl(impl):
      return conv.apply({'params': {'kernel': w}}, x)

  with forms.use_conv_impl(impl):
    assert conv.choose_impl(12, 3) == impl
  x32, w32 = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
  dy = _rand(*jax.eval_shape(apply, x32, w32).shape)
  # Jitted: the banded form is many small ops, slow one by one.
  dx, dw = jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy))(
      x32, w32, jnp.asarray(dy, jnp.float32))
  np.testing.assert_allclose(
      F.conv2d_input_grad(dy, w, x.shape, stride, padding), dx, rtol=1e-4,
      atol=1e-3)
  np.testing.assert_allclose(
      F.conv2d_weight_grad(x, dy, (5, 5), stride, padding), dw, rtol=1e-4,
      atol=1e-3)


def test_input_pixel_consumers_are_the_jacobian_column():
  size, pixel = 7, (3, 2)
  taps = F.input_pixel_consumers((size, size), (3, 3), pixel, 2, 1)
  jac = jax.jacobian(lambda x: _lax_conv_fn(2, ((1, 1), (1, 1)), 1)(
      x, jnp.ones((3, 3, 1, 1))))(jnp.ones((1, size, size, 1)))
  reads = np.asarray(jac)[0, :, :, 0, 0, pixel[0], pixel[1], 0] != 0
  np.testing.assert_array_equal(taps >= 0, reads)
  # Output (1, 1) reads input (2 * 1 - 1 + i, 2 * 1 - 1 + j): tap (2, 1).
  assert taps[1, 1] == 2 * 3 + 1


# --- 1x1 convolutions and depthwise-separable cost. ------------------------


def test_pointwise_conv_is_a_per_pixel_dense_layer():
  x, w = _rand(2, 5, 4, 3), _rand(3, 7)
  # The numpy reference: a 1x1 conv with kernel [1, 1, C, C'] is x @ w.
  ours = F.pointwise_conv(x, w)
  np.testing.assert_allclose(ours, F.conv2d_nhwc(x, w[None, None]),
                             rtol=1e-12, atol=1e-12)
  # Flax: nn.Conv (1, 1) and nn.Dense with the same weights and bias give the
  # same output at every pixel.
  b = _rand(7)
  x32 = jnp.asarray(x, jnp.float32)
  conv = nn.Conv(7, (1, 1), precision=jax.lax.Precision.HIGHEST).apply(
      {'params': {'kernel': w[None, None], 'bias': b}}, x32)
  dense = nn.Dense(7, precision=jax.lax.Precision.HIGHEST).apply(
      {'params': {'kernel': w, 'bias': b}}, x32)
  np.testing.assert_allclose(conv, dense, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conv, ours + b, rtol=1e-5, atol=1e-5)
  # Cost: C C' = 21 multiply-adds per position, 5 * 5 * 21 on a 5x5 image
  # (tests/test_summary.py checks the same count in a traced model).
  counts = F.conv_layer_counts(5, 3, 7, 1)
  assert counts.connections == 5 * 5 * 3 * 7 and counts.weights == 3 * 7


def test_separable_cost_by_hand():
  # K = 3, C = 32, C' = 64: 9 * 32 * 64 = 18,432 vs 9 * 32 + 32 * 64 = 2,336.
  cost = F.separable_cost(3, 32, 64)
  assert (cost.standard, cost.separable) == (18_432, 2_336)
  assert cost.ratio == pytest.approx(1 / 64 + 1 / 9)
  # MobileNetV2's stage2_block1: depthwise 3x3 on 96 channels, projection to
  # 24: 20,736 vs 864 + 2,304 = 3,168, ratio 1/24 + 1/9.
  cost = F.separable_cost(3, 96, 24)
  assert (cost.standard, cost.separable) == (20_736, 3_168)
  assert cost.ratio == pytest.approx(1 / 24 + 1 / 9)
  # A 5x5 (EfficientNet's MBConv): 25 * 40 * 80 = 80,000 vs 1,000 + 3,200.
  assert F.separable_cost(5, 40, 80)[:2] == (80_000, 4_200)
