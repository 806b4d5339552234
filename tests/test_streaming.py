"""The streaming source: tfds data sets and folders of images from disk.

Offline and tiny: a 7-class tfds data set prepared on disk here (90 train /
25 test 8x8 images) and generated folders of PNG/JPEG files (3 classes).
Every image's pixels encode its example id, so orders and shards are read
back from the batches.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

import input_pipeline as ip
from cnn.training import steps, train
from cnn.training.metrics import read_metrics
from tests import helpers

tfds = pytest.importorskip('tensorflow_datasets')
from input_pipeline.pipelines import streaming  # noqa: E402  (imports TF)
from input_pipeline.sources import folder  # noqa: E402  (imports TF)

NUM_TRAIN, NUM_TEST, NUM_CLASSES = 90, 25, 7


class TinyStream(tfds.core.GeneratorBasedBuilder):
  """8x8 RGB images whose every pixel is the example id; label id % 7."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 3)),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES)}),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(NUM_TRAIN, 0),
            'test': self._generate_examples(NUM_TEST, 100)}

  def _generate_examples(self, n, first):
    for i in range(n):
      yield i, {'image': np.full((8, 8, 3), first + i, np.uint8),
                'label': i % NUM_CLASSES}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  TinyStream(data_dir=data_dir).download_and_prepare()
  return data_dir


def _write_folder(root, per_class_train, per_class_test, classes=('cat',
                  'dog', 'owl')):
  """PNGs (one JPEG per class in test) of varied sizes; pixel = file id."""
  ident = 0
  for split, count in (('train', per_class_train), ('test', per_class_test)):
    for cls in classes:
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(count):
        size = (10 + i % 5, 12 + i % 3)
        value = ident % 256
        image = Image.fromarray(np.full(size + (3,), value, np.uint8))
        ext = 'jpg' if split == 'test' and i == 0 else 'png'
        image.save(os.path.join(root, split, cls, f'{i:03d}.{ext}'))
        ident += 1
  return str(root)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp('images'), 12, 4)


def _input_config(dataset, **overrides):
  augment = ip.default_augment_config()
  augment.update(flip_lr=False)
  config = dict(dataset=dataset, data_dir=None, manual_dir=None,
                download=False, pipeline='tfdata', batch_size=8,
                eval_batch_size=10, train_subset=0, test_subset=0,
                image_size=0, augment=augment, streaming='always',
                stream_threshold_bytes=2**30, preprocess='resize',
                shuffle_buffer=16, stats_sample=10_000,
                skip_bad_images=False, classes=(), per_class=0,
                validation_per_class=0, validation_fraction=0.0,
                sample_seed=-1)
  config.update(overrides)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _ids(source_config, batches):
  """Example ids from the pixels of normalised batches (inverse of the
  normalisation)."""
  info = ip.get_input_info(source_config)
  out = []
  for b in batches:
    x = b['image'][:, 0, 0, 0] * info.std[0] + info.mean[0]
    out.append(np.rint(x * 255).astype(int))
  return np.concatenate(out)


def test_tfds_source_speaks_the_protocol_and_is_deterministic(tfds_dir):
  config = _input_config('tiny_stream', data_dir=tfds_dir)
  assert ip.uses_streaming(config)
  source = ip.create_train_source(config, seed=3)
  assert source.pipeline == 'streaming'
  assert source.steps_per_epoch == NUM_TRAIN // 8
  assert source.info.num_classes == NUM_CLASSES
  first = _take(source.iterator(), 3)
  assert first[0]['image'].shape == (8, 8, 8, 3)
  assert first[0]['label'].dtype == np.int32
  again = _take(ip.create_train_source(config, seed=3).iterator(), 3)
  other = _take(ip.create_train_source(config, seed=4).iterator(), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(_ids(config, first), _ids(config, other))
  # Labels follow the images (label = id % 7).
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in first]),
      _ids(config, first) % NUM_CLASSES)


def test_auto_keeps_small_tfds_sets_in_memory(tfds_dir):
  config = _input_config('tiny_stream', data_dir=tfds_dir, streaming='auto')
  assert not ip.uses_streaming(config)
  assert ip.uses_streaming(dict(config, stream_threshold_bytes=100))


