"""Train and eval data streamed from disk through tf.data: any size of data.

For tfds data sets too large for host memory (ImageNet) and for folders of
images (`folder.py`). Nothing ever holds a split: examples are read as
encoded bytes, decoded inside the parallel map, batched, augmented, and
dropped once the step has them.

Order. Each process reads its own part of the split:
  folder: every epoch a permutation of all files from (seed, epoch); process
          p takes the p-th of `process_count` equal slices of it, so the
          shards of an epoch are disjoint and cover the split (less at most
          process_count - 1 files).
  tfds:   `tfds.even_splits(split, process_count)[p]` (fixed per process);
          the order of its files shuffled and interleaved from (seed, epoch)
          (`tfds.ReadConfig(shuffle_seed=...)`), then a seeded shuffle
          buffer of `shuffle_buffer` encoded examples.
Both are deterministic functions of (seed, epoch, process): tf.data runs
with `deterministic=True` and every random op is stateless.

Resume. `iterator(start_step)` starts at epoch start_step // steps_per_epoch
and skips the (start_step % steps_per_epoch) * local_batch_size encoded
examples already consumed in that epoch before decoding anything: the
batches are those an uninterrupted run would have seen (folders: a slice of
the permutation, no reading at all; tfds: the skipped records are read, not
decoded).

Bad files. Every file of a folder is decoded once before training
(`checked_listing`, cached per process), so an undecodable one stops the run
before anything is written, naming it (or, with
config.input.skip_bad_images, is left out and counted in the log). A file
that changes on disk afterwards stops the run where it is met, naming it;
the checkpoints saved before are kept.

Augmentation. preprocess='imagenet': the random-resized crop + flip of each
example inside the parallel map (the crop's size differs per image);
preprocess='resize': `config.input.augment` vectorised on whole batches after
batching (`augment_tf.augment_batch`, as `tfdata.py`).

Importing this module imports TensorFlow (GPUs hidden); `__init__` does not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from typing import Any, Iterator

import numpy as np
from absl import logging

from input_pipeline import lazy_tf, preprocess
from input_pipeline.augment import imagenet_tf as ipp
from input_pipeline.augment import tf_ops as augment_tf
from input_pipeline.errors import DatasetError, InputConfigError
from input_pipeline.pipelines import source_base
from input_pipeline.sources import datasets, folder

tf = lazy_tf.import_tensorflow()
tfds = lazy_tf.import_tfds()

AUTOTUNE = tf.data.AUTOTUNE
# Encoded files read concurrently by tfds' interleave.
INTERLEAVE_CYCLE_LENGTH = 16


def _epoch_seed(seed: int, epoch: int) -> int:
  """A 31-bit seed for (seed, epoch) (tf.data seeds are int64 scalars)."""
  return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch])
             .generate_state(1)[0] >> 1)


def even_bounds(n: int, process_index: int, process_count: int
                ) -> tuple[int, int]:
  """[lo, hi) of process p's contiguous part of n examples (sizes differ by
  at most one)."""
  return (n * process_index // process_count,
          n * (process_index + 1) // process_count)


# ------------------------------------------------------------------ records


class FolderRecords:
  """(encoded image, label) of a folder split, from its file list.

  Attributes:
    num_examples: files in the split (or its subset).
    paths, labels: str [N], int32 [N].
  """

  def __init__(self, paths: np.ndarray, labels: np.ndarray):
    self.paths, self.labels = paths, labels
    self.num_examples = len(paths)

  def local_indices(self, *, epoch: int, process_index: int,
                    process_count: int, shuffle: bool, seed: int
                    ) -> np.ndarray:
    """Indices of this process's files in an epoch, in reading order."""
    n = self.num_examples
    if not shuffle:
      return np.arange(*even_bounds(n, process_index, process_count))
    perm = np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(n)
    per = n // process_count
    return perm[process_index * per:(process_index + 1) * per]

  def dataset(self, *, epoch: int, process_index: int, process_count: int,
              shuffle: bool, seed: int, skip: int = 0, take: int = -1
              ) -> tf.data.Dataset:
    """tf.data of (encoded bytes, int32 label) from position `skip` on."""
    idx = self.local_indices(epoch=epoch, process_index=process_index,
                             process_count=process_count, shuffle=shuffle,
                             seed=seed)
    if take >= 0:
      idx = idx[:take]
    idx = idx[skip:]
    ds = tf.data.Dataset.from_tensor_slices(
        (self.paths[idx], self.labels[idx]))
    return ds.map(lambda path, label: (tf.io.read_file(path), label),
                  num_parallel_calls=AUTOTUNE, deterministic=True)

  def _sample_indices(self, limit: int) -> np.ndarray:
    return np.unique(np.linspace(0, self.num_examples - 1,
                                 min(limit, self.num_examples)).astype(int))

  def sample(self, limit: int) -> tf.data.Dataset:
    """At most `limit` files spread evenly over the split (for mean/std)."""
    idx = self._sample_indices(limit)
    return tf.data.Dataset.from_tensor_slices(
        (self.paths[idx], self.labels[idx])).map(
            lambda p, l: (tf.io.read_file(p), l),
            num_parallel_calls=AUTOTUNE, deterministic=True)

  def _first_bad(self, idx: np.ndarray) -> str:
    # Only after a failure: decode the suspects one by one, eagerly.
    for path in self.paths[idx]:
      try:
        tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
      except tf.errors.OpError:
        return f'{path} cannot be decoded as an image'
    return f'one of {list(self.paths[idx][:3])}... cannot be decoded'

  def describe(self, *, epoch, process_index, process_count, shuffle, seed,
               lo: int, hi: int) -> str:
    """Names the first undecodable file among reading positions [lo, hi)."""
    return self._first_bad(self.local_indices(
        epoch=epoch, process_index=process_index,
        process_count=process_count, shuffle=shuffle, seed=seed)[lo:hi])

  def describe_sample(self, limit: int) -> str:
    return self._first_bad(self._sample_indices(limit))


