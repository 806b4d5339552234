"""Data-parallel placement over a `jax.sharding.Mesh` with one 'data' axis.

Parameters and optimizer state are replicated; batches are split along their
first (batch) axis across every device of every process.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnn.common import errors
from input_pipeline.pipelines import source_base

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes."""
  # Auto axes: the compiler propagates shardings from the inputs and the
  # constraints we set (jax.make_mesh defaults to Explicit axes).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, what: str = 'batch size') -> None:
  """Fails with the fix when the batch does not split evenly over devices."""
  n = jax.device_count()
  if global_batch_size % n:
    lower = global_batch_size - global_batch_size % n
    raise errors.UserError(
        f'The global {what} {global_batch_size} does not divide evenly over '
        f'{n} devices. Use a multiple of {n}, e.g. '
        f'--config.input.batch_size={max(n, lower)} or {lower + n}.')


def put_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh
                     ) -> dict[str, jax.Array]:
  """`input_pipeline.pipelines.source_base.put_global_batch` on the 'data' axis."""
  return source_base.put_global_batch(local_batch, mesh, DATA_AXIS)
