"""Tests of `input_pipeline`: files, data sets, order, augmentation, eval.

Nothing here downloads. Tests that need TensorFlow skip where it is missing
(the accelerator machines), so the JAX-only parts still run there.
"""

from __future__ import annotations

import gzip
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline as ip
from configs import default
from input_pipeline import errors
from input_pipeline.augment import jax_ops as augment
from input_pipeline.pipelines import ordering
from input_pipeline.sources import idx

FASHION_DIR = errors.DEFAULT_FASHION_MNIST_DIR
needs_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR),
    reason=f'Debian package {errors.DEBIAN_PACKAGE} is not installed')


def _tf():
  pytest.importorskip('tensorflow')
  from input_pipeline import lazy_tf as tf_lib
  return tf_lib.import_tensorflow()


def _augment_tf():
  _tf()
  from input_pipeline.augment import tf_ops as augment_tf
  return augment_tf


# Augmentation shared by several digits tests (shared compilations).
_DIGITS_AUGMENT = dict(crop_padding=2, flip_lr=True, noise_std=0.05)


def _input_config(**overrides):
  config = dict(default.get_config().input.to_dict(),
                dataset='fashion_mnist', pipeline='device',
                batch_size=128, eval_batch_size=384,
                augment=ip.default_augment_config())
  config.update(overrides)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize('name', ['x.gz', 'x'])
def test_idx_round_trip(tmp_path, name):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (5,), dtype=np.uint8)
  idx.write_idx(tmp_path / ('i' + name), images)
  idx.write_idx(tmp_path / ('l' + name), labels)
  np.testing.assert_array_equal(idx.read_idx(tmp_path / ('i' + name)), images)
  np.testing.assert_array_equal(
      idx.read_idx(tmp_path / ('l' + name), expected_ndim=1), labels)


def _assert_fix_in(message: str, path) -> None:
  assert str(path) in message
  assert 'apt-get install --reinstall dataset-fashion-mnist' in message
  assert 'FASHION_MNIST_DIR' in message
  assert 'config.input.data_dir' in message


def test_idx_bad_magic(tmp_path):
  path = tmp_path / 'bad.gz'
  with gzip.open(path, 'wb') as f:
    f.write(b'\x00\x00\x08\x04' + b'\x00' * 32)
  with pytest.raises(ip.DatasetError, match='magic number 0x00000804') as e:
    idx.read_idx(path)
  _assert_fix_in(str(e.value), path)


def test_idx_labels_where_images_expected(tmp_path):
  path = tmp_path / 'labels'
  idx.write_idx(path, np.zeros(3, np.uint8))
  with pytest.raises(ip.DatasetError, match='swapped'):
    idx.read_idx(path, expected_ndim=3)


def test_idx_truncated_raw_and_gzip(tmp_path):
  images = np.ones((4, 3, 3), np.uint8)
  raw = tmp_path / 'raw'
  idx.write_idx(raw, images)
  raw.write_bytes(raw.read_bytes()[:-5])
  with pytest.raises(ip.DatasetError, match='truncated') as e:
    idx.read_idx(raw)
  _assert_fix_in(str(e.value), raw)
  # A gzip file cut short: the stream itself is incomplete.
  gz = tmp_path / 'cut.gz'
  idx.write_idx(gz, np.arange(4000, dtype=np.uint8).reshape(10, 20, 20))
  gz.write_bytes(gz.read_bytes()[:-30])
  with pytest.raises(ip.DatasetError, match='truncated or corrupt') as e:
    idx.read_idx(gz)
  _assert_fix_in(str(e.value), gz)


def test_fashion_mnist_missing_dir_and_file(tmp_path, monkeypatch):
  missing = tmp_path / 'nowhere'
  with pytest.raises(ip.DatasetError) as e:
    ip.load_split('fashion_mnist', 'train', data_dir=str(missing))
  assert 'dataset-fashion-mnist' in str(e.value)
  _assert_fix_in(str(e.value), missing)
  # The environment variable is used when no directory is configured.
  monkeypatch.setenv('FASHION_MNIST_DIR', str(tmp_path))
  with pytest.raises(ip.DatasetError, match='t10k-images-idx3-ubyte') as e:
    ip.load_split('fashion_mnist', 'test')
  _assert_fix_in(str(e.value), tmp_path)


