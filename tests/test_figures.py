"""The figure standard (`cnn.plotting`) and every figure function held to it:
readable width, no overlapping or cut-off text, PNG + PDF + the numbers
drawn as JSON. Tiny hand-made studies; no training (seconds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib import image as mpl_image

from cnn import plotting
from cnn.experiments import analysis, probe, transfer_protocol
from configs import transfer_fmnist

SEEDS = (0, 1, 2)


def _study(members: dict[str, tuple[str, dict]], groups: list[dict],
           rows: dict[str, dict] | None = None,
           curves: dict[str, dict] | None = None) -> analysis.Study:
  """A Study as `analysis.load` builds it: `members` name -> (group,
  overrides); `rows` name -> the member row's fields beyond the defaults."""
  rows = rows or {}
  table = [{'member': name, 'status': 'completed', 'model_name': 'lenet5',
            'final_train_error': 0.1, 'final_test_error': 0.2,
            **rows.get(name, {})} for name in members]
  curves = curves or {name: dict(step=np.array([]), train_error=np.array([]),
                                 test_error=np.array([])) for name in members}
  return analysis.Study('fake', table, groups, curves,
                        {n: g for n, (g, _) in members.items()},
                        {n: o for n, (_, o) in members.items()})


def depth_study(evaluations: int = 6) -> analysis.Study:
  """plain/ResNet-20/32, 3 seeds, `evaluations` evaluations each; the
  plain nets' errors grow with depth."""
  members, groups, rows, curves = {}, [], {}, {}
  for residual in (False, True):
    for depth in (20, 32):
      model = f"{'resnet' if residual else 'plain'}{depth}"
      groups.append(dict(group=model, n=3, model_name=model, depth=depth,
                         residual=residual, params=1000 * depth,
                         receptive_field='81x81',
                         train_error_kind='eval_mode'))
      for seed in SEEDS:
        name = f'{model}-seed{seed}'
        members[name] = (model, dict(model_name=model, seed=seed))
        final = 0.05 + (0 if residual else depth / 400) + 0.01 * seed
        rows[name] = dict(model_name=model, final_train_error=final,
                          final_test_error=final + 0.05)
        steps = 100 * np.arange(1, evaluations + 1)
        decay = np.exp(-steps / 200)
        curves[name] = dict(step=steps, train_error=100 * (final + decay),
                            test_error=100 * (final + 0.05 + decay))
  return _study(members, groups, rows, curves)


def kernel_study() -> analysis.Study:
  members, groups, rows = {}, [], {}
  for i, (model, params, rf) in enumerate((
      ('kstack_5x5', 30550, '34x34'), ('kstack_3x3x2', 22270, '34x34'),
      ('kstack_3x3', 11350, '20x20'), ('kstack_5x5_matched', 22144,
                                       '34x34'))):
    groups.append(dict(group=model, n=3, model_name=model, depth=5,
                       residual='', params=params, receptive_field=rf,
                       train_error_kind='eval_mode'))
    for seed in SEEDS:
      name = f'{model}-seed{seed}'
      members[name] = (model, dict(model_name=model, seed=seed))
      rows[name] = dict(model_name=model,
                        final_train_error=0.12 + 0.01 * (i + seed),
                        final_test_error=0.16 + 0.01 * (i + seed))
  return _study(members, groups, rows)


def protocol_rows() -> list[dict]:
  """`transfer_protocol.protocol_rows`-like rows: two targets, three sizes,
  every regime, three seeds."""
  return [dict(target=target, shots=shots, regime=regime, seed=seed,
               status='completed',
               test_accuracy=0.95 - 0.3 / math.log10(10 * shots) - 0.02 * j
               - 0.01 * seed)
          for target in ('fmnist59', 'digits') for shots in (10, 100, 1000)
          for j, regime in enumerate(transfer_protocol.REGIME_STYLE)
          for seed in SEEDS]


def yosinski_values() -> dict:
  return {(target, line, n): {seed: 90 - (2 * n if line.startswith('A') and
                                          '+' not in line else 0) - seed
                              for seed in SEEDS}
          for target in ('fmnist59', 'digits')
          for line, *_ in transfer_protocol.YOSINSKI_LINES
          for n in range(4)}


def probe_rows(offset: float = 0.0) -> list[dict]:
  return [dict(layer=layer, shots=shots, seed=seed, method='ridge',
               train_accuracy=1.0, test_accuracy=0.3 + 0.1 * i + offset
               + 0.01 * seed + (0.05 if shots == 0 else 0), dim=16)
          for i, layer in enumerate(('stem', 'stage1', 'stage2', 'stage3',
                                     'pre_logits'))
          for shots in (10, 100, 0) for seed in SEEDS]


FIGURES = {
    # name: (draw(path) -> figure, panels)
    'depth_curves': (lambda p: analysis.depth_curves(depth_study(), p), 2),
    'error_vs_depth': (lambda p: analysis.error_vs_depth(depth_study(), p),
                       2),
    'accuracy_vs_params': (
        lambda p: analysis.accuracy_vs_params(kernel_study(), p), 2),
    'guidance_figure': (lambda p: transfer_protocol.guidance_figure(
        transfer_fmnist.PROTOCOL, protocol_rows(), p, source='a LeNet-5'),
                        4),
    'yosinski_figure': (lambda p: transfer_protocol.yosinski_figure(
        transfer_fmnist.PROTOCOL, yosinski_values(), p, source='LeNet-5'), 2),
    'probe_curves': (lambda p: analysis.probe_curves(
        {'fmnist04': probe_rows(0.1), 'fmnist59': probe_rows(),
         'digits': probe_rows(-0.1)}, 100, p, network='resnet20'), 1),
    'probe_figure': (lambda p: probe.probe_figure(
        probe_rows(), p, title='ResNet-20, digits'), 1),
}


