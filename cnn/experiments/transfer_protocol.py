"""The transfer protocol: a grid on seed 0, choices on validation, then seeds.

Kornblith, Shlens & Le (2019, "Do Better ImageNet Models Transfer
Better?") tune every regime on a validation split before comparing them;
so does this module, scaled to a CPU:

1. `protocol_sweep(p, grid=True)`: for every (target, examples per class,
   regime), one member per (learning rate, weight decay) of the grid, on
   the first seed only.
2. `protocol_sweep(p, grid=False, grid_workdir=...)`: reads the grid's
   members, chooses per cell the setting with the lowest final validation
   error (`choices`), and lists the cell's other seeds with it (`full` also
   at every learning rate with that rate's best weight decay). Cells whose
   grid has not finished are left out until a rerun.
3. `protocol_rows`: the rows a table reads, one per (cell, seed) — seed 0
   from the grid, the others from the seeds sweep, the `linear` regime from
   `--mode=probe` runs — each with its target, examples per class, regime,
   chosen hyper-parameters, validation and test accuracy and commit.

Every member sets `input.sample_seed` to its seed: seeds draw their own
few-shot (and validation) examples, and two regimes of one seed see the
same ones, so they compare paired (`paired_differences`). The `linear`
regime's head per seed is the probe (logistic by L-BFGS or ridge, each
with its L2 chosen on validation) that validation prefers
(`select_linear`); `linear_vs_ridge` checks it against the ridge probe.

Also: `yosinski_members` / `yosinski_rows` (Yosinski et al. 2014's AnB,
AnB+, BnB, BnB+ on the protocol's targets, its choices and its scratch
networks as B), and the tables and figures (`guidance_table`,
`choices_table`, `yosinski_table`, `guidance_figure`, `yosinski_figure`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from cnn import plotting
from cnn.common import errors
from cnn.experiments import sweep, sweep_results, weight_sharing

LEARNING_RATE = 'optimizer.learning_rate'
WEIGHT_DECAY = 'optimizer.weight_decay'
LINEAR = 'linear'
# Data-set names as member and target names spell them.
DATASET_SHORT = {'fashion_mnist': 'fmnist', 'digits': 'digits',
                 'mnist': 'mnist', 'cifar10': 'cifar10'}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One transfer experiment's design (a config's constants).

  targets: name -> the input overrides that make the task ('input.dataset',
    'input.classes', 'input.image_size', 'input.validation_*').
  shots: the table's columns (examples per class as the table says them).
  per_class: target -> `input.per_class` of each column (0 = every
    example not held out, for a target with fewer than the column's).
  steps: training steps of each column.
  seeds: each column's seeds; the first is the grid's.
  regimes: 'scratch', 'full', 'freeze<k>' (`freeze_first`, k groups).
  learning_rates, weight_decays: the grid.
  """

  targets: dict[str, dict[str, Any]]
  shots: tuple[int, ...]
  per_class: dict[str, tuple[int, ...]]
  steps: tuple[int, ...]
  seeds: tuple[tuple[int, ...], ...]
  regimes: tuple[str, ...]
  learning_rates: tuple[float, ...]
  weight_decays: tuple[float, ...]


def regime_overrides(regime: str) -> dict[str, Any]:
  """'scratch' | 'full' | 'freeze<k>' -> `config.transfer` overrides
  (`transfer.freeze_groups` = 0 where nothing is frozen, so the column reads
  as the number of frozen groups)."""
  if regime in ('scratch', 'full'):
    return {'transfer.regime': regime, 'transfer.freeze_groups': 0}
  if regime.startswith('freeze') and regime[len('freeze'):].isdigit():
    return {'transfer.regime': 'freeze_first',
            'transfer.freeze_groups': int(regime[len('freeze'):])}
  raise errors.UserError(
      f"Unknown protocol regime {regime!r}: use 'scratch', 'full' or "
      "'freeze<k>' (the first k parameter groups frozen).")


def regime_label(regime: str, freeze_groups: Any) -> str:
  """The inverse of `regime_overrides` for a results row."""
  return (f'freeze{int(freeze_groups)}' if regime == 'freeze_first'
          else str(regime))


