"""A trained workdir, loaded for inspection: model, variables, test images.

`load_run(workdir)` reads the resolved `config.json` the trainer wrote (so
command-line overrides of the run are honoured), the newest checkpoint as
numpy arrays (`cnn.training.checkpoint.load_arrays`), and rebuilds the
variables at initialisation from the run's seed exactly as the trainer does
(no training program needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import input_pipeline
from cnn.common import errors
from cnn.training import checkpoint, train


@dataclasses.dataclass
class Run:
  """What the figures need of one trained run.

  Attributes:
    config: the run's resolved config.
    workdir: its directory.
    step: the checkpoint's training step.
    model: the `Classifier`.
    variables: trained {'params', ('batch_stats')}.
    init_variables: the same at initialisation (the run's seed).
    info: the data set's `DatasetInfo`.
    images: [N, H, W, C] normalised test images (float32).
    display: the same on the 0..1 scale, for showing.
    labels: [N] int test labels.
  """

  config: ml_collections.ConfigDict
  workdir: str
  step: int
  model: Any
  variables: dict
  init_variables: dict
  info: Any
  images: np.ndarray
  display: np.ndarray
  labels: np.ndarray

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])


def load_config(workdir: str, config: ml_collections.ConfigDict | None = None
                ) -> ml_collections.ConfigDict:
  """The run's `config.json` where present, else `config`."""
  path = os.path.join(workdir, 'config.json')
  if os.path.isfile(path):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  if config is None:
    raise errors.UserError(
        f'{workdir} has no config.json; train into it first (python main.py '
        f'--config=configs/default.py --workdir={workdir}) or pass --config.')
  return config


def init_variables(model, config, image_shape) -> dict:
  """`model.init` as `cnn.training.train` does it: PRNGKey(seed), split,
  train=False."""
  init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  return jax.jit(lambda key: model.init(
      {'params': key, 'dropout': key},
      jnp.zeros((1, *image_shape), jnp.float32), train=False))(init_key)


def _test_images(input_config, num_test: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The first `num_test` test images (normalised, float32 [N, H, W, C]) and
  labels, through the eval batches every pipeline serves: in memory, class
  subsets and streamed folders alike."""
  images, labels, count = [], [], 0
  for batch in input_pipeline.create_eval_batches(
      input_config, batch_size=min(num_test, 256)):
    keep = np.asarray(batch['mask'], bool)
    images.append(np.asarray(batch['image'], np.float32)[keep])
    labels.append(np.asarray(batch['label'])[keep])
    count += int(keep.sum())
    if count >= num_test:
      break
  return (np.concatenate(images)[:num_test],
          np.concatenate(labels)[:num_test])


def load_run(workdir: str, config: ml_collections.ConfigDict | None = None,
             num_test: int = 1000) -> Run:
  """Loads `workdir` (see the module docstring).

  Args:
    workdir: a training workdir with at least one checkpoint.
    config: used only when the workdir has no config.json.
    num_test: test images loaded (the first ones of the split).

  Raises:
    errors.UserError: no checkpoint (or config) in the workdir.
  """
  step, arrays = checkpoint.load_variables(workdir)
  config = load_config(workdir, config)
  inp = config.input
  info = input_pipeline.get_input_info(inp)  # class subsets, streams.
  model = train.create_model(config, info.num_classes)
  variables = {'params': jax.tree.map(jnp.asarray, arrays['params'])}
  if arrays.get('batch_stats'):
    variables['batch_stats'] = jax.tree.map(jnp.asarray,
                                            arrays['batch_stats'])
  images, labels = _test_images(inp, num_test)
  mean = np.asarray(info.mean, np.float32)
  std = np.asarray(info.std, np.float32)
  display = np.clip(images * std + mean, 0.0, 1.0)
  return Run(config=config, workdir=workdir, step=int(step), model=model,
             variables=variables,
             init_variables=init_variables(model, config, info.image_shape),
             info=info, images=images, display=np.asarray(display),
             labels=np.asarray(labels))