def test_fashion_mnist_env_var_directory(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
  labels = np.arange(6, dtype=np.uint8)
  idx.write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', images)
  idx.write_idx(tmp_path / 't10k-labels-idx1-ubyte', labels)  # Raw works too.
  monkeypatch.setenv('FASHION_MNIST_DIR', str(tmp_path))
  x, y = ip.load_split('fashion_mnist', 'test')
  np.testing.assert_array_equal(x[..., 0], images)
  assert y.dtype == np.int32 and y.tolist() == list(range(6))


# ----------------------------------------------------------------- data sets


def _mean_std(images):
  """Mean and std (0..1 scale) of uint8 images, from their histogram."""
  counts = np.bincount(images.ravel(), minlength=256)
  values = np.arange(256) / 255.0
  mean = (counts * values).sum() / counts.sum()
  return [mean, np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())]


@needs_fashion
def test_fashion_mnist_from_debian_package():
  x_train, y_train = ip.load_split('fashion_mnist', 'train')
  x_test, y_test = ip.load_split('fashion_mnist', 'test')
  assert x_train.shape == (60_000, 28, 28, 1) and x_train.dtype == np.uint8
  assert x_test.shape == (10_000, 28, 28, 1)
  assert y_train.dtype == np.int32 and y_test.shape == (10_000,)
  np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
  info = ip.get_dataset_info('fashion_mnist')
  assert (info.num_train, info.num_test, info.image_shape,
          info.num_classes) == (60_000, 10_000, (28, 28, 1), 10)
  assert info.class_names[0] == 'T-shirt/top' and len(info.class_names) == 10
  # The hard-coded statistics are those of the train split.
  np.testing.assert_allclose(_mean_std(x_train), info.mean + info.std,
                             atol=5e-5)


def test_digits():
  x_train, y_train = ip.load_split('digits', 'train')
  x_test, y_test = ip.load_split('digits', 'test')
  assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
  assert x_train.dtype == np.uint8 and x_train.max() == 255
  assert y_train.dtype == np.int32 and set(y_test.tolist()) == set(range(10))
  # Fixed split: loading again gives the same arrays.
  np.testing.assert_array_equal(ip.load_split('digits', 'test')[0], x_test)
  info = ip.get_dataset_info('digits')
  np.testing.assert_allclose(_mean_std(x_train), info.mean + info.std,
                             atol=5e-5)
  assert ip.get_dataset_info('digits', image_size=16).image_shape == (16, 16, 1)
  resized, _ = ip.load_split('digits', 'test', subset=10, image_size=16)
  assert resized.shape == (10, 16, 16, 1) and resized.dtype == np.uint8


def test_unknown_dataset_message():
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(ip.DatasetError) as e:
    ip.load_split('fashon_mnist', 'train')
  message = str(e.value)
  assert 'digits, fashion_mnist' in message
  assert 'tfds build fashon_mnist' in message and 'download' in message
  assert "'fashion_mnist'" in message  # Suggests the near miss.
  with pytest.raises(ip.DatasetError, match='unknown split'):
    ip.load_split('digits', 'validation')


def test_import_does_not_load_tensorflow():
  # A fresh interpreter: this one may have imported TensorFlow already.
  code = '\n'.join([
      'import sys, numpy as np, input_pipeline as ip',
      'from input_pipeline.pipelines import device_data, eval_data',
      "info = ip.get_dataset_info('digits')",
      'device_data.DeviceSource(np.zeros((8, 8, 8, 1), np.uint8),',
      '                         np.zeros(8, np.int32), info=info,',
      '                         global_batch_size=4)',
      "assert 'tensorflow' not in sys.modules, 'tensorflow imported'",
      "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'",
  ])
  subprocess.run([sys.executable, '-c', code], check=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)),
                 env=dict(os.environ, JAX_PLATFORMS='cpu'))