def target_name(dataset: str, classes: Sequence[int]) -> str:
  """'fmnist59' for Fashion-MNIST classes 5..9, 'digits' for all digits."""
  short = DATASET_SHORT.get(dataset, dataset)
  classes = [int(c) for c in classes]
  if not classes:
    return short
  if classes == list(range(classes[0], classes[-1] + 1)):
    return f'{short}{classes[0]}{classes[-1]}'
  return short + '_'.join(map(str, classes))


def member(p: Protocol, target: str, column: int, regime: str,
           learning_rate: float, weight_decay: float, seed: int,
           runlocal: bool = False) -> dict[str, Any]:
  """One member's overrides (`runlocal` keeps the shrunk base's steps)."""
  out = {'seed': seed, 'input.sample_seed': seed, **p.targets[target],
         'input.per_class': p.per_class[target][column]}
  if not runlocal:
    out['num_train_steps'] = p.steps[column]
  out.update(regime_overrides(regime))
  out.update({LEARNING_RATE: learning_rate, WEIGHT_DECAY: weight_decay})
  return out


def member_name(overrides: dict[str, Any]) -> str:
  """'fmnist59-shots10-freeze2-lr0.01-wd0.0005-seed3'."""
  target = target_name(overrides['input.dataset'], overrides['input.classes'])
  per_class = overrides['input.per_class']
  regime = regime_label(overrides['transfer.regime'],
                        overrides['transfer.freeze_groups'])
  return (f"{target}-shots{per_class or 'all'}-{regime}-"
          f"lr{overrides[LEARNING_RATE]:g}-wd{overrides[WEIGHT_DECAY]:g}-"
          f"seed{overrides['seed']}")


def _columns(p: Protocol, runlocal: bool) -> range:
  return range(1 if runlocal else len(p.shots))


def grid_members(p: Protocol, runlocal: bool = False) -> list[dict]:
  """Stage 1: every cell's grid on its first seed."""
  rates = p.learning_rates[:1] if runlocal else p.learning_rates
  decays = p.weight_decays[:1] if runlocal else p.weight_decays
  return [member(p, target, c, regime, lr, wd, p.seeds[c][0], runlocal)
          for target in p.targets for c in _columns(p, runlocal)
          for regime in p.regimes for lr in rates for wd in decays]


# ------------------------------------------------------------ the choices


def _cell_of(p: Protocol, row: dict[str, Any]) -> tuple[str, int, str] | None:
  """(target, column, regime) of a results row; None if not the protocol's."""
  classes = row['input.classes'] or ()
  if isinstance(classes, str):  # results rows hold lists as JSON text.
    classes = json.loads(classes)
  target = next((t for t, o in p.targets.items()
                 if o['input.dataset'] == row['input.dataset'] and
                 tuple(o['input.classes']) == tuple(classes)), None)
  if target is None:
    return None
  per_class = int(row['input.per_class'])
  if per_class not in p.per_class[target]:
    return None
  return (target, p.per_class[target].index(per_class),
          regime_label(row['transfer.regime'], row['transfer.freeze_groups']))


def _with_cells(p: Protocol, rows: Sequence[dict[str, Any]]) -> list[dict]:
  out = []
  for row in rows:
    cell = _cell_of(p, row) if row.get('input.dataset', '') != '' else None
    if cell is not None:
      out.append(dict(row, target=cell[0], column=cell[1], regime=cell[2]))
  return out


@dataclasses.dataclass
class Choice:
  """The setting chosen for one cell (and, for `full`, one per rate)."""

  learning_rate: float
  weight_decay: float
  validation_error: float
  candidates: dict[tuple[float, float], float]
  per_rate: dict[float, float] = dataclasses.field(default_factory=dict)


