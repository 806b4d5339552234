"""Train and eval data from an input config: one entry point per use.

`create_train_source` picks the pipeline by `config.input.pipeline`:
  'device': batches computed on the accelerator inside the train step
            (`device_data.DeviceSource`; no TensorFlow);
  'tfdata': batches from tf.data on the host (`tfdata.TfDataSource`).
Data sets that do not fit in memory (and folders of images) are streamed
from disk instead, whatever the pipeline (`streaming.StreamingSource`; see
`uses_streaming`), speaking the same protocol.
Both give the same examples in the same order for a (seed, step), both yield
numpy batches through `iterator(start_step)`, and both feed a train step the
same way: `step_inputs(start_step)` yields each step's input and the step
calls `step_batch_fn(input, step)` inside `jax.jit` to get its batch (the
device source yields the data and seed and gathers in the step; tf.data yields
the batches). Both expose `steps_per_epoch`, `num_examples`,
`global_batch_size`, `local_batch_size` and `info`.

Input config fields (ml_collections.ConfigDict or dict):
  dataset (str), data_dir (str|None), pipeline ('device'|'tfdata'),
  batch_size (global), eval_batch_size, augment (see
  `augment.default_augment_config`), train_subset / test_subset (first N
  examples, 0 = all), image_size (0 = native, else square resize),
  manual_dir (tfds manual_dir), download (let tfds download names that are
  not local), streaming ('auto'|'always'|'never'), stream_threshold_bytes,
  preprocess ('resize'|'imagenet'), shuffle_buffer, stats_sample,
  skip_bad_images (folders: leave out files that do not decode), classes
  (class ids kept and relabelled 0..k-1; () = all), per_class (first N
  training examples of each kept class; 0 = all; `class_subset`),
  validation_per_class / validation_fraction (examples of each class held
  out of the training split as the 'validation' split; 0 = none),
  sample_seed (-1: the first examples of each class; >= 0: drawn per class
  with this seed, `class_subset.split_indices`) and permute_pixels (>= 0: the
  seed of one fixed permutation of the H*W pixel positions applied to every
  image of every split; -1 = none; data held in memory only). Every
  field must be present (`configs/default.py` lists them all; a dict made
  from `default.get_config().input.to_dict()` has them).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import numpy as np

from input_pipeline import errors
from input_pipeline.pipelines import eval_data
from input_pipeline.sources import class_subset, datasets, folder

PIPELINES = ('device', 'tfdata')
# The split held out of the training images (`config.input.validation_*`).
VALIDATION = 'validation'
STREAMING_MODES = ('auto', 'always', 'never')


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
    """This process's numpy batches from `start_step` on (infinite)."""

  def step_inputs(self, start_step: int = 0) -> Iterator[Any]:
    """The input of each train step from `start_step` on (infinite): device
    arrays to pass to the jitted step as an argument."""

  @property
  def step_batch_fn(self) -> Callable[[Any, Any], dict[str, Any]]:
    """`(step input, step) -> global batch` {'image': float32 [B, H, W, C],
    'label': int32 [B]}, traced inside the step; hashable (a static argument
    of `jax.jit`), equal for sources with equal settings."""


def _field(config: Any, name: str) -> Any:
  """`config[name]`; a missing field fails (no silent default)."""
  try:
    return config[name]
  except (KeyError, AttributeError):
    raise errors.InputConfigError(
        f'config.input.{name} is missing; every input field of '
        'configs/default.py must be set.') from None


def _common(input_config: Any) -> dict[str, Any]:
  return dict(data_dir=_field(input_config, 'data_dir'),
              manual_dir=_field(input_config, 'manual_dir'),
              download=bool(_field(input_config, 'download')))


def uses_streaming(input_config: Any) -> bool:
  """Whether the data are streamed from disk rather than held in memory.

  Folders always stream; the offline names never do; a tfds name streams
  when config.input.streaming is 'always', or 'auto' and its decoded train
  split (tfds info: examples x H x W x C bytes) exceeds
  config.input.stream_threshold_bytes.
  """
  name = _field(input_config, 'dataset')
  mode = _field(input_config, 'streaming')
  if mode not in STREAMING_MODES:
    raise errors.InputConfigError(
        f'config.input.streaming must be one of {STREAMING_MODES}, got '
        f'{mode!r}.')
  if folder.is_folder(name):
    if mode == 'never':
      raise errors.InputConfigError(
          f'{name!r}: folders of images are always streamed; set '
          "--config.input.streaming=auto.")
    return True
  if name in datasets.local_names() or mode == 'never':
    if mode == 'always':
      raise errors.InputConfigError(
          f'{name!r} is an offline in-memory data set and cannot be streamed; '
          "set --config.input.streaming=auto or use a tfds name.")
    return False
  if mode == 'always':
    return True
  from input_pipeline.pipelines import streaming  # TensorFlow: tfds names only.
  size = streaming.decoded_bytes(name, _field(input_config, 'data_dir'))
  return size is not None and size > int(
      _field(input_config, 'stream_threshold_bytes'))


