"""What the first CNN lecture teaches, as small numpy functions.

A readable reference, not a fast one: tests check the Flax/XLA layers against
it and inspection tools use it to explain sizes and receptive fields.

Conventions:
  * Convolution flips the kernel, `(a * b)_t = sum_tau a_tau b_{t - tau}`;
    cross-correlation does not, `y_t = sum_j w_j x_{t + j}`. Deep-learning
    "convolution" layers (`jax.lax.conv_general_dilated`, `nn.Conv`) compute
    cross-correlation; the two differ by a kernel flip.
  * Modes as in numpy/scipy: 'full' (every overlap, length N + K - 1),
    'valid' (kernel entirely inside, N - K + 1) and 'same' (length N, the
    size of the first argument). For 'same' the kernel element at index
    (K - 1) // 2 sits over the output pixel, for both operations; with an
    even K that is the lower of the two middles, which matches
    `np.convolve`, `scipy.signal.convolve2d`, `scipy.signal.correlate2d` and
    XLA's 'SAME' padding (`np.correlate` anchors even kernels one step the
    other way).
  * Images in the multi-channel functions are NHWC, weights HWIO
    ([KH, KW, C_in / groups, C_out]), as in Flax.
  * Sizes are in pixels. Parameter counts exclude biases unless stated.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

IntPair = int | tuple[int, int]
# 'VALID', 'SAME', P on every side, (P_h, P_w), or ((top, bottom), (left,
# right)).
Padding = str | int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]

MODES = ('full', 'valid', 'same')


# --------------------------------------------------------------------------
# Direct convolution and cross-correlation (1-D and 2-D).
# --------------------------------------------------------------------------


def _check_operands(x: np.ndarray, k: np.ndarray, mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'Unknown mode {mode!r}; valid modes: {list(MODES)}.')
  if x.ndim != k.ndim or x.ndim not in (1, 2):
    raise ValueError(
        'Signal and kernel must both be 1-D or both 2-D; got shapes '
        f'{x.shape} and {k.shape}.')
  if mode == 'valid' and any(
      kn > n for n, kn in zip(x.shape, k.shape, strict=True)):
    raise ValueError(
        f"mode='valid' needs the kernel {k.shape} to fit inside the signal "
        f'{x.shape}.')


def _same_start(kernel_size: int, correlation: bool) -> int:
  """Index into the 'full' result of the first 'same' output.

  Kernel index (K - 1) // 2 sits over output pixel 0 for both operations;
  convolution's 'full' result holds the kernel flipped, so that anchor lands
  one step earlier there when K is even.
  """
  return kernel_size // 2 if correlation else (kernel_size - 1) // 2


def _crop_full(full: np.ndarray, x_shape: tuple[int, ...],
               k_shape: tuple[int, ...], mode: str,
               correlation: bool) -> np.ndarray:
  """Cuts the 'same'/'valid' window out of a 'full' result.

  Args:
    full: the 'full' result, leading axes x_shape + k_shape - 1.
    x_shape: shape of the signal.
    k_shape: shape of the kernel.
    mode: 'full', 'valid' or 'same'.
    correlation: whether `full` is a correlation (see `_same_start`).
  """
  if mode == 'full':
    return full
  if mode == 'valid':
    window = tuple(slice(k - 1, n)
                   for n, k in zip(x_shape, k_shape, strict=True))
  else:
    window = tuple(slice(_same_start(k, correlation),
                         _same_start(k, correlation) + n)
                   for n, k in zip(x_shape, k_shape, strict=True))
  return full[window]


def convolve(x: np.ndarray, k: np.ndarray, mode: str = 'full') -> np.ndarray:
  """True (flipped-kernel) convolution of 1-D or 2-D arrays.

  Written as the lecture's "translate-and-scale": the result is the sum, over
  kernel entries k[tau], of copies of `x` shifted by tau and scaled by
  k[tau], i.e. `(x * k)_t = sum_tau k_tau x_{t - tau}`.

  Args:
    x: signal, shape [N] or [H, W].
    k: kernel, same number of dimensions as `x`.
    mode: 'full' [N + K - 1], 'valid' [N - K + 1] or 'same' [N].

  Returns:
    float64 array, equal to `np.convolve` (1-D, when N >= K) and
    `scipy.signal.convolve2d` (2-D) in every mode.
  """
  x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
  _check_operands(x, k, mode)
  full = np.zeros(tuple(n + m - 1
                        for n, m in zip(x.shape, k.shape, strict=True)))
  for tau in np.ndindex(k.shape):
    shifted = tuple(slice(t, t + n) for t, n in zip(tau, x.shape, strict=True))
    full[shifted] += k[tau] * x
  return _crop_full(full, x.shape, k.shape, mode, False)


def correlate(x: np.ndarray, w: np.ndarray, mode: str = 'full') -> np.ndarray:
  """Cross-correlation (no flip) of 1-D or 2-D arrays: what DL layers compute.

  Also a sum of shifted, scaled copies: `y_t = sum_j w_j x_{t + j}`, i.e. the
  kernel slides over the input and takes a dot product at each position.

  Args:
    x: signal, shape [N] or [H, W].
    w: kernel (filter), same number of dimensions as `x`.
    mode: 'full' [N + K - 1], 'valid' [N - K + 1] or 'same' [N].

  Returns:
    float64 array, equal to `scipy.signal.correlate2d` in every mode and to
    `convolve(x, flip(w), mode)` in 'full' and 'valid' (and in 'same' for odd
    kernels; for even ones flipping also moves the anchor by one pixel).
  """
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  _check_operands(x, w, mode)
  # Zero-pad the input so that every output position sees a whole window.
  pads = {
      'full': [(m - 1, m - 1) for m in w.shape],
      'valid': [(0, 0) for _ in w.shape],
      'same': [((m - 1) // 2, m // 2) for m in w.shape],
  }[mode]
  xp = np.pad(x, pads)
  out_shape = tuple(n - m + 1 for n, m in zip(xp.shape, w.shape, strict=True))
  y = np.zeros(out_shape)
  for j in np.ndindex(w.shape):
    shifted = tuple(slice(t, t + n) for t, n in zip(j, out_shape, strict=True))
    y += w[j] * xp[shifted]
  return y


def flip(k: np.ndarray) -> np.ndarray:
  """Reverses a kernel along every axis (180-degree rotation in 2-D)."""
  k = np.asarray(k)
  return k[(slice(None, None, -1),) * k.ndim]


# --------------------------------------------------------------------------
# Convolution as a matrix product.
# --------------------------------------------------------------------------


def toeplitz_matrix(k: np.ndarray, n: int, mode: str = 'full',
                    correlation: bool = False) -> np.ndarray:
  """Matrix T with `T @ x == convolve(x, k, mode)` for x of length n.

  Column tau holds the kernel shifted down by tau (T[t, tau] = k[t - tau]),
  so T @ x is literally the sum of shifted, scaled kernels; each diagonal is
  constant (a Toeplitz matrix). The lecture's example:
  (2, -1, 1) * (1, 1, 2) = toeplitz_matrix([1, 1, 2], 3) @ [2, -1, 1].

  Args:
    k: 1-D kernel of length K.
    n: signal length N.
    mode: 'full', 'valid' or 'same'; selects rows of the full matrix.
    correlation: build the matrix of `correlate(x, k, mode)` instead.

  Returns:
    [output length, N] float64 matrix.
  """
  k = np.asarray(k, np.float64)
  if k.ndim != 1:
    raise ValueError(f'toeplitz_matrix needs a 1-D kernel, got {k.shape}.')
  kc = flip(k) if correlation else k
  m = len(k)
  full = np.zeros((n + m - 1, n))
  for tau in range(n):
    full[tau:tau + m, tau] = kc
  return _crop_full(full, (n,), (m,), mode, correlation)


def doubly_block_toeplitz(k: np.ndarray, input_shape: tuple[int, int],
                          mode: str = 'full',
                          correlation: bool = False) -> np.ndarray:
  """Matrix T with `T @ x.ravel() == convolve(x, k, mode).ravel()`.

  In 'full' mode T is a block-Toeplitz matrix of Toeplitz blocks: block
  (i, s) (output row i, input row s) is `toeplitz_matrix(k[i - s], W)`, the
  1-D convolution of an image row with kernel row i - s, and zero when
  i - s is outside the kernel. Other modes keep a subset of the rows.

  Args:
    k: 2-D kernel [KH, KW].
    input_shape: (H, W) of the image.
    mode: 'full', 'valid' or 'same'.
    correlation: build the matrix of `correlate(x, k, mode)` instead.

  Returns:
    [OH * OW, H * W] float64 matrix acting on row-major flattened images.
  """
  k = np.asarray(k, np.float64)
  if k.ndim != 2:
    raise ValueError(
        f'doubly_block_toeplitz needs a 2-D kernel, got {k.shape}.')
  kc = flip(k) if correlation else k
  (h, w), (kh, kw) = input_shape, k.shape
  fh, fw = h + kh - 1, w + kw - 1
  # Axes: output row, output column, input row, input column.
  full = np.zeros((fh, fw, h, w))
  for s in range(h):
    for di in range(kh):
      full[s + di, :, s, :] = toeplitz_matrix(kc[di], w)
  # Crop the output rows/columns as for a 2-D result, then flatten.
  cropped = _crop_full(full, (h, w), (kh, kw), mode, correlation)
  return cropped.reshape(-1, h * w)


def im2col(x: np.ndarray, kernel_size: IntPair, stride: IntPair = 1,
           padding: Padding = 0, dilation: IntPair = 1) -> np.ndarray:
  """Patch matrix of a batch of images, for convolution as one matmul.

  Args:
    x: images [N, H, W, C].
    kernel_size: (KH, KW) or K.
    stride: step between windows, (S_h, S_w) or S.
    padding: 'VALID', 'SAME', P, (P_h, P_w) or ((top, bottom), (left, right))
      zeros added around the image.
    dilation: spacing between kernel taps (1 = dense kernel).

  Returns:
    [N, OH, OW, KH * KW * C]: for every output pixel, the input values under
    the kernel, ordered (kh, kw, c) like `w.reshape(KH * KW * C, C_out)` of an
    HWIO weight, so `im2col(x, ...) @ w.reshape(-1, C_out)` is the
    cross-correlation.
  """
  x = np.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'im2col needs NHWC images, got shape {x.shape}.')
  n, h, w, c = x.shape
  (kh, kw), (sh, sw), (dh, dw) = (
      _pair(kernel_size), _pair(stride), _pair(dilation))
  pad_h, pad_w = resolve_padding(padding, (h, w), (kh, kw), (sh, sw),
                                 (dh, dw))
  oh = conv_output_size(h, kh, sh, pad_h, dh)
  ow = conv_output_size(w, kw, sw, pad_w, dw)
  xp = np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  taps = []
  for i in range(kh):
    for j in range(kw):
      # What kernel tap (i, j) sees at every output position.
      taps.append(xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                     j * dw:j * dw + (ow - 1) * sw + 1:sw, :])
  return np.stack(taps, axis=3).reshape(n, oh, ow, kh * kw * c)


def conv2d_nhwc(x: np.ndarray, w: np.ndarray, stride: IntPair = 1,
                padding: Padding = 'VALID', dilation: IntPair = 1,
                groups: int = 1) -> np.ndarray:
  """Multi-channel 2-D cross-correlation via im2col, as a conv layer computes.

  Matches `jax.lax.conv_general_dilated(x, w, stride, padding,
  rhs_dilation=dilation, feature_group_count=groups,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`.

  Args:
    x: images [N, H, W, C_in].
    w: weights [KH, KW, C_in / groups, C_out]; C_out divisible by groups.
    stride: (S_h, S_w) or S.
    padding: 'VALID', 'SAME', P, (P_h, P_w) or ((top, bottom), (left, right)).
    dilation: kernel dilation (S_h, S_w) or D; effective size D(K - 1) + 1.
    groups: channels split into this many independent groups; group g maps
      input channels [g C_in/G, (g+1) C_in/G) to output channels
      [g C_out/G, (g+1) C_out/G). groups = C_in is a depthwise convolution.

  Returns:
    [N, OH, OW, C_out] float64.
  """
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw, cin_group, cout = w.shape
  if x.shape[-1] != cin_group * groups or cout % groups:
    raise ValueError(
        f'Inconsistent channels: input has {x.shape[-1]}, weight {w.shape} '
        f'with groups={groups} needs {cin_group * groups} inputs and an '
        'output count divisible by groups.')
  cout_group = cout // groups
  outputs = []
  for g in range(groups):
    patches = im2col(x[..., g * cin_group:(g + 1) * cin_group], (kh, kw),
                     stride, padding, dilation)
    w_g = w[..., g * cout_group:(g + 1) * cout_group]
    outputs.append(patches @ w_g.reshape(-1, cout_group))
  return np.concatenate(outputs, axis=-1)


# --------------------------------------------------------------------------
# Classic kernels.
# --------------------------------------------------------------------------


def identity_kernel(size: int = 3) -> np.ndarray:
  """[size, size] kernel with a single 1 in the middle: output = input."""
  k = np.zeros((size, size))
  k[(size - 1) // 2, (size - 1) // 2] = 1.0
  return k


def box_kernel(size: int = 3) -> np.ndarray:
  """[size, size] mean filter (sums to 1, so it keeps brightness)."""
  return np.full((size, size), 1.0 / size**2)


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> np.ndarray:
  """[size, size] sampled Gaussian, sigma in pixels, normalised to sum 1."""
  if size < 1 or sigma <= 0:
    raise ValueError(f'Need size >= 1 and sigma > 0, got {size}, {sigma}.')
  t = np.arange(size) - (size - 1) / 2
  g = np.exp(-t**2 / (2 * sigma**2))
  k = np.outer(g, g)
  return k / k.sum()


def _fixed(rows: list[list[float]]) -> Callable[[], np.ndarray]:
  return lambda: np.array(rows, np.float64)


# Values as printed in the lecture where it has them. Their sums differ on
# purpose: blurs keep brightness (1), the lecture's blur scales it by 8, edge
# detectors remove it (0), and the lecture's sharpen is 4 * identity + edge
# (sum 4) whereas 'sharpen' is identity + edge (sum 1).
# The Sobel kernels are in convolution orientation: `convolve` with sobel_x
# gives +d/dx (x = column index); DL-style `correlate` gives -d/dx.
KERNELS: dict[str, Callable[..., np.ndarray]] = {
    'identity': identity_kernel,
    'box_blur': box_kernel,
    'gaussian_blur': gaussian_kernel,
    'lecture_blur': _fixed([[0, 1, 0], [1, 4, 1], [0, 1, 0]]),
    'sharpen': _fixed([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    'lecture_sharpen': _fixed([[0, -1, 0], [-1, 8, -1], [0, -1, 0]]),
    'edge': _fixed([[0, -1, 0], [-1, 4, -1], [0, -1, 0]]),
    'sobel_x': _fixed([[1, 0, -1], [2, 0, -2], [1, 0, -1]]),
    'sobel_y': _fixed([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]),
}


def get_kernel(name: str, **kwargs) -> np.ndarray:
  """Returns kernel `name` from `KERNELS`, e.g. ('gaussian_blur', size=5).

  Sized kernels ('identity', 'box_blur', 'gaussian_blur') take `size` (and
  `sigma`); the fixed 3x3 ones take no arguments.
  """
  try:
    factory = KERNELS[name]
  except KeyError:
    raise ValueError(
        f'Unknown kernel {name!r}; valid names: {sorted(KERNELS)}.') from None
  return factory(**kwargs)


# --------------------------------------------------------------------------
# Sizes.
# --------------------------------------------------------------------------


def _pair(v: IntPair) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def effective_kernel_size(kernel_size: int, dilation: int = 1) -> int:
  """Extent of a dilated kernel in pixels: d(K - 1) + 1."""
  return dilation * (kernel_size - 1) + 1


def conv_output_size(in_size: int, kernel_size: int, stride: int = 1,
                     padding: int | tuple[int, int] = 0, dilation: int = 1,
                     exact: bool = False) -> int:
  """Output length of a convolution or pooling: (W - K + 2P) / S + 1.

  With dilation K is the effective size d(K - 1) + 1. Like the frameworks, a
  last window that would stick out past the padding is dropped (floor).

  Args:
    in_size: input length W in pixels.
    kernel_size: K.
    stride: S.
    padding: P zeros on each side, or (before, after).
    dilation: d.
    exact: raise instead of flooring when S does not divide W - K + 2P, i.e.
      when the windows do not tile the padded input exactly.

  Returns:
    Output length (>= 1).

  Raises:
    ValueError: for non-positive sizes, negative padding, a kernel larger
      than the padded input, or (with exact=True) a non-integral result.
  """
  lo, hi = _pair(padding)
  if min(in_size, kernel_size, stride, dilation) < 1 or min(lo, hi) < 0:
    raise ValueError(
        f'Need positive sizes and non-negative padding; got in_size={in_size}, '
        f'kernel_size={kernel_size}, stride={stride}, dilation={dilation}, '
        f'padding={padding}.')
  k_eff = effective_kernel_size(kernel_size, dilation)
  span = in_size + lo + hi - k_eff
  if span < 0:
    raise ValueError(
        f'Kernel (effective size {k_eff}) is larger than the padded input '
        f'({in_size + lo + hi}); the output would be empty.')
  if exact and span % stride:
    raise ValueError(
        f'(W - K + 2P) / S = {span}/{stride} is not an integer: stride '
        f'{stride} does not tile input {in_size} (padding {padding}) with '
        f'kernel {k_eff}; frameworks would floor to {span // stride + 1}.')
  return span // stride + 1


def same_padding(in_size: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1) -> tuple[int, int]:
  """(before, after) zero padding of 'SAME' convolution, as TF/XLA do it.

  The output has ceil(W / S) pixels; the total padding needed for that is
  split with the extra pixel, if any, after. With stride 1 and odd K this is
  the lecture's P = (K - 1) / 2 on each side.
  """
  k_eff = effective_kernel_size(kernel_size, dilation)
  out = -(-in_size // stride)
  total = max((out - 1) * stride + k_eff - in_size, 0)
  return total // 2, total - total // 2


def resolve_padding(padding: Padding, in_hw: tuple[int, int],
                    kernel_hw: tuple[int, int], stride_hw: tuple[int, int],
                    dilation_hw: tuple[int, int] = (1, 1),
                    ) -> tuple[tuple[int, int], tuple[int, int]]:
  """Any accepted padding spec -> ((top, bottom), (left, right))."""
  if isinstance(padding, str):
    if padding.upper() == 'VALID':
      return (0, 0), (0, 0)
    if padding.upper() == 'SAME':
      return tuple(same_padding(n, k, s, d) for n, k, s, d in zip(
          in_hw, kernel_hw, stride_hw, dilation_hw, strict=True))
    raise ValueError(
        f"Unknown padding {padding!r}; use 'VALID', 'SAME' or integers.")
  if isinstance(padding, int):
    return (padding, padding), (padding, padding)
  return tuple(_pair(p) for p in padding)


class LayerCounts(NamedTuple):
  """The lecture's three size measures of one layer."""

  units: int  # output activations, W' H' I
  weights: int  # K^2 I J (+ I with bias)
  connections: int  # W' H' K^2 I J: one multiply-add each per forward pass