def choices(p: Protocol, grid_rows: Sequence[dict[str, Any]],
            runlocal: bool = False
            ) -> dict[tuple[str, int, str], Choice]:
  """{(target, column, regime): Choice} for every cell whose grid members
  have all finished (completed or diverged); `full`'s `per_rate` maps each
  learning rate to its best weight decay."""
  rows = _with_cells(p, grid_rows)
  expected = {}
  for m in grid_members(p, runlocal):
    cell = _cell_of(p, m)
    expected[cell] = expected.get(cell, 0) + 1
  done: dict[tuple, list[dict]] = {}
  for row in rows:
    if row['status'] in sweep_results.RESULT_STATUSES:
      done.setdefault((row['target'], row['column'], row['regime']),
                      []).append(row)
  out = {}
  for cell, cell_rows in done.items():
    if len(cell_rows) < expected.get(cell, math.inf):
      continue
    picked = weight_sharing.select_on_validation(
        cell_rows, (LEARNING_RATE, WEIGHT_DECAY), 'regime')
    if not picked:  # every setting diverged.
      continue
    (selection,) = picked.values()
    lr, wd = selection.value
    choice = Choice(float(lr), float(wd), selection.validation_error,
                    selection.candidates)
    if cell[2] == 'full':
      per_rate = weight_sharing.select_on_validation(
          cell_rows, WEIGHT_DECAY, LEARNING_RATE)
      choice.per_rate = {float(k[0]): float(s.value)
                         for k, s in per_rate.items()}
    out[cell] = choice
  return out


def seed_members(p: Protocol, grid_rows: Sequence[dict[str, Any]],
                 runlocal: bool = False) -> list[dict]:
  """Stage 2: every finished cell's seeds after the first at its choice
  (and `full` also at each rate's best weight decay; seed 0 of every
  setting is in the grid). Logs the cells still waiting for the grid."""
  chosen = choices(p, grid_rows, runlocal)
  out, waiting = [], []
  for target in p.targets:
    for c in _columns(p, runlocal):
      for regime in p.regimes:
        choice = chosen.get((target, c, regime))
        if choice is None:
          waiting.append(f'{target}/{p.shots[c]}/{regime}')
          continue
        seeds = p.seeds[c][1:2] if runlocal else p.seeds[c][1:]
        settings = [(choice.learning_rate, choice.weight_decay)]
        settings += [(lr, wd) for lr, wd in choice.per_rate.items()
                     if (lr, wd) != settings[0]]
        for lr, wd in settings:
          for seed in seeds:
            out.append(member(p, target, c, regime, lr, wd, seed, runlocal))
  if waiting:
    logging.warning('The grid has not finished %d cell(s) (%s): their seeds '
                    'are left out; rerun this sweep when it has.',
                    len(waiting), ', '.join(waiting[:6]))
  return out


def read_grid(grid_workdir: str) -> list[dict[str, Any]]:
  """The results rows of the grid's workdir; a `UserError` saying to run
  the grid when it does not exist."""
  if not os.path.exists(os.path.join(grid_workdir, 'sweep.json')):
    raise errors.UserError(
        'This sweep reads the choices of the transfer protocol\'s grid in '
        f'{grid_workdir}, which does not exist: run the grid first '
        '(--config=<its config>:grid --workdir=that directory).')
  return sweep_results.collect(grid_workdir)


def protocol_sweep(p: Protocol, *, grid: bool, runlocal: bool,
                   grid_workdir: str) -> list[dict]:
  """A config's `get_sweep`: the grid, or the seeds chosen from it."""
  if grid:
    return grid_members(p, runlocal)
  members = seed_members(p, read_grid(grid_workdir), runlocal)
  if not members:
    raise errors.UserError(
        f'No cell of the grid in {grid_workdir} has finished: let it run '
        '(or resume it) first.')
  return members


# --------------------------------------------------------- rows and tables

ROW_COLUMNS = ('target', 'shots', 'per_class', 'regime', 'seed', 'head',
               'learning_rate', 'weight_decay', 'l2_reg', 'steps',
               'validation_accuracy', 'test_accuracy', 'status', 'member',
               'git_commit')


def _accuracy(error: Any) -> float:
  return math.nan if error in ('', None) else 1.0 - float(error)


