"""Tests for cnn.experiments.probe: the closed-form ridge against lstsq, probes of every
LeNet-5 stage of a tiny trained run, and `main.py --mode=probe`."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from cnn.common import errors
from cnn.experiments import probe
from cnn.training import train
from tests import helpers

# Smaller than runlocal (512 / 1,000 examples): 8 steps of batch 32.
OVERRIDES = {'num_epochs': 1.0, 'input.train_subset': 256,
             'input.test_subset': 500}
LENET_LAYERS = ['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'stage5',
                'pre_logits']


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> tuple:
  """(config, workdir) of a LeNet-5 trained one epoch on 256 examples."""
  config = helpers.tiny_config(**OVERRIDES)
  workdir = str(tmp_path_factory.mktemp('probe') / 'run')
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _cli(workdir, *extra):
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  return helpers.run_main([f'--config={helpers.TINY_CONFIG}',
                           f'--workdir={workdir}', *flags, '--mode=probe',
                           *extra], timeout=180)


@pytest.mark.parametrize('n,d', [(40, 7), (6, 25)])  # primal, dual
def test_ridge_is_the_regularised_least_squares_solution(n, d):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d)) + 3.0  # Off-centre: the bias matters.
  y = rng.integers(0, 4, n)
  lam = 2.5
  w, b = probe.ridge_fit(x, y, 4, lam)
  targets = 2.0 * np.eye(4)[y] - 1.0
  xc, yc = x - x.mean(0), targets - targets.mean(0)
  # ||Xc W - Yc||² + λ||W||² is plain least squares on [Xc; √λ I], [Yc; 0].
  a = np.concatenate([xc, np.sqrt(lam) * np.eye(d)])
  t = np.concatenate([yc, np.zeros((d, 4))])
  want = np.linalg.lstsq(a, t, rcond=None)[0]
  assert w.shape == (d, 4) and b.shape == (4,)
  np.testing.assert_allclose(w, want, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(b, targets.mean(0) - x.mean(0) @ want,
                             atol=1e-10)
  pred = probe.ridge_predict(x, w, b)
  np.testing.assert_array_equal(pred, np.argmax(x @ want + b, axis=1))


def test_l2_is_chosen_on_validation_and_test_is_scored_with_it():
  # Two informative dimensions among 30 noisy ones, 8 examples per class:
  # the validation split must prefer some regularisation to none, and the
  # reported test accuracy is the chosen probe's.
  rng = np.random.default_rng(0)

  def draw(n):
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 32))
    x[:, :2] += 2.0 * np.eye(3)[y][:, :2] - 2.0 * np.eye(3)[y][:, 2:3]
    return x, y

  train, val, test = draw(24), draw(300), draw(300)
  for method in ('ridge', 'logistic'):
    grid = probe.L2_GRIDS[method]
    got = probe.fit_on_validation(method, train, val, test, 3)
    assert got['l2_reg'] in grid
    scores = {l2: probe.fit_and_score(method, *train, *val, 3, l2)[1]
              for l2 in grid}
    assert got['validation_accuracy'] == max(scores.values())
    assert got['test_accuracy'] == probe.fit_and_score(
        method, *train, *test, 3, got['l2_reg'])[1]


def test_probe_every_lenet_stage(trained):
  config, workdir = trained
  rows = probe.probe_workdir(config, workdir, shots=(5, 0), seeds=(0, 1))
  assert [r['layer'] for r in rows[::4]] == LENET_LAYERS
  assert len(rows) == len(LENET_LAYERS) * 2 * 2
  dims = {r['layer']: r['dim'] for r in rows}
  # Maps are pooled to their channels; vectors kept whole.
  assert dims == {'stem': 6, 'stage1': 6, 'stage2': 16, 'stage3': 16,
                  'stage4': 120, 'stage5': 84, 'pre_logits': 84}
  for r in rows:
    assert 0 <= r['train_accuracy'] <= 1 and 0 <= r['test_accuracy'] <= 1
  full = [r for r in rows if r['layer'] == 'pre_logits' and r['shots'] == 0]
  assert min(r['test_accuracy'] for r in full) > 0.3  # chance: 0.1.
  table = probe.format_table(rows)
  assert '| pre_logits | 84 |' in table and '±' in table
  # sklearn's probes on one layer: same rows, sensible accuracies.
  logistic = probe.probe_workdir(config, workdir, layers=['pre_logits'],
                                 shots=(0,), seeds=(0,), method='logistic')
  assert len(logistic) == 1 and logistic[0]['test_accuracy'] > 0.3


def test_bad_layer_and_missing_checkpoint_are_user_errors(trained, tmp_path):
  config, workdir = trained
  with pytest.raises(errors.UserError, match="'stage9'.*pre_logits"):
    probe.probe_workdir(config, workdir, layers=['stage9'])
  with pytest.raises(errors.UserError, match='No checkpoint'):
    probe.probe_workdir(config, str(tmp_path))


def test_a_network_is_probed_on_data_with_another_class_count(trained):
  # The Zeiler & Fergus question on a new task: the 10-class network's
  # features probed on a 3-class subset of the data.
  config, workdir = trained
  target = helpers.tiny_config(**OVERRIDES, **{'input.classes': (7, 8, 9)})
  rows = probe.probe_workdir(target, workdir, layers=['pre_logits'],
                             shots=(5,), seeds=(0,))
  assert len(rows) == 1 and rows[0]['test_accuracy'] > 1 / 3


def test_cli_writes_csv_and_png_and_bad_layer_writes_nothing(trained):
  _, workdir = trained
  before = helpers.file_digests(workdir)
  bad = _cli(workdir, '--probe_layers=stem,stage9')
  assert bad.returncode == 2, bad.stderr[-3000:]
  lines = [l for l in bad.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'stage9' in lines[0], bad.stderr[-3000:]
  assert 'Traceback' not in bad.stderr
  assert helpers.file_digests(workdir) == before

  good = _cli(workdir, '--probe_layers=stage3,pre_logits',
              '--probe_shots=5,0')
  assert good.returncode == 0, good.stderr[-3000:]
  assert '| stage3 | 16 |' in good.stdout
  out = os.path.join(workdir, 'probe')
  with open(os.path.join(out, 'probe.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 2 * 3  # layers x shots x default seeds
  assert {r['layer'] for r in rows} == {'stage3', 'pre_logits'}
  assert os.path.getsize(os.path.join(out, 'probe.png')) > 1000
  assert sorted(os.listdir(out)) == ['probe.csv', 'probe.png']  # no temps.


def test_linear_regime_is_not_below_the_ridge_probe(trained):
  # The fixed-feature regime (multinomial logistic regression, L-BFGS to
  # convergence, L2 on validation) against the ridge probe of the same
  # features, both tuned on the same validation split: a convex fit of the
  # same examples must not lose by more than a point (an SGD head of a few
  # hundred steps lost 9 points to ridge on ResNet-20's features).
  config, workdir = trained
  target = helpers.tiny_config(**dict(
      OVERRIDES, **{'input.train_subset': 3000,
                    'input.validation_per_class': 60}))
  accuracy = {}
  for method in ('logistic', 'ridge'):
    rows = probe.probe_workdir(target, workdir, layers=['pre_logits'],
                               shots=(50,), seeds=(0, 1, 2), method=method)
    assert len(rows) == 3 and all(r['validation_accuracy'] > 0.3
                                  for r in rows)
    accuracy[method] = np.mean([r['test_accuracy'] for r in rows])
  assert accuracy['logistic'] >= accuracy['ridge'] - 0.01, accuracy