# ---------------------------------------------------------------- ordering


@pytest.mark.parametrize('n', [1, 2, 3, 100, 1437, 4096, 60_000])
def test_epoch_order_is_a_permutation_same_in_numpy_and_jax(n):
  perm = ordering.permute_np(np.arange(n), n, seed=5, epoch=2)
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  perm_jax = jax.jit(lambda p: ordering.permute_jax(p, n, 5, 2))(jnp.arange(n))
  np.testing.assert_array_equal(np.asarray(perm_jax), perm)


def test_epoch_order_changes_with_epoch_and_seed():
  n = 1000
  base = ordering.permute_np(np.arange(n), n, seed=0, epoch=0)
  for seed, epoch in [(0, 1), (1, 0)]:
    other = ordering.permute_np(np.arange(n), n, seed=seed, epoch=epoch)
    assert (other == base).mean() < 0.02
    assert abs(np.corrcoef(other, base)[0, 1]) < 0.1
  # Where example 0 lands is uniform over positions across epochs.
  where = [np.flatnonzero(ordering.permute_np(np.arange(50), 50, 3, e) == 0)[0]
           for e in range(2000)]
  counts = np.bincount(np.asarray(where) // 10, minlength=5)
  assert counts.min() > 330 and counts.max() < 470, counts


def test_steps_cover_each_epoch_once_dropping_the_remainder():
  n, batch = 1437, 128
  spe = ordering.steps_per_epoch(n, batch)
  assert spe == 11
  for epoch in range(2):
    seen = np.concatenate([
        ordering.batch_indices_np(epoch * spe + s, n=n, global_batch_size=batch,
                                  seed=9) for s in range(spe)])
    assert len(np.unique(seen)) == spe * batch
  with pytest.raises(ValueError, match='exceeds'):
    ordering.steps_per_epoch(10, 16)


# ------------------------------------------------------ train sources: device


def test_device_source_determinism_and_resume():
  config = _input_config(dataset='digits', batch_size=64,
                         augment=_DIGITS_AUGMENT)
  source = ip.create_train_source(config, seed=1)
  assert source.steps_per_epoch == 1437 // 64
  first = _take(source.iterator(), 25)  # Crosses an epoch boundary (22).
  _assert_batches_equal(first, _take(source.iterator(), 25))
  _assert_batches_equal(first[7:], _take(source.iterator(start_step=7), 18))
  other = _take(ip.create_train_source(config, seed=2).iterator(), 1)
  assert not np.array_equal(other[0]['image'], first[0]['image'])
  batch = first[0]
  assert batch['image'].shape == (64, 8, 8, 1)
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32


def test_device_get_batch_inside_jit_matches_iterator():
  # Same settings as the determinism test: the iterator's compilation is
  # shared.
  config = _input_config(dataset='digits', batch_size=64,
                         augment=_DIGITS_AUGMENT)
  source = ip.create_train_source(config, seed=4)

  @jax.jit
  def step_fn(data, seed, step):
    batch = source.get_batch(data, seed, step)
    return batch['image'], batch['label']

  expected = _take(source.iterator(start_step=40), 1)[0]
  images, labels = step_fn(source.data, 4, 40)  # Traced seed and step.
  np.testing.assert_array_equal(np.asarray(images), expected['image'])
  np.testing.assert_array_equal(np.asarray(labels), expected['label'])


def test_device_get_batch_accepts_a_prng_key():
  config = _input_config(dataset='digits', batch_size=64,
                         augment=_DIGITS_AUGMENT)
  source = ip.create_train_source(config, seed=4)
  get = jax.jit(source.get_batch)
  a = get(source.data, jax.random.key(4), 3)
  np.testing.assert_array_equal(a['image'],
                                get(source.data, jax.random.key(4), 3)['image'])
  assert not np.array_equal(a['image'],
                            get(source.data, jax.random.key(5), 3)['image'])


# ----------------------------------------------------- train sources: tf.data


def test_tfdata_determinism_resume_and_process_slices():
  _tf()
  aug = dict(crop_padding=2, flip_lr=True, rotation_degrees=10.0,
             noise_std=0.05)
  config = _input_config(dataset='digits', pipeline='tfdata', batch_size=64,
                         augment=aug)
  source = ip.create_train_source(config, seed=1)
  assert source.steps_per_epoch == 22
  first = _take(source.iterator(start_step=19), 5)  # Crosses into epoch 1.
  # Resuming gives the same batches as iterating up to the step.
  _assert_batches_equal(first[2:], _take(source.iterator(start_step=21), 3))
  other = _take(ip.create_train_source(config, seed=2).iterator(19), 1)
  assert not np.array_equal(other[0]['image'], first[0]['image'])
  assert not np.array_equal(first[0]['image'], first[1]['image'])
  # Two processes each yield their half of the very same global batch.
  halves = [_take(ip.create_train_source(
      config, seed=1, process_index=p, process_count=2).iterator(21), 2)
            for p in range(2)]
  for step in range(2):
    for k in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][k], halves[1][step][k]]),
          first[2 + step][k])