def protocol_rows(p: Protocol, grid_rows: Sequence[dict[str, Any]],
                  seed_rows: Sequence[dict[str, Any]],
                  linear_rows: Sequence[dict[str, Any]] = ()
                  ) -> list[dict[str, Any]]:
  """One row (`ROW_COLUMNS`) per (cell, seed, setting) of the protocol.

  Args:
    p: the protocol.
    grid_rows, seed_rows: `sweep_results.collect` rows of the two sweeps.
    linear_rows: `probe.csv` rows of the `linear` regime (layer
      'pre_logits'), each with 'target' added: one per (target, shots,
      seed), e.g. `select_linear`'s.

  Returns:
    Trained regimes: seed 0 from the grid (at the cell's choice, and for
    `full` also at each rate's best weight decay, labelled
    'full@<rate>'), other seeds from `seed_rows`; the chosen `full` setting
    appears both as 'full' and as 'full@<its rate>'. Then the linear
    regime's rows.
  """
  chosen = choices(p, grid_rows)
  out = []

  def add(row, regime):
    out.append(dict(
        target=row['target'], shots=p.shots[row['column']],
        per_class=int(row['input.per_class']), regime=regime,
        seed=int(row['seed']), head='sgd',
        learning_rate=float(row[LEARNING_RATE]),
        weight_decay=float(row[WEIGHT_DECAY]), l2_reg='',
        steps=p.steps[row['column']],
        validation_accuracy=_accuracy(row['final_validation_error']),
        test_accuracy=_accuracy(row['final_test_error']),
        status=row['status'], member=row['member'],
        git_commit=row['git_commit']))

  for row in _with_cells(p, [*grid_rows, *seed_rows]):
    choice = chosen.get((row['target'], row['column'], row['regime']))
    if choice is None or row['status'] not in sweep_results.RESULT_STATUSES:
      continue
    setting = (float(row[LEARNING_RATE]), float(row[WEIGHT_DECAY]))
    if setting == (choice.learning_rate, choice.weight_decay):
      add(row, row['regime'])
    if row['regime'] == 'full' and choice.per_rate.get(
        setting[0]) == setting[1]:
      add(row, f'full@{setting[0]:g}')
  for row in linear_rows:
    target = row['target']
    per_class = int(row['shots'])
    column = p.per_class[target].index(per_class)
    out.append(dict(
        target=target, shots=p.shots[column], per_class=per_class,
        regime=LINEAR, seed=int(row['seed']), head=row['method'],
        learning_rate='', weight_decay='', l2_reg=float(row['l2_reg']),
        steps='',
        validation_accuracy=float(row['validation_accuracy']),
        test_accuracy=float(row['test_accuracy']), status='completed',
        member=row.get('member', ''), git_commit=row.get('git_commit', '')))
  return out


