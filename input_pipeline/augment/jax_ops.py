"""Batched image augmentation in pure JAX (jittable, per-example randomness).

Images are float32 [batch, height, width, channels] on the 0..1 scale (before
normalisation), so zero padding and zero fill are black.

Each op is split in two: a deterministic function that applies given
parameters (`crop_with_padding(images, padding, offsets)`, `flip_lr(images,
flags)`, ...) and a sampler that draws those parameters. `augment_tf.py`
implements the same deterministic functions in TensorFlow, and the tests check
they agree exactly (crop, flips) or to float rounding (interpolation).

Order of application (`apply_params`):
  1. scale crop and rotation, composed into one projective resampling
     (bilinear, zero fill), so the image is interpolated once;
  2. crop with padding (integer shift, zero fill);
  3. horizontal / vertical flips;
  4. brightness then contrast, then clipping to 0..1;
  5. Gaussian noise, not clipped: on a black background clipping would keep
     only the positive half and brighten the image on average.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import errors

Array = jax.Array
AugmentConfig = Mapping[str, Any]

# Keys of every augmentation config, with the values that switch the op off.
_DEFAULTS = dict(
    crop_padding=0,         # Pixels of zero padding before the random crop.
    flip_lr=False,          # Random left-right flip with probability 1/2.
    flip_ud=False,          # Random up-down flip with probability 1/2.
    rotation_degrees=0.0,   # Angle uniform in [-deg, +deg], counterclockwise.
    brightness=0.0,         # Additive delta uniform in [-b, b] (0..1 scale).
    contrast=0.0,           # Factor uniform in [1 - c, 1 + c] about the mean.
    noise_std=0.0,          # Std of additive Gaussian noise (0..1 scale).
    scale=(1.0, 1.0),       # Crop side / image side, uniform in [lo, hi].
)


def default_augment_config() -> dict[str, Any]:
  """All augmentations off; a plain dict to embed in ml_collections configs."""
  return dict(_DEFAULTS)


def resolve_config(config: AugmentConfig | None) -> dict[str, Any]:
  """Fills defaults, checks names and ranges; returns a plain dict."""
  config = dict(config or {})
  unknown = sorted(set(config) - set(_DEFAULTS))
  if unknown:
    raise errors.InputConfigError(
        f'Unknown augmentation option(s) {unknown}; '
        f'valid: {sorted(_DEFAULTS)}.')
  out = default_augment_config()
  out.update(config)
  out['crop_padding'] = int(out['crop_padding'])
  out['flip_lr'] = bool(out['flip_lr'])
  out['flip_ud'] = bool(out['flip_ud'])
  for name in ('rotation_degrees', 'brightness', 'contrast', 'noise_std'):
    out[name] = float(out[name])
    if out[name] < 0:
      raise errors.InputConfigError(
          f'Augmentation {name} must be >= 0, got {out[name]}.')
  lo, hi = (float(s) for s in out['scale'])
  if not 0 < lo <= hi:
    raise errors.InputConfigError(
        f'Augmentation scale must be 0 < lo <= hi, got {lo, hi}.')
  out['scale'] = (lo, hi)
  if out['crop_padding'] < 0:
    raise errors.InputConfigError(
        f"crop_padding must be >= 0, got {out['crop_padding']}.")
  return out


def is_identity(config: AugmentConfig | None) -> bool:
  """True when `config` changes no image."""
  return resolve_config(config) == _DEFAULTS


def uses_transform(config: dict[str, Any]) -> bool:
  return config['rotation_degrees'] > 0 or config['scale'] != (1.0, 1.0)


# ------------------------------------------------------- deterministic ops


def crop_with_padding(images: Array, padding: int, offsets: Array) -> Array:
  """Zero-pads by `padding` pixels on every side, then crops back to H x W.

  Args:
    images: [B, H, W, C].
    padding: pixels of padding per side.
    offsets: int [B, 2], (row, column) of the crop's top-left corner in the
      padded image, each in 0..2*padding (padding = no shift).

  Returns:
    [B, H, W, C]; the image shifted by (padding - offset) pixels.
  """
  if padding == 0:
    return images
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))
  offsets = offsets.astype(jnp.int32)
  crop = lambda img, off: jax.lax.dynamic_slice(
      img, (off[0], off[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def flip_lr(images: Array, flags: Array) -> Array:
  """Mirrors left-right the images whose bool `flags` [B] are set."""
  return jnp.where(flags[:, None, None, None], images[:, :, ::-1], images)


def flip_ud(images: Array, flags: Array) -> Array:
  """Mirrors up-down the images whose bool `flags` [B] are set."""
  return jnp.where(flags[:, None, None, None], images[:, ::-1], images)


def adjust_brightness(images: Array, delta: Array) -> Array:
  """Adds `delta` [B] (0..1 scale) to every pixel; no clipping."""
  return images + delta[:, None, None, None]


def adjust_contrast(images: Array, factor: Array) -> Array:
  """Scales each image's deviation from its per-channel mean by `factor` [B].

  Same definition as `tf.image.adjust_contrast`; no clipping.
  """
  mean = jnp.mean(images, axis=(1, 2), keepdims=True)
  return (images - mean) * factor[:, None, None, None] + mean


def rotation_matrices(angles_deg: Array, height: int, width: int) -> Array:
  """Output->input affine maps [B, 3, 3] rotating about the image centre.

  Positive angles turn the image counterclockwise as displayed (rows down),
  the convention of `tfa.image.rotate` and Keras' RandomRotation.
  """
  theta = jnp.deg2rad(angles_deg.astype(jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  zero, one = jnp.zeros_like(cos), jnp.ones_like(cos)
  return jnp.stack([
      jnp.stack([cos, -sin, cx - cos * cx + sin * cy], -1),
      jnp.stack([sin, cos, cy - sin * cx - cos * cy], -1),
      jnp.stack([zero, zero, one], -1)], -2)


def scale_crop_matrices(scales: Array, offsets: Array) -> Array:
  """Output->input affine maps [B, 3, 3] of a crop resized to the full image.

  Args:
    scales: [B], crop side / image side (< 1 zooms in, > 1 zooms out).
    offsets: float [B, 2], (row, column) of the crop's top-left corner in
      input pixels; (0, 0) to (H, W) * (1 - scale) keeps it inside the image.

  Pixel centres are mapped onto pixel centres: x_in = off + (x + 0.5) s - 0.5.
  """
  s = scales.astype(jnp.float32)
  offsets = offsets.astype(jnp.float32)
  t = 0.5 * s - 0.5
  zero, one = jnp.zeros_like(s), jnp.ones_like(s)
  return jnp.stack([
      jnp.stack([s, zero, offsets[:, 1] + t], -1),
      jnp.stack([zero, s, offsets[:, 0] + t], -1),
      jnp.stack([zero, zero, one], -1)], -2)


def matrices_to_transforms(matrices: Array) -> Array:
  """[B, 3, 3] output->input maps -> [B, 8] in TF's ImageProjectiveTransform
  layout (a0 a1 a2 b0 b1 b2 c0 c1), normalised so the last entry is 1."""
  m = matrices / matrices[:, 2:3, 2:3]
  return m.reshape(-1, 9)[:, :8]


def projective_transform(images: Array, transforms: Array) -> Array:
  """Resamples images through output->input projective maps, bilinear.

  Mirrors TensorFlow's `ImageProjectiveTransformV3` with interpolation
  'BILINEAR', fill_mode 'CONSTANT' and fill value 0, formula for formula, so
  the two agree to float rounding: output pixel (x, y) reads the input at
  ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k) with k = c0 x + c1 y + 1,
  and each of the four neighbours outside the image counts as 0.

  Args:
    images: [B, H, W, C] float.
    transforms: [B, 8] float32.

  Returns:
    [B, H, W, C].
  """
  _, h, w, _ = images.shape
  t = transforms.astype(jnp.float32)[:, :, None, None]  # [B, 8, 1, 1]
  ys = jnp.arange(h, dtype=jnp.float32)[:, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, :]
  k = t[:, 6] * xs + t[:, 7] * ys + 1.0
  x = (t[:, 0] * xs + t[:, 1] * ys + t[:, 2]) / k  # [B, H, W]
  y = (t[:, 3] * xs + t[:, 4] * ys + t[:, 5]) / k
  x0, y0 = jnp.floor(x), jnp.floor(y)
  x1, y1 = x0 + 1, y0 + 1

  def read(img, yy, xx):
    # One image [H, W, C] at integer coordinates [H, W]; zero outside.
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    yi = jnp.clip(yy, 0, h - 1).astype(jnp.int32)
    xi = jnp.clip(xx, 0, w - 1).astype(jnp.int32)
    return jnp.where(inside[..., None], img[yi, xi], 0.0)

  def one(img, x, y, x0, y0, x1, y1):
    wx0, wx1 = (x1 - x)[..., None], (x - x0)[..., None]
    top = wx0 * read(img, y0, x0) + wx1 * read(img, y0, x1)
    bottom = wx0 * read(img, y1, x0) + wx1 * read(img, y1, x1)
    return (y1 - y)[..., None] * top + (y - y0)[..., None] * bottom

  out = jax.vmap(one)(images.astype(jnp.float32), x, y, x0, y0, x1, y1)
  return out.astype(images.dtype)


def rotate(images: Array, angles_deg: Array) -> Array:
  """Rotates each image by `angles_deg` [B] about its centre (bilinear)."""
  _, h, w, _ = images.shape
  return projective_transform(
      images, matrices_to_transforms(rotation_matrices(angles_deg, h, w)))


def scale_crop(images: Array, scales: Array, offsets: Array) -> Array:
  """Crops a (scale H) x (scale W) box at `offsets`, resizes it to H x W."""
  return projective_transform(
      images, matrices_to_transforms(scale_crop_matrices(scales, offsets)))


# ------------------------------------------------------ random parameters


# Columns of the one uniform draw [B, NUM_UNIFORMS] that all per-image
# parameters derive from. Fixed columns: switching one op on or off leaves the
# others' draws unchanged. One draw also compiles much faster than one
# jax.random call per op (threefry dominates compile time on CPU).
UNIFORM_COLUMNS = dict(scale=0, scale_offset=(1, 3), angle=3,
                       crop_offset=(4, 6), flip_lr=6, flip_ud=7, brightness=8,
                       contrast=9)
NUM_UNIFORMS = 10


def params_from_uniform(u: Array, height: int, width: int,
                        config: AugmentConfig) -> dict[str, Array]:
  """Maps uniforms u [B, NUM_UNIFORMS] in [0, 1) to augmentation parameters.

  Returns:
    dict with (only for enabled ops) 'scale' [B] uniform in the scale range,
    'scale_offset' [B, 2] (pixels, uniform in [0, (H, W) * (1 - scale)]),
    'angle' [B] (degrees, uniform in [-deg, deg]), 'crop_offset' int32 [B, 2]
    (uniform over 0..2*padding), 'flip_lr'/'flip_ud' bool [B] (probability
    1/2), 'brightness' [B] (uniform in [-b, b]), 'contrast' [B] (uniform in
    [1 - c, 1 + c]). Ops without parameters are skipped at trace time.
  """
  config = resolve_config(config)
  col = lambda name: u[:, UNIFORM_COLUMNS[name]]
  cols = lambda name: u[:, UNIFORM_COLUMNS[name][0]:UNIFORM_COLUMNS[name][1]]
  p: dict[str, Array] = {}
  lo, hi = config['scale']
  if (lo, hi) != (1.0, 1.0):
    p['scale'] = lo + (hi - lo) * col('scale')
    room = (jnp.array([height, width], jnp.float32)
            * (1.0 - p['scale'][:, None]))
    p['scale_offset'] = cols('scale_offset') * room
  deg = config['rotation_degrees']
  if deg > 0:
    p['angle'] = deg * (2.0 * col('angle') - 1.0)
  pad = config['crop_padding']
  if pad > 0:
    # floor(u * n) is uniform over 0..n-1; min() guards u rounding up to 1.
    p['crop_offset'] = jnp.minimum(
        jnp.floor(cols('crop_offset') * (2 * pad + 1)), 2 * pad
    ).astype(jnp.int32)
  if config['flip_lr']:
    p['flip_lr'] = col('flip_lr') < 0.5
  if config['flip_ud']:
    p['flip_ud'] = col('flip_ud') < 0.5
  b = config['brightness']
  if b > 0:
    p['brightness'] = b * (2.0 * col('brightness') - 1.0)
  c = config['contrast']
  if c > 0:
    p['contrast'] = 1.0 + c * (2.0 * col('contrast') - 1.0)
  return p


def sample_params(key: Array, batch: int, height: int, width: int,
                  config: AugmentConfig) -> dict[str, Array]:
  """Draws independent parameters for each of `batch` images (see
  `params_from_uniform`). Noise is drawn separately (it is per pixel)."""
  u = jax.random.uniform(key, (batch, NUM_UNIFORMS), jnp.float32)
  return params_from_uniform(u, height, width, config)


def apply_params(images: Array, params: Mapping[str, Array],
                 config: AugmentConfig, noise: Array | None = None) -> Array:
  """Applies sampled parameters in the documented order.

  Args:
    images: float [B, H, W, C], 0..1.
    params: from `sample_params` (or the TF twin, converted to arrays).
    config: the augmentation config the parameters were drawn for.
    noise: standard normal [B, H, W, C], required when noise_std > 0.

  Returns:
    float [B, H, W, C].
  """
  config = resolve_config(config)
  _, h, w, _ = images.shape
  if uses_transform(config):
    batch = images.shape[0]
    m = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (batch, 3, 3))
    if 'scale' in params:
      m = scale_crop_matrices(params['scale'], params['scale_offset'])
    if 'angle' in params:
      # Zoom first, then rotate: out(o) = zoomed(R o) = image(S R o).
      m = m @ rotation_matrices(params['angle'], h, w)
    images = projective_transform(images, matrices_to_transforms(m))
  if 'crop_offset' in params:
    images = crop_with_padding(images, config['crop_padding'],
                               params['crop_offset'])
  if 'flip_lr' in params:
    images = flip_lr(images, params['flip_lr'])
  if 'flip_ud' in params:
    images = flip_ud(images, params['flip_ud'])
  if 'brightness' in params:
    images = adjust_brightness(images, params['brightness'])
  if 'contrast' in params:
    images = adjust_contrast(images, params['contrast'])
  if 'brightness' in params or 'contrast' in params:
    images = jnp.clip(images, 0.0, 1.0)
  if config['noise_std'] > 0:
    if noise is None:
      raise ValueError('noise_std > 0 needs a `noise` array.')
    images = images + config['noise_std'] * noise
  return images


def augment_batch(key: Array, images: Array, config: AugmentConfig | None
                  ) -> Array:
  """Randomly augments a batch; each image gets its own parameters.

  Args:
    key: a JAX PRNG key; the same key gives the same output.
    images: float [B, H, W, C] on the 0..1 scale.
    config: augmentation config (see `default_augment_config`).

  Returns:
    float [B, H, W, C].
  """
  config = resolve_config(config)
  if config == _DEFAULTS:
    return images
  b, h, w, c = images.shape
  param_key, noise_key = jax.random.split(key)
  params = sample_params(param_key, b, h, w, config)
  noise = None
  if config['noise_std'] > 0:
    noise = jax.random.normal(noise_key, (b, h, w, c), images.dtype)
  return apply_params(images, params, config, noise)


def params_to_numpy(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Host copies of sampled parameters (to feed the other implementation)."""
  return {k: np.asarray(v) for k, v in params.items()}
