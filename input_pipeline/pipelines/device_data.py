"""Train batches made on the accelerator, inside the jitted train step.

The whole uint8 split lives on device (replicated over the mesh: Fashion-MNIST
is 47 MB). Each step gathers its examples by index (`ordering.py`), converts
to float, augments (`augment.py`) and normalises, all in the same XLA program
as the model, so the host does no per-step work. No TensorFlow involved.

Typical use in a trainer (the `TrainSource` protocol, which the tf.data
source speaks too):

  source = create_train_source(config.input, seed=config.seed, mesh=mesh)
  @functools.partial(jax.jit, static_argnames='batch_fn')
  def train_step(state, inputs, batch_fn):
    batch = batch_fn(inputs, state.step)  # sharded over 'data'
    ...
  for inputs in source.step_inputs(start_step):
    state = train_step(state, inputs, batch_fn=source.step_batch_fn)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from input_pipeline import errors, preprocess
from input_pipeline.augment import jax_ops as augment
from input_pipeline.pipelines import ordering, source_base

# Tags for splitting the data key: the order and the augmentations draw from
# independent streams.
_ORDER_TAG, _AUGMENT_TAG = 0, 1


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and (
      jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
      or (x.dtype == jnp.uint32 and x.shape == (2,)))


def _split_seed(key_or_seed: Any) -> tuple[Any, jax.Array]:
  """(order seed, augmentation base key) from an int seed or a PRNG key.

  An int seed (Python or traced) orders the data exactly as the tf.data
  pipeline does for that seed; a key gives a valid order of its own.
  """
  if _is_key(key_or_seed):
    key = key_or_seed
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)
    order_seed = jax.random.bits(jax.random.fold_in(key, _ORDER_TAG), (),
                                 jnp.uint32)
    return order_seed, jax.random.fold_in(key, _AUGMENT_TAG)
  if isinstance(key_or_seed, (int, np.integer)):
    # Low 32 bits, as the host pipelines do; jax.random.key wants int32 range.
    key_or_seed = np.uint32(int(key_or_seed) & 0xFFFFFFFF)
  seed = jnp.asarray(key_or_seed)
  key = jax.random.key(seed)
  return seed, jax.random.fold_in(key, _AUGMENT_TAG)


def batch_indices(key_or_seed: Any, step: Any, *, n: int,
                  global_batch_size: int) -> jax.Array:
  """int32 [global_batch_size]: which of the `n` examples make the global
  batch of `step` for this int seed or key (jittable; `DeviceSource`'s
  order, also that of cached features)."""
  order_seed, _ = _split_seed(key_or_seed)
  return ordering.batch_indices_jax(
      step, n=n, global_batch_size=global_batch_size, seed=order_seed)


def _global_batch(data: dict[str, jax.Array], key_or_seed: Any, step: Any, *,
                  global_batch_size: int, augment_items: tuple,
                  mean: tuple[float, ...], std: tuple[float, ...]
                  ) -> dict[str, jax.Array]:
  """The global batch of `step`; static arguments are hashable tuples."""
  augment_config = dict(augment_items)
  _, augment_key = _split_seed(key_or_seed)
  idx = batch_indices(key_or_seed, step, n=data['image'].shape[0],
                      global_batch_size=global_batch_size)
  images = preprocess.to_unit_float(jnp.take(data['image'], idx, axis=0))
  labels = jnp.take(data['label'], idx, axis=0)
  if not augment.is_identity(augment_config):
    step_key = jax.random.fold_in(augment_key, jnp.asarray(step, jnp.int32))
    images = augment.augment_batch(step_key, images, augment_config)
  images = preprocess.normalize(images, mean, std)
  return {'image': images.astype(jnp.float32),
          'label': labels.astype(jnp.int32)}


# Module level, so that sources with equal settings (e.g. two seeds) share
# compilations in the host iterator.
_global_batch_jit = jax.jit(
    _global_batch,
    static_argnames=('global_batch_size', 'augment_items', 'mean', 'std'))


@dataclasses.dataclass(frozen=True)
class DeviceBatchFn:
  """`((data, seed), step) -> global batch`, traced inside the train step.

  Hashable and compared by value: jitted steps of two sources with the same
  settings (the seeds of one sweep) share one compilation.
  """

  global_batch_size: int
  augment_items: tuple
  mean: tuple[float, ...]
  std: tuple[float, ...]
  batch_sharding: NamedSharding

  def __call__(self, inputs: tuple[dict[str, jax.Array], jax.Array],
               step: Any) -> dict[str, jax.Array]:
    data, seed = inputs
    batch = _global_batch(
        data, seed, step, global_batch_size=self.global_batch_size,
        augment_items=self.augment_items, mean=self.mean, std=self.std)
    return jax.lax.with_sharding_constraint(batch, self.batch_sharding)


class DeviceSource(source_base.SourceBase):
  """Train source whose batches are computed on device from (seed, step).

  Attributes:
    pipeline: 'device'.
    info: the data set's `DatasetInfo`.
    num_examples: examples in the (possibly subset) train split.
    global_batch_size: examples per step over all processes.
    local_batch_size: rows of each global batch that this process feeds.
    steps_per_epoch: num_examples // global_batch_size.
    data: {'image': uint8 [N, H, W, C], 'label': int32 [N]} on device; pass
      it to the jitted step as an argument (a closure would bake 47 MB of
      constants into the program).
    step_batch_fn: a `DeviceBatchFn`; `step_inputs` yields its inputs.
  """

  pipeline = 'device'

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, info: Any,
               global_batch_size: int, augment_config: Any = None,
               seed: int = 0, process_index: int = 0, process_count: int = 1,
               mesh: Mesh | None = None, data_axis: str = 'data'):
    super().__init__(
        images.shape[0], info=info, global_batch_size=global_batch_size,
        augment_config=augment_config, seed=seed, process_index=process_index,
        process_count=process_count)
    if mesh is None:
      mesh = Mesh(np.asarray(jax.devices()), (data_axis,))
    self.mesh = mesh
    self.data_axis = data_axis
    if self.global_batch_size % mesh.shape[data_axis]:
      raise errors.InputConfigError(
          f'Global batch size {global_batch_size} is not divisible by the '
          f'{mesh.shape[data_axis]} devices of mesh axis {data_axis!r}.')
    replicated = NamedSharding(mesh, PartitionSpec())
    self.batch_sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    self.data = {
        'image': _put_replicated(np.asarray(images, np.uint8), replicated),
        'label': _put_replicated(np.asarray(labels, np.int32), replicated),
    }
    # uint32: a traced Python int would be int32 and overflow for large
    # seeds; the low 32 bits are what the order uses anyway.
    self._seed_array = _put_replicated(
        np.asarray(self.seed & 0xFFFFFFFF, np.uint32), replicated)
    self.step_batch_fn = DeviceBatchFn(
        self.global_batch_size, tuple(sorted(self.augment_config.items())),
        self._mean, self._std, self.batch_sharding)

  def step_inputs(self, start_step: int = 0
                  ) -> Iterator[tuple[dict[str, jax.Array], jax.Array]]:
    """What the train step of every step from `start_step` gets: always the
    data on device and the seed (the step picks its batch by index)."""
    del start_step
    return itertools.repeat((self.data, self._seed_array))

  def _get_global_batch(self, data: dict[str, jax.Array], key_or_seed: Any,
                        step: Any) -> dict[str, jax.Array]:
    return _global_batch(
        data, key_or_seed, step, global_batch_size=self.global_batch_size,
        augment_items=tuple(sorted(self.augment_config.items())),
        mean=self._mean, std=self._std)

  def get_batch(self, data: dict[str, jax.Array], key_or_seed: Any, step: Any
                ) -> dict[str, jax.Array]:
    """The global train batch of `step`; pure, call it inside `jax.jit`.

    Args:
      data: `self.data` (passed through the jitted function's arguments).
      key_or_seed: int seed (Python or traced; same order as the tf.data path
        for that seed) or a JAX PRNG key.
      step: global train step (Python or traced int); epoch = step //
        steps_per_epoch.

    Returns:
      {'image': float32 [B, H, W, C] normalised, 'label': int32 [B]} for the
      global batch B, constrained to be sharded over the mesh's data axis.
    """
    batch = self._get_global_batch(data, key_or_seed, step)
    return jax.lax.with_sharding_constraint(batch, self.batch_sharding)

  def iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Host-side form: numpy batches of this process, from `start_step` on.

    Yields {'image': float32 [B_local, H, W, C], 'label': int32 [B_local]};
    the same contract as the tf.data source. Slower than `get_batch` inside
    the train step (one device->host copy per step); for generic use.
    """
    lo = self.process_index * self.local_batch_size
    hi = lo + self.local_batch_size
    step = start_step
    while True:
      # uint32: a traced Python int would be int32 and overflow for large
      # seeds; the low 32 bits are what the order uses anyway.
      batch = _global_batch_jit(
          self.data, np.uint32(self.seed & 0xFFFFFFFF), step,
          global_batch_size=self.global_batch_size,
          augment_items=tuple(sorted(self.augment_config.items())),
          mean=self._mean, std=self._std)
      yield {k: np.asarray(v)[lo:hi] for k, v in batch.items()}
      step += 1


def _put_replicated(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  # make_array_from_callback also works when the mesh spans several processes
  # (each process fills its own devices from its identical host copy).
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

