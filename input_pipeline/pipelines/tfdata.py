"""Train batches from a tf.data pipeline on the host CPU.

Same order as the device pipeline (`ordering.py`: example indices are a
function of (seed, step)), same augmentations (`augment_tf.py`), same
normalisation. Each process feeds its slice of every global batch: rows
[p * B_local, (p + 1) * B_local) for process p, so the global batch does not
depend on the number of processes.

Pipeline: step counter -> this process's indices (numpy, cheap) -> parallel
map (gather from the in-memory split, batched augmentation seeded by
(seed, step), normalisation) -> prefetch. Stateless random ops make the
output a function of (seed, step) only, whatever tf.data's parallelism.

Importing this module imports TensorFlow (GPUs hidden); `__init__` does not.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from input_pipeline import lazy_tf, preprocess
from input_pipeline.augment import tf_ops as augment_tf
from input_pipeline.pipelines import ordering, source_base

tf = lazy_tf.import_tensorflow()


class TfDataSource(source_base.SourceBase):
  """Train source backed by tf.data; see the module docstring.

  Attributes:
    pipeline: 'tfdata'.
    info: the data set's `DatasetInfo`.
    num_examples: examples in the (possibly subset) train split.
    global_batch_size: examples per step over all processes.
    local_batch_size: rows this process yields per step.
    steps_per_epoch: num_examples // global_batch_size.
    step_batch_fn: `batch_as_given`: `step_inputs` yields the batches.
  """

  pipeline = 'tfdata'
  step_batch_fn = staticmethod(source_base.batch_as_given)

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, info: Any,
               global_batch_size: int, augment_config: Any = None,
               seed: int = 0, process_index: int = 0, process_count: int = 1,
               prefetch: int = tf.data.AUTOTUNE, mesh: Any = None,
               data_axis: str = 'data'):
    super().__init__(
        images.shape[0], info=info, global_batch_size=global_batch_size,
        augment_config=augment_config, seed=seed, process_index=process_index,
        process_count=process_count)
    self._prefetch = prefetch
    self._mesh, self._data_axis = mesh, data_axis
    # One host copy shared by all map calls (captured by reference).
    self._images = tf.constant(np.asarray(images, np.uint8))
    self._labels = tf.constant(np.asarray(labels, np.int32))

  def _indices(self, start_step: int) -> Iterator[tuple[int, np.ndarray]]:
    lo = self.process_index * self.local_batch_size
    step = start_step
    while True:
      idx = ordering.batch_indices_np(
          step, n=self.num_examples, global_batch_size=self.global_batch_size,
          seed=self.seed)
      yield step, idx[lo:lo + self.local_batch_size]
      step += 1

  def _make_batch(self, step: tf.Tensor, idx: tf.Tensor
                  ) -> dict[str, tf.Tensor]:
    images = preprocess.to_unit_float(tf.gather(self._images, idx))
    labels = tf.gather(self._labels, idx)
    images = augment_tf.augment_step_batch(self, step, images)
    images = preprocess.normalize(images, self._mean, self._std)
    return {'image': images, 'label': labels}

  def dataset(self, start_step: int = 0) -> tf.data.Dataset:
    """Infinite tf.data.Dataset of this process's batches from `start_step`.

    Elements: {'image': float32 [B_local, H, W, C] normalised,
    'label': int32 [B_local]}.
    """
    ds = tf.data.Dataset.from_generator(
        lambda: self._indices(start_step),
        output_signature=(
            tf.TensorSpec((), tf.int64),
            tf.TensorSpec((self.local_batch_size,), tf.int64)))
    # Batches are formed before the map, so augmentation runs vectorised on
    # whole batches; deterministic=True keeps the step order.
    ds = ds.map(self._make_batch, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds.prefetch(self._prefetch)

  def iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of this process from `start_step` on (infinite)."""
    return self.dataset(start_step).as_numpy_iterator()

  def step_inputs(self, start_step: int = 0
                  ) -> Iterator[dict[str, Any]]:
    """Global batches from `start_step` on, sharded over the mesh's data
    axis (each process contributes its own rows)."""
    return source_base.host_step_inputs(self.iterator(start_step),
                                        self._mesh, self._data_axis)