def conv_layer_counts(in_size: int, in_channels: int, out_channels: int,
                      kernel_size: int, stride: int = 1, padding: int = 0,
                      bias: bool = False) -> LayerCounts:
  """Units, weights and connections of a square conv layer on square input.

  E.g. LeNet C1 (32 x 32 x 1 -> 6 maps, 5 x 5): 4704 units, 150 weights,
  117,600 connections.
  """
  out = conv_output_size(in_size, kernel_size, stride, padding, exact=True)
  fan_in = kernel_size**2 * in_channels
  units = out * out * out_channels
  weights = fan_in * out_channels + (out_channels if bias else 0)
  return LayerCounts(units, weights, units * fan_in)


# --------------------------------------------------------------------------
# Receptive fields.
# --------------------------------------------------------------------------


class ConvLayer(NamedTuple):
  """Geometry of one conv or pooling layer along one spatial axis (pixels)."""

  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1


class ReceptiveField(NamedTuple):
  """Receptive field after a layer, in input pixels.

  Attributes:
    size: r, the width of input seen by one output unit.
    jump: j, the input distance between neighbouring output units (the
      product of strides so far).
    start: input coordinate of the centre of the first output unit's field
      (pixel centres are 0, 1, ...; negative means it lies in the padding).
  """

  size: int
  jump: int
  start: float