class TfdsRecords:
  """(encoded image, label) of a prepared tfds split, read from its files.

  Attributes:
    num_examples: examples in the split (or its subset).
  """

  def __init__(self, builder, split: str, num_examples: int,
               shuffle_buffer: int):
    self._builder, self._split = builder, split
    self.num_examples = num_examples
    self._shuffle_buffer = shuffle_buffer

  def _read(self, split: str, *, shuffle: bool, seed: int
            ) -> tf.data.Dataset:
    read_config = tfds.ReadConfig(
        shuffle_seed=seed if shuffle else None,
        interleave_cycle_length=INTERLEAVE_CYCLE_LENGTH,
        # Reading order is part of the experiment: pin it.
        options=_deterministic_options())
    ds = self._builder.as_dataset(
        split=split, shuffle_files=shuffle, read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)),
                  num_parallel_calls=AUTOTUNE, deterministic=True)

  def dataset(self, *, epoch: int, process_index: int, process_count: int,
              shuffle: bool, seed: int, skip: int = 0, take: int = -1
              ) -> tf.data.Dataset:
    """tf.data of (encoded bytes, int32 label) from position `skip` on."""
    part = tfds.even_splits(self._split, n=process_count)[process_index]
    epoch_seed = _epoch_seed(seed, epoch)
    ds = self._read(part, shuffle=shuffle, seed=epoch_seed)
    if shuffle and self._shuffle_buffer > 1:
      ds = ds.shuffle(self._shuffle_buffer, seed=epoch_seed,
                      reshuffle_each_iteration=False)
    if take >= 0:
      ds = ds.take(take)
    return ds.skip(skip)

  def sample(self, limit: int) -> tf.data.Dataset:
    """The first `limit` examples in file order (for mean/std)."""
    return self._read(self._split, shuffle=False, seed=0).take(limit)

  def describe(self, *, lo: int, hi: int, **kwargs) -> str:
    del kwargs
    return (f'a record at reading positions {lo}..{hi - 1} of tfds split '
            f'{self._split!r} cannot be decoded')

  def describe_sample(self, limit: int) -> str:
    return (f'one of the first {limit} records of tfds split '
            f'{self._split!r} cannot be decoded')


