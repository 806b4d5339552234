"""What every train source shares: how a global batch splits over processes,
the epoch length, and the resolved augmentation and normalisation."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from input_pipeline import errors
from input_pipeline.augment import jax_ops as augment
from input_pipeline.pipelines import ordering


def put_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                     data_axis: str = 'data') -> dict[str, jax.Array]:
  """Turns this process's slice of a global batch into sharded global arrays.

  Each process passes its own rows (global batch / process count); the result
  is one array spanning all processes, sharded on the batch axis.
  """
  sharding = NamedSharding(mesh, PartitionSpec(data_axis))
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def host_step_inputs(batches, mesh: Mesh | None, data_axis: str = 'data'):
  """`step_inputs` of host pipelines: each of this process's numpy
  `batches` as a global batch sharded over `data_axis` (default mesh: all
  devices)."""
  if mesh is None:
    mesh = Mesh(np.asarray(jax.devices()), (data_axis,))
  for batch in batches:
    yield put_global_batch(batch, mesh, data_axis)


def batch_as_given(inputs: dict[str, jax.Array], step: Any
                   ) -> dict[str, jax.Array]:
  """`step_batch_fn` of sources whose step input already is the batch."""
  del step
  return inputs


class SourceBase:
  """Bookkeeping common to `DeviceSource` and `TfDataSource`.

  Attributes:
    info: the data set's `DatasetInfo`.
    seed: data seed; order and augmentation follow from (seed, step).
    num_examples: examples in the (possibly subset) train split.
    global_batch_size: examples per step over all processes.
    local_batch_size: rows of each global batch that this process feeds.
    process_index, process_count: this process and how many feed a batch.
    steps_per_epoch: num_examples // global_batch_size.
    augment_config: the resolved augmentation options.
  """

  def __init__(self, num_examples: int, *, info: Any, global_batch_size: int,
               augment_config: Any, seed: int, process_index: int,
               process_count: int):
    if global_batch_size % process_count:
      raise errors.InputConfigError(
          f'Global batch size {global_batch_size} is not divisible by the '
          f'{process_count} processes.')
    if not 0 <= process_index < process_count:
      raise errors.InputConfigError(
          f'process_index {process_index} outside 0..{process_count - 1}.')
    self.info = info
    self.seed = int(seed)
    self.num_examples = int(num_examples)
    self.global_batch_size = int(global_batch_size)
    self.local_batch_size = self.global_batch_size // process_count
    self.process_index = process_index
    self.process_count = process_count
    self.steps_per_epoch = ordering.steps_per_epoch(self.num_examples,
                                                    self.global_batch_size)
    self.augment_config = augment.resolve_config(augment_config)
    self._mean = tuple(info.mean)
    self._std = tuple(info.std)
