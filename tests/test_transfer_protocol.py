"""Tests for cnn.experiments.transfer_protocol: the grid, the choice on
validation, the seeds it lists, the rows and paired intervals of the table,
on hand-made results rows (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from cnn.common import errors
from cnn.experiments import sweep
from cnn.experiments import transfer_protocol as tp

P = tp.Protocol(
    targets={'fmnist59': {'input.dataset': 'fashion_mnist',
                          'input.classes': (5, 6, 7, 8, 9),
                          'input.validation_per_class': 100},
             'digits': {'input.dataset': 'digits', 'input.classes': (),
                        'input.validation_fraction': 0.2}},
    shots=(10, 1000), per_class={'fmnist59': (10, 1000), 'digits': (10, 0)},
    steps=(300, 1500), seeds=((0, 1, 2), (0, 1)),
    regimes=('scratch', 'full', 'freeze2'), learning_rates=(0.01, 0.001),
    weight_decays=(5e-4, 0.0))


def _row(overrides, validation_error, test_error, status='completed'):
  """A results row as `sweep_results.collect` gives it (lists as JSON)."""
  row = {k: json.dumps(list(v)) if isinstance(v, tuple) else v
         for k, v in overrides.items()}
  return dict(row, member=tp.member_name(overrides), status=status,
              final_validation_error=validation_error,
              final_test_error=test_error, git_commit='abc')


def _grid_rows(error_of):
  """Every grid member with validation error `error_of(overrides)`."""
  return [_row(m, *error_of(m)) for m in tp.grid_members(P)]


def _errors(m):
  # lr 0.01 with weight decay 0 is best everywhere but for full, whose best
  # is 0.001 / 5e-4; test error = validation error + 0.01.
  best = ((0.001, 5e-4) if m['transfer.regime'] == 'full' else (0.01, 0.0))
  setting = (m[tp.LEARNING_RATE], m[tp.WEIGHT_DECAY])
  v = 0.1 if setting == best else 0.2 + 0.01 * (m[tp.LEARNING_RATE] == 0.01)
  return v, v + 0.01


def test_grid_lists_every_setting_of_every_cell_on_the_first_seed():
  members = tp.grid_members(P)
  assert len(members) == 2 * 2 * 3 * 2 * 2
  assert {m['seed'] for m in members} == {0}
  assert all(m['input.sample_seed'] == m['seed'] for m in members)
  digits_all = [m for m in members if m['input.dataset'] == 'digits'
                and m['num_train_steps'] == 1500]
  assert {m['input.per_class'] for m in digits_all} == {0}
  names = [tp.member_name(m) for m in members]
  assert len(set(names)) == len(names)
  assert 'digits-shotsall-freeze2-lr0.001-wd0-seed0' in names
  freeze = next(m for m in members if 'freeze2' in tp.member_name(m))
  assert freeze['transfer.regime'] == 'freeze_first'
  assert freeze['transfer.freeze_groups'] == 2
  with pytest.raises(errors.UserError, match='freeze<k>'):
    tp.regime_overrides('fine_tune')


def test_choices_take_the_lowest_validation_error_and_wait_for_a_cell():
  rows = _grid_rows(_errors)
  chosen = tp.choices(P, rows)
  assert len(chosen) == 2 * 2 * 3
  assert (chosen['fmnist59', 0, 'scratch'].learning_rate,
          chosen['fmnist59', 0, 'scratch'].weight_decay) == (0.01, 0.0)
  full = chosen['digits', 1, 'full']
  assert (full.learning_rate, full.weight_decay) == (0.001, 5e-4)
  assert full.per_rate == {0.001: 5e-4, 0.01: 5e-4}
  # A cell with a member still running is not chosen yet.
  rows[0] = dict(rows[0], status='running', final_validation_error='')
  assert ('fmnist59', 0, 'scratch') not in tp.choices(P, rows)
  # A diverged setting is never the choice.
  diverged = _grid_rows(_errors)
  for r in diverged:
    if r['member'] == 'fmnist59-shots10-scratch-lr0.01-wd0-seed0':
      r.update(status='diverged', final_validation_error='')
  assert tp.choices(P, diverged)['fmnist59', 0, 'scratch'].learning_rate in (
      0.01, 0.001)
  assert (tp.choices(P, diverged)['fmnist59', 0, 'scratch'].weight_decay
          == 5e-4)


def test_seed_members_run_each_choice_on_the_other_seeds():
  members = tp.seed_members(P, _grid_rows(_errors))
  names = {tp.member_name(m) for m in members}
  assert 'fmnist59-shots10-scratch-lr0.01-wd0-seed1' in names
  assert 'fmnist59-shots10-scratch-lr0.01-wd0-seed0' not in names  # grid's.
  assert 'fmnist59-shots10-scratch-lr0.001-wd0-seed1' not in names
  # full: the choice and the other rate with its best weight decay.
  assert {'digits-shotsall-full-lr0.001-wd0.0005-seed1',
          'digits-shotsall-full-lr0.01-wd0.0005-seed1'} <= names
  per_column = {0: 2, 1: 1}  # seeds after the grid's.
  assert len(members) == sum(2 * (3 + 1) * n for n in per_column.values())
  with pytest.raises(errors.UserError, match='run the grid first'):
    tp.protocol_sweep(P, grid=False, runlocal=False,
                      grid_workdir='/nonexistent/grid')


def test_rows_tables_and_paired_intervals():
  grid = _grid_rows(_errors)
  seeds = []
  gains = {0: 2.0, 1: 4.0, 2: 3.0}  # full minus scratch per seed, points.
  for m in tp.seed_members(P, grid):
    bonus = gains[m['seed']] if m['transfer.regime'] == 'full' else 0.0
    seeds.append(_row(m, 0.1, 0.11 - bonus / 100))
  linear = [dict(target='fmnist59', shots=10, seed=s, l2_reg=10.0,
                 method='logistic', validation_accuracy=0.8,
                 test_accuracy=0.85) for s in (0, 1, 2)]
  rows = tp.protocol_rows(P, grid, seeds, linear)
  assert set(tp.ROW_COLUMNS) <= set(rows[0])
  cell = [r for r in rows if r['target'] == 'fmnist59' and r['shots'] == 10
          and r['regime'] == 'scratch']
  assert sorted(r['seed'] for r in cell) == [0, 1, 2]
  assert {r['git_commit'] for r in cell} == {'abc'}
  # full at both rates is reported; the chosen one also as 'full'.
  regimes = {r['regime'] for r in rows}
  assert {'full', 'full@0.001', 'full@0.01', 'linear'} <= regimes
  diffs = tp.paired_differences(rows)
  d = diffs['fmnist59', 10, 'full']
  # Seed 0 from the grid: both at validation 0.1 -> test 0.11, gain 0.
  values = [0.0, gains[1], gains[2]]
  half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
  assert d['n'] == 3 and d['difference'] == pytest.approx(np.mean(values))
  assert d['half95'] == pytest.approx(half)
  assert diffs['fmnist59', 10, 'linear']['difference'] == pytest.approx(
      85.0 - 89.0)
  table = tp.guidance_table(P, rows, ['scratch', 'full', 'linear'])
  assert '| fmnist59 | scratch | 89.0 ± 0.0 (3) |' in table
  assert f'[+{np.mean(values):.1f} ± {half:.1f}]' in table
  choices = tp.choices_table(P, rows)
  assert '| digits | full | 0.001 / 0.0005 |' in choices
  assert '| fmnist59 | linear | logistic, L2 10 |' in choices


def test_yosinski_members_copy_from_a_or_the_targets_own_network(tmp_path):
  grid = tmp_path / 'grid'
  grid_rows = _grid_rows(_errors)
  # B of seed 0 (in the grid) has finished; B of seed 1 has not.
  b0 = tp.member(P, 'fmnist59', 0, 'scratch', 0.01, 0.0, 0)
  (grid / tp.member_name(b0)).mkdir(parents=True)
  sweep.write_json_atomically(
      str(grid / tp.member_name(b0) / sweep.RESULT_FILE),
      {'status': 'completed'})
  members = tp.yosinski_members(
      P, grid_rows, source_workdir='runs/source', grid_workdir=str(grid),
      seeds_workdir=str(tmp_path / 'seeds'), column=0, copies=(2,),
      seeds=(0, 1))
  names = [tp.yosinski_name(m, ('runs/source',)) for m in members]
  assert sorted(n for n in names if n.startswith('fmnist59')) == sorted([
      'fmnist59-A2B-seed0', 'fmnist59-A2B-seed1', 'fmnist59-B2B-seed0',
      'fmnist59-A2Bplus-seed0', 'fmnist59-A2Bplus-seed1',
      'fmnist59-B2Bplus-seed0'])
  b = next(m for m in members if tp.yosinski_name(m, ('runs/source',))
           == 'fmnist59-B2B-seed0')
  assert b['init_from'] == str(grid / tp.member_name(b0))
  assert b['transfer.copy_groups'] == 2 and b['transfer.freeze_groups'] == 2
  assert b[tp.LEARNING_RATE] == 0.01  # freeze2's choice.


def test_linear_vs_ridge_pairs_the_same_seeds():
  linear = [dict(target='digits', shots=10, seed=s, test_accuracy=a)
            for s, a in ((0, 0.80), (1, 0.84), (2, 0.90))]
  ridge = [dict(target='digits', shots=10, seed=s, layer=layer,
                test_accuracy=a)
           for s, a in ((0, 0.79), (1, 0.82), (3, 0.5))
           for layer in ('stage2', 'pre_logits')]
  (c,) = tp.linear_vs_ridge(linear, ridge)
  assert c['n'] == 2 and c['difference'] == pytest.approx(1.5)
  assert c['logistic'] == pytest.approx(82.0)
  assert c['ridge'] == pytest.approx(80.5)
  assert '| digits | 10 | 82.0 | 80.5 | +1.5 ±' in tp.linear_vs_ridge_table(
      [c])


def test_yosinski_rows_take_scratch_and_linear_from_the_protocol():
  rows = [_row(dict(tp.member(P, 'fmnist59', 0, 'freeze2', 0.01, 0.0, s),
                    **{'transfer.copy_groups': 2, 'init_from': init}),
               0.1, 0.1 + 0.01 * s)
          for s in (0, 1) for init in ('runs/source', 'runs/b')]
  protocol = [dict(target='fmnist59', shots=10, seed=s, regime=regime,
                   test_accuracy=acc)
              for s in (0, 1, 2) for regime, acc in (('scratch', 0.8),
                                                     ('linear', 0.7))]
  values = tp.yosinski_rows(P, rows, ('runs/source',), protocol, column=0)
  assert values['fmnist59', 'AnB', 2] == {0: 90.0, 1: 89.0}
  assert values['fmnist59', 'BnB', 2] == {0: 90.0, 1: 89.0}
  # Scratch starts every line; seed 2 has no Yosinski member: left out.
  assert values['fmnist59', 'BnB+', 0] == {0: 80.0, 1: 80.0}
  assert values['fmnist59', 'AnB', 4] == {0: 70.0, 1: 70.0}
  table = tp.yosinski_table(values)
  assert '| fmnist59 | AnB | 80.0 ± 0.0 (2) |' in table
  assert 'n = 4' in table


def test_the_linear_head_is_the_one_validation_prefers():
  rows = [dict(target='digits', shots=10, seed=0, layer=layer, method=m,
               validation_accuracy=v, test_accuracy=t)
          for layer, m, v, t in (('pre_logits', 'logistic', 0.7, 0.6),
                                 ('pre_logits', 'ridge', 0.8, 0.5),
                                 ('stage2', 'ridge', 0.9, 0.9))]
  (chosen,) = tp.select_linear(rows)
  assert chosen['method'] == 'ridge' and chosen['test_accuracy'] == 0.5
