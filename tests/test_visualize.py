"""Tests for cnn.visualize: every figure on a tiny model, and the numbers
behind them on hand-built networks whose answer is known exactly."""

from __future__ import annotations

import inspect
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn import plotting, summary
from cnn.common import errors
from cnn.models import base
from cnn.summary import plot as summary_plot
from cnn.training import train
from cnn.visualize import (
  activations,
  backprop,
  common,
  confusion,
  filters,
  kernels,
  receptive_field,
  run,
  saliency,
  shift,
  top_patches,
  workdir,
)
from tests import helpers


@pytest.fixture(scope='module')
def tiny():
  """LeNet-5 of the runlocal config, at initialisation, and 6 images."""
  config = helpers.tiny_config()
  model = train.create_model(config, 10)
  variables = workdir.init_variables(model, config, (28, 28, 1))
  images = np.random.default_rng(0).normal(size=(6, 28, 28, 1)).astype(
      np.float32)
  return model, variables, images


def _written(path: str) -> bool:
  stem = os.path.splitext(path)[0]
  return (os.path.getsize(path) > 1000 and os.path.isfile(stem + '.json')
          and all(os.path.isfile(f'{stem}.{fmt}')
                  for fmt in plotting.VECTOR_FORMATS))


@pytest.fixture
def figures(monkeypatch):
  """{PNG path: Figure} of every figure written through `plotting.save`."""
  written = {}
  save = plotting.save

  def recording(fig, path, data=None, **options):
    written[path] = fig
    return save(fig, path, data, **options)

  monkeypatch.setattr(plotting, 'save', recording)
  return written


def _standard(figures: dict, path: str, panels: bool = True) -> None:
  """The figure standard: PNG, PDF and JSON written; the PNG >= 1,200 px
  wide with several panels (>= 800 with one); no two texts overlapping;
  every text inside the figure (no title cut at the edge)."""
  assert _written(path)
  width = Image.open(path).size[0]
  assert width >= (1200 if panels else 800), (path, width)
  fig = figures[path]
  assert plotting.overlapping_text(fig) == []
  bounds = fig.bbox
  for artist, box in plotting.text_boxes(fig):
    assert (box.x0 >= bounds.x0 - 1 and box.x1 <= bounds.x1 + 1 and
            box.y0 >= bounds.y0 - 1 and box.y1 <= bounds.y1 + 1), (
                path, artist.get_text())


# --- Kernels. ---------------------------------------------------------------


def test_edge_kernel_is_zero_on_a_constant_image():
  out = kernels.apply_kernel(np.full((9, 9, 1), 0.7),
                             kernels.fundamentals.get_kernel('edge'))
  np.testing.assert_allclose(out[1:-1, 1:-1], 0, atol=1e-12)


def test_sobel_x_responds_to_a_vertical_edge_only():
  vertical = np.zeros((9, 9, 1))
  vertical[:, 5:] = 1.0
  horizontal = np.transpose(vertical, (1, 0, 2))
  sobel = lambda name, im: kernels.apply_kernel(
      im, kernels.fundamentals.get_kernel(name))[1:-1, 1:-1, 0]
  x_on_v = sobel('sobel_x', vertical)
  # Columns 4 and 5 straddle the edge; correlation gives -d/dx: -4 there.
  np.testing.assert_allclose(x_on_v[:, 3:5], -4.0)
  assert np.count_nonzero(x_on_v) == 2 * 7
  np.testing.assert_allclose(sobel('sobel_x', horizontal), 0)
  np.testing.assert_allclose(sobel('sobel_y', vertical), 0)


def test_plot_kernels(tmp_path, figures):
  images = np.random.default_rng(1).uniform(size=(2, 12, 12, 1))
  _standard(figures, kernels.plot_kernels(images, str(tmp_path / 'k.png')))


# --- Figures on a tiny LeNet. ----------------------------------------------


