"""The augmentations of `augment.py`, in TensorFlow for the tf.data path.

Same parameterisation, same order, same formulas: given the same parameters
the two implementations agree exactly for crops and flips and to float
rounding where they interpolate. Random parameters come from stateless ops
seeded by a [2] int seed, so the output depends only on the seed, never on
tf.data's parallelism or on which thread ran first.

Importing this module imports TensorFlow (with GPUs hidden).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from input_pipeline import lazy_tf
from input_pipeline.augment.jax_ops import (
  NUM_UNIFORMS,
  UNIFORM_COLUMNS,
  AugmentConfig,
  is_identity,
  resolve_config,
  uses_transform,
)

tf = lazy_tf.import_tensorflow()


# ------------------------------------------------------- deterministic ops


def crop_with_padding(images: tf.Tensor, padding: int, offsets: tf.Tensor
                      ) -> tf.Tensor:
  """Zero-pads by `padding` pixels, crops H x W at `offsets` [B, 2] (row, col).

  See `augment.crop_with_padding`. Vectorised over the batch with two
  batched gathers (rows, then columns) instead of a per-image slice.
  """
  if padding == 0:
    return images
  h, w = images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding],
                           [0, 0]])
  offsets = tf.cast(offsets, tf.int32)
  rows = offsets[:, 0:1] + tf.range(h)[None, :]  # [B, H]
  cols = offsets[:, 1:2] + tf.range(w)[None, :]  # [B, W]
  out = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(out, cols, axis=2, batch_dims=1)


def flip_lr(images: tf.Tensor, flags: tf.Tensor) -> tf.Tensor:
  """Mirrors left-right the images whose bool `flags` [B] are set."""
  return tf.where(flags[:, None, None, None], tf.reverse(images, [2]), images)


def flip_ud(images: tf.Tensor, flags: tf.Tensor) -> tf.Tensor:
  """Mirrors up-down the images whose bool `flags` [B] are set."""
  return tf.where(flags[:, None, None, None], tf.reverse(images, [1]), images)


def adjust_brightness(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Adds `delta` [B] to every pixel; no clipping."""
  return images + delta[:, None, None, None]