def stacked_receptive_field(num_layers: int, kernel_size: int) -> int:
  """Receptive field of L stride-1 K x K convolutions: 1 + L(K - 1)."""
  return 1 + num_layers * (kernel_size - 1)


def receptive_fields(
    layers: Sequence[ConvLayer | tuple[int, ...]]) -> list[ReceptiveField]:
  """Receptive field, jump and centre after each layer of a stack.

  Recurrence per layer (k_eff = d(k - 1) + 1):
    r_out = r_in + (k_eff - 1) j_in
    j_out = j_in s
    start_out = start_in + ((k_eff - 1) / 2 - p) j_in
  starting from r = 1, j = 1, start = 0 at the input.

  Args:
    layers: `ConvLayer`s or tuples (kernel_size, stride, padding, dilation)
      with trailing fields optional.

  Returns:
    One `ReceptiveField` per layer.
  """
  size, jump, start = 1, 1, 0.0
  out = []
  for layer in layers:
    layer = ConvLayer(*layer)
    k_eff = effective_kernel_size(layer.kernel_size, layer.dilation)
    size += (k_eff - 1) * jump
    start += ((k_eff - 1) / 2 - layer.padding) * jump
    jump *= layer.stride
    out.append(ReceptiveField(size, jump, start))
  return out