def test_filters_find_the_first_conv(tiny, tmp_path, figures):
  model, variables, _ = tiny
  layer, kernel = filters.first_conv_kernel(model, variables, (28, 28, 1))
  assert layer == 'backbone/c1_conv' and kernel.shape == (5, 5, 1, 6)
  tiles = filters.filter_images(kernel)
  assert tiles.shape == (6, 5, 5, 1)
  assert tiles.min() == 0 and np.allclose(tiles.max(axis=(1, 2, 3)), 1)
  signed = filters.signed_filters(kernel)
  assert signed.shape == (6, 5, 5) and np.allclose(
      np.abs(signed).max(axis=(1, 2)), 1)
  _standard(figures, filters.plot_filters(kernel, kernel * 0.5,
                                          str(tmp_path / 'f.png')))
  # Many filters: one mosaic per state.
  many = np.random.default_rng(0).normal(size=(3, 3, 3, 40))
  _standard(figures, filters.plot_filters(many, many, str(tmp_path /
                                                          'f40.png')))


def test_activations_figure(tiny, tmp_path, figures):
  model, variables, images = tiny
  acts = activations.stage_activations(model, variables, images[0])
  assert {k: v.shape for k, v in acts.items()} == {
      'stem': (28, 28, 6), 'stage1': (14, 14, 6), 'stage2': (10, 10, 16),
      'stage3': (5, 5, 16)}
  _standard(figures, activations.plot_activations(
      model, variables, images[0], str(tmp_path / 'a.png'), channels=3))


def test_saliency_confusion_backprop_figures(tiny, tmp_path, figures):
  model, variables, images = tiny
  _standard(figures, saliency.plot_saliency(
      model, variables, images[:2], str(tmp_path / 's.png'), 'stage3',
      class_names=('T-shirt/top',) * 10, labels=np.array([0, 1])))
  probs = confusion.predict_probs(model, variables, images, batch_size=4)
  assert probs.shape == (6, 10)
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  labels = np.arange(6) % 10
  m = confusion.confusion_matrix(labels, probs.argmax(1), 10)
  assert m.sum() == 6
  names = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
           'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
  path = confusion.plot_confusion(probs, labels, images,
                                  str(tmp_path / 'c.png'), names)
  _standard(figures, path)
  # Full class names, not cut ("Pullove", "Ankle b").
  ticks = {t.get_text() for ax in figures[path].axes
           for t in ax.get_xticklabels()}
  assert set(names) <= ticks
  path = backprop.plot_backprop(str(tmp_path / 'b.png'))
  _standard(figures, path)
  texts = [t.get_text() for t in figures[path].findobj(
      plotting.matplotlib.text.Text)]
  assert '1 unit sends ȳ to p' in ' '.join(texts).replace('\n', ' ')
  assert all(t.get_fontsize() >= 8 for t in figures[path].findobj(
      plotting.matplotlib.text.Text) if t.get_text())


def test_receptive_field_and_shift_figures(tiny, tmp_path, figures):
  model, variables, images = tiny
  # LeNet: C1 5, S2 6, C3 14, S4 16 pixels (the accounting's table).
  theory = receptive_field.theoretical_fields(model, (28, 28, 1))
  assert {s: theory[s] for s in ('stem', 'stage1', 'stage2', 'stage3')} == {
      'stem': ((5, 5), (1, 1)), 'stage1': ((6, 6), (2, 2)),
      'stage2': ((14, 14), (2, 2)), 'stage3': ((16, 16), (4, 4))}
  # By hand: 28x28 padded by 2 to 32, so C1 unit u reads u - 2 .. u + 2;
  # S2 unit i reads C1 2i, 2i + 1: 2i - 2 .. 2i + 3; C3 (VALID) unit i
  # reads S2 i .. i + 4: 2i - 2 .. 2i + 11; S4 unit i: 4i - 2 .. 4i + 13.
  geometry = receptive_field.field_geometry(model, variables, (28, 28, 1))
  assert {s: g.start for s, g in geometry.items()} == {
      s: (-2, -2) for s in ('stem', 'stage1', 'stage2', 'stage3')}
  data = receptive_field.measure(model, {'init': variables}, images,
                                 stages=('stem', 'stage2'))
  for stage, rf in (('stem', 5), ('stage2', 14)):
    # Random weights: every pixel of the field gets some gradient, and the
    # theoretical box (placed by the geometry, not fitted) holds it all.
    assert data['init'][stage]['support'] == [rf, rf]
    assert data['init'][stage]['mass_inside'] == pytest.approx(1.0)
    assert data['init'][stage]['sigma_px'] > 0
  _standard(figures, receptive_field.plot_measured(
      data, str(tmp_path / 'r.png')))
  sdata = shift.measure(model, variables, images, max_shift=2)
  assert sdata['stem']['aligned'][0] == 0
  assert sdata['stage3']['field_start'] == -2
  assert len(sdata['consistency']['same_as_unshifted']) == 3
  _standard(figures, shift.plot_shift(sdata, str(tmp_path / 'sh.png')))
  _standard(figures, shift.plot_shift_comparison(
      {'resnet': sdata, 'plain': sdata}, str(tmp_path / 'shc.png')))