@needs_fashion
def test_device_and_tfdata_paths_identical_without_augmentation():
  _tf()
  config = _input_config(batch_size=128)
  device = ip.create_train_source(config, seed=7)
  tfdata = ip.create_train_source(dict(config, pipeline='tfdata'), seed=7)
  assert device.steps_per_epoch == tfdata.steps_per_epoch == 468
  steps = [0, 1, 467, 468, 1000]  # Includes the first step of epoch 1.
  dev_it, tf_it = device.iterator(0), tfdata.iterator(0)
  got_dev, got_tf = {}, {}
  for step in range(max(steps) + 1):
    if step in steps:
      got_dev[step], got_tf[step] = next(dev_it), next(tf_it)
    elif step < 4:
      next(dev_it), next(tf_it)
    else:
      break
  # Later steps directly (resuming is exact, so no need to iterate there).
  for step in (467, 468, 1000):
    got_dev[step] = next(device.iterator(step))
    got_tf[step] = next(tfdata.iterator(step))
  for step in steps:
    for k in ('image', 'label'):
      np.testing.assert_array_equal(got_dev[step][k], got_tf[step][k])
  # And the batches are the normalised examples the order says.
  x, y = ip.load_split('fashion_mnist', 'train')
  ids = ordering.batch_indices_np(468, n=60_000, global_batch_size=128, seed=7)
  np.testing.assert_array_equal(got_tf[468]['label'], y[ids])
  info = ip.get_dataset_info('fashion_mnist')
  np.testing.assert_array_equal(
      got_tf[468]['image'],
      ip.normalize(ip.to_unit_float(x[ids]), info.mean, info.std))


def test_device_and_tfdata_match_with_deterministic_subset_of_ops():
  """Same params through both pipelines' op implementations: same pixels."""
  tf = _tf()
  augment_tf = _augment_tf()
  config = augment.resolve_config(dict(
      crop_padding=3, flip_lr=True, flip_ud=True, rotation_degrees=20.0,
      brightness=0.2, contrast=0.3, noise_std=0.1, scale=(0.7, 1.1)))
  images, _ = ip.load_split('digits', 'train', subset=64, image_size=16)
  x = ip.to_unit_float(images)
  params = augment.params_to_numpy(jax.jit(
      lambda k: augment.sample_params(k, 64, 16, 16, config))(
          jax.random.key(0)))
  noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
  apply = jax.jit(lambda x, p, n: augment.apply_params(x, p, config, n))
  ours = np.asarray(apply(x, params, noise))
  theirs = augment_tf.apply_params(
      tf.constant(x), {k: tf.constant(v) for k, v in params.items()}, config,
      tf.constant(noise)).numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5)


# ------------------------------------------------------------ augmentation


