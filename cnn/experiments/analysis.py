"""Figures and tables of saved sweeps, from their files only.

A sweep directory is a workdir of `main.py` on a sweep config, or its small
export under `results/` (`export`: the plan, results and each member's
`config.json`, `metrics.jsonl`, `result.json`; no checkpoints).

  study = load(path)                     members with configs and curves
  depth_curves(study)                    He et al. Fig. 6: error vs iteration
  error_vs_depth(study)                  final error vs depth, seed spread
  accuracy_vs_params(study)              the receptive-field study
  table(study)                           Markdown, mean ± std over seeds
  accuracy_by(study, keys)               test accuracy per value of override keys
  pivot_table(study, row, column)        Markdown, accuracy mean ± std
  transfer_curves(study)                 accuracy vs examples per class
  yosinski_curve(study)                  accuracy vs groups copied
  rows_table(study, columns)             Markdown, one line per member
  read_probes(dir)                       rows of a --mode=probe probe.csv
  probe_comparison(probes, shots)        Markdown, Zeiler & Fergus: layer x data
  probe_curves(probes, shots)            probe accuracy vs layer per data set

Errors are in %, 1 - accuracy; the training error is the one
`cnn.experiments.sweep_results` defines (eval mode on the training images).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')  # files only; notebooks show the returned figures.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnn.experiments import probe as probe_lib  # noqa: E402
from cnn.experiments import sweep, sweep_results  # noqa: E402

MEMBER_FILES = ('config.json', 'metrics.jsonl', sweep.RESULT_FILE)
SWEEP_FILES = (sweep.PLAN_FILE, 'results.csv', 'results.json')


@dataclasses.dataclass
class Study:
  """A loaded sweep.

  rows: one `cnn.experiments.sweep_results` row per member (status, sizes, errors).
  groups: the rows' groups over seeds (mean, std, n).
  curves: member name -> {'step', 'train_error', 'test_error'} arrays.
  group_of: member name -> its group (the name without the seed).
  """

  path: str
  rows: list[dict[str, Any]]
  groups: list[dict[str, Any]]
  curves: dict[str, dict[str, np.ndarray]]
  group_of: dict[str, str]
  overrides: dict[str, dict[str, Any]] = dataclasses.field(
      default_factory=dict)

  def group_curves(self, group: str) -> dict[str, np.ndarray]:
    """Mean and std over the completed seeds of `group`, on the steps every
    one of them has."""
    names = [r['member'] for r in self.rows if r['status'] == 'completed'
             and self.group_of[r['member']] == group]
    curves = [self.curves[n] for n in names if len(self.curves[n]['step'])]
    if not curves:
      return {}
    n = min(len(c['step']) for c in curves)
    out = {'step': curves[0]['step'][:n]}
    for key in ('train_error', 'test_error'):
      values = np.stack([c[key][:n] for c in curves])
      out[key], out[f'{key}_std'] = values.mean(0), values.std(0)
    return out


def load(path: str) -> Study:
  """Reads a sweep directory (its files, never flags)."""
  rows = sweep_results.collect(path)
  curves = {}
  for row in rows:
    records = sweep_results.read_metrics(os.path.join(path, row['member']))
    curves[row['member']] = dict(
        step=np.array([r['step'] for r in records]),
        train_error=100 * np.array(sweep_results.train_errors(records)),
        test_error=100 * np.array(sweep_results.test_errors(records)))
  with open(os.path.join(path, sweep.PLAN_FILE)) as f:
    plan = json.load(f)['members']
  group_of = {m['name']: sweep_results.group_name(m['overrides'])
              for m in plan}
  return Study(path, rows, sweep_results.group_over_seeds(path, rows), curves,
               group_of, {m['name']: m['overrides'] for m in plan})


def export(workdir: str, dest: str) -> None:
  """Copies the small files of a sweep workdir to `dest` (for results/)."""
  sweep_results.write(workdir)
  os.makedirs(dest, exist_ok=True)
  for name in SWEEP_FILES:
    shutil.copy2(os.path.join(workdir, name), os.path.join(dest, name))
  with open(os.path.join(workdir, sweep.PLAN_FILE)) as f:
    members = [m['name'] for m in json.load(f)['members']]
  for member in members:
    for name in MEMBER_FILES:
      src = os.path.join(workdir, member, name)
      if os.path.exists(src):
        os.makedirs(os.path.join(dest, member), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, member, name))


def _depth_groups(study: Study) -> list[dict[str, Any]]:
  return sorted((g for g in study.groups if g['n']),
                key=lambda g: (g['residual'] is True, g['depth']))


def _style(group: dict[str, Any], depths: Sequence[int]):
  colors = plt.cm.viridis(np.linspace(0, 0.85, len(depths)))
  color = colors[list(depths).index(group['depth'])]
  kind = 'ResNet' if group['residual'] is True else 'plain'
  return dict(color=color, ls='-' if group['residual'] is True else '--',
              label=f"{kind}-{group['depth']}")


def depth_curves(study: Study, path: str | None = None):
  """Training (left) and test (right) error vs iteration for each depth:
  plain dashed, residual solid, mean over seeds (He et al. 2016, Fig. 6)."""
  groups = _depth_groups(study)
  depths = sorted({g['depth'] for g in groups})
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
  for g in groups:
    c = study.group_curves(g['group'])
    if not c:
      continue
    for ax, key in zip(axes, ('train_error', 'test_error'), strict=True):
      ax.plot(c['step'], c[key], **_style(g, depths))
  for ax, what in zip(axes, ('training', 'test'), strict=True):
    ax.set(xlabel='iteration', ylabel=f'{what} error (%)',
           title=f'{what.capitalize()} error')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, ncol=2)
  fig.tight_layout()
  return _saved(fig, path)


def error_vs_depth(study: Study, path: str | None = None):
  """Final training and test error vs depth, plain and residual, with the
  spread over seeds (± one standard deviation) as error bars."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
  for residual, style in ((False, dict(ls='--', marker='s')),
                          (True, dict(ls='-', marker='o'))):
    gs = sorted((g for g in study.groups if g['n']
                 and (g['residual'] is True) == residual),
                key=lambda g: g['depth'])
    if not gs:
      continue
    for ax, key in zip(axes, ('final_train_error', 'final_test_error'),
                       strict=True):
      ax.errorbar([g['depth'] for g in gs],
                  [100 * g[f'{key}_mean'] for g in gs],
                  yerr=[100 * g[f'{key}_std'] for g in gs], capsize=3,
                  label='ResNet' if residual else 'plain', **style)
  for ax, what in zip(axes, ('training', 'test'), strict=True):
    ax.set(xlabel='depth (weighted layers)',
           ylabel=f'final {what} error (%)', title=f'Final {what} error')
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  return _saved(fig, path)