def test_erf_is_averaged_over_256_images_and_reports_sigma(tiny, tmp_path,
                                                            figures):
  for fn in (run.write_all, run.compare):
    assert inspect.signature(fn).parameters['erf_images'].default >= 256
  model, variables, _ = tiny
  images = np.random.default_rng(2).normal(size=(256, 28, 28, 1)).astype(
      np.float32)
  path = receptive_field.plot_comparison(
      {'a': (model, variables), 'b': (model, variables)}, images,
      str(tmp_path / 'rc.png'))
  _standard(figures, path)
  with open(str(tmp_path / 'rc.json')) as f:
    data = json.load(f)
  assert data['images'] == 256
  for label in ('a', 'b'):
    for stage in ('stem', 'stage1', 'stage2', 'stage3'):
      d = data[label][stage]
      assert 0 < d['sigma_px'] < 16 and len(d['profile']) > 5
  assert 'σ = ' in figures[path].axes[0].get_title()


def test_gaussian_fit_recovers_sigma():
  yy, xx = np.mgrid[:31, :31]
  erf = 3.0 * np.exp(-((yy - 14.0)**2 + (xx - 16.5)**2) / (2 * 2.5**2))
  fit = receptive_field.fit_gaussian(erf)
  assert fit['sigma_px'] == pytest.approx(2.5, rel=1e-4)
  assert fit['center'] == pytest.approx([14.0, 16.5], abs=1e-4)
  assert fit['r2'] == pytest.approx(1.0)
  radii, profile = receptive_field.radial_profile(erf, fit['center'])
  assert radii[0] == 0 and profile[0] == pytest.approx(1.0)
  assert np.all(np.diff(profile[:8]) < 0)


def test_cost_figure_names_its_units(tmp_path, figures):
  path = summary_plot.plot_summary(summary.summarize('lenet5'),
                                   str(tmp_path / 'c.png'))
  _standard(figures, path)
  title = figures[path].get_suptitle()
  assert 'MFLOPs per image' in title and 'training step' in title


def test_bad_stage_and_index_name_the_fix(tiny):
  model, variables, images = tiny
  with pytest.raises(errors.UserError, match='stage3'):
    saliency.grad_cam(model, variables, images[:1], 'stage9')
  with pytest.raises(errors.UserError, match='0..5'):
    common.check_index(6, len(images))


# --- Receptive fields measured = receptive fields accounted. ----------------


class _OnesStack(nn.Module):
  """VALID convolutions with all-one kernels: (kernel, stride, dilation)."""

  layers: tuple[tuple[int, int, int], ...]

  @nn.compact
  def __call__(self, x):
    for i, (k, s, d) in enumerate(self.layers):
      x = nn.Conv(2, (k, k), strides=s, kernel_dilation=d, padding='VALID',
                  use_bias=False, kernel_init=nn.initializers.ones,
                  name=f'conv{i}')(x)
    return x


@pytest.mark.parametrize('layers,size,rf', [
    (((3, 1, 1),) * 3, 15, 7),                       # 1 + 3 * 2
    (((3, 2, 1), (3, 1, 1), (3, 1, 1)), 23, 11),     # 3 + 2 * 2 + 2 * 2
    (((3, 1, 2), (3, 1, 1), (3, 1, 3)), 27, 13),     # 5, 7, 7 + 2 * 3
])
def test_measured_support_is_the_theoretical_field(layers, size, rf):
  model = _OnesStack(layers)
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)))
  theory = summary.output_receptive_fields(model, (size, size, 1))
  assert theory[0] == (rf, rf)
  x = np.random.default_rng(0).uniform(0.5, 1.0, (2, size, size, 1))
  erf = receptive_field.measure_erf(lambda x: model.apply(variables, x), x)
  assert receptive_field.support_box(erf) == (rf, rf)
  assert np.count_nonzero(erf) == rf * rf  # The field is filled, no holes.


