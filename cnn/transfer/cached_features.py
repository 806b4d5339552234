"""Feature extraction on cached features: the frozen backbone runs once.

With `config.transfer.cache_features` (regime `feature_extraction`), the
trainer computes the backbone's `pre_logits` of every training image once,
at set-up, and each step trains the head on a batch of those rows: the step
costs a head's forward and backward instead of the whole network's forward.
Everything else is the ordinary run: the same `TrainState` (the frozen
backbone in it), the same data order (the rows of step s are the images the
image pipeline would give at step s), evaluation of the whole network on the
test images, the same checkpoints, resume and metrics.

What caching changes: the features are the backbone's eval-mode outputs of
the un-augmented images, so the configuration must have no augmentation and
frozen batch norms in eval mode (`freeze_batch_stats`), which `check_config`
enforces; dropout inside the backbone (AlexNet, VGG) is off, as in
evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from cnn.common import errors
from input_pipeline import preprocess
from input_pipeline.augment import jax_ops as augment
from input_pipeline.pipelines import device_data

# Training images per jitted feature call (the whole split would hold every
# activation of the backbone at once).
_FEATURE_BATCH = 500


def check_config(config, source) -> None:
  """Raises a `UserError` naming the fix when `config` (with its train
  `source`) cannot cache."""
  transfer = config.transfer
  if transfer.rules or transfer.regime != 'feature_extraction':
    raise errors.UserError(
        'config.transfer.cache_features needs '
        "config.transfer.regime='feature_extraction' (a frozen backbone) and "
        'no config.transfer.rules; set cache_features=False for other '
        'regimes.')
  if not transfer.freeze_batch_stats:
    raise errors.UserError(
        'config.transfer.cache_features computes eval-mode features: set '
        'config.transfer.freeze_batch_stats=True or cache_features=False.')
  if not isinstance(source, device_data.DeviceSource):
    raise errors.UserError(
        "config.transfer.cache_features needs config.input.pipeline='device' "
        f'and a data set held in memory (got the {source.pipeline!r} '
        'pipeline).')
  if not augment.is_identity(config.input.augment.to_dict()):
    raise errors.UserError(
        'config.transfer.cache_features caches the features of un-augmented '
        'images: turn augmentation off (config.input.augment, e.g. '
        'crop_padding=0, flip_lr=False) or set cache_features=False.')


@dataclasses.dataclass(frozen=True)
class FeatureBatchFn:
  """`((features, seed), step) -> {'features' [B, F], 'label' [B]}`, traced
  inside the train step; the rows of the device pipeline's batch `step`.

  Hashable and compared by value, as `device_data.DeviceBatchFn`: the seeds
  of one sweep share one compiled step.
  """

  global_batch_size: int
  batch_sharding: NamedSharding

  def __call__(self, inputs: tuple[dict[str, jax.Array], jax.Array],
               step: Any) -> dict[str, jax.Array]:
    data, seed = inputs
    idx = device_data.batch_indices(seed, step, n=data['features'].shape[0],
                                    global_batch_size=self.global_batch_size)
    batch = {'features': jnp.take(data['features'], idx, axis=0),
             'label': jnp.take(data['label'], idx, axis=0)}
    return jax.lax.with_sharding_constraint(batch, self.batch_sharding)


def batch_fn(source) -> FeatureBatchFn:
  """The batch function of the cached form of device `source`."""
  return FeatureBatchFn(source.global_batch_size, source.batch_sharding)


def train_features(model, variables: dict[str, Any], source) -> jax.Array:
  """`pre_logits` [N, F] float32 of every training image of device `source`
  (un-augmented, normalised as the pipeline does, eval mode), replicated
  like the images.

  One jitted program (the replicated images and variables are arguments, so
  it also runs where they span several processes), `_FEATURE_BATCH` images
  at a time.
  """
  mean, std = tuple(source.info.mean), tuple(source.info.std)
  replicated = NamedSharding(source.mesh, PartitionSpec())

  def chunk_features(variables, images):
    x = preprocess.normalize(preprocess.to_unit_float(images), mean, std)
    pre_logits, _ = model.apply(variables, x.astype(jnp.float32),
                                method='features')
    return pre_logits.astype(jnp.float32)

  @functools.partial(jax.jit, out_shardings=replicated)
  def all_features(variables, images):
    n = images.shape[0]
    chunks = -(-n // _FEATURE_BATCH)
    padded = jnp.pad(images, [(0, chunks * _FEATURE_BATCH - n)]
                     + [(0, 0)] * (images.ndim - 1))
    padded = padded.reshape(chunks, _FEATURE_BATCH, *images.shape[1:])
    features = jax.lax.map(lambda c: chunk_features(variables, c), padded)
    return features.reshape(chunks * _FEATURE_BATCH, -1)[:n]

  return all_features(variables, source.data['image'])


class FeatureSource:
  """The train source of a cached run: device `source`'s order and sizes,
  its images replaced by their features.

  Attributes (as the trainer reads them from any source): `pipeline`,
  `info`, `num_examples`, `global_batch_size`, `steps_per_epoch`,
  `step_batch_fn` (a `FeatureBatchFn`); `data` = {'features' [N, F],
  'label' [N]} on device.
  """

  pipeline = 'device'

  def __init__(self, source, features: jax.Array):
    self.info = source.info
    self.num_examples = source.num_examples
    self.global_batch_size = source.global_batch_size
    self.steps_per_epoch = source.steps_per_epoch
    self.step_batch_fn = batch_fn(source)
    self.data = {'features': features, 'label': source.data['label']}
    _, self._seed = next(source.step_inputs())  # the device copy of the seed.

  def step_inputs(self, start_step: int = 0
                  ) -> Iterator[tuple[dict[str, jax.Array], jax.Array]]:
    """As `DeviceSource.step_inputs`: the cached rows and the seed."""
    del start_step
    return itertools.repeat((self.data, self._seed))


def feature_source(model, variables: dict[str, Any], source) -> FeatureSource:
  """Device `source` with the features of `variables`' backbone cached."""
  return FeatureSource(source, train_features(model, variables, source))