def adjust_contrast(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """(x - per-image, per-channel mean) * factor [B] + mean; no clipping."""
  mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
  return (images - mean) * factor[:, None, None, None] + mean


def rotation_matrices(angles_deg: tf.Tensor, height: int, width: int
                      ) -> tf.Tensor:
  """Output->input maps [B, 3, 3]; see `augment.rotation_matrices`."""
  theta = tf.cast(angles_deg, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(theta), tf.sin(theta)
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  zero, one = tf.zeros_like(cos), tf.ones_like(cos)
  return tf.stack([
      tf.stack([cos, -sin, cx - cos * cx + sin * cy], -1),
      tf.stack([sin, cos, cy - sin * cx - cos * cy], -1),
      tf.stack([zero, zero, one], -1)], -2)


def scale_crop_matrices(scales: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
  """Output->input maps [B, 3, 3]; see `augment.scale_crop_matrices`."""
  s = tf.cast(scales, tf.float32)
  offsets = tf.cast(offsets, tf.float32)
  t = 0.5 * s - 0.5
  zero, one = tf.zeros_like(s), tf.ones_like(s)
  return tf.stack([
      tf.stack([s, zero, offsets[:, 1] + t], -1),
      tf.stack([zero, s, offsets[:, 0] + t], -1),
      tf.stack([zero, zero, one], -1)], -2)


def matrices_to_transforms(matrices: tf.Tensor) -> tf.Tensor:
  """[B, 3, 3] -> [B, 8] in ImageProjectiveTransform layout."""
  m = matrices / matrices[:, 2:3, 2:3]
  return tf.reshape(m, [-1, 9])[:, :8]


def projective_transform(images: tf.Tensor, transforms: tf.Tensor
                         ) -> tf.Tensor:
  """Bilinear resampling with zero fill (the op `augment.py` mirrors)."""
  h, w = images.shape[1], images.shape[2]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=tf.cast(transforms, tf.float32),
      output_shape=tf.constant([h, w], tf.int32),
      fill_value=tf.constant(0.0, images.dtype),
      interpolation='BILINEAR', fill_mode='CONSTANT')


def rotate(images: tf.Tensor, angles_deg: tf.Tensor) -> tf.Tensor:
  """Rotates each image by `angles_deg` [B] (counterclockwise) about its
  centre."""
  h, w = images.shape[1], images.shape[2]
  return projective_transform(
      images, matrices_to_transforms(rotation_matrices(angles_deg, h, w)))


def scale_crop(images: tf.Tensor, scales: tf.Tensor, offsets: tf.Tensor
               ) -> tf.Tensor:
  """Crops a (scale H) x (scale W) box at `offsets`, resizes it to H x W."""
  return projective_transform(
      images, matrices_to_transforms(scale_crop_matrices(scales, offsets)))


# ------------------------------------------------------ random parameters


def params_from_uniform(u: tf.Tensor, height: int, width: int,
                        config: AugmentConfig) -> dict[str, tf.Tensor]:
  """Twin of `augment.params_from_uniform` (same columns, same maps)."""
  config = resolve_config(config)
  col = lambda name: u[:, UNIFORM_COLUMNS[name]]
  cols = lambda name: u[:, UNIFORM_COLUMNS[name][0]:UNIFORM_COLUMNS[name][1]]
  p: dict[str, tf.Tensor] = {}
  lo, hi = config['scale']
  if (lo, hi) != (1.0, 1.0):
    p['scale'] = lo + (hi - lo) * col('scale')
    room = (tf.constant([height, width], tf.float32)
            * (1.0 - p['scale'][:, None]))
    p['scale_offset'] = cols('scale_offset') * room
  deg = config['rotation_degrees']
  if deg > 0:
    p['angle'] = deg * (2.0 * col('angle') - 1.0)
  pad = config['crop_padding']
  if pad > 0:
    p['crop_offset'] = tf.cast(tf.minimum(
        tf.floor(cols('crop_offset') * (2 * pad + 1)), 2 * pad), tf.int32)
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


def sample_params(seed: tf.Tensor, batch: int, height: int, width: int,
                  config: AugmentConfig) -> dict[str, tf.Tensor]:
  """Stateless twin of `augment.sample_params` (same keys and ranges).

  Args:
    seed: int [2], e.g. (data seed, step); equal seeds give equal draws.
    batch, height, width: batch size and image size in pixels.
    config: augmentation config.
  """
  u = tf.random.stateless_uniform([batch, NUM_UNIFORMS], seed)
  return params_from_uniform(u, height, width, config)


def apply_params(images: tf.Tensor, params: Mapping[str, Any],
                 config: AugmentConfig, noise: tf.Tensor | None = None
                 ) -> tf.Tensor:
  """Twin of `augment.apply_params` (same order, same clipping)."""
  config = resolve_config(config)
  h, w = images.shape[1], images.shape[2]
  if uses_transform(config):
    batch = tf.shape(images)[0]
    m = tf.eye(3, batch_shape=[batch], dtype=tf.float32)
    if 'scale' in params:
      m = scale_crop_matrices(params['scale'], params['scale_offset'])
    if 'angle' in params:
      m = tf.matmul(m, rotation_matrices(params['angle'], h, w))
    images = projective_transform(images, matrices_to_transforms(m))
  if 'crop_offset' in params:
    images = crop_with_padding(images, config['crop_padding'],
                               params['crop_offset'])
  if 'flip_lr' in params:
    images = flip_lr(images, tf.convert_to_tensor(params['flip_lr']))
  if 'flip_ud' in params:
    images = flip_ud(images, tf.convert_to_tensor(params['flip_ud']))
  if 'brightness' in params:
    images = adjust_brightness(images, params['brightness'])
  if 'contrast' in params:
    images = adjust_contrast(images, params['contrast'])
  if 'brightness' in params or 'contrast' in params:
    images = tf.clip_by_value(images, 0.0, 1.0)
  if config['noise_std'] > 0:
    if noise is None:
      raise ValueError('noise_std > 0 needs a `noise` tensor.')
    images = images + config['noise_std'] * noise
  return images


def augment_batch(seed: tf.Tensor, images: tf.Tensor,
                  config: AugmentConfig | None, *,
                  global_batch: int | None = None, row_offset: int = 0
                  ) -> tf.Tensor:
  """Randomly augments a batch [B, H, W, C] (0..1) from a [2] int seed.

  Args:
    seed: int [2]; equal seeds give equal outputs.
    images: float [B, H, W, C] with a static batch size.
    config: augmentation config.
    global_batch: size of the global batch these rows belong to (default B).
    row_offset: index of this batch's first row in the global batch.

  Parameters (and noise) are drawn for the whole global batch and this
  process's rows are sliced out, so a row is augmented the same whatever the
  number of processes.
  """
  config = resolve_config(config)
  if is_identity(config):
    return images
  batch, h, w, c = (images.shape[0], images.shape[1], images.shape[2],
                    images.shape[3])
  if batch is None:
    raise ValueError('augment_batch needs a static batch size.')
  global_batch = global_batch or batch
  rows = slice(row_offset, row_offset + batch)
  param_seed, noise_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  params = sample_params(param_seed, global_batch, h, w, config)
  params = {k: v[rows] for k, v in params.items()}
  noise = None
  if config['noise_std'] > 0:
    noise = tf.random.stateless_normal([global_batch, h, w, c],
                                       noise_seed)[rows]
  return apply_params(images, params, config, noise)


def augment_step_batch(source: Any, step: tf.Tensor, images: tf.Tensor
                       ) -> tf.Tensor:
  """`augment_batch` of a host train source's batch of global `step`: seeded
  by (source.seed, step), this process's rows of the global batch."""
  seed = tf.stack([tf.constant(source.seed & 0xFFFFFFFF, tf.int64),
                   tf.cast(step, tf.int64)])
  return augment_batch(
      seed, images, source.augment_config,
      global_batch=source.global_batch_size,
      row_offset=source.process_index * source.local_batch_size)
