"""Train and eval data from an input config: one entry point per use.

`create_train_source` picks the pipeline by `config.input.pipeline`:
  'device': batches computed on the accelerator inside the train step
            (`device_data.DeviceSource`; no TensorFlow);
  'tfdata': batches from tf.data on the host (`tfdata.TfDataSource`).
Both give the same examples in the same order for a (seed, step), both yield
numpy batches through `iterator(start_step)`, and both expose
`steps_per_epoch`, `num_examples`, `global_batch_size`, `local_batch_size`
and `info`.

Input config fields (ml_collections.ConfigDict or dict):
  dataset (str), data_dir (str|None), pipeline ('device'|'tfdata'),
  batch_size (global), eval_batch_size, augment (see
  `augment.default_augment_config`), train_subset / test_subset (first N
  examples, 0 = all), image_size (0 = native, else square resize),
  manual_dir (tfds manual_dir), download (optional, default False: let tfds
  download names that are not local).
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np

from input_pipeline import datasets, errors, eval_data

PIPELINES = ('device', 'tfdata')


class TrainSource(Protocol):
  """What the trainer may rely on, whichever pipeline serves it."""

  pipeline: str
  info: datasets.DatasetInfo
  num_examples: int
  global_batch_size: int
  local_batch_size: int
  steps_per_epoch: int

  def iterator(self, start_step: int = 0
               ) -> Iterator[dict[str, np.ndarray]]:
    ...


def _field(config: Any, name: str, default: Any = None) -> Any:
  if config is None:
    return default
  if hasattr(config, 'get'):
    return config.get(name, default)
  return getattr(config, name, default)


def _load(input_config: Any, split: str, subset_field: str
          ) -> tuple[np.ndarray, np.ndarray, datasets.DatasetInfo]:
  name = _field(input_config, 'dataset')
  if not name:
    raise errors.InputConfigError('config.input.dataset is not set.')
  common = dict(
      data_dir=_field(input_config, 'data_dir'),
      manual_dir=_field(input_config, 'manual_dir'),
      download=bool(_field(input_config, 'download', False)))
  image_size = int(_field(input_config, 'image_size', 0) or 0)
  images, labels = datasets.load_split(
      name, split, subset=int(_field(input_config, subset_field, 0) or 0),
      image_size=image_size, **common)
  info = datasets.get_dataset_info(name, image_size=image_size, **common)
  return images, labels, info


def create_train_source(input_config: Any, *, seed: int,
                        global_batch_size: int | None = None,
                        process_index: int = 0, process_count: int = 1,
                        mesh: Any = None, data_axis: str = 'data'
                        ) -> TrainSource:
  """Builds the train source named by `input_config.pipeline`.

  Args:
    input_config: `config.input` (fields in the module docstring).
    seed: data seed; the example order and augmentations follow from
      (seed, step).
    global_batch_size: examples per step over all processes (default
      `input_config.batch_size`).
    process_index, process_count: this process and how many feed the global
      batch (`jax.process_index()`, `jax.process_count()`).
    mesh, data_axis: 'device' pipeline only: the `jax.sharding.Mesh` to
      replicate the data over and the axis to shard batches along (default:
      all devices on one axis 'data').

  Returns:
    A `device_data.DeviceSource` or `tfdata.TfDataSource`.
  """
  pipeline = _field(input_config, 'pipeline', 'device')
  if pipeline not in PIPELINES:
    raise errors.InputConfigError(
        f'config.input.pipeline must be one of {PIPELINES}, got {pipeline!r}.')
  if global_batch_size is None:
    global_batch_size = int(_field(input_config, 'batch_size'))
  images, labels, info = _load(input_config, 'train', 'train_subset')
  common = dict(info=info, global_batch_size=global_batch_size,
                augment_config=_field(input_config, 'augment'), seed=seed,
                process_index=process_index, process_count=process_count)
  if pipeline == 'device':
    from input_pipeline import device_data
    return device_data.DeviceSource(images, labels, mesh=mesh,
                                    data_axis=data_axis, **common)
  # Imports TensorFlow; only reached when tf.data was asked for.
  from input_pipeline import tfdata
  return tfdata.TfDataSource(images, labels, **common)


def create_eval_batches(input_config: Any, *, split: str = 'test',
                        batch_size: int | None = None,
                        process_index: int = 0, process_count: int = 1
                        ) -> Iterator[dict[str, np.ndarray]]:
  """`eval_data.eval_batches` over a split named by the config.

  Normalised like the train batches; covers every example of the split (or
  its first `test_subset`) exactly once. Call again for each evaluation.
  """
  subset_field = 'test_subset' if split == 'test' else 'train_subset'
  images, labels, info = _load(input_config, split, subset_field)
  if batch_size is None:
    batch_size = int(_field(input_config, 'eval_batch_size'))
  return eval_data.eval_batches(
      images, labels, batch_size, mean=info.mean, std=info.std,
      process_index=process_index, process_count=process_count)