# --- Equivariance. ------------------------------------------------------------


class _ConvThenPool(nn.Module):

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(3, (3, 3), padding='VALID')(x)
    y = nn.Conv(3, (3, 3), padding='VALID')(jnp.tanh(y))
    from cnn import layers  # pylint: disable=g-import-not-at-top
    return {'conv': y, 'pooled': layers.Pool('max')(y)}


def test_conv_stack_is_equivariant_and_stride_two_aliases():
  model = _ConvThenPool()
  x = np.random.default_rng(0).normal(size=(3, 24, 24, 2)).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  fields = summary.output_receptive_fields(model, (24, 24, 2))
  assert fields == {'conv': ((5, 5), (1, 1)), 'pooled': ((6, 6), (2, 2))}
  fn = jax.jit(lambda x: model.apply(variables, x))
  data = shift.shift_errors(fn, x, fields, max_shift=3)
  assert max(data['conv']['aligned']) < 1e-5
  assert data['conv']['unaligned'][1] > 0.1  # Not invariant, equivariant.
  assert data['pooled']['aligned'][2] < 1e-5  # k a multiple of the stride.
  assert data['pooled']['aligned'][1] > 1e-2  # Odd shift: aliasing.
  assert data['conv']['interior'] and data['pooled']['interior']


# --- Grad-CAM. ----------------------------------------------------------------


class _OnePosition(nn.Module):
  """A backbone whose features are its stage1 map at one position (3, 5)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    a = nn.relu(nn.Conv(4, (3, 3), padding='SAME', name='stem_conv')(x))
    return a[:, 3, 5, :], {'stage1': a}


def test_grad_cam_finds_the_position_the_logit_depends_on():
  model = base.Classifier(_OnePosition(), num_classes=3)
  x = np.random.default_rng(0).uniform(size=(2, 8, 10, 1)).astype(np.float32)
  # Positive weights on a positive input: the logit grows with the map.
  variables = jax.tree.map(jnp.abs, model.init(jax.random.key(1), x))
  cam = saliency.grad_cam(model, variables, x, 'stage1', np.array([0, 1]))
  grad_x_act = cam['grad_x_act']
  for n in range(2):
    assert np.unravel_index(grad_x_act[n].argmax(), (8, 10)) == (3, 5)
    assert np.count_nonzero(grad_x_act[n]) <= 1
  # Grad-CAM's channel weights are that position's gradient over h * w.
  _, grads, _ = common.stage_and_gradient(model, variables, jnp.asarray(x),
                                          'stage1', jnp.array([0, 1]))
  np.testing.assert_allclose(cam['weights'], grads[:, 3, 5] / 80, rtol=1e-5)
  assert cam['cam_upsampled'].shape == (2, 8, 10)


# --- The command line. --------------------------------------------------------


def test_summary_plot_and_train_cost(tmp_path, capsys):
  path = str(tmp_path / 'cost.png')
  assert summary.main(['--model=lenet5', f'--plot={path}', '--json',
                       '--train_batch=4']) == 0
  data = json.loads(capsys.readouterr().out)
  assert os.path.getsize(path) > 1000
  assert data['totals']['train_flops'] == 3 * data['totals']['flops']
  memory = data['train_step_memory']
  assert memory['batch_size'] == 4 and memory['temp_bytes'] > 0
  s = summary.summarize('lenet5')
  s.train_memory = memory
  text = summary.format_table(s)
  assert 'training step: about 3 x forward' in text
  assert 'compiled train step (XLA memory_analysis' in text


# --- Top patches. -----------------------------------------------------------


class _OneConv(nn.Module):
  """One 3x3 conv, stride 2, padding 1: unit (i, j) reads input rows
  2i - 1 .. 2i + 1 and columns 2j - 1 .. 2j + 1 (by hand)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    a = nn.relu(nn.Conv(4, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                        name='stem_conv')(x))
    return a.mean((1, 2)), {'stem': a}