def _images(batch=8, size=12, channels=1, seed=0):
  return np.random.default_rng(seed).random(
      (batch, size, size, channels), dtype=np.float32)


def test_default_augment_config_is_identity_and_checked():
  config = ip.default_augment_config()
  assert config == dict(crop_padding=0, flip_lr=False, flip_ud=False,
                        rotation_degrees=0.0, brightness=0.0, contrast=0.0,
                        noise_std=0.0, scale=(1.0, 1.0))
  x = jnp.asarray(_images())
  assert augment.augment_batch(jax.random.key(0), x, config) is x
  with pytest.raises(ValueError, match='crop_pading'):
    augment.resolve_config(dict(crop_pading=2))


def test_crop_and_flips_exact_in_both_implementations():
  tf = _tf()
  augment_tf = _augment_tf()
  x = _images(batch=4, size=6)
  offsets = np.array([[0, 0], [4, 4], [2, 2], [1, 3]], np.int32)
  ours = np.asarray(augment.crop_with_padding(jnp.asarray(x), 2,
                                              jnp.asarray(offsets)))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i, (r, c) in enumerate(offsets):
    np.testing.assert_array_equal(ours[i], padded[i, r:r + 6, c:c + 6])
  np.testing.assert_array_equal(
      augment_tf.crop_with_padding(tf.constant(x), 2, offsets).numpy(), ours)
  flags = np.array([True, False, True, False])
  for jax_op, tf_op, axis in [(augment.flip_lr, augment_tf.flip_lr, 2),
                              (augment.flip_ud, augment_tf.flip_ud, 1)]:
    ours = np.asarray(jax_op(jnp.asarray(x), jnp.asarray(flags)))
    expected = np.where(flags[:, None, None, None], np.flip(x, axis), x)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(tf_op(tf.constant(x), flags).numpy(), ours)


def test_rotation_and_scale_crop_match_between_implementations():
  tf = _tf()
  augment_tf = _augment_tf()
  x = _images(batch=5, size=10, channels=3)
  angles = np.array([0.0, 90.0, -90.0, 12.5, -7.0], np.float32)
  ours = np.asarray(jax.jit(augment.rotate)(x, angles))
  np.testing.assert_array_equal(ours[0], x[0])  # 0 degrees: identity.
  # Counterclockwise as displayed, like np.rot90.
  np.testing.assert_allclose(ours[1], np.rot90(x[1], 1), atol=1e-5)
  np.testing.assert_allclose(ours[2], np.rot90(x[2], -1), atol=1e-5)
  np.testing.assert_allclose(
      augment_tf.rotate(tf.constant(x), angles).numpy(), ours, atol=1e-5)
  scales = np.array([1.0, 0.5, 0.8, 1.2, 0.9], np.float32)
  offsets = np.array([[0, 0], [5, 0], [1, 2], [-1, -2], [0.5, 0.25]],
                     np.float32)
  scale_crop = jax.jit(augment.scale_crop)
  ours = np.asarray(scale_crop(x, scales, offsets))
  np.testing.assert_array_equal(ours[0], x[0])  # Scale 1 at 0: identity.
  np.testing.assert_allclose(
      augment_tf.scale_crop(tf.constant(x), scales, offsets).numpy(), ours,
      atol=1e-5)
  # Zooming 2x into a constant image keeps it constant.
  ones = np.ones((1, 8, 8, 1), np.float32)
  zoomed = scale_crop(ones, np.array([0.5], np.float32),
                      np.array([[2.0, 2.0]], np.float32))
  np.testing.assert_allclose(np.asarray(zoomed), ones, atol=1e-6)


def test_brightness_contrast_jitter():
  x = jnp.asarray(_images(batch=2))
  out = augment.adjust_brightness(x, jnp.array([0.1, -0.1]))
  np.testing.assert_allclose(np.asarray(out - x)[:, 0, 0, 0], [0.1, -0.1],
                             atol=1e-6)
  out = augment.adjust_contrast(x, jnp.array([2.0, 0.0]))
  mean = np.asarray(x).mean(axis=(1, 2))
  np.testing.assert_allclose(np.asarray(out).mean(axis=(1, 2)), mean,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(out[1]), np.broadcast_to(
      mean[1], x.shape[1:]), atol=1e-6)
  out = augment.apply_params(x * 0 + 1.0, {'brightness': jnp.full(2, 0.5)},
                             dict(brightness=0.5))
  assert float(out.min()) == 1.0  # Clipped to the 0..1 range.