class StackComparison(NamedTuple):
  """L stacked small convolutions vs one big one of the same receptive field.

  Attributes:
    receptive_field: of both options, 1 + L(K - 1).
    stacked_params: L K^2 C^2 (C channels in and out, no biases).
    single_params: R^2 C^2 for the single R x R convolution.
    stacked_nonlinearities: L (one per layer) vs 1 for the single layer.
  """

  receptive_field: int
  stacked_params: int
  single_params: int
  stacked_nonlinearities: int


def stacked_vs_single(num_layers: int, kernel_size: int = 3,
                      channels: int = 1) -> StackComparison:
  """Why VGG stacks 3 x 3 convolutions.

  Two 3 x 3 layers see 5 x 5 with 18 C^2 weights instead of 25 C^2; three see
  7 x 7 with 27 C^2 instead of 49 C^2, and add a nonlinearity per layer.
  """
  r = stacked_receptive_field(num_layers, kernel_size)
  c2 = channels * channels
  return StackComparison(
      receptive_field=r,
      stacked_params=num_layers * kernel_size**2 * c2,
      single_params=r * r * c2,
      stacked_nonlinearities=num_layers)


def pointwise_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """A 1 x 1 convolution as what it is: one Dense layer applied at every pixel.

  `x @ w` over the channel axis, equal to `conv2d_nhwc(x, w[None, None])`;
  it costs C_in C_out multiply-adds per output position.

  Args:
    x: images [N, H, W, C_in].
    w: the Dense kernel [C_in, C_out] (a 1 x 1 conv's HWIO kernel without
      its two leading 1s).

  Returns:
    [N, H, W, C_out] float64.
  """
  return np.asarray(x, np.float64) @ np.asarray(w, np.float64)