def accuracy_vs_params(study: Study, path: str | None = None):
  """Final test (and training) accuracy vs parameters, one point per form
  with ± one standard deviation over seeds; labelled with the receptive
  field."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for g in (g for g in study.groups if g['n']):
    for key, marker in (('final_test_error', 'o'),
                        ('final_train_error', 'x')):
      ax.errorbar(g['params'], 100 - 100 * g[f'{key}_mean'],
                  yerr=100 * g[f'{key}_std'], marker=marker, capsize=3,
                  color='C0' if marker == 'o' else 'C1', ls='none')
    ax.annotate(f"{g['group']} (RF {g['receptive_field']})",
                (g['params'], 100 - 100 * g['final_test_error_mean']),
                textcoords='offset points', xytext=(5, -12), fontsize=7)
  ax.plot([], [], 'o', color='C0', label='test')
  ax.plot([], [], 'x', color='C1', label='training (eval mode)')
  ax.set(xlabel='parameters', ylabel='accuracy (%)',
         title='Accuracy vs parameters')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _saved(fig, path)


def table(study: Study, metrics: Sequence[str] = (
    'final_train_error', 'final_test_error')) -> str:
  """The groups over seeds as a Markdown table (errors in %)."""
  return sweep_results.format_groups(study.groups, metrics)


def rows_table(study: Study, columns: Sequence[str]) -> str:
  """Chosen columns of every member as a Markdown table (errors in %)."""
  def cell(column, value):
    if column.endswith('_error') and value != '':
      return f'{100 * value:.2f}'
    return f'{value:,}' if isinstance(value, int) and not isinstance(
        value, bool) else str(value)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]
  lines += ['| ' + ' | '.join(cell(c, r[c]) for c in columns) + ' |'
            for r in study.rows]
  return '\n'.join(lines)


def accuracy_by(study: Study, keys: Sequence[str],
                metric: str = 'final_test_error'
                ) -> dict[tuple, tuple[float, float, int]]:
  """Completed members grouped by the values of their override `keys`:
  {values: (mean accuracy %, std (ddof=1), n)} of 1 - `metric`."""
  groups: dict[tuple, list[float]] = {}
  for row in study.rows:
    if row['status'] != 'completed' or row[metric] == '':
      continue
    overrides = study.overrides[row['member']]
    key = tuple(_hashable(overrides.get(k)) for k in keys)
    groups.setdefault(key, []).append(100 * (1 - float(row[metric])))
  return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1
              else 0.0, len(v)) for k, v in groups.items()}


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


def pivot_table(study: Study, rows: Sequence[str], column: str,
                metric: str = 'final_test_error') -> str:
  """Markdown: one line per value of the `rows` override keys, one column
  per value of `column`, cells "mean ± std (n)" accuracy in %."""
  stats = accuracy_by(study, [*rows, column], metric)
  row_keys = list(dict.fromkeys(k[:-1] for k in stats))
  col_keys = list(dict.fromkeys(k[-1] for k in stats))
  lines = ['| ' + ' | '.join([*(r.split('.')[-1] for r in rows),
                              *(f'{column.split(".")[-1]}={c}'
                                for c in col_keys)]) + ' |',
           '|' + ' --- |' * (len(rows) + len(col_keys))]
  for rk in row_keys:
    cells = []
    for c in col_keys:
      m = stats.get((*rk, c))
      cells.append(f'{m[0]:.1f} ± {m[1]:.1f} ({m[2]})' if m else '')
    lines.append('| ' + ' | '.join([*map(str, rk), *cells]) + ' |')
  return '\n'.join(lines)


def transfer_curves(study: Study, path: str | None = None,
                    panel: str = 'input.dataset',
                    x: str = 'input.per_class', line: str = 'transfer.regime'):
  """Test accuracy vs training examples per class, one line per regime and
  one panel per target data set (mean ± std over seeds)."""
  stats = accuracy_by(study, [panel, line, x])
  panels = list(dict.fromkeys(k[0] for k in stats))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4),
                           squeeze=False)
  for ax, p in zip(axes[0], panels):
    for name in dict.fromkeys(k[1] for k in stats if k[0] == p):
      points = sorted((k[2], v) for k, v in stats.items()
                      if k[0] == p and k[1] == name)
      ax.errorbar([q for q, _ in points], [v[0] for _, v in points],
                  yerr=[v[1] for _, v in points], marker='o', capsize=3,
                  label=name, linestyle='--' if name == 'scratch' else '-')
    ax.set_xscale('log')
    ax.set_title(f'target: {p}')
    ax.set_xlabel('training examples per class')
    ax.set_ylabel('test accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return _saved(fig, path)


def yosinski_curve(study: Study, path: str | None = None):
  """Target test accuracy vs the number of source groups copied, frozen
  (AnB) vs fine-tuned (AnB+), mean ± std over seeds."""
  stats = accuracy_by(study, ['transfer.copy_groups', 'transfer.regime'])
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for label, regimes_ in (('frozen (AnB)', ('fine_tune', 'feature_extraction')),
                          ('fine-tuned (AnB+)', ('full',))):
    points = sorted((k[0], v) for k, v in stats.items() if k[1] in regimes_
                    or (k[0] == 0 and label.startswith('fine')))
    ax.errorbar([n for n, _ in points], [v[0] for _, v in points],
                yerr=[v[1] for _, v in points], marker='o', capsize=3,
                label=label)
  ax.set_xlabel('source parameter groups copied (n)')
  ax.set_ylabel('target test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return _saved(fig, path)


def read_probes(directory: str) -> list[dict[str, Any]]:
  """The rows of a `--mode=probe` output directory's probe.csv (numbers
  parsed)."""
  with open(os.path.join(directory, 'probe.csv')) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    r.update(shots=int(r['shots']), seed=int(r['seed']), dim=int(r['dim']),
             train_accuracy=float(r['train_accuracy']),
             test_accuracy=float(r['test_accuracy']))
  return rows


def probe_comparison(probes: dict[str, list[dict[str, Any]]], shots: int
                     ) -> str:
  """Markdown, Zeiler & Fergus' table: one line per layer, one column per
  probed data set (`probes`: label -> `read_probes` rows), cells the test
  accuracy in % (mean ± std over seeds) of a linear probe fitted on `shots`
  examples per class (0 = all)."""
  stats = {label: probe_lib.summarise(rows)[2]
           for label, rows in probes.items()}
  layers = list(dict.fromkeys(r['layer'] for rows in probes.values()
                              for r in rows))
  lines = ['| layer | ' + ' | '.join(probes) + ' |',
           '| --- |' + ' --- |' * len(probes)]
  for layer in layers:
    cells = []
    for label in probes:
      m = stats[label].get((layer, shots))
      cells.append(f'{100 * m[0]:.1f} ± {100 * m[1]:.1f}' if m else '')
    lines.append(f'| {layer} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def probe_curves(probes: dict[str, list[dict[str, Any]]], shots: int,
                 path: str | None = None):
  """Probe test accuracy vs layer, one line per probed data set."""
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for label, rows in probes.items():
    layers, _, stats = probe_lib.summarise(rows)
    have = [l for l in layers if (l, shots) in stats]
    ax.errorbar(range(len(have)), [100 * stats[l, shots][0] for l in have],
                yerr=[100 * stats[l, shots][1] for l in have], marker='o',
                capsize=3, label=label)
    ax.set_xticks(range(len(have)), have, rotation=30, ha='right')
  ax.set_ylabel(f'linear probe test accuracy (%), '
                f'{"all" if shots == 0 else shots} per class')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _saved(fig, path)


def _saved(fig, path: str | None):
  if path:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=110)
  return fig