def test_top_patches_crop_the_field_of_the_maximal_unit(tmp_path, figures):
  model = base.Classifier(_OneConv(), num_classes=2)
  x = np.random.default_rng(0).uniform(size=(9, 11, 10, 1)).astype(
      np.float32)
  variables = model.init(jax.random.key(0), x)
  field = receptive_field.field_geometry(model, variables, (11, 10, 1))
  assert field == {'stem': receptive_field.Field((3, 3), (2, 2), (-1, -1))}
  data = top_patches.top_patches(model, variables, x, x, units=4, k=3)
  acts = np.asarray(model.apply(variables, x)[1]['stem'])   # [9, 6, 5, 4]
  padded = np.pad(x[..., 0], ((0, 0), (1, 2), (1, 2)), constant_values=-1)
  for unit in data['stem']['units']:
    ch = unit['channel']
    per_image = acts[..., ch].max((1, 2))
    # The top k are the k largest maxima, largest first.
    np.testing.assert_array_equal(unit['images'],
                                  np.argsort(-per_image)[:3])
    np.testing.assert_allclose(unit['values'], np.sort(per_image)[::-1][:3],
                               rtol=1e-6)
    for n, (i, j), box, patch in zip(unit['images'], unit['positions'],
                                     unit['boxes'], unit['crops'],
                                     strict=True):
      assert acts[n, i, j, ch] == per_image[n]
      assert tuple(box) == (2 * i - 1, 2 * j - 1, 2 * i + 2, 2 * j + 2)
      want = padded[n, 2 * i:2 * i + 3, 2 * j:2 * j + 3]  # Pad offset 1.
      outside = want == -1
      np.testing.assert_allclose(patch[..., 0][~outside], want[~outside])
      np.testing.assert_allclose(patch[outside],
                                 np.broadcast_to(top_patches.PAD_RGB,
                                                 patch[outside].shape))
  _standard(figures, top_patches.plot_top_patches(
      model, variables, x, str(tmp_path / 't.png'), x, units=4, k=3))


class _WideField(nn.Module):
  """A 7x7 conv, padding 3, on 4x4 images: every unit's field [i - 3,
  i + 4) covers the whole image, so no support shows where it starts."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    a = nn.Conv(2, (7, 7), padding=((3, 3), (3, 3)), name='stem_conv')(x)
    return a.mean((1, 2)), {'stem': a}


def test_field_start_of_fields_larger_than_the_image():
  model = base.Classifier(_WideField(), num_classes=2)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
  # Probed again on a larger image, where the field ends inside.
  assert receptive_field.field_geometry(model, variables, (4, 4, 1)) == {
      'stem': receptive_field.Field((7, 7), (1, 1), (-3, -3))}


def test_top_patches_figure_on_lenet(tiny, tmp_path, figures):
  model, variables, images = tiny
  path = top_patches.plot_top_patches(model, variables, images,
                                      str(tmp_path / 'tp.png'), units=3, k=2)
  _standard(figures, path)
  with open(str(tmp_path / 'tp.json')) as f:
    data = json.load(f)
  assert data['stage3']['field'] == [[16, 16], [4, 4], [-2, -2]]
  assert len(data['stage2']['units']) == 3


def test_inspect_without_checkpoint_is_one_error_line(tmp_path):
  result = helpers.run_main([f'--config={helpers.TINY_CONFIG}',
                             f'--workdir={tmp_path}', '--mode=inspect'],
                            timeout=120)
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines()
           if line.startswith('error:')]
  assert len(lines) == 1 and 'No checkpoint' in lines[0]
  assert 'Traceback' not in result.stderr


class _StridedShortcut(nn.Module):
  """An option-A shortcut (x[:, ::2, ::2]) added to a strided conv."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(1, (3, 3), strides=2, padding=((1, 1), (1, 1)))(x)
    y = y + x[:, ::2, ::2, :]
    return nn.Conv(1, (3, 3), padding='VALID')(y)


def test_strided_slice_shortcut_keeps_the_jump():
  # 3 after the strided conv (jump 2), then + (3 - 1) * 2 = 7.
  fields = summary.output_receptive_fields(_StridedShortcut(), (12, 12, 1))
  assert fields == ((7, 7), (2, 2))
