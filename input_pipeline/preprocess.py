"""Conversions shared by every pipeline: uint8 -> float, normalise, resize.

`to_unit_float` and `normalize` work on numpy arrays, jax arrays (inside jit)
and TensorFlow tensors, with bit-identical results.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Array = Any  # numpy, jax or TensorFlow array.


# k / 255 for every uint8 value k, rounded once, in numpy. Looking the values
# up (instead of multiplying) keeps numpy, jax and TF bit-identical: XLA fuses
# `x * (1/255) - mean` into a fused multiply-add, which rounds differently.
_UNIT_LUT = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)


def to_unit_float(images: Array) -> Array:
  """uint8 0..255 images [..., H, W, C] -> float32 0..1 (same array kind)."""
  if isinstance(images, np.ndarray):
    return _UNIT_LUT[images]
  if hasattr(images, 'astype'):  # jax.Array (tf.Tensor has no astype).
    import jax.numpy as jnp
    return jnp.asarray(_UNIT_LUT)[images.astype(jnp.int32)]
  import tensorflow as tf
  return tf.gather(tf.constant(_UNIT_LUT), tf.cast(images, tf.int32))


def normalize(images: Array, mean: Sequence[float], std: Sequence[float]
              ) -> Array:
  """Standardises 0..1 images [..., H, W, C] per channel: (x - mean) / std.

  Args:
    images: float images on the 0..1 scale, channels last.
    mean: per-channel mean on the 0..1 scale (length C, or 1 for all).
    std: per-channel standard deviation on the 0..1 scale.

  Returns:
    float32 images with roughly zero mean and unit variance per channel.
  """
  mean = np.asarray(mean, np.float32)
  # Multiply by the reciprocal (computed once, in numpy) so numpy, jax and TF
  # round identically.
  inv_std = np.float32(1.0) / np.asarray(std, np.float32)
  return (images - mean) * inv_std


def resize_images(images: np.ndarray, size: int, *, chunk: int = 4096
                  ) -> np.ndarray:
  """Resizes uint8 images [N, H, W, C] to [N, size, size, C], bilinear.

  Done once when a split is loaded (not per batch), so that the device and
  tf.data pipelines see the very same pixels. Runs on the host CPU through
  jax; downsampling is antialiased.
  """
  import jax

  images = np.asarray(images)
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  cpu = jax.devices('cpu')[0]

  @jax.jit
  def resize(x):
    x = jax.image.resize(x.astype(np.float32), (x.shape[0], size, size, c),
                         method='bilinear')
    return jax.numpy.clip(jax.numpy.round(x), 0, 255).astype(np.uint8)

  out = np.empty((n, size, size, c), np.uint8)
  with jax.default_device(cpu):
    for start in range(0, n, chunk):
      out[start:start + chunk] = np.asarray(
          resize(jax.device_put(images[start:start + chunk], cpu)))
  return out
