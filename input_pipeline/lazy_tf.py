"""Lazy TensorFlow import for the tf.data and tfds code paths only.

The accelerator machines have no TensorFlow, so nothing at module level in
this package may import it. When it is imported, it must not take GPU memory
that JAX needs, hence the GPUs are hidden from it before first use.
"""

from __future__ import annotations

import types

_TF_MISSING = (
    'TensorFlow is not installed here; the tf.data pipeline and tfds data '
    "sets need it. Use config.input.pipeline='device' with a local data set "
    "('fashion_mnist', 'digits'), or `pip install tensorflow-cpu "
    'tensorflow-datasets`.')


def import_tensorflow() -> types.ModuleType:
  """Imports TensorFlow with GPUs hidden from it."""
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ImportError(_TF_MISSING) from e
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    # TF's devices were already initialised (someone used TF before us);
    # visibility can no longer change and there is nothing better to do.
    pass
  return tf


def import_tfds() -> types.ModuleType:
  """Imports tensorflow_datasets (after hiding GPUs from TensorFlow)."""
  import_tensorflow()
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(_TF_MISSING) from e
  return tfds