def _jax_augment(seed, images, config):
  fn = jax.jit(lambda key, x: augment.augment_batch(key, x, config))
  return np.asarray(fn(jax.random.key(seed), images))


def _sample_both(config, batch, size):
  """Parameters drawn by the JAX sampler and the TF sampler."""
  augment_tf = _augment_tf()
  ours = augment.params_to_numpy(jax.jit(
      lambda k: augment.sample_params(k, batch, size, size, config))(
          jax.random.key(3)))
  theirs = {k: v.numpy() for k, v in augment_tf.sample_params(
      np.array([3, 4]), batch, size, size, config).items()}
  return ours, theirs


def test_augment_parameter_distributions_both_implementations():
  n = 20_000
  config = dict(crop_padding=2, flip_lr=True, flip_ud=True,
                rotation_degrees=15.0, brightness=0.2, contrast=0.3,
                scale=(0.6, 0.9))
  for params in _sample_both(config, n, 20):
    counts = np.bincount(params['crop_offset'].ravel(), minlength=5)
    assert len(counts) == 5 and np.all(np.abs(counts - 2 * n / 5) < 400), counts
    for k in ('flip_lr', 'flip_ud'):
      assert params[k].dtype == bool and abs(params[k].mean() - 0.5) < 0.02
    for k, lo, hi in [('angle', -15, 15), ('brightness', -0.2, 0.2),
                      ('contrast', 0.7, 1.3), ('scale', 0.6, 0.9)]:
      v = params[k]
      assert lo <= v.min() and v.max() <= hi, k
      assert abs(v.mean() - (lo + hi) / 2) < 0.02 * (hi - lo), k
      assert abs(v.std() - (hi - lo) / np.sqrt(12)) < 0.02 * (hi - lo), k
    room = 20 * (1 - params['scale'])[:, None]
    assert np.all(params['scale_offset'] >= 0)
    assert np.all(params['scale_offset'] <= room + 1e-4)


