"""The weight-sharing study: LeNet-5's three connectivities counted by hand,
the pixel permutation of the input pipeline, pixel correlation on hand-made
images, selection on validation, and the study's figures and table held to
the figure standard (tiny hand-made studies; no training, seconds)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import image as mpl_image

import input_pipeline as ip
from cnn import plotting, summary
from cnn.common import errors
from cnn.experiments import analysis, sweep, weight_sharing
from cnn.models import lenet, registry
from configs import default, weight_sharing_fmnist

# ---------------------------------------------------------------- LeNet-5

# (connectivity, batch_norm): (weights, multiply-adds, connections), by hand
# in cnn/models/lenet.py's docstring. F5 + F6 + head: 59,134 weights and
# 58,920 multiply-adds in all; pooling reads S2 + S4 = 4,704 + 1,600.
SIZES = {
    ('conv', False): (156 + 2_416 + 59_134, 117_600 + 240_000 + 58_920),
    ('local', False): (784 * 156 + 100 * 2_416 + 59_134,
                       117_600 + 240_000 + 58_920),
    ('dense', False): (784 * 4_704 + 4_704 + 1_176 * 1_600 + 1_600 + 59_134,
                       784 * 4_704 + 1_176 * 1_600 + 58_920),
    # Batch norm: no C1/C3 biases, 2 x (6 + 16) scale/shift instead.
    ('conv', True): (61_706 - 22 + 44, 416_520),
    ('local', True): (423_038 - 784 * 6 - 100 * 16 + 44, 416_520),
    ('dense', True): (5_634_974 - 4_704 - 1_600 + 44, 5_628_456),
}


@pytest.mark.parametrize('connectivity,batch_norm', SIZES)
def test_lenet_connectivity_sizes_by_hand(connectivity, batch_norm):
  params, macs = SIZES[connectivity, batch_norm]
  s = summary.summarize('lenet5', (28, 28, 1), 10, connectivity=connectivity,
                        batch_norm=batch_norm)
  assert s.totals['params'] == params
  assert s.totals['macs'] == macs
  assert s.totals['connections'] == macs + 4_704 + 1_600
  # The totals the docstring states.
  if not batch_norm:
    assert params == {'conv': 61_706, 'local': 423_038,
                      'dense': 5_634_974}[connectivity]
  weighted = {r.name.split('/')[-1]: r for r in s.rows
              if r.type in ('Conv', 'LocallyConnected', 'Dense')}
  kind = {'conv': 'Conv', 'local': 'LocallyConnected', 'dense': 'Dense'}
  for layer, units in (('c1', 28 * 28 * 6), ('c3', 10 * 10 * 16)):
    row = weighted[f'{layer}_{connectivity}']
    assert row.type == kind[connectivity] and row.units == units


def _model(connectivity, **options):
  return registry.create_model('lenet5', num_classes=10,
                               connectivity=connectivity, **options)


IMAGES = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)


def _shapes(model):
  """(variables, logits, out) as shapes: traced, never compiled or run."""
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), IMAGES)
  logits, out = jax.eval_shape(model.apply, variables, IMAGES)
  return variables, logits.shape, {k: v.shape for k, v in out.items()}


def _random(variables, seed=0):
  """Variables of these shapes from numpy (initialising through JAX would
  compile a random-number program per shape: seconds on 2 cores)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(
      0.2 * rng.standard_normal(s.shape), s.dtype), variables)


def test_lenet_default_is_the_paper_network():
  assert registry.backbone_options('lenet5')['connectivity'] == 'conv'
  variables, _, _ = _shapes(registry.create_model('lenet5', num_classes=10))
  assert set(variables['params']['backbone']) == {'c1_conv', 'c3_conv', 'f5',
                                                  'f6'}
  assert summary.summarize('lenet5').totals['params'] == 61_706