def write_rows(rows: Sequence[dict[str, Any]], path: str) -> None:
  """`protocol_rows` as CSV (`ROW_COLUMNS`)."""
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=ROW_COLUMNS)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: r[k] for k in ROW_COLUMNS})


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows `write_rows` wrote, numbers parsed ('' stays '')."""
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for key in ('shots', 'per_class', 'seed', 'steps'):
      r[key] = int(r[key]) if r[key] != '' else ''
    for key in ('learning_rate', 'weight_decay', 'l2_reg',
                'validation_accuracy', 'test_accuracy'):
      if r[key] != '':
        r[key] = float(r[key])
      elif key.endswith('accuracy'):
        r[key] = math.nan
  return rows


def _by_cell(rows: Sequence[dict[str, Any]]
             ) -> dict[tuple[str, int, str], dict[int, float]]:
  """{(target, shots, regime): {seed: test accuracy %}} of completed rows."""
  out: dict[tuple, dict[int, float]] = {}
  for r in rows:
    if r['status'] == 'completed' and math.isfinite(r['test_accuracy']):
      out.setdefault((r['target'], r['shots'], r['regime']), {})[
          r['seed']] = 100 * r['test_accuracy']
  return out


def paired_differences(rows: Sequence[dict[str, Any]],
                       baseline: str = 'scratch'
                       ) -> dict[tuple[str, int, str], dict[str, Any]]:
  """{(target, shots, regime): dict(difference, half95, n)}: the mean over
  the seeds both have of (regime - baseline) test accuracy in points, with
  the 95 % t-interval of the paired differences (same seed = same
  examples)."""
  cells = _by_cell(rows)
  out = {}
  for (target, shots, regime), acc in cells.items():
    base = cells.get((target, shots, baseline))
    if regime == baseline or not base:
      continue
    seeds = sorted(set(acc) & set(base))
    if not seeds:
      continue
    mean, half = plotting.interval95([acc[s] - base[s] for s in seeds])
    out[target, shots, regime] = dict(difference=mean, half95=half,
                                      n=len(seeds))
  return out


def _cell_text(values: Sequence[float]) -> str:
  """'mean ± std (n)' (std with ddof=1; 0 for one value)."""
  if not values:
    return ''
  std = np.std(values, ddof=1) if len(values) > 1 else 0.0
  return f'{np.mean(values):.1f} ± {std:.1f} ({len(values)})'


def guidance_table(p: Protocol, rows: Sequence[dict[str, Any]],
                   regimes: Sequence[str] | None = None) -> str:
  """Markdown: target x regime rows, one column per examples-per-class
  value: test accuracy % mean ± std (n seeds), and beneath each non-scratch
  cell its paired difference to scratch with the 95 % interval."""
  cells = _by_cell(rows)
  diffs = paired_differences(rows)
  regimes = list(regimes or dict.fromkeys(r['regime'] for r in rows))
  head = ('| target | regime | ' +
          ' | '.join(f'{s} / class' for s in p.shots) + ' |')
  lines = [head, '| --- | --- |' + ' --- |' * len(p.shots)]
  for target in p.targets:
    for regime in regimes:
      texts = []
      for s in p.shots:
        acc = cells.get((target, s, regime), {})
        text = _cell_text(list(acc.values()))
        d = diffs.get((target, s, regime))
        if d and text:
          text += (f' [{d["difference"]:+.1f} ± {d["half95"]:.1f}]'
                   if math.isfinite(d['half95']) else
                   f' [{d["difference"]:+.1f}]')
        texts.append(text)
      if any(texts):
        lines.append(f'| {target} | {regime} | ' + ' | '.join(texts) + ' |')
  return '\n'.join(lines)


def choices_table(p: Protocol, rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: the chosen setting of each cell (learning rate / weight
  decay, or the logistic L2 of `linear`), read from the rows of seed 0."""
  picked = {}
  for r in rows:
    if r['seed'] != p.seeds[0][0] or r['regime'].startswith('full@'):
      continue
    if r['regime'] == LINEAR:
      text = f'{r["head"]}, L2 {r["l2_reg"]:g}'
    else:
      text = f'{r["learning_rate"]:g} / {r["weight_decay"]:g}'
    picked[r['target'], r['shots'], r['regime']] = text
  regimes = list(dict.fromkeys(k[2] for k in picked))
  lines = ['| target | regime | ' + ' | '.join(
      f'{s} / class' for s in p.shots) + ' |',
           '| --- | --- |' + ' --- |' * len(p.shots)]
  for target in p.targets:
    for regime in regimes:
      cells = [picked.get((target, s, regime), '') for s in p.shots]
      if any(cells):
        lines.append(f'| {target} | {regime} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# -------------------------------------------- Yosinski et al.: copy n groups

def _finished_member(workdir: str, overrides: dict[str, Any]) -> str | None:
  """The directory of a completed protocol member, or None."""
  path = os.path.join(workdir, member_name(overrides))
  result = sweep.read_result(path) or {}
  return path if result.get('status') == 'completed' else None


def yosinski_members(p: Protocol, grid_rows: Sequence[dict[str, Any]], *,
                     source_workdir: str, grid_workdir: str,
                     seeds_workdir: str, column: int,
                     copies: Sequence[int], seeds: Sequence[int],
                     runlocal: bool = False) -> list[dict]:
  """Yosinski et al. (2014)'s four transfers onto each target at `column`.

  The first n parameter groups (n in `copies`) come from network A (the
  source, `source_workdir`) or B (the `scratch` member of the same target,
  examples and seed: a network trained on the target's own examples, read
  from the protocol's workdirs), and are frozen (AnB, BnB: `freeze<n>`) or
  fine-tuned with the rest (AnB+, BnB+: `full`); the groups after them
  start afresh (`transfer.copy_groups` = n). Hyper-parameters: the
  protocol's choice for the same target, column and regime (`choices`).
  Members whose B network has not finished are left out (logged).
  """
  chosen = choices(p, grid_rows, runlocal)
  out, waiting = [], set()
  for target in p.targets:
    for n in copies:
      for finetuned in (False, True):
        regime = 'full' if finetuned else f'freeze{n}'
        choice = chosen.get((target, column, regime))
        base = chosen.get((target, column, 'scratch'))
        if choice is None or base is None:
          waiting.add(f'{target}/{regime}')
          continue
        for seed in seeds:
          m = member(p, target, column, regime, choice.learning_rate,
                     choice.weight_decay, seed, runlocal)
          m['transfer.copy_groups'] = n
          out.append(dict(m, init_from=source_workdir))
          b = member(p, target, column, 'scratch', base.learning_rate,
                     base.weight_decay, seed, runlocal)
          b_dir = _finished_member(
              grid_workdir if seed == p.seeds[column][0] else seeds_workdir,
              b)
          if b_dir is None:
            waiting.add(f'B of {member_name(b)}')
            continue
          out.append(dict(m, init_from=b_dir))
  if waiting:
    logging.warning('Left out until the protocol has finished them: %s.',
                    ', '.join(sorted(waiting)[:6]))
  return out


def yosinski_name(overrides: dict[str, Any],
                  source_workdirs: Sequence[str]) -> str:
  """'fmnist59-A2B-seed0' (frozen), 'fmnist59-B2Bplus-seed1' (fine-tuned);
  A when `init_from` is one of `source_workdirs`."""
  target = target_name(overrides['input.dataset'], overrides['input.classes'])
  network = 'A' if overrides['init_from'] in source_workdirs else 'B'
  plus = 'plus' if overrides['transfer.regime'] == 'full' else ''
  return (f"{target}-{network}{overrides['transfer.copy_groups']}B{plus}-"
          f"seed{overrides['seed']}")


# ------------------------------------------------------------------ figures

REGIME_STYLE = {  # regime: (legend label, line style).
    'scratch': ('from scratch', '--'),
    'full': ('fine-tune all (full)', '-'),
    'freeze1': ('first group frozen', '-'),
    'freeze2': ('first 2 groups frozen', '-'),
    'freeze3': ('first 3 groups frozen', '-'),
    LINEAR: ('linear head on frozen features', ':'),
}
TARGET_LABELS = {'fmnist59': 'similar target: Fashion-MNIST 5–9',
                 'digits': 'different target: digits'}


@plotting.styled
def guidance_figure(p: Protocol, rows: Sequence[dict[str, Any]],
                    path: str | None = None, *, source: str = ''):
  """Top: test accuracy vs examples per class, a line per regime, a panel
  per target (mean over seeds, 95 % t-interval). Bottom: each regime's
  paired difference to scratch (same seeds, same examples), 95 %
  interval. PNG + PDF + JSON (`cnn.plotting.save`)."""
  cells = _by_cell(rows)
  diffs = paired_differences(rows)
  regimes = [r for r in REGIME_STYLE if any(k[2] == r for k in cells)]
  fig, axes = plotting.figure(2, len(p.targets), height=7.2, squeeze=False,
                              sharex=True)
  data: dict[str, Any] = {'error_bars': '95 % t-interval over seeds',
                          'unit': 'test accuracy % / points', 'panels': {}}
  ns, handles = [], {}
  for col, target in enumerate(p.targets):
    top, bottom = axes[0][col], axes[1][col]
    panel = data['panels'].setdefault(target, {'accuracy': {},
                                               'vs_scratch': {}})
    for i, regime in enumerate(regimes):
      label, ls = REGIME_STYLE[regime]
      color = plotting.PALETTE[i % len(plotting.PALETTE)]
      points = [(s, plotting.interval95(list(cells[target, s, regime]
                                             .values())),
                 len(cells[target, s, regime]))
                for s in p.shots if (target, s, regime) in cells]
      if not points:
        continue
      ns += [n for *_, n in points]
      handles[regime] = top.errorbar(
          [s for s, *_ in points], [m for _, (m, _), _ in points],
          yerr=[h for _, (_, h), _ in points], marker='o', capsize=3,
          ls=ls, color=color, label=label)
      panel['accuracy'][regime] = {str(s): dict(mean=m, half95=h, n=n)
                                   for s, (m, h), n in points}
      d = [(s, diffs[target, s, regime]) for s in p.shots
           if (target, s, regime) in diffs]
      if d:
        bottom.errorbar([s * (1 + 0.04 * (i - 2)) for s, _ in d],
                        [v['difference'] for _, v in d],
                        yerr=[v['half95'] for _, v in d], marker='o',
                        capsize=3, ls=ls, color=color)
        panel['vs_scratch'][regime] = {str(s): v for s, v in d}
    bottom.axhline(0, color='0.5', lw=0.8)
    for ax in (top, bottom):
      ax.set_xscale('log')
      ax.set_xticks(list(p.shots), [str(s) for s in p.shots])
      ax.minorticks_off()
    top.set(title=TARGET_LABELS.get(target, target),
            ylabel='test accuracy (%)')
    bottom.set(xlabel='examples per class ("1000": all, ≈115)'
               if target == 'digits' else 'training examples per class',
               ylabel='minus scratch, same seeds (points)')
  fig.suptitle(f'Transfer from {source or "the source"}: every regime tuned '
               'on validation' if source else
               'Transfer: every regime tuned on validation')
  if handles:
    fig.legend(handles=list(handles.values()), loc='outside lower center',
               ncols=3, title='mean ± 95 % interval, n = '
               f'{min(ns)}–{max(ns)} seeds' if min(ns) != max(ns) else
               f'mean ± 95 % interval, n = {ns[0]} seeds')
  return plotting.save(fig, path, data)


YOSINSKI_LINES = (('AnB', 'A', False, '--'), ('AnB+', 'A', True, '-'),
                  ('BnB', 'B', False, '--'), ('BnB+', 'B', True, '-'))


def yosinski_rows(p: Protocol, rows: Sequence[dict[str, Any]],
                  source_workdirs: Sequence[str],
                  protocol: Sequence[dict[str, Any]], column: int
                  ) -> dict[tuple[str, str, int], dict[int, float]]:
  """{(target, 'AnB' | 'AnB+' | 'BnB' | 'BnB+', n): {seed: test accuracy
  %}}: the Yosinski sweep's rows, n = 0 (scratch: every line) and n = 4
  frozen from A (the protocol's `linear` regime) from `protocol`."""
  out: dict[tuple, dict[int, float]] = {}
  for row in _with_cells(p, rows):
    if row['status'] != 'completed' or row['final_test_error'] == '':
      continue
    network = 'A' if row['init_from'] in source_workdirs else 'B'
    plus = '+' if row['transfer.regime'] == 'full' else ''
    out.setdefault((row['target'], f'{network}nB{plus}',
                    int(row['transfer.copy_groups'])), {})[
                        int(row['seed'])] = 100 * (
                            1 - float(row['final_test_error']))
  seeds = {s for v in out.values() for s in v}
  for r in protocol:
    if r['shots'] != p.shots[column] or r['seed'] not in seeds:
      continue
    if r['regime'] == 'scratch':
      for line, *_ in YOSINSKI_LINES:
        out.setdefault((r['target'], line, 0), {})[r['seed']] = (
            100 * r['test_accuracy'])
    elif r['regime'] == LINEAR:
      out.setdefault((r['target'], 'AnB', 4), {})[r['seed']] = (
          100 * r['test_accuracy'])
  return out


@plotting.styled
def yosinski_figure(p: Protocol, values: dict[tuple[str, str, int],
                                               dict[int, float]],
                    path: str | None = None, *, source: str = '',
                    shots: int = 100):
  """Yosinski et al. (2014) Fig. 2, a panel per target: test accuracy vs
  the number of groups n copied from A (the source) or B (a network of the
  target's own examples), frozen or fine-tuned; mean over seeds with the
  95 % t-interval."""
  targets = [t for t in p.targets if any(k[0] == t for k in values)]
  fig, axes = plotting.figure(1, max(1, len(targets)), height=4.6,
                              squeeze=False)
  data: dict[str, Any] = {'error_bars': '95 % t-interval over seeds',
                          'unit': 'test accuracy %', 'panels': {}}
  ns, handles = [], {}
  for ax, target in zip(axes[0], targets or [None], strict=True):
    for i, (line, _, _, ls) in enumerate(YOSINSKI_LINES):
      points = sorted((n, plotting.interval95(list(v.values())), len(v))
                      for (t, name, n), v in values.items()
                      if t == target and name == line)
      if not points:
        continue
      ns += [k for *_, k in points]
      handles[line] = ax.errorbar(
          [n + 0.05 * (i - 1.5) for n, *_ in points],
          [m for _, (m, _), _ in points], yerr=[h for _, (_, h), _ in points],
          marker='os^D'[i], capsize=3, ls=ls,
          color=plotting.PALETTE[i], label=line)
      data['panels'].setdefault(str(target), {})[line] = {
          str(n): dict(mean=m, half95=h, n=k) for n, (m, h), k in points}
    ax.set_xticks(range(5))
    ax.set(title=TARGET_LABELS.get(target, str(target)),
           xlabel='parameter groups copied, n (0 = scratch)',
           ylabel=f'test accuracy (%), {shots} examples per class')
  fig.suptitle(f'{source or "Source"}: the first n groups from A (source '
               'task) or B (target task),\nfrozen or fine-tuned (+)')
  if handles:
    lo, hi = min(ns), max(ns)
    fig.legend(handles=list(handles.values()), loc='outside lower center',
               ncols=4, title=f'mean ± 95 % interval, n = '
               f'{lo}–{hi} seeds' if lo != hi else
               f'mean ± 95 % interval, n = {lo} seeds')
  return plotting.save(fig, path, data)


def select_linear(probe_rows: Sequence[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
  """The linear regime's head per (target, shots, seed): of the probes of
  `pre_logits` fitted on those examples (e.g. logistic regression by
  L-BFGS and ridge regression, each with its L2 chosen on validation), the
  one with the higher validation accuracy (ties: the first given). The
  loss is chosen as the L2 is, on validation; the test split plays no part.
  """
  best: dict[tuple, dict[str, Any]] = {}
  for r in probe_rows:
    if r['layer'] != 'pre_logits' or r['validation_accuracy'] == '':
      continue
    key = (r['target'], r['shots'], r['seed'])
    if key not in best or (r['validation_accuracy'] >
                           best[key]['validation_accuracy']):
      best[key] = r
  return list(best.values())


def linear_vs_ridge(linear_rows: Sequence[dict[str, Any]],
                    ridge_rows: Sequence[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
  """The linear regime against the ridge probe of the same features.

  Args:
    linear_rows: `probe.csv` rows of the linear regime (logistic on
      pre_logits), each with 'target'.
    ridge_rows: ridge `probe.csv` rows of the same source, each with
      'target' (only their pre_logits rows are read).

  Returns:
    One dict per (target, shots) both have: logistic and ridge test accuracy
    (%, means over the seeds both have) and the paired difference with its
    95 % half-width and n.
  """
  ridge = {(r['target'], r['shots'], r['seed']): 100 * r['test_accuracy']
           for r in ridge_rows if r['layer'] == 'pre_logits'}
  by_cell: dict[tuple, list[tuple[float, float]]] = {}
  for r in linear_rows:
    key = (r['target'], r['shots'], r['seed'])
    if key in ridge:
      by_cell.setdefault(key[:2], []).append(
          (100 * r['test_accuracy'], ridge[key]))
  out = []
  for (target, shots), pairs in by_cell.items():
    mean, half = plotting.interval95([a - b for a, b in pairs])
    out.append(dict(target=target, shots=shots,
                    logistic=float(np.mean([a for a, _ in pairs])),
                    ridge=float(np.mean([b for _, b in pairs])),
                    difference=mean, half95=half, n=len(pairs)))
  return out


def linear_vs_ridge_table(comparison: Sequence[dict[str, Any]],
                          label: str = 'logistic (L-BFGS)') -> str:
  """Markdown of `linear_vs_ridge`; `label` names the compared head."""
  lines = [f'| target | examples per class | {label} | '
           'ridge probe | difference [95 %] | n |',
           '| --- | --- | --- | --- | --- | --- |']
  for c in comparison:
    lines.append(
        f"| {c['target']} | {c['shots'] or 'all'} | {c['logistic']:.1f} | "
        f"{c['ridge']:.1f} | {c['difference']:+.1f} ± {c['half95']:.1f} | "
        f"{c['n']} |")
  return '\n'.join(lines)


def yosinski_table(values: dict[tuple[str, str, int], dict[int, float]]
                   ) -> str:
  """Markdown of `yosinski_rows`: per target, a line per transfer (AnB,
  AnB+, BnB, BnB+), a column per n, cells 'mean ± std (n)'."""
  copies = sorted({k[2] for k in values})
  lines = ['| target | transfer | ' + ' | '.join(f'n = {n}' for n in copies)
           + ' |', '| --- | --- |' + ' --- |' * len(copies)]
  for target in dict.fromkeys(k[0] for k in values):
    for line, *_ in YOSINSKI_LINES:
      cells = [_cell_text(list(values.get((target, line, n), {}).values()))
               for n in copies]
      if any(cells):
        lines.append(f'| {target} | {line} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