@pytest.mark.parametrize('name', FIGURES)
def test_figure_meets_the_standard(name, tmp_path):
  draw, panels = FIGURES[name]
  path = tmp_path / f'{name}.png'
  fig = draw(str(path))
  width = mpl_image.imread(path).shape[1]
  assert width >= (1200 if panels > 1 else 800), width
  assert plotting.overlapping_text(fig) == []
  assert plotting.text_outside(fig) == []
  written = sorted(p.name for p in tmp_path.iterdir())
  if name == 'probe_figure':  # probe.csv beside it is its data.
    assert written == [f'{name}.png']
  else:
    assert written == sorted(
        f'{name}.{ext}' for ext in ('json', 'png', *plotting.VECTOR_FORMATS))
    assert json.loads((tmp_path / f'{name}.json').read_text())


def test_depth_curves_draw_every_evaluation_and_say_the_band(tmp_path):
  fig = analysis.depth_curves(depth_study(evaluations=40),
                              str(tmp_path / 'd.png'))
  data = json.loads((tmp_path / 'd.json').read_text())
  curve = data['models']['plain-32']
  assert len(curve['step']) == 40 and curve['n'] == 3
  # Seeds 0-2 add 0, 1, 2 points: mean +1, std (ddof=1) 1.
  assert curve['train_error_mean'][-1] == pytest.approx(
      100 * (0.05 + 32 / 400 + 0.01) + 100 * np.exp(-20))
  assert curve['train_error_std'][0] == pytest.approx(1.0)
  texts = [t.get_text() for t, _ in plotting.text_boxes(fig)]
  assert 'band: ± 1 std over n = 3 seeds' in texts
  assert {'plain-20', 'ResNet-32', 'test error'} <= set(texts)


def test_depth_curves_use_the_steps_every_seed_has():
  study = depth_study(evaluations=5)
  short = study.curves['plain20-seed2']
  study.curves['plain20-seed2'] = {k: v[:3] for k, v in short.items()}
  c = study.group_curves('plain20')
  assert list(c['step']) == [100, 200, 300] and c['n'] == 3


def test_final_numbers_carry_their_95_percent_interval(tmp_path):
  analysis.error_vs_depth(depth_study(), str(tmp_path / 'e.png'))
  point = json.loads((tmp_path / 'e.json').read_text())[
      'final_test_error']['plain']['plain-20']
  assert point['values'] == pytest.approx([15, 16, 17])
  assert point['mean'] == pytest.approx(16)
  assert point['half95'] == pytest.approx(4.302652729911275 / math.sqrt(3))


def test_model_labels_follow_the_lectures():
  assert [analysis.model_label(n) for n in (
      'plain20', 'resnet56', 'lenet5', 'resnet18', 'kstack_3x3x2',
      'mystery')] == ['plain-20', 'ResNet-56', 'LeNet-5', 'ResNet-18',
                      'two 3×3', 'mystery']


def test_interval95_by_hand():
  # [1, 2, 3]: mean 2, sample std 1, t(0.975, 2 dof) = 4.302652729911275.
  mean, half = plotting.interval95([1.0, 2.0, 3.0])
  assert mean == 2.0
  assert half == pytest.approx(4.302652729911275 / math.sqrt(3))
  # NaN dropped: [1, 3], std sqrt(2), t(0.975, 1) = 12.706204736174707.
  assert plotting.interval95([1.0, float('nan'), 3.0]) == pytest.approx(
      (2.0, 12.706204736174707))
  mean, half = plotting.interval95([5.0])
  assert mean == 5.0 and math.isnan(half)


def test_overlapping_and_cut_off_text_are_found():
  fig, ax = plotting.figure()
  ax.set_title('a title')
  assert plotting.overlapping_text(fig) == []
  ax.text(0.5, 0.5, 'here', transform=ax.transAxes)
  ax.text(0.5, 0.5, 'there', transform=ax.transAxes)
  assert plotting.overlapping_text(fig) == [('here', 'there')]
  assert plotting.text_outside(fig) == []
  ax.text(1.2, 0.5, 'beyond the edge', transform=ax.transAxes)
  assert plotting.text_outside(fig) == ['beyond the edge']


def test_save_writes_png_pdf_json_and_no_temporary_files(tmp_path,
                                                         monkeypatch):
  monkeypatch.setattr(plotting, 'VECTOR_FORMATS', ('pdf',))  # conftest: none.
  fig, ax = plotting.figure(1, 2)
  ax[0].plot([0, 1], [0, 1])
  assert plotting.save(fig, str(tmp_path / 'f.png'), {'y': np.arange(2)}) \
      is fig
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'f.json', 'f.pdf', 'f.png']
  assert json.loads((tmp_path / 'f.json').read_text()) == {'y': [0, 1]}
  assert mpl_image.imread(tmp_path / 'f.png').shape[1] == 1200