class SeparableCost(NamedTuple):
  """Multiply-adds per output position: standard vs depthwise-separable conv.

  Attributes:
    standard: K^2 C C' for one K x K convolution from C to C' channels.
    separable: K^2 C (depthwise K x K, one filter per input channel) +
      C C' (pointwise 1 x 1 from C to C').
    ratio: separable / standard = 1/C' + 1/K^2 (exact).
  """

  standard: int
  separable: int
  ratio: float


def separable_cost(kernel_size: int, in_channels: int,
                   out_channels: int) -> SeparableCost:
  """Why MobileNets factor a convolution into depthwise + pointwise.

  Costs are multiply-adds per output position (multiply by H' W' for a
  layer; biases not counted). E.g. K = 3, C = 32, C' = 64: 18,432 vs
  288 + 2,048 = 2,336, a ratio of 1/64 + 1/9 = 0.1267.
  """
  k2 = kernel_size * kernel_size
  standard = k2 * in_channels * out_channels
  separable = k2 * in_channels + in_channels * out_channels
  return SeparableCost(standard, separable, separable / standard)


# --------------------------------------------------------------------------
# Backpropagation through a convolution layer.
# --------------------------------------------------------------------------
#
# For y = correlate(x, w) (what a conv layer computes), y_t = sum_j w_j
# x_{t + j}, the chain rule gives
#   x-bar_p = sum_t y-bar_t w_{p - t} = (y-bar * w)_p   (a full convolution:
#             every output unit whose window covers p sends back its
#             gradient times the tap that read p), and
#   w-bar_tau = sum_t y-bar_t x_{t + tau}               (a correlation of the
#             input with the output gradient).
# With stride s and dilation d, output t reads input s t - pad + d j, and the
# same sums run over those index pairs.