@pytest.mark.parametrize('kind', ['tfds', 'folder'])
def test_two_process_train_shards_are_disjoint_and_cover(kind, tfds_dir,
                                                         image_folder):
  if kind == 'tfds':
    records = streaming.open_records('tiny_stream', 'train',
                                     data_dir=tfds_dir)
  else:
    records = streaming.open_records(f'folder:{image_folder}', 'train')
  n = records.num_examples
  for shuffle in (True, False):
    parts = []
    for p in range(2):
      ds = records.dataset(epoch=1, process_index=p, process_count=2,
                           shuffle=shuffle, seed=5)
      parts.append([int(ip_image(enc)) for enc, _ in ds.as_numpy_iterator()])
    assert not set(parts[0]) & set(parts[1])
    assert len(parts[0]) + len(parts[1]) >= n - 1
    if not shuffle:
      assert len(set(parts[0]) | set(parts[1])) == n


def ip_image(encoded) -> int:
  """The id a tiny image encodes (pixel value)."""
  return int(streaming.ipp.decode(encoded, 3).numpy()[0, 0, 0])


@pytest.mark.parametrize('process_count', [1, 2])
def test_streamed_eval_counts_every_example_once(process_count, tfds_dir):
  config = _input_config('tiny_stream', data_dir=tfds_dir)
  seen, shapes, lengths = [], set(), []
  for p in range(process_count):
    batches = list(ip.create_eval_batches(
        config, batch_size=10, process_index=p, process_count=process_count))
    lengths.append(len(batches))
    for b in batches:
      shapes.add(b['image'].shape)
      real = b['mask'] > 0
      seen += list(_ids(config, [b])[real])
  assert len(set(lengths)) == 1  # same number of collective eval steps.
  assert shapes == {(10 // process_count, 8, 8, 3)}  # one compilation.
  assert sorted(seen) == list(range(100, 100 + NUM_TEST))


@pytest.mark.parametrize('kind', ['tfds', 'folder'])
def test_resumed_iterator_continues_at_the_right_batch(kind, tfds_dir,
                                                       image_folder):
  if kind == 'tfds':
    config = _input_config('tiny_stream', data_dir=tfds_dir, batch_size=24)
  else:
    config = _input_config(f'folder:{image_folder}', image_size=8)
  config['augment'].update(flip_lr=True)  # seeded by (seed, step) too.
  source = ip.create_train_source(config, seed=1)
  spe = source.steps_per_epoch
  run = _take(source.iterator(0), 2 * spe + 1)
  resumed = _take(ip.create_train_source(config, seed=1).iterator(spe + 1),
                  spe)
  for a, b in zip(run[spe + 1:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_folder_labels_sizes_and_no_full_split_in_memory(image_folder,
                                                         monkeypatch):
  # A streamed epoch must never build a whole-split array: the in-memory
  # loaders are made to fail.
  def refuse(*args, **kwargs):
    raise AssertionError('a split was loaded into memory')
  from input_pipeline.sources import datasets  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(datasets, '_load_cached', refuse)
  config = _input_config(f'folder:{image_folder}', image_size=16,
                         batch_size=6)
  info = ip.get_input_info(config)
  assert info.class_names == ('cat', 'dog', 'owl')
  assert (info.num_train, info.num_test) == (36, 12)
  assert info.image_shape == (16, 16, 3)
  source = ip.create_train_source(config, seed=0)
  assert not [v for v in vars(source).values()
              if isinstance(v, np.ndarray) and v.size > 36]
  batches = _take(source.iterator(), source.steps_per_epoch)
  labels = np.concatenate([b['label'] for b in batches])
  assert sorted(labels.tolist()) == sorted([0] * 12 + [1] * 12 + [2] * 12)
  evals = list(ip.create_eval_batches(config, batch_size=5))
  assert sum(int(b['mask'].sum()) for b in evals) == 12


def test_top5_counted_exactly_on_hand_made_logits():
  logits = np.array([
      [9, 8, 7, 6, 5, 4, 3],   # label 4: 5th largest -> in top 5.
      [9, 8, 7, 6, 5, 4, 3],   # label 5: 6th -> out.
      [0, 0, 0, 0, 0, 0, 1],   # label 6: top-1.
      [1, 2, 3, 4, 5, 6, 7],   # label 0: last -> out (padding row below).
      [1, 2, 3, 4, 5, 6, 7],   # label 2: in top 5, but masked out.
  ], np.float32)
  labels = np.array([4, 5, 6, 0, 2], np.int32)
  mask = np.array([1, 1, 1, 1, 0], np.float32)
  sums = steps.add_eval_counts(steps.empty_eval_metrics(), logits, labels,
                               mask)
  assert float(sums['top5_sum']) == 2.0
  assert float(sums['top5_count']) == 4.0
  assert float(sums['correct_sum']) == 1.0
  few = steps.add_eval_counts(steps.empty_eval_metrics(), logits[:, :5],
                              np.zeros(5, np.int32), mask)
  assert float(few['top5_count']) == 0.0  # <= 5 classes: not reported.


def test_folder_trains_end_to_end_through_main(tmp_path):
  # With one undecodable file in each split, left out and counted.
  root = _write_folder(tmp_path / 'data', 12, 4)
  bad = [os.path.join(root, 'train', 'cat', '005.png'),
         os.path.join(root, 'test', 'owl', '002.png')]
  for path in bad:
    _truncate(path)
  workdir = tmp_path / 'run'
  out = helpers.run_main(helpers.main_args(workdir, {
      'input.dataset': f'folder:{root}', 'input.image_size': 28,
      'input.skip_bad_images': True}))
  assert out.returncode == 0, out.stderr[-3000:]
  assert (f'Skipping 2 undecodable image file(s) of {root} '
          f'(config.input.skip_bad_images): {bad[0]}, {bad[1]}'
          in out.stderr), out.stderr[-3000:]
  records = read_metrics(str(workdir))
  assert records[-1]['test_count'] == 11
  assert 'test_top5_accuracy' not in records[-1]  # 3 classes.
  # Inspection and probes of a streamed run draw from its own splits.
  from cnn.visualize import workdir as inspect_workdir  # pylint: disable=g-import-not-at-top
  run = inspect_workdir.load_run(str(workdir), num_test=8)
  assert run.images.shape == (8, 28, 28, 3) and run.info.num_classes == 3
  assert 0.0 <= run.display.min() and run.display.max() <= 1.0
  from cnn.experiments import probe  # pylint: disable=g-import-not-at-top
  rows = probe.probe_workdir(
      helpers.tiny_config(**{'input.dataset': f'folder:{root}',
                             'input.image_size': 28,
                             'input.skip_bad_images': True}),
      str(workdir), layers=['pre_logits'], shots=[2], seeds=[0])
  assert len(rows) == 1 and 0.0 <= rows[0]['test_accuracy'] <= 1.0


# ------------------------------------------------------------- bad inputs


def _error(config):
  with pytest.raises((ip.DatasetError, ip.InputConfigError)) as e:
    ip.get_input_info(config)
  message = str(e.value)
  assert '\n' not in message
  return message


def test_bad_inputs_each_get_a_one_line_error(tmp_path, tfds_dir):
  assert 'not valid' in _error(_input_config('a:b:c'))
  assert 'does not exist' in _error(
      _input_config(f'folder:{tmp_path}/nowhere', image_size=8))
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  (tmp_path / 'empty' / 'test').mkdir()
  assert 'no class sub-directories' in _error(
      _input_config(f'folder:{tmp_path}/empty', image_size=8))
  root = _write_folder(tmp_path / 'mismatch', 2, 1)
  os.rename(os.path.join(root, 'test', 'owl'), os.path.join(root, 'test',
                                                             'bat'))
  assert 'different classes' in _error(
      _input_config(f'folder:{root}', image_size=8))
  ok = _write_folder(tmp_path / 'ok', 2, 1)
  assert 'image_size' in _error(_input_config(f'folder:{ok}'))
  builder_dir = str(tmp_path / 'tfds_empty')
  message = _error(_input_config('imagenet2012', data_dir=builder_dir,
                                 download=True))
  assert 'manual_dir' in message
  folder.scan.cache_clear()


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(20)


def test_truncated_image_is_named(tmp_path):
  root = _write_folder(tmp_path / 'bad', 4, 1)
  bad = os.path.join(root, 'train', 'dog', '001.png')
  _truncate(bad)
  # Found up front, though the mean/std sample leaves it out ...
  config = _input_config(f'folder:{root}', image_size=8, batch_size=12,
                         stats_sample=1)
  with pytest.raises(ip.DatasetError, match='dog/001.png') as e:
    ip.create_train_source(config, seed=0)
  assert '\n' not in str(e.value) and 'skip_bad_images=True' in str(e.value)
  # ... and a file that breaks after that check, where an epoch meets it.
  root = _write_folder(tmp_path / 'changes', 4, 1)
  config = _input_config(f'folder:{root}', image_size=8, batch_size=12)
  source = ip.create_train_source(config, seed=0)
  _truncate(os.path.join(root, 'train', 'owl', '002.png'))
  with pytest.raises(ip.DatasetError, match='owl/002.png') as e:
    _take(source.iterator(), 1)
  assert '\n' not in str(e.value) and 'resumes' in str(e.value)
  _truncate(os.path.join(root, 'test', 'owl', '000.jpg'))
  with pytest.raises(ip.DatasetError, match='test/owl/000.jpg'):
    list(ip.create_eval_batches(config, batch_size=2))


def test_corrupt_test_image_is_one_error_line_before_anything(tmp_path):
  root = _write_folder(tmp_path / 'data', 4, 2)
  bad = os.path.join(root, 'test', 'dog', '001.png')
  _truncate(bad)
  out = helpers.run_main(helpers.main_args(tmp_path / 'run', {
      'input.dataset': f'folder:{root}', 'input.image_size': 16,
      'input.batch_size': 4, 'num_train_steps': 3}))
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines()
            if line.startswith('error:')]
  assert len(errors) == 1 and bad in errors[0], out.stderr[-3000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert not re.search(r'^E\d{4} ', out.stderr, re.MULTILINE)  # no echo.
  assert not (tmp_path / 'run').exists()


def test_corrupt_train_image_is_refused_before_any_checkpoint(tmp_path):
  root = _write_folder(tmp_path / 'data', 4, 2)
  _truncate(os.path.join(root, 'train', 'cat', '003.png'))
  config = helpers.tiny_config(**{
      'input.dataset': f'folder:{root}', 'input.image_size': 16,
      'input.batch_size': 4, 'input.stats_sample': 1, 'num_train_steps': 2})
  workdir = str(tmp_path / 'run')
  # Outside the mean/std sample, still refused before anything is written.
  with pytest.raises(ip.DatasetError, match='cat/003.png'):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


def test_file_broken_mid_run_stops_keeping_the_checkpoint(tmp_path,
                                                          monkeypatch):
  root = _write_folder(tmp_path / 'data', 4, 2)
  bad = os.path.join(root, 'train', 'dog', '002.png')
  config = helpers.tiny_config(**{
      'input.dataset': f'folder:{root}', 'input.image_size': 16,
      'input.batch_size': 4, 'num_epochs': 2.0})  # 3 steps an epoch.
  save = train.checkpoint_lib.Checkpointer.save

  def save_then_break_a_file(self, *args, **kwargs):
    save(self, *args, **kwargs)
    _truncate(bad)  # epoch 2 reads it again.

  monkeypatch.setattr(train.checkpoint_lib.Checkpointer, 'save',
                      save_then_break_a_file)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ip.DatasetError, match='dog/002.png') as e:
    train.train_and_evaluate(config, workdir)
  assert '\n' not in str(e.value) and 'resumes' in str(e.value)
  step, _ = train.checkpoint_lib.load_arrays(workdir)
  assert step == 3


def test_recipe_configs_match_their_papers():
  from configs import cifar10_resnet20, imagenet_resnet50
  c = imagenet_resnet50.get_config()
  assert (c.model_name, c.dtype, c.num_epochs) == ('resnet50', 'bfloat16',
                                                   90.0)
  assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.nesterov) == (
      'sgd', 0.9, True)
  assert c.optimizer.learning_rate == pytest.approx(
      0.1 * c.input.batch_size / 256)
  assert (c.schedule.name, c.schedule.warmup_epochs) == ('warmup_cosine', 5.0)
  assert (c.input.preprocess, c.input.streaming, c.input.image_size) == (
      'imagenet', 'always', 224)
  assert c.optimizer.weight_decay == 1e-4
  c = cifar10_resnet20.get_config()
  assert (c.model_name, c.input.dataset, c.input.batch_size) == (
      'resnet20', 'cifar10', 128)
  assert (c.schedule.name, tuple(c.schedule.decay_steps),
          c.num_train_steps) == ('step', (32_000, 48_000), 64_000)
  assert c.input.augment.crop_padding == 4 and c.input.augment.flip_lr


def test_imagenet_preprocessing_crops_flips_and_centre_crops(image_folder):
  config = _input_config(f'folder:{image_folder}', image_size=8,
                         preprocess='imagenet', batch_size=12)
  info = ip.get_input_info(config)
  assert (info.mean, info.std) == (streaming.ipp.IMAGENET_MEAN,
                                   streaming.ipp.IMAGENET_STD)
  source = ip.create_train_source(config, seed=0)
  batch = next(source.iterator())
  assert batch['image'].shape == (12, 8, 8, 3)
  evals = list(ip.create_eval_batches(config, batch_size=5))
  assert {b['image'].shape for b in evals} == {(5, 8, 8, 3)}
  assert sum(int(b['mask'].sum()) for b in evals) == 12
  # The eval view is a pure function of the file: two passes agree.
  again = list(ip.create_eval_batches(config, batch_size=5))
  np.testing.assert_array_equal(evals[0]['image'], again[0]['image'])