def test_every_connectivity_keeps_the_maps_and_stage_names():
  _, logits, maps = _shapes(_model('conv'))
  assert maps == {'stem': (2, 28, 28, 6), 'stage1': (2, 14, 14, 6),
                  'stage2': (2, 10, 10, 16), 'stage3': (2, 5, 5, 16),
                  'stage4': (2, 120), 'stage5': (2, 84),
                  'pre_logits': (2, 84), 'logits': (2, 10)}
  for connectivity in ('local', 'dense'):
    variables, other_logits, other_maps = _shapes(_model(connectivity))
    assert (other_logits, other_maps) == (logits, maps)
    assert set(variables['params']['backbone']) == {
        f'c1_{connectivity}', f'c3_{connectivity}', 'f5', 'f6'}


def test_local_and_dense_hold_the_conv_net_as_a_special_case():
  """Given the CNN's weights (repeated per position; the dense matrix of
  the convolution), the locally connected and fully connected networks
  compute the CNN's logits: the same windows, maps and layout, only the
  sharing and locality differ."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=IMAGES.shape),
                  jnp.float32)
  conv_model = _model('conv')
  conv_vars = _random(_shapes(conv_model)[0])
  want = conv_model.apply(conv_vars, x)[0]
  params = conv_vars['params']['backbone']
  shared = {name: params[name] for name in ('f5', 'f6')}

  local = {}
  for layer, (h, w) in (('c1', (28, 28)), ('c3', (10, 10))):
    kernel, bias = params[f'{layer}_conv']['kernel'], params[
        f'{layer}_conv']['bias']
    k = kernel.reshape(1, 1, -1, kernel.shape[-1])  # offsets major.
    local[f'{layer}_local'] = {
        'kernel': jnp.broadcast_to(k, (h, w, *k.shape[2:])),
        'bias': jnp.broadcast_to(bias, (h, w, bias.shape[0]))}
  got = _model('local').apply({'params': {
      'backbone': {**local, **shared}, 'head': conv_vars['params']['head']}},
      x)[0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  dense = {}
  # C1 sees the unpadded 28x28 image: the convolution of the zero-padded
  # one is SAME padding; C3's input is the 14x14x6 map, VALID.
  for layer, in_shape, padding in (('c1', (28, 28, 1), 'SAME'),
                                   ('c3', (14, 14, 6), 'VALID')):
    kernel, bias = params[f'{layer}_conv']['kernel'], params[
        f'{layer}_conv']['bias']

    def conv(flat, kernel=kernel, in_shape=in_shape, padding=padding):
      y = jax.lax.conv_general_dilated(
          flat.reshape(1, *in_shape), kernel, (1, 1), padding,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      return y.reshape(-1)

    size = int(np.prod(in_shape))
    matrix = jax.jacfwd(conv)(jnp.zeros(size))  # [out units, in units].
    dense[f'{layer}_dense'] = {
        'kernel': matrix.T,
        'bias': jnp.tile(bias, matrix.shape[0] // bias.shape[0])}
  got = _model('dense').apply({'params': {
      'backbone': {**dense, **shared}, 'head': conv_vars['params']['head']}},
      x)[0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_strided_pool_is_a_learned_2x2_convolution():
  variables, logits, maps = _shapes(_model('conv', pool='strided'))
  backbone = variables['params']['backbone']
  assert backbone['s2_conv']['kernel'].shape == (2, 2, 6, 6)
  assert backbone['s4_conv']['kernel'].shape == (2, 2, 16, 16)
  assert _shapes(_model('conv'))[1:] == (logits, maps)
  # 6 x 24 + 6 and 16 x 64 + 16 weights more than max pooling.
  assert summary.summarize('lenet5', pool='strided').totals['params'] == (
      61_706 + 150 + 1_040)
  # Other kinds go to layers.Pool as they are.
  assert _shapes(_model('conv', pool='avg'))[1:] == (logits, maps)


def test_unknown_connectivity_says_the_valid_ones():
  with pytest.raises(errors.UserError, match="'conv', 'local', 'dense'"):
    _shapes(_model('shared'))


# ------------------------------------------------------ the pipeline


def _input_config(**overrides):
  config = dict(default.get_config().input.to_dict(),
                dataset='fashion_mnist', batch_size=50, eval_batch_size=100,
                train_subset=200, test_subset=100,
                augment=ip.default_augment_config())
  config.update(overrides)
  return config


def _eval_images(config, split):
  return np.concatenate([b['image'][:int(b['mask'].sum())] if 'mask' in b
                         else b['image']
                         for b in ip.create_eval_batches(config, split=split)])


@pytest.mark.parametrize('split', ['train', 'test'])
def test_permute_pixels_is_one_fixed_permutation_of_every_split(split):
  natural = _eval_images(_input_config(), split)
  permuted = _eval_images(_input_config(permute_pixels=7), split)
  # The same permutation (the one weight_sharing.permute_pixels draws) on
  # the train and the test split; normalisation is per channel, so it
  # commutes with moving pixels.
  np.testing.assert_array_equal(permuted,
                                weight_sharing.permute_pixels(natural, 7))
  assert not np.array_equal(permuted, natural)
  # A real permutation: every image keeps its pixel values.
  np.testing.assert_array_equal(np.sort(permuted.reshape(len(permuted), -1)),
                                np.sort(natural.reshape(len(natural), -1)))
  # -1 leaves the images as they are stored.
  raw, _ = ip.load_split('fashion_mnist', split,
                         subset=200 if split == 'train' else 100)
  info = ip.get_input_info(_input_config())
  np.testing.assert_allclose(
      natural, (raw / 255.0 - info.mean[0]) / info.std[0], atol=1e-5)


@pytest.mark.parametrize('pipeline', ['device', 'tfdata'])
def test_both_train_pipelines_see_the_permuted_images(pipeline):
  def first_batch(**overrides):
    source = ip.create_train_source(
        _input_config(pipeline=pipeline, **overrides), seed=3)
    return next(source.iterator(0))
  natural, permuted = first_batch(), first_batch(permute_pixels=0)
  np.testing.assert_array_equal(permuted['label'], natural['label'])
  np.testing.assert_allclose(
      permuted['image'], weight_sharing.permute_pixels(natural['image'], 0),
      atol=1e-6)


def test_permute_pixels_of_streamed_data_is_refused():
  config = _input_config(dataset='folder:/nonexistent', permute_pixels=0)
  with pytest.raises(ip.InputConfigError, match='held in memory'):
    ip.get_input_info(config)


# -------------------------------------------------------- correlation


def test_pixel_correlation_of_a_hand_made_strip():
  # Pixels (a, a, 1 - a) in a row: neighbours (0, 1) correlate +1 and
  # (1, 2) -1 (distance 1: mean 0); (0, 2) at distance 2 correlate -1.
  images = np.array([[[0, 0, 1]], [[1, 1, 0]], [[1, 1, 0]]], np.uint8)
  distance, corr = weight_sharing.pixel_correlation(images, 2)
  assert distance.tolist() == [1, 2]
  np.testing.assert_allclose(corr, [0.0, -1.0], atol=1e-12)


def test_pixel_correlation_bins_the_diagonal_and_skips_constant_pixels():
  # [[a, b], [b, a]] over the four (a, b) of {0, 1}^2: a and b uncorrelated.
  # Distance 1: four side pairs (a, b) at 0 and, rounded, the two diagonal
  # pairs (a, a) and (b, b) at +1: 2/6.
  ab = [(0, 0), (0, 1), (1, 0), (1, 1)]
  images = np.array([[[a, b], [b, a]] for a, b in ab], float)[..., None]
  distance, corr = weight_sharing.pixel_correlation(images)
  assert distance.tolist() == [1]  # the diagonal, sqrt(2), rounds to 1.
  assert corr[0] == pytest.approx(1 / 3)
  # A constant third column has no correlation: left out, and a distance
  # with only such pairs is NaN.
  wide = np.concatenate([images[:, :, :1], images[:, :, 1:],
                         np.full((4, 2, 1, 1), 5.0)], axis=2)
  distance, corr = weight_sharing.pixel_correlation(wide)
  assert distance.tolist() == [1, 2] and corr[0] == pytest.approx(1 / 3)
  assert np.isnan(corr[1])  # only pairs with the constant column.
  constant = np.full((3, 1, 3), 2.0)
  assert np.isnan(weight_sharing.pixel_correlation(constant, 2)[1]).all()


def test_permuted_images_keep_only_the_image_wide_correlation():
  images, _ = ip.load_split('fashion_mnist', 'train', subset=300)
  _, natural = weight_sharing.pixel_correlation(images, 5)
  _, permuted = weight_sharing.pixel_correlation(
      weight_sharing.permute_pixels(images, 0), 5)
  average = weight_sharing.image_wide_correlation(images)
  assert natural[0] > average + 0.2  # neighbours go together...
  assert np.all(np.diff(natural) < 0)  # ...less so further apart;
  assert abs(permuted[0] - average) < 0.05  # permuted: no structure left.


# ---------------------------------------------------------- selection


def _row(connectivity, permute, lr, seed, validation, test, status=
         'completed'):
  return {'member': f'{connectivity}-{permute}-lr{lr:g}-seed{seed}',
          'status': status, 'model_name': 'lenet5', 'seed': seed,
          'model.connectivity': connectivity, 'input.permute_pixels': permute,
          'optimizer.learning_rate': lr,
          'params': {'dense': 5_634_974, 'local': 423_038,
                     'conv': 61_706}[connectivity],
          'macs': {'dense': 5_628_456}.get(connectivity, 416_520),
          'final_validation_error': validation, 'final_test_error': test}


def test_select_on_validation_picks_the_lowest_mean_over_seeds():
  rows = [_row('conv', -1, 1e-3, s, v, 0.5) for s, v in enumerate(
      (0.20, 0.22))]
  rows += [_row('conv', -1, 3e-3, s, v, 0.9) for s, v in enumerate(
      (0.10, 0.30))]  # mean 0.20 < 0.21.
  rows += [_row('conv', 0, 1e-3, 0, 0.4, 0.5),
           _row('conv', 0, 3e-3, 0, 0.1, 0.5),
           _row('conv', 0, 3e-3, 1, '', 0.5, status='diverged'),
           _row('conv', 0, 1e-3, 1, 0.0, 0.0, status='failed')]
  chosen = weight_sharing.select_on_validation(
      rows, 'optimizer.learning_rate',
      ('model.connectivity', 'input.permute_pixels'))
  natural, permuted = chosen['conv', -1], chosen['conv', 0]
  assert natural.value == 3e-3
  assert natural.validation_error == pytest.approx(0.20)
  assert natural.candidates == pytest.approx({1e-3: 0.21, 3e-3: 0.20})
  assert [r['seed'] for r in natural.rows] == [0, 1]
  # A learning rate that diverged for a seed is no choice; failed members
  # do not count.
  assert permuted.value == 1e-3 and permuted.candidates == {1e-3: 0.4}
  by_network = weight_sharing.select_on_validation(
      rows[:4], 'optimizer.learning_rate', 'model.connectivity')
  assert list(by_network) == [('conv',)]


def test_select_on_validation_needs_a_validation_split():
  rows = [_row('conv', -1, 1e-3, 0, '', 0.2)]
  with pytest.raises(errors.UserError, match='validation_per_class'):
    weight_sharing.select_on_validation(rows, 'optimizer.learning_rate',
                                        'model.connectivity')


def weight_sharing_study() -> analysis.Study:
  """The three networks x natural/permuted x two learning rates x 3 seeds:
  the CNN best on natural pixels and worst on permuted ones."""
  test_error = {('dense', -1): 0.16, ('dense', 0): 0.16,
                ('local', -1): 0.15, ('local', 0): 0.18,
                ('conv', -1): 0.11, ('conv', 0): 0.22}
  rows = []
  for seed in range(3):
    for (connectivity, permute), error in test_error.items():
      for lr in (1e-3, 3e-3):
        # 3e-3 validates better for the CNN on natural pixels only.
        good = (lr == 3e-3) == (connectivity == 'conv' and permute < 0)
        rows.append(_row(connectivity, permute, lr, seed,
                         error + (0 if good else 0.05) + 0.005 * seed,
                         error + (0 if good else 0.05) + 0.01 * seed))
  return analysis.Study('fake', rows, [], {}, {}, {})


def test_weight_sharing_figure_meets_the_standard(tmp_path):
  path = tmp_path / 'weight_sharing.png'
  fig = weight_sharing.weight_sharing_figure(weight_sharing_study(),
                                             str(path))
  assert mpl_image.imread(path).shape[1] >= 800
  assert plotting.overlapping_text(fig) == []
  assert plotting.text_outside(fig) == []
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      f'weight_sharing.{ext}'
      for ext in ('json', 'png', *plotting.VECTOR_FORMATS))
  data = json.loads((tmp_path / 'weight_sharing.json').read_text())
  conv = data['networks']['convolutional (CNN)']
  assert conv['params'] == 61_706
  assert conv['natural']['learning_rate'] == 3e-3
  assert conv['permuted']['learning_rate'] == 1e-3
  assert conv['natural']['values'] == pytest.approx([11, 12, 13])
  assert conv['natural']['half95'] == pytest.approx(4.302652729911275
                                                    / np.sqrt(3))
  assert list(data['networks']) == ['fully connected (MLP)',
                                    'locally connected',
                                    'convolutional (CNN)']
  texts = [t.get_text() for t, _ in plotting.text_boxes(fig)]
  assert any('5,634,974 weights' in t for t in texts)
  assert 'mean ± 95 % interval, n = 3 seeds' in texts


def test_weight_sharing_table():
  table = weight_sharing.weight_sharing_table(weight_sharing_study())
  lines = table.splitlines()
  assert len(lines) == 2 + 3
  assert lines[2].startswith('| fully connected (MLP) | 5,634,974 | '
                             '5,628,456 | 0.001 / 0.001 | 17.00 ± 1.00 (3) |')
  assert lines[4] == ('| convolutional (CNN) | 61,706 | 416,520 | 0.003 / '
                      '0.001 | 12.00 ± 1.00 (3) | 23.00 ± 1.00 (3) |')


def test_pixel_correlation_figure_meets_the_standard(tmp_path):
  # Smooth random images: neighbours correlate.
  noise = np.random.default_rng(0).normal(size=(40, 12, 12))
  smooth = noise + np.roll(noise, 1, 1) + np.roll(noise, 1, 2)
  images = np.clip(60 * smooth + 128, 0, 255).astype(np.uint8)[..., None]
  path = tmp_path / 'pixel_correlation.png'
  fig = weight_sharing.pixel_correlation_figure(images, str(path))
  assert mpl_image.imread(path).shape[1] >= 800
  assert plotting.overlapping_text(fig) == []
  assert plotting.text_outside(fig) == []
  data = json.loads((tmp_path / 'pixel_correlation.json').read_text())
  assert data['distance'][0] == 1 and data['n_images'] == 40
  assert data['natural'][0] > data['image_wide_mean'] + 0.2


# -------------------------------------------------------------- config


def test_config_sweeps_connectivity_pixels_and_learning_rate():
  base = weight_sharing_fmnist.get_config()
  members = sweep.members_of(weight_sharing_fmnist.get_sweep(),
                             weight_sharing_fmnist.member_name)
  assert len(members) == 3 * 2 * 2 * 3
  names = {m.name for m in members}
  assert {'conv-natural-lr0.003-seed0', 'dense-permuted-lr0.001-seed2',
          'local-natural-lr0.001-seed1'} <= names
  assert base.input.validation_per_class == 100
  assert base.input.train_subset == base.input.test_subset == 5_000
  assert not base.input.augment.flip_lr and not base.model.batch_norm
  assert base.optimizer.name == 'adamw' and base.eval_on_train
  configs = [sweep.member_config(base, m) for m in members]
  assert {c.model.connectivity for c in configs} == set(
      lenet.CONNECTIVITIES)
  assert {c.input.permute_pixels for c in configs} == {-1, 0}
  tiny = sweep.members_of(weight_sharing_fmnist.get_sweep('runlocal'),
                          weight_sharing_fmnist.member_name)
  assert len(tiny) == 12 and {m.overrides['seed'] for m in tiny} == {0}