def test_augment_batch_distributions_end_to_end():
  tf = _tf()
  augment_tf = _augment_tf()
  n = 4000
  # A bright pixel (1.0) at (4, 3) of 9x9 with a dimmer one (0.5) to its
  # right. A crop with padding 2 at offset (r, c) in 0..4 moves the bright
  # one to (6 - r, 5 - c): uniform over rows 2..6 and columns 1..5. A
  # left-right flip puts the dim pixel on its left instead.
  x = np.zeros((n, 9, 9, 1), np.float32)
  x[:, 4, 3], x[:, 4, 4] = 1.0, 0.5
  config = dict(crop_padding=2, flip_lr=True)
  outs = [_jax_augment(0, x, config),
          augment_tf.augment_batch(tf.constant([5, 6]), tf.constant(x),
                                   config).numpy()]
  for out in outs:
    flat = out.reshape(n, -1)
    bright, dim = flat.argmax(axis=1), np.argmax(flat == 0.5, axis=1)
    assert np.all(flat.max(axis=1) == 1.0) and np.all(flat[np.arange(n), dim]
                                                      == 0.5)
    assert np.all(bright // 9 == dim // 9)
    flipped = (dim % 9) - (bright % 9) == -1
    assert np.all(flipped | ((dim % 9) - (bright % 9) == 1))
    assert abs(flipped.mean() - 0.5) < 0.03
    # Undo the flip to read the crop's column shift.
    cols = np.where(flipped, 8 - bright % 9, bright % 9)
    for coord, lo in [(bright // 9, 2), (cols, 1)]:
      counts = np.bincount(coord, minlength=9)
      assert counts.sum() == counts[lo:lo + 5].sum()
      np.testing.assert_allclose(counts[lo:lo + 5] / n, 0.2, atol=0.03)
    # Per-example randomness: shifts and flips vary within the batch.
    assert len(set(zip(bright.tolist(), flipped.tolist(), strict=True))) == 50
  # Gaussian noise: standard deviation as configured, mean zero, unclipped.
  grey = np.full((64, 16, 16, 1), 0.5, np.float32)
  for out in [_jax_augment(1, grey, dict(noise_std=0.1)),
              augment_tf.augment_batch(tf.constant([1, 2]), tf.constant(grey),
                                       dict(noise_std=0.1)).numpy()]:
    noise = out - 0.5
    assert abs(noise.std() - 0.1) < 0.003 and abs(noise.mean()) < 0.003
    assert noise.min() < -0.3  # Not clipped at 0.5 - 0.5.


# --------------------------------------------------------------- evaluation


@needs_fashion
def test_eval_covers_every_fashion_mnist_test_example_once():
  x, y = ip.load_split('fashion_mnist', 'test')
  info = ip.get_dataset_info('fashion_mnist')
  batches = list(ip.eval_batches(x, y, 384, mean=info.mean, std=info.std,
                                 with_index=True))
  assert len(batches) == ip.num_eval_batches(10_000, 384) == 27
  assert {b['image'].shape for b in batches} == {(384, 28, 28, 1)}
  mask = np.concatenate([b['mask'] for b in batches])
  index = np.concatenate([b['index'] for b in batches])
  assert mask.sum() == 10_000
  np.testing.assert_array_equal(np.sort(index[mask > 0]), np.arange(10_000))
  last = batches[-1]
  real = int(last['mask'].sum())
  assert real == 10_000 - 26 * 384
  assert not last['image'][real:].any() and not last['label'][real:].any()
  np.testing.assert_array_equal(last['label'][:real], y[26 * 384:])
  # Several processes: their slices together cover everything once as well.
  seen = [b['index'][b['mask'] > 0] for p in range(3) for b in ip.eval_batches(
      x, y, 384, process_index=p, process_count=3, with_index=True)]
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)),
                                np.arange(10_000))
  # From a config, normalised like training.
  first = next(ip.create_eval_batches(_input_config()))
  np.testing.assert_array_equal(first['image'], batches[0]['image'])


# ------------------------------------------------------------- tfds builder


def _prepare_local_builder(tmp_path, config_name):
  pytest.importorskip('tensorflow_datasets')
  from input_pipeline import lazy_tf as tf_lib
  tfds = tf_lib.import_tfds()
  tfds.disable_progress_bar()
  importlib.import_module('input_pipeline.sources.tfds_builder')  # Registers it.
  builder = tfds.builder(f'fashion_mnist_local/{config_name}',
                         data_dir=str(tmp_path))
  builder.download_and_prepare()  # Reads the Debian IDX files; no network.
  return tfds, builder


@needs_fashion
def test_tfds_builder_prepares_offline(tmp_path):
  tfds, builder = _prepare_local_builder(tmp_path, 'small')
  data = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
  order = np.argsort(data['index'])
  x, y = ip.load_split('fashion_mnist', 'test')
  np.testing.assert_array_equal(data['image'][order], x[:500])
  np.testing.assert_array_equal(data['label'][order], y[:500])
  # The generic tfds route of `load_split` reads the prepared data.
  images, labels = ip.load_split('fashion_mnist_local/small', 'train',
                                 data_dir=str(tmp_path))
  assert images.shape == (2000, 28, 28, 1) and labels.dtype == np.int32


@pytest.mark.slow
@needs_fashion
def test_tfds_builder_full_offline(tmp_path):
  tfds, builder = _prepare_local_builder(tmp_path, 'full')
  assert builder.info.splits['train'].num_examples == 60_000
  data = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
  x, _ = ip.load_split('fashion_mnist', 'test')
  np.testing.assert_array_equal(data['image'][np.argsort(data['index'])], x)