def _stream_kwargs(input_config: Any) -> dict[str, Any]:
  return dict(image_size=int(_field(input_config, 'image_size') or 0),
              preprocess_name=_field(input_config, 'preprocess'),
              stats_sample=int(_field(input_config,
                                                'stats_sample')),
              skip_bad=bool(_field(input_config, 'skip_bad_images')))


def get_dataset_info(name: str, *, data_dir: str | None = None,
                     manual_dir: str | None = None, download: bool = False,
                     image_size: int = 0) -> datasets.DatasetInfo:
  """The `DatasetInfo` of a data set by name: offline and tfds names from
  `sources.datasets`, a `folder:` of images from the streaming pipeline
  (which reads a bounded sample of it for mean/std)."""
  if folder.is_folder(name):
    from input_pipeline.pipelines import streaming  # TensorFlow; folders only.
    return streaming.get_info(name, image_size=image_size)
  return datasets.get_dataset_info(name, data_dir=data_dir,
                                   manual_dir=manual_dir, download=download,
                                   image_size=image_size)


def get_input_info(input_config: Any) -> datasets.DatasetInfo:
  """The `DatasetInfo` of the data the config trains on (in memory or
  streamed; a streamed one is never read in full)."""
  name = _field(input_config, 'dataset')
  if not name:
    raise errors.InputConfigError('config.input.dataset is not set.')
  if uses_streaming(input_config):
    if any(_class_subset(input_config)) or _holds_out(input_config):
      raise errors.InputConfigError(
          'config.input.classes / per_class / validation_* / sample_seed '
          'select from data held in memory; a streamed data set cannot use '
          'them (set them to (), 0, 0, 0.0 and -1).')
    # .get: hand-built input dicts older than the field stream as before.
    if int(input_config.get('permute_pixels', -1)) >= 0:
      raise errors.InputConfigError(
          'config.input.permute_pixels permutes the pixels of data held in '
          'memory; a streamed data set cannot use it (set it to -1, or '
          '--config.input.streaming=never for a tfds data set that fits in '
          'memory).')
    from input_pipeline.pipelines import streaming
    return streaming.get_info(name, **_common(input_config),
                              **_stream_kwargs(input_config))
  if _field(input_config, 'preprocess') != 'resize':
    raise errors.InputConfigError(
        "config.input.preprocess='imagenet' needs the streaming source: set "
        "--config.input.streaming=always (a tfds name or folder:).")
  info = datasets.get_dataset_info(
      name, image_size=int(_field(input_config, 'image_size') or 0),
      **_common(input_config))
  classes, per_class = _class_subset(input_config)
  class_subset.check(classes, per_class, info.num_classes)
  return class_subset.subset_info(info, classes)


def _class_subset(input_config: Any) -> tuple[tuple[int, ...], int]:
  return (tuple(int(c) for c in _field(input_config, 'classes')),
          int(_field(input_config, 'per_class')))


def _validation(input_config: Any) -> float:
  """Examples per class held out of the training split for validation (an
  int), or a fraction of each class; 0 for none."""
  per_class = int(_field(input_config, 'validation_per_class'))
  fraction = float(_field(input_config, 'validation_fraction'))
  if per_class < 0 or not 0 <= fraction < 1 or (per_class and fraction):
    raise errors.InputConfigError(
        'Set one of config.input.validation_per_class (examples per class, '
        '>= 0) and validation_fraction (of each class, in [0, 1)); got '
        f'{per_class} and {fraction}.')
  return per_class or fraction


def _holds_out(input_config: Any) -> bool:
  """Whether the training split is divided (validation or seeded draws)."""
  return bool(_validation(input_config)) or int(
      _field(input_config, 'sample_seed')) >= 0


def _open_stream(input_config: Any, split: str, subset_field: str):
  from input_pipeline.pipelines import streaming
  return streaming.open_records(
      _field(input_config, 'dataset'), split,
      subset=int(_field(input_config, subset_field) or 0),
      shuffle_buffer=int(_field(input_config, 'shuffle_buffer')),
      skip_bad=bool(_field(input_config, 'skip_bad_images')),
      **_common(input_config))