def correlate_input_grad(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
  """x-bar of y = correlate(x, w, 'valid'), 1-D or 2-D: convolve(dy, w, 'full').

  Args:
    dy: gradient of the loss with respect to y, shape [N - K + 1] (or 2-D).
    w: the kernel [K] (or [KH, KW]).

  Returns:
    [N] (or [H, W]) float64.
  """
  return convolve(dy, w, 'full')


def correlate_weight_grad(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
  """w-bar of y = correlate(x, w, 'valid'): correlate(x, dy, 'valid'), [K]."""
  return correlate(x, dy, 'valid')


def _conv_geometry(input_shape: Sequence[int], kernel_hw: tuple[int, int],
                   stride: IntPair, padding: Padding, dilation: IntPair):
  _, h, w, _ = input_shape
  (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
  pad_h, pad_w = resolve_padding(padding, (h, w), kernel_hw, (sh, sw),
                                 (dh, dw))
  oh = conv_output_size(h, kernel_hw[0], sh, pad_h, dh)
  ow = conv_output_size(w, kernel_hw[1], sw, pad_w, dw)
  return (sh, sw), (dh, dw), pad_h, pad_w, oh, ow


def conv2d_input_grad(dy: np.ndarray, w: np.ndarray,
                      input_shape: Sequence[int], stride: IntPair = 1,
                      padding: Padding = 'VALID', dilation: IntPair = 1
                      ) -> np.ndarray:
  """x-bar of y = conv2d_nhwc(x, w, stride, padding, dilation).

  Every kernel tap (i, j) read input pixel s o - pad + d (i, j) for output o;
  backwards it adds y-bar_o w[i, j]^T there (a scatter of the output gradient
  through the transposed weights: the "transposed convolution").

  Args:
    dy: [N, OH, OW, C_out] gradient with respect to the output.
    w: [KH, KW, C_in, C_out] weights (groups = 1).
    input_shape: (N, H, W, C_in) of x.
    stride, padding, dilation: as in `conv2d_nhwc`.

  Returns:
    [N, H, W, C_in] float64.
  """
  dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
  kh, kw = w.shape[:2]
  (sh, sw), (dh, dw), pad_h, pad_w, oh, ow = _conv_geometry(
      input_shape, (kh, kw), stride, padding, dilation)
  if dy.shape[1:3] != (oh, ow):
    raise ValueError(f'dy has spatial shape {dy.shape[1:3]}, the convolution '
                     f'gives {(oh, ow)}.')
  n, h, wd, cin = input_shape
  xp = np.zeros((n, h + sum(pad_h), wd + sum(pad_w), cin))
  for i in range(kh):
    for j in range(kw):
      xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh,
         j * dw:j * dw + (ow - 1) * sw + 1:sw, :] += dy @ w[i, j].T
  return xp[:, pad_h[0]:pad_h[0] + h, pad_w[0]:pad_w[0] + wd, :]


def conv2d_weight_grad(x: np.ndarray, dy: np.ndarray,
                       kernel_hw: tuple[int, int], stride: IntPair = 1,
                       padding: Padding = 'VALID', dilation: IntPair = 1
                       ) -> np.ndarray:
  """w-bar of y = conv2d_nhwc(x, w, ...): w-bar[i, j] = sum over images and
  output positions of x_tap^T y-bar, where x_tap is what tap (i, j) read.

  Args:
    x: [N, H, W, C_in] input.
    dy: [N, OH, OW, C_out] gradient with respect to the output.
    kernel_hw: (KH, KW).
    stride, padding, dilation: as in `conv2d_nhwc`.

  Returns:
    [KH, KW, C_in, C_out] float64.
  """
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  kh, kw = kernel_hw
  (sh, sw), (dh, dw), pad_h, pad_w, oh, ow = _conv_geometry(
      x.shape, (kh, kw), stride, padding, dilation)
  xp = np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  dw_ = np.zeros((kh, kw, x.shape[-1], dy.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh,
               j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
      dw_[i, j] = np.einsum('nhwc,nhwd->cd', tap, dy)
  return dw_


def _padding_1d(padding) -> Padding:
  if isinstance(padding, str):
    return padding
  lo, hi = _pair(padding)
  return (0, 0), (lo, hi)


def conv1d_input_grad(dy: np.ndarray, w: np.ndarray,
                      input_shape: Sequence[int], stride: int = 1,
                      padding: str | int | tuple[int, int] = 'VALID',
                      dilation: int = 1) -> np.ndarray:
  """x-bar of a 1-D cross-correlation, NWC/WIO: dy [N, OL, C_out], w [K,
  C_in, C_out], input_shape (N, L, C_in) -> [N, L, C_in] float64."""
  n, length, cin = input_shape
  dx = conv2d_input_grad(np.asarray(dy)[:, None], np.asarray(w)[None],
                         (n, 1, length, cin), (1, stride),
                         _padding_1d(padding), (1, dilation))
  return dx[:, 0]


def conv1d_weight_grad(x: np.ndarray, dy: np.ndarray, kernel_size: int,
                       stride: int = 1,
                       padding: str | int | tuple[int, int] = 'VALID',
                       dilation: int = 1) -> np.ndarray:
  """w-bar of a 1-D cross-correlation: x [N, L, C_in], dy [N, OL, C_out]
  -> [K, C_in, C_out] float64."""
  dw_ = conv2d_weight_grad(np.asarray(x)[:, None], np.asarray(dy)[:, None],
                           (1, kernel_size), (1, stride),
                           _padding_1d(padding), (1, dilation))
  return dw_[0]


def input_pixel_consumers(input_hw: tuple[int, int],
                          kernel_hw: tuple[int, int], pixel: tuple[int, int],
                          stride: IntPair = 1, padding: Padding = 'VALID',
                          dilation: IntPair = 1) -> np.ndarray:
  """Which output units read input pixel `pixel`, and with which tap.

  These are exactly the units whose gradients x-bar_pixel collects:
  x-bar_p = sum over them of y-bar_o w[tap].

  Returns:
    int [OH, OW]: the flat kernel tap index i * KW + j that unit o applies
    to `pixel`, or -1 where o does not read it.
  """
  (sh, sw), (dh, dw), pad_h, pad_w, oh, ow = _conv_geometry(
      (1, *input_hw, 1), kernel_hw, stride, padding, dilation)
  taps = np.full((oh, ow), -1)
  for o in np.ndindex(oh, ow):
    for i in range(kernel_hw[0]):
      for j in range(kernel_hw[1]):
        if (o[0] * sh - pad_h[0] + i * dh == pixel[0]
            and o[1] * sw - pad_w[0] + j * dw == pixel[1]):
          taps[o] = i * kernel_hw[1] + j
  return taps


def compose_conv_kernels(k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
  """The one kernel of two stacked stride-1 'VALID' convolution layers.

  Cross-correlating with k1, then with k2, is cross-correlating once with
  K[d, c, c2] = sum over a + b = d (2-D offsets) and c1 of
  k1[a, c, c1] k2[b, c1, c2] (a full convolution of the two kernels over
  space, a matrix product over channels): depth without a non-linearity
  (and without biases) adds no expressive power, only a larger receptive
  field that one bigger layer has too.

  Args:
    k1: first layer's weights [K1h, K1w, C, C1] (HWIO).
    k2: second layer's weights [K2h, K2w, C1, C2].

  Returns:
    [K1h + K2h - 1, K1w + K2w - 1, C, C2] float64, such that
    `conv2d_nhwc(conv2d_nhwc(x, k1), k2) == conv2d_nhwc(x, K)`.
  """
  k1, k2 = np.asarray(k1, np.float64), np.asarray(k2, np.float64)
  (k1h, k1w, c, c1), (k2h, k2w, c1_, c2) = k1.shape, k2.shape
  if c1 != c1_:
    raise ValueError(f'k1 {k1.shape} outputs {c1} channels but k2 '
                     f'{k2.shape} reads {c1_}.')
  out = np.zeros((k1h + k2h - 1, k1w + k2w - 1, c, c2))
  for bi in range(k2h):
    for bj in range(k2w):
      # Tap b of the second layer reads the first layer's output at offset b,
      # which saw the input at offsets b + a.
      out[bi:bi + k1h, bj:bj + k1w] += np.einsum('hwcd,de->hwce', k1,
                                                 k2[bi, bj])
  return out
