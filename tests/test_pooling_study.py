"""The pooling study (issue #36, study 2): Zhang's blur pool against a
hand computation and a numpy reference, its size accounting, the shift
consistency of a tiny trained member, the figure and the sweep config."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import image as mpl_image

from cnn import layers, plotting, summary
from cnn.common import errors
from cnn.experiments import shift_consistency, sweep
from cnn.training import metrics
from configs import pooling_fmnist
from tests import helpers


def _pool(x, kind='blur', **kwargs):
  return np.asarray(layers.Pool(kind, **kwargs).apply({}, jnp.asarray(x)))


# --- The blur pool. -----------------------------------------------------------


def test_blur_pool_of_an_impulse_by_hand():
  # One bright pixel at (1, 1) of a 4x4 map. The stride-1 2x2 max spreads
  # it over the 3x3 max map's [0:2, 0:2]; per axis that is v = [1, 1, 0],
  # reflect-padded [v1, v0, v1, v2, v1] = [1, 1, 1, 0, 1]; [1, 2, 1] / 4 at
  # positions 0 and 2: (1 + 2 + 1) / 4 = 1 and (1 + 0 + 1) / 4 = 0.5. The
  # 2-D blur is separable: the outer product of [1, 0.5] with itself.
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[0, 1, 1, 0] = 1.0
  np.testing.assert_allclose(_pool(x)[0, :, :, 0], [[1, 0.5], [0.5, 0.25]])
  assert _pool(x, 'max')[0, :, :, 0].tolist() == [[1, 0], [0, 0]]
  # Moved one pixel right: the max pool's output jumps to the next unit,
  # the blur pool's moves by half a unit: [0, 1, 1] -> [1, 0, 1, 1, 1] ->
  # [0.5, 1] along the columns.
  moved = np.roll(x, 1, axis=2)
  np.testing.assert_allclose(_pool(moved)[0, :, :, 0],
                             [[0.5, 1], [0.25, 0.5]])
  assert _pool(moved, 'max')[0, :, :, 0].tolist() == [[0, 1], [0, 0]]


def _numpy_blur_pool(x, window, strides, taps):
  """antialiased-cnns' MaxBlurPool in loops: max at stride 1 (VALID),
  reflect padding [(taps - 1) // 2, taps // 2], the outer-product binomial
  filter per channel at `strides`."""
  n, h, w, c = x.shape
  (wh, ww), (sh, sw) = window, strides
  m = np.full((n, h - wh + 1, w - ww + 1, c), -np.inf)
  for i in range(wh):
    for j in range(ww):
      m = np.maximum(m, x[:, i:i + h - wh + 1, j:j + w - ww + 1])
  before, after = (taps - 1) // 2, taps // 2
  m = np.pad(m, ((0, 0), (before, after), (before, after), (0, 0)),
             mode='reflect')
  row = np.array({1: [1], 2: [1, 1], 3: [1, 2, 1], 4: [1, 3, 3, 1],
                  5: [1, 4, 6, 4, 1]}[taps], float)  # antialiased-cnns'.
  kernel = np.outer(row, row) / row.sum() ** 2
  oh = (m.shape[1] - taps) // sh + 1
  ow = (m.shape[2] - taps) // sw + 1
  out = np.zeros((n, oh, ow, c))
  for a in range(oh):
    for b in range(ow):
      patch = m[:, a * sh:a * sh + taps, b * sw:b * sw + taps]
      out[:, a, b] = np.einsum('nijc,ij->nc', patch, kernel)
  return out


@pytest.mark.parametrize('size,window,strides,taps', [
    ((8, 8), (2, 2), (2, 2), 3),     # LeNet-5's S2 on an even map.
    ((7, 9), (2, 2), (2, 2), 3),     # odd sizes.
    ((9, 9), (3, 3), (2, 2), 4),     # even taps: padding 1 before, 2 after.
    ((6, 8), (2, 2), (3, 2), 5),
])
def test_blur_pool_matches_a_numpy_reference(size, window, strides, taps):
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  got = _pool(x, window=window, strides=strides, blur_size=taps)
  want = _numpy_blur_pool(x.astype(np.float64), window, strides, taps)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size', [28, 27, 10, 9])
def test_blur_pool_keeps_the_max_pools_output_size(size):
  x = np.ones((1, size, size, 2), np.float32)
  assert _pool(x).shape == _pool(x, 'max').shape == (1, size // 2,
                                                     size // 2, 2)
  np.testing.assert_allclose(_pool(x), 1.0)  # A normalised blur.


def test_binomial_filters_and_bad_kinds():
  np.testing.assert_allclose(layers.binomial_filter(3), [0.25, 0.5, 0.25])
  np.testing.assert_allclose(layers.binomial_filter(5),
                             np.array([1, 4, 6, 4, 1]) / 16)
  with pytest.raises(errors.UserError, match='1..7'):
    layers.binomial_filter(9)
  with pytest.raises(errors.UserError, match="'blur'"):
    _pool(np.ones((1, 4, 4, 1), np.float32), 'median')


def test_size_accounting_of_lenet_with_each_pool():
  max_pool = summary.summarize('lenet5')
  blur = summary.summarize('lenet5', pool='blur')
  # No parameters and the max pool's shapes; by hand, S2 (28x28x6 in):
  # the stride-1 max reads 27*27*6 * 4 = 17,496, the blur 14*14*6 * 9 =
  # 10,584; S4 (10x10x16): 9*9*16 * 4 + 5*5*16 * 9 = 8,784. Fields: C1's 5,
  # +1 (max at jump 1) +2 (3 taps at jump 1) = 8 at S2; C3 makes 8 + 4*2 =
  # 16, +2 (max at jump 2) +4 (blur at jump 2) = 22 at S4.
  assert blur.totals['params'] == max_pool.totals['params'] == 61_706
  assert blur.layer('backbone/s2').connections == 17_496 + 10_584
  assert blur.layer('backbone/s4').connections == 5_184 + 3_600
  assert blur.layer('backbone/s2').rf == (8, 8)
  assert blur.layer('backbone/s4').rf == (22, 22)
  assert max_pool.layer('backbone/s4').rf == (16, 16)
  for name, shape in (('backbone/s2', (14, 14, 6)),
                      ('backbone/s4', (5, 5, 16))):
    row = blur.layer(name)
    assert row.type == 'Pool' and row.pool == 'blur'
    assert row.output_shape == shape
    assert row.jump == max_pool.layer(name).jump


# --- Shift consistency of trained members. ----------------------------------


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """A sweep workdir: one LeNet-5 with blur pools and translations trained
  4 steps on 128 images (300 test images), and one member never run."""
  workdir = str(tmp_path_factory.mktemp('pooling') / 'sweep')
  base = helpers.tiny_config(**{
      'input.train_subset': 128, 'input.test_subset': 300,
      'input.augment.flip_lr': False, 'num_train_steps': 4,
      'eval_on_train': True})
  members = sweep.members_of(
      [{'model.pool': 'blur', 'input.augment.crop_padding': 2, 'seed': 0},
       {'model.pool': 'max', 'input.augment.crop_padding': 0, 'seed': 0}],
      pooling_fmnist.member_name)
  sweep.write_plan(workdir, base, 'tiny_pooling', members)
  outcome = sweep.run_local(base, members[:1], workdir)
  assert outcome.completed == ['blur-shift2-seed0']
  return workdir


def test_measure_sweep_writes_each_completed_member(tiny_sweep):
  written = shift_consistency.measure_sweep(tiny_sweep, max_shift=3,
                                            map_images=40)
  member = os.path.join(tiny_sweep, 'blur-shift2-seed0')
  assert written == [os.path.join(member, shift_consistency.RESULT_FILE)]
  with open(written[0]) as f:
    data = json.load(f)
  assert data['pool'] == 'blur' and data['crop_padding'] == 2
  assert data['num_images'] == 300 and data['map_images'] == 40
  assert data['step'] == 4 and data['shifts'] == [0, 1, 2, 3]
  # The unshifted predictions are the trainer's last evaluation.
  last = metrics.read_metrics(member)[-1]
  assert data['test_accuracy'] == pytest.approx(last['test_accuracy'])
  same = data['consistency']['same_as_unshifted']
  assert same[0] == 1.0 and all(0 <= v <= 1 for v in same)
  always = data['consistency']['same_for_all_up_to']
  assert all(a <= s + 1e-9 for a, s in zip(always, same, strict=True))
  assert np.all(np.diff(always) <= 1e-9)  # unchanged for 0..k: shrinks.
  # Mean of the two directions.
  right, down = (data['directions'][d]['consistency']['same_as_unshifted']
                 for d in ('right', 'down'))
  np.testing.assert_allclose(same, (np.array(right) + np.array(down)) / 2,
                             atol=1e-6)
  # S2 and S4 halve the maps: LeNet-5's pooled stages.
  assert data['subsampled_stages'] == ['stage1', 'stage3']
  assert data['stages']['stage1']['jump'] == [2, 2]
  stem = data['stages']['stem']
  assert stem['unaligned'][0] == 0 and stem['unaligned'][1] > 0
  assert max(stem['aligned']) < 1e-4  # a convolution is equivariant.
  # Measured once: a rerun leaves the file.
  assert shift_consistency.measure_sweep(tiny_sweep, max_shift=3,
                                         map_images=40) == []


def test_measure_sweep_needs_a_sweep(tmp_path):
  with pytest.raises(errors.UserError, match='sweep.json'):
    shift_consistency.measure_sweep(str(tmp_path))


# --- The figure. --------------------------------------------------------------


def _fake_results(directory) -> None:
  """shift_consistency.json of 4 pools x 2 translations x 3 seeds: the
  consistency at k is 1 - slope * k, steeper for max pooling and without
  translations; seed s adds 0.01 * s."""
  slopes = {'max': 0.08, 'avg': 0.06, 'strided': 0.07, 'blur': 0.04}
  for pool, slope in slopes.items():
    for padding in (0, 2):
      for seed in (0, 1, 2):
        name = pooling_fmnist.member_name({
            'model.pool': pool, 'input.augment.crop_padding': padding,
            'seed': seed})
        k = np.arange(9)
        same = 1 - slope * k / (2 if padding else 1) + 0.01 * seed * (k > 0)
        os.makedirs(os.path.join(directory, name))
        with open(os.path.join(directory, name,
                               shift_consistency.RESULT_FILE), 'w') as f:
          json.dump(dict(model_name='lenet5', pool=pool,
                         crop_padding=padding, seed=seed,
                         shifts=k.tolist(),
                         consistency=dict(same_as_unshifted=same.tolist())),
                    f)


def test_shift_consistency_figure_meets_the_standard(tmp_path):
  _fake_results(tmp_path / 'study')
  path = tmp_path / 'shift_consistency.png'
  fig = shift_consistency.shift_consistency_figure(str(tmp_path / 'study'),
                                                   str(path))
  assert mpl_image.imread(path).shape[1] >= 1200  # two panels.
  assert plotting.overlapping_text(fig) == []
  assert plotting.text_outside(fig) == []
  data = json.loads((tmp_path / 'shift_consistency.json').read_text())
  curve = data['panels']['without translation augmentation']['max pooling']
  # k = 1: 100 * (1 - 0.08 + 0.01 * s) for s = 0, 1, 2: mean 93, std 1.
  assert curve['n'] == 3
  assert curve['mean'][1] == pytest.approx(93.0)
  assert curve['std'][1] == pytest.approx(1.0)
  shifted = data['panels']['with random translation (±2 px)']
  assert shifted['blur pooling (max + [1, 2, 1] blur)']['mean'][8] == (
      pytest.approx(100 * (1 - 0.04 * 4 + 0.01)))
  texts = {t.get_text() for t, _ in plotting.text_boxes(fig)}
  assert {'max pooling', 'average pooling', 'strided 2×2 convolution',
          'band: ± 1 std over n = 3 seeds'} <= texts


# --- The sweep config. --------------------------------------------------------


def test_pooling_config_sweeps_pools_translations_and_seeds():
  base = pooling_fmnist.get_config()
  members = sweep.members_of(pooling_fmnist.get_sweep(),
                             pooling_fmnist.member_name)
  assert len(members) == 4 * 2 * 3
  assert members[0].name == 'max-noshift-seed0'
  assert 'blur-shift2-seed2' in {m.name for m in members}
  configs = [sweep.member_config(base, m) for m in members]
  assert {c.model.pool for c in configs} == {'max', 'avg', 'strided', 'blur'}
  assert {c.input.augment.crop_padding for c in configs} == {0, 2}
  for c in configs:
    assert c.model_name == 'lenet5' and not c.input.augment.flip_lr
    assert c.input.train_subset == 5_000 and c.input.test_subset == 0
    assert c.eval_on_train and c.eval_subset == 1_000
    assert c.eval_every_epochs == 1.0
  tiny = sweep.members_of(pooling_fmnist.get_sweep('runlocal'),
                          pooling_fmnist.member_name)
  assert len(tiny) == 8 and {m.overrides['seed'] for m in tiny} == {0}
  assert pooling_fmnist.get_config('runlocal').num_epochs == 2