def _load(input_config: Any, split: str, subset_field: str
          ) -> tuple[np.ndarray, np.ndarray, datasets.DatasetInfo]:
  name = _field(input_config, 'dataset')
  if not name:
    raise errors.InputConfigError('config.input.dataset is not set.')
  common = dict(
      data_dir=_field(input_config, 'data_dir'),
      manual_dir=_field(input_config, 'manual_dir'),
      download=bool(_field(input_config, 'download')))
  image_size = int(_field(input_config, 'image_size') or 0)
  subset = int(_field(input_config, subset_field) or 0) if subset_field else 0
  classes, per_class = _class_subset(input_config)
  dividing = split in ('train', VALIDATION) and _holds_out(input_config)
  if split == VALIDATION and not _validation(input_config):
    raise errors.InputConfigError(
        'No validation split: set config.input.validation_per_class or '
        'validation_fraction.')
  selecting = bool(classes or per_class or dividing)
  # Classes first, then the first `subset` of what they keep: a test_subset
  # of 500 evaluates 500 examples of the chosen classes.
  images, labels = datasets.load_split(
      name, 'test' if split == 'test' else 'train',
      subset=0 if selecting else subset, image_size=image_size, **common)
  info = get_input_info(input_config)
  if selecting:
    images, labels = class_subset.select(
        images, labels, classes,
        per_class if split == 'train' and not dividing else 0)
    if not len(labels):
      raise errors.InputConfigError(
          f'config.input.classes={classes} selects no {split} examples.')
    if dividing:  # the few-shot examples and the held-out ones, per class.
      train, held = class_subset.split_indices(
          labels, per_class=per_class, validation=_validation(input_config),
          seed=int(_field(input_config, 'sample_seed')))
      keep = held if split == VALIDATION else train
      images, labels = images[keep], labels[keep]
    if subset:
      images, labels = images[:subset], labels[:subset]
  permute = int(_field(input_config, 'permute_pixels'))
  if permute >= 0:  # one fixed permutation of the H*W positions, any split.
    n, h, w, c = images.shape
    order = np.random.default_rng(permute).permutation(h * w)
    images = images.reshape(n, h * w, c)[:, order].reshape(n, h, w, c)
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
    mesh, data_axis: the `jax.sharding.Mesh` that `step_inputs` places its
      arrays on and the axis batches are sharded along (default: all devices
      on one axis 'data'); the device pipeline replicates the data over it.

  Returns:
    A `device_data.DeviceSource`, `tfdata.TfDataSource` or (data streamed
    from disk, see `uses_streaming`) `streaming.StreamingSource`.
  """
  pipeline = _field(input_config, 'pipeline')
  if pipeline not in PIPELINES:
    raise errors.InputConfigError(
        f'config.input.pipeline must be one of {PIPELINES}, got {pipeline!r}.')
  if global_batch_size is None:
    global_batch_size = int(_field(input_config, 'batch_size'))
  if uses_streaming(input_config):
    from input_pipeline.pipelines import streaming
    return streaming.StreamingSource(
        _open_stream(input_config, 'train', 'train_subset'),
        info=get_input_info(input_config),
        global_batch_size=global_batch_size,
        augment_config=_field(input_config, 'augment'), seed=seed,
        process_index=process_index, process_count=process_count,
        preprocess_name=_field(input_config, 'preprocess'),
        mesh=mesh, data_axis=data_axis)
  images, labels, info = _load(input_config, 'train', 'train_subset')
  common = dict(info=info, global_batch_size=global_batch_size,
                augment_config=_field(input_config, 'augment'), seed=seed,
                process_index=process_index, process_count=process_count)
  if pipeline == 'device':
    from input_pipeline.pipelines import device_data
    return device_data.DeviceSource(images, labels, mesh=mesh,
                                    data_axis=data_axis, **common)
  # Imports TensorFlow; only reached when tf.data was asked for.
  from input_pipeline.pipelines import tfdata
  return tfdata.TfDataSource(images, labels, mesh=mesh, data_axis=data_axis,
                             **common)


def create_eval_batches(input_config: Any, *, split: str = 'test',
                        batch_size: int | None = None,
                        process_index: int = 0, process_count: int = 1
                        ) -> Iterator[dict[str, np.ndarray]]:
  """`eval_data.eval_batches` over a split named by the config.

  Normalised like the train batches; covers every example of the split (or
  its first `test_subset`) exactly once over all processes, in batches of
  one fixed shape. Streamed data sets are read from disk each call.
  Call again for each evaluation.
  """
  subset_field = {'test': 'test_subset', 'train': 'train_subset'}.get(split)
  if batch_size is None:
    batch_size = int(_field(input_config, 'eval_batch_size'))
  if uses_streaming(input_config):
    if split not in ('train', 'test'):
      raise errors.InputConfigError(
          f'A streamed data set has no {split!r} split here (only train and '
          'test); config.input.validation_* need data held in memory.')
    from input_pipeline.pipelines import streaming
    return streaming.eval_batches(
        _open_stream(input_config, split, subset_field),
        info=get_input_info(input_config), batch_size=batch_size,
        preprocess_name=_field(input_config, 'preprocess'),
        process_index=process_index, process_count=process_count)
  images, labels, info = _load(input_config, split, subset_field)
  return eval_data.eval_batches(
      images, labels, batch_size, mean=info.mean, std=info.std,
      process_index=process_index, process_count=process_count)