def _deterministic_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


# --------------------------------------------------------------- open/info


@functools.lru_cache(maxsize=8)
def _builder(name: str, data_dir: str | None, manual_dir: str | None,
             download: bool):
  """A prepared tfds builder; one-line errors when it cannot be."""
  _, builder = datasets.tfds_builder(name, data_dir)
  prepared = bool(builder.info.splits)
  needs_manual = bool(getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  if not prepared and download:
    if needs_manual and not manual_dir:
      raise DatasetError(
          f'tfds data set {name!r} cannot be downloaded automatically: put '
          'its archives (for imagenet2012: ILSVRC2012_img_train.tar and '
          'ILSVRC2012_img_val.tar) in a directory and set '
          '--config.input.manual_dir=<that directory>.')
    try:
      builder.download_and_prepare(
          **datasets.tfds_download_kwargs(tfds, manual_dir))
    except Exception as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise DatasetError(
          f'tfds could not prepare {name!r} in {builder.data_dir} '
          f'({type(e).__name__}: {first}); check network access, or '
          'config.input.manual_dir for data sets with manual downloads.'
      ) from None
    builder = tfds.builder(name, data_dir=data_dir)
  elif not prepared:
    manual = (' (its archives in --config.input.manual_dir)'
              if needs_manual and not manual_dir else '')
    raise DatasetError(
        f'tfds data set {name!r} is not prepared in {builder.data_dir}: '
        f'set --config.input.download=True{manual} or point '
        '--config.input.data_dir at a prepared copy.')
  return builder


def _tfds_split(builder, split: str) -> str:
  """Our 'test' is tfds' 'validation' where there is no 'test'
  (imagenet2012)."""
  splits = builder.info.splits
  if split == 'test' and 'test' not in splits and 'validation' in splits:
    return 'validation'
  return split


def _split_of(builder, split: str, subset: int) -> tuple[str, int]:
  split = _tfds_split(builder, split)
  if split not in builder.info.splits:
    raise DatasetError(
        f'tfds data set {builder.name!r} has no split {split!r} (has '
        f'{sorted(builder.info.splits)}).')
  n = builder.info.splits[split].num_examples
  if subset and subset < n:
    return f'{split}[:{subset}]', subset
  return split, n


# --------------------------------------------------------- folder check

# Undecodable files named in an error or in the log of skipped ones.
_NAMED_BAD_FILES = 3


@functools.lru_cache(maxsize=8)
def _undecodable(name: str) -> tuple[str, ...]:
  """Files of `folder:<dir>` (both splits) that cannot be read and decoded.

  Every file goes once through the pipeline's own decoder in a parallel
  tf.data map (a file that fails is dropped by `ignore_errors`; the missing
  indices are the bad ones), so a bad file stops a run before anything is
  written, not when an epoch reaches it. Cached: paid once per process and
  folder.
  """
  listing = folder.scan(name)
  paths = np.concatenate([listing.files[s][0] for s in folder.SPLITS])
  channels = _channels(name, None)[2]
  start = time.time()

  def index_if_decodable(i, path):
    image = ipp.decode(tf.io.read_file(path), channels)
    return i, tf.shape(image)[0]

  ds = (tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        .map(index_if_decodable, num_parallel_calls=AUTOTUNE,
             deterministic=False)
        .ignore_errors().batch(4096))
  good = np.zeros(len(paths), bool)
  for indices, _ in ds.as_numpy_iterator():
    good[indices] = True
  logging.info('Checked the %d images of %s in %.1f s: %d undecodable.',
               len(paths), listing.root, time.time() - start,
               int((~good).sum()))
  return tuple(paths[~good].tolist())


def _decode_failure(path: str) -> str:
  """TF's reason that `path` does not decode, one line (decoded eagerly:
  only for the few files named in a message)."""
  try:
    ipp.decode(tf.io.read_file(path), 3)
  except tf.errors.OpError as err:
    lines = (err.message or '').strip().splitlines() or ['']
    # Eager op errors start with '{{function_node ...}} ' and end with
    # ' [Op:DecodeImage] ...'.
    return re.sub(r'^\{\{[^}]*\}\}\s*|\s*\[Op:.*$', '', lines[0])
  return 'it decodes now: it changed while being checked'


@functools.lru_cache(maxsize=8)
def checked_listing(name: str, skip_bad: bool = False) -> folder.Listing:
  """`folder.scan(name)` once every file has decoded (`_undecodable`).

  skip_bad (config.input.skip_bad_images): leave undecodable files out,
  logging their count and the first few names (once per process).

  Raises:
    DatasetError: a file does not decode (naming the first, with how many
      more) and `skip_bad` is False; or no decodable file is left in a
      split.
  """
  listing = folder.scan(name)
  bad = _undecodable(name)
  if not bad:
    return listing
  if not skip_bad:
    more = f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''
    raise DatasetError(
        f'Image folder {listing.root}: {bad[0]} cannot be decoded as an '
        f'image ({_decode_failure(bad[0])}){more}; replace or delete it, or '
        'set --config.input.skip_bad_images=True to train without such '
        'files.')
  logging.warning(
      'Skipping %d undecodable image file(s) of %s '
      '(config.input.skip_bad_images): %s%s', len(bad), listing.root,
      ', '.join(bad[:_NAMED_BAD_FILES]),
      ', ...' if len(bad) > _NAMED_BAD_FILES else '')
  files = {}
  for split, (paths, labels) in listing.files.items():
    keep = ~np.isin(paths, bad)
    if not keep.any():
      raise DatasetError(
          f'Image folder {listing.root}: no file of {split}/ can be decoded '
          'as an image; add images in a format of '
          f'{"/".join(folder.EXTENSIONS)}.')
    files[split] = (paths[keep], labels[keep])
  return dataclasses.replace(listing, files=files)


def _folder_records(name: str, split: str, subset: int,
                    skip_bad: bool) -> FolderRecords:
  paths, labels = checked_listing(name, skip_bad).files[split]
  if subset and subset < len(paths):
    # A fixed random subset (not the first files: those are one class).
    keep = np.sort(np.random.default_rng(0).permutation(len(paths))[:subset])
    paths, labels = paths[keep], labels[keep]
  return FolderRecords(paths, labels)


def open_records(name: str, split: str, *, data_dir=None, manual_dir=None,
                 download=False, subset: int = 0,
                 shuffle_buffer: int = 10_000, skip_bad: bool = False):
  """`FolderRecords` or `TfdsRecords` of a split (subset: first N; folders:
  a fixed random N of the files that decode; `checked_listing`)."""
  datasets.check_split(name, split)
  if folder.is_folder(name):
    return _folder_records(name, split, subset, skip_bad)
  builder = _builder(name, data_dir, manual_dir, bool(download))
  split_name, n = _split_of(builder, split, subset)
  return TfdsRecords(builder, split_name, n, shuffle_buffer)


def _channels(name: str, data_dir) -> tuple[int | None, int | None, int]:
  if folder.is_folder(name):
    return None, None, 3
  builder = _builder(name, data_dir, None, False)
  h, w, c = builder.info.features['image'].shape
  return h, w, c or 3


def decode_error(what: str, err: Exception) -> DatasetError:
  """One line: what failed, TF's first line, the fix."""
  first = str(err).strip().splitlines()[0] if str(err).strip() else ''
  return DatasetError(f'{what} ({first}); replace or delete that file.')


def sample_stats(records, *, channels: int, preprocess_name: str,
                 image_size: int, limit: int
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean/std (0..1 scale) of at most `limit` eval views: a
  bounded sample, never a pass over the split."""
  ds = records.sample(limit).map(
      lambda enc, label: ipp.eval_view(ipp.decode(enc, channels),
                                       preprocess_name, image_size),
      num_parallel_calls=AUTOTUNE, deterministic=True)
  total = np.zeros(channels)
  total_sq = np.zeros(channels)
  count = 0
  try:
    for image in ds.as_numpy_iterator():
      x = image.reshape(-1, channels).astype(np.float64)
      total += x.sum(0)
      total_sq += (x * x).sum(0)
      count += x.shape[0]
  except tf.errors.OpError as err:
    raise decode_error(records.describe_sample(limit), err) from None
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))
  return tuple(mean.tolist()), tuple(std.tolist())


@functools.lru_cache(maxsize=16)
def get_info(name: str, *, data_dir=None, manual_dir=None, download=False,
             image_size: int = 0, preprocess_name: str = 'resize',
             stats_sample: int = 10_000, skip_bad: bool = False
             ) -> datasets.DatasetInfo:
  """`DatasetInfo` of a streamed data set, without a pass over it (a
  folder's files are each decoded once, `checked_listing`; `skip_bad`
  leaves out those that do not decode instead of failing).

  mean/std: the ImageNet constants for preprocess='imagenet', else measured
  on at most `stats_sample` training examples.
  """
  if preprocess_name not in ipp.PREPROCESSINGS:
    raise InputConfigError(
        f'config.input.preprocess must be one of {ipp.PREPROCESSINGS}, got '
        f'{preprocess_name!r}.')
  if folder.is_folder(name):
    folder.check_image_size(name, image_size)
    listing = checked_listing(name, skip_bad)
    class_names = listing.class_names
    num_train = len(listing.files['train'][0])
    num_test = len(listing.files['test'][0])
  else:
    builder = _builder(name, data_dir, manual_dir, bool(download))
    label = builder.info.features['label']
    class_names = tuple(label.names)
    num_train = builder.info.splits['train'].num_examples
    test = _tfds_split(builder, 'test')
    num_test = (builder.info.splits[test].num_examples
                if test in builder.info.splits else 0)
  h, w, channels = _channels(name, data_dir)
  if image_size:
    shape = (image_size, image_size, channels)
  elif h and w and preprocess_name == 'resize':
    shape = (h, w, channels)
  else:
    raise InputConfigError(
        f'Data set {name!r} has images of varying size: set '
        '--config.input.image_size (e.g. 224).')
  if preprocess_name == 'imagenet':
    mean, std = ipp.IMAGENET_MEAN, ipp.IMAGENET_STD
  else:
    records = open_records(name, 'train', data_dir=data_dir,
                           manual_dir=manual_dir, download=download,
                           skip_bad=skip_bad)
    mean, std = sample_stats(records, channels=channels,
                             preprocess_name=preprocess_name,
                             image_size=shape[0] if image_size else 0,
                             limit=stats_sample)
  return datasets.DatasetInfo(
      name=name, num_train=num_train, num_test=num_test, image_shape=shape,
      num_classes=len(class_names), class_names=class_names, mean=mean,
      std=std)


def decoded_bytes(name: str, data_dir=None) -> int | None:
  """Bytes of the decoded uint8 train split per tfds info; None when the
  data set is not prepared (the in-memory route then reports it)."""
  try:
    builder = _builder(name, data_dir, None, False)
  except DatasetError:
    return None
  h, w, c = builder.info.features['image'].shape
  if not (h and w):
    return 2**62  # Images of varying size (ImageNet): always stream.
  return builder.info.splits['train'].num_examples * h * w * (c or 3)


# ------------------------------------------------------------------- train


class StreamingSource(source_base.SourceBase):
  """Train source streaming from disk; see the module docstring.

  Attributes:
    pipeline: 'streaming'.
    info: the data set's `DatasetInfo`.
    num_examples: examples in the (possibly subset) train split.
    global_batch_size, local_batch_size: examples per step over all
      processes / of this process.
    steps_per_epoch: (num_examples // process_count) // local_batch_size,
      the same on every process.
    step_batch_fn: `batch_as_given`: `step_inputs` yields the batches.
  """

  pipeline = 'streaming'
  step_batch_fn = staticmethod(source_base.batch_as_given)

  def __init__(self, records, *, info: Any, global_batch_size: int,
               augment_config: Any = None, seed: int = 0,
               process_index: int = 0, process_count: int = 1,
               preprocess_name: str = 'resize', mesh: Any = None,
               data_axis: str = 'data'):
    super().__init__(
        records.num_examples, info=info, global_batch_size=global_batch_size,
        augment_config=augment_config, seed=seed,
        process_index=process_index, process_count=process_count)
    self._records = records
    self._preprocess = preprocess_name
    self._mesh, self._data_axis = mesh, data_axis
    # Every process must take the same number of steps; its part of the
    # split has at least num_examples // process_count examples.
    self.steps_per_epoch = ((self.num_examples // process_count)
                            // self.local_batch_size)
    if self.steps_per_epoch == 0:
      raise InputConfigError(
          f'Global batch size {global_batch_size} exceeds the '
          f'{self.num_examples} training examples; lower '
          '--config.input.batch_size.')

  def _read_args(self, epoch: int) -> dict[str, Any]:
    return dict(epoch=epoch, process_index=self.process_index,
                process_count=self.process_count, shuffle=True,
                seed=self.seed)

  def _example(self, position: tf.Tensor, encoded: tf.Tensor,
               label: tf.Tensor, epoch: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode + per-example view; `position` is the reading position in
    this process's epoch, from which the example's global id follows."""
    lb, gb = self.local_batch_size, self.global_batch_size
    step = epoch * self.steps_per_epoch + position // lb
    example_id = step * gb + self.process_index * lb + position % lb
    seed = tf.stack([tf.constant(self.seed & 0xFFFFFFFF, tf.int64),
                     example_id])
    image = ipp.decode(encoded, self.info.image_shape[2])
    image = ipp.train_view(image, seed, self._preprocess,
                           self.info.image_shape[0])
    return tf.ensure_shape(image, self.info.image_shape), label

  def _batch(self, step: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]
             ) -> dict[str, tf.Tensor]:
    images, labels = batch
    if self._preprocess == 'resize':  # 'imagenet' augments per example.
      images = augment_tf.augment_step_batch(self, step, images)
    images = preprocess.normalize(images, self._mean, self._std)
    return {'image': images, 'label': labels}

  def epoch_dataset(self, epoch: int, skip_steps: int = 0
                    ) -> tf.data.Dataset:
    """This process's batches of `epoch` after its first `skip_steps`.

    Elements: {'image': float32 [B_local, H, W, C] normalised, 'label':
    int32 [B_local]}.
    """
    lb = self.local_batch_size
    ds = self._records.dataset(**self._read_args(epoch),
                               skip=skip_steps * lb,
                               take=self.steps_per_epoch * lb)
    ds = ds.enumerate(start=skip_steps * lb)
    ds = ds.map(lambda pos, ex: self._example(pos, *ex, epoch=epoch),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(lb, drop_remainder=True)
    ds = ds.enumerate(start=epoch * self.steps_per_epoch + skip_steps)
    # Batches first, so the augmentation runs vectorised on whole batches.
    ds = ds.map(self._batch, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.with_options(_deterministic_options()).prefetch(AUTOTUNE)

  def _decode_error(self, epoch: int, step_in_epoch: int,
                    err: Exception) -> DatasetError:
    lo = step_in_epoch * self.local_batch_size
    what = self._records.describe(**self._read_args(epoch), lo=lo,
                                  hi=lo + self.local_batch_size)
    error = decode_error(f'Data set {self.info.name!r}: {what}', err)
    # Mid-run (a file changed since the check at start-up).
    return DatasetError(f'{error} Training stopped there; the checkpoints '
                        'saved so far are intact and the same command '
                        'resumes from the last one.')

  def iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of this process from `start_step` on (infinite)."""
    epoch, step_in_epoch = divmod(start_step, self.steps_per_epoch)
    while True:
      batches = self.epoch_dataset(epoch, step_in_epoch).as_numpy_iterator()
      while True:
        try:
          batch = next(batches)
        except StopIteration:
          break
        except tf.errors.OpError as err:
          raise self._decode_error(epoch, step_in_epoch, err) from None
        yield batch
        step_in_epoch += 1
      epoch, step_in_epoch = epoch + 1, 0

  def step_inputs(self, start_step: int = 0) -> Iterator[dict[str, Any]]:
    """Global batches from `start_step` on, sharded over the mesh's data
    axis (each process contributes its own rows)."""
    return source_base.host_step_inputs(self.iterator(start_step),
                                        self._mesh, self._data_axis)


# -------------------------------------------------------------------- eval


def _named_errors(batches: Iterator[Any], records, read_args: dict[str, Any],
                  batch_size: int, name: str) -> Iterator[Any]:
  """`batches`, with a failed decode as a `DatasetError` naming the file."""
  done = 0
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as err:
      what = records.describe(**read_args, lo=done * batch_size,
                              hi=(done + 1) * batch_size)
      raise decode_error(f'Data set {name!r}: {what}', err) from None
    yield batch
    done += 1


def eval_batches(records, *, info: datasets.DatasetInfo, batch_size: int,
                 preprocess_name: str = 'resize', process_index: int = 0,
                 process_count: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-shape, padded, masked eval batches of this process's part.

  Each process streams its contiguous part of the split (sizes differ by at
  most one) and every process yields the same number of batches,
  ceil(ceil(N / P) / B_local), so the collective eval step runs equally
  often everywhere; every example counts once over all processes.

  Yields:
    {'image': float32 [B_local, H, W, C], 'label': int32 [B_local], 'mask':
     float32 [B_local]}, B_local = batch_size // process_count.
  """
  if batch_size <= 0 or batch_size % process_count:
    raise InputConfigError(
        f'Eval batch size {batch_size} must be positive and divisible by the '
        f'{process_count} processes.')
  local = batch_size // process_count
  n = records.num_examples
  num_batches = math.ceil(math.ceil(n / process_count) / local)
  shape = tuple(info.image_shape)
  size = shape[0]
  mean, std = info.mean, info.std

  def view(encoded, label):
    image = ipp.eval_view(ipp.decode(encoded, shape[2]), preprocess_name,
                          size)
    image = tf.ensure_shape(image, shape)
    return preprocess.normalize(image, mean, std), label

  read_args = dict(epoch=0, process_index=process_index,
                   process_count=process_count, shuffle=False, seed=0)
  ds = records.dataset(**read_args)
  ds = ds.map(view, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(local).prefetch(AUTOTUNE)
  done = 0
  for image, label in _named_errors(ds.as_numpy_iterator(), records,
                                    read_args, local, info.name):
    real = len(label)
    out = {'image': np.zeros((local,) + shape, np.float32),
           'label': np.zeros((local,), np.int32),
           'mask': np.zeros((local,), np.float32)}
    out['image'][:real], out['label'][:real] = image, label
    out['mask'][:real] = 1.0
    done += 1
    yield out
  for _ in range(num_batches - done):
    yield {'image': np.zeros((local,) + shape, np.float32),
           'label': np.zeros((local,), np.int32),
           'mask': np.zeros((local,), np.float32)}
