"""Figures and tables of saved sweeps, from their files only.

A sweep directory is a workdir of `main.py` on a sweep config, or its small
export under `results/` (`export`: the plan, results and each member's
`config.json`, `metrics.jsonl`, `result.json`; no checkpoints).

  study = load(path)                     members with configs and curves
  depth_curves(study)                    He et al. Fig. 6: error vs iteration
  error_vs_depth(study)                  final error vs depth, 95 % intervals
  accuracy_vs_params(study)              the receptive-field study
  table(study)                           Markdown, mean ± std over seeds
  accuracy_by(study, keys)               test accuracy per override value
  pivot_table(study, row, column)        Markdown, accuracy mean ± std
  rows_table(study, columns)             Markdown, one line per member
  read_probes(dir)                       rows of a --mode=probe probe.csv
  probe_comparison(probes, shots)        Markdown, Zeiler & Fergus: layer x data
  probe_curves(probes, shots)            probe accuracy vs layer per data set
  model_label(name)                      plain20 -> plain-20 (legend names)

Errors are in %, 1 - accuracy; the training error is the one
`cnn.experiments.sweep_results` defines (eval mode on the training images).

Every figure follows the figure standard (`cnn.plotting`): drawn on a bare
`matplotlib.figure.Figure` (pyplot keeps no reference, so drawing in a loop
does not grow memory) and, when a `path` is given, written as PNG + PDF +
a JSON of the numbers drawn (`plotting.save`); the function returns the
figure. Jupyter shows a returned figure as a cell's value or through
`display(fig)`. No backend is chosen here. Models are named as the lectures
name them (plain-20, ResNet-56, LeNet-5: `model_label`); curves over
iterations show mean ± 1 std over seeds, final numbers mean with the 95 %
t-interval over seeds (`plotting.interval95`), and every figure says which.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import re
import shutil
from typing import Any, Sequence

import numpy as np
from matplotlib import lines as mlines
from matplotlib import patches as mpatches
from matplotlib import transforms

from cnn import plotting
from cnn.experiments import probe as probe_lib
from cnn.experiments import sweep, sweep_results

# What a study measures after training beside the run's own files (e.g.
# cnn/experiments/shift_consistency.py's) is copied too, where it exists.
MEMBER_FILES = ('config.json', 'metrics.jsonl', sweep.RESULT_FILE,
                'shift_consistency.json')
SWEEP_FILES = (sweep.PLAN_FILE, 'results.csv', 'results.json')


@dataclasses.dataclass
class Study:
  """A loaded sweep.

  rows: one `cnn.experiments.sweep_results` row per member (status, sizes,
    errors).
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

  def group_curves(self, group: str) -> dict[str, Any]:
    """Mean and std (ddof=1; 0 for one seed) over the completed seeds of
    `group`, at every evaluation step all of them have; `n` the seeds."""
    names = [r['member'] for r in self.rows if r['status'] == 'completed'
             and self.group_of[r['member']] == group]
    curves = [self.curves[n] for n in names if len(self.curves[n]['step'])]
    if not curves:
      return {}
    steps = functools.reduce(np.intersect1d, [c['step'] for c in curves])
    # The last record of a step (a resumed run may have written it twice).
    at = [{int(t): i for i, t in enumerate(c['step'])} for c in curves]
    out: dict[str, Any] = {'step': steps, 'n': len(curves)}
    for key in ('train_error', 'test_error'):
      values = np.stack([c[key][[a[int(t)] for t in steps]]
                         for c, a in zip(curves, at, strict=True)])
      out[key] = values.mean(0)
      out[f'{key}_std'] = (values.std(0, ddof=1) if len(curves) > 1
                           else np.zeros_like(out[key]))
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


MODEL_LABELS = {
    'lenet5': 'LeNet-5',
    'kstack_5x5': 'one 5×5',
    'kstack_3x3x2': 'two 3×3',
    'kstack_3x3': 'one 3×3',
    'kstack_5x5_matched': 'one 5×5, parameter-matched',
}
FAMILY_LABELS = {'resnet': 'ResNet', 'plain': 'plain', 'vgg': 'VGG'}


def model_label(name: str) -> str:
  """A registered model name as the lectures write it: plain20 -> plain-20,
  resnet56 -> ResNet-56, lenet5 -> LeNet-5 (unknown names unchanged)."""
  if name in MODEL_LABELS:
    return MODEL_LABELS[name]
  m = re.fullmatch(r'([a-z]+)(\d+)', name or '')
  if m and m.group(1) in FAMILY_LABELS:
    return f'{FAMILY_LABELS[m.group(1)]}-{m.group(2)}'
  return name


def seeds_text(ns: Sequence[int]) -> str:
  """'n = 3 seeds' (or 'n = 2–3 seeds' where groups differ)."""
  ns = sorted(set(ns)) or [0]
  n = str(ns[0]) if len(ns) == 1 else f'{ns[0]}–{ns[-1]}'
  return f'n = {n} seed' + ('' if n == '1' else 's')


def interval_text(ns: Sequence[int]) -> str:
  return f'mean ± 95 % interval, {seeds_text(ns)}'


def _seed_values(study: Study, metric: str) -> dict[str, list[float]]:
  """Group -> `metric` (an error) of each completed seed, in %."""
  out: dict[str, list[float]] = {}
  for row in study.rows:
    if row['status'] == 'completed' and row[metric] != '':
      out.setdefault(study.group_of[row['member']], []).append(
          100 * float(row[metric]))
  return out


def _interval(values: Sequence[float]) -> dict[str, Any]:
  mean, half = plotting.interval95(values)
  return dict(values=list(values), mean=mean, half95=half, n=len(values))


def _family(group: dict[str, Any]) -> str:
  return 'ResNet' if group['residual'] is True else 'plain'


def _depth_groups(study: Study) -> list[dict[str, Any]]:
  return sorted((g for g in study.groups if g['n']),
                key=lambda g: (g['residual'] is True, g['depth']))


def _train_error_text(groups: Sequence[dict[str, Any]]) -> str:
  kinds = {g.get('train_error_kind') for g in groups}
  return ('training error' if kinds <= {'eval_mode'} else
          'training error (running mean over augmented batches)')


@plotting.styled
def depth_curves(study: Study, path: str | None = None):
  """He et al. 2016, Fig. 6: error vs training iterations, one panel per
  family (plain | ResNet), one colour per depth; the test error bold, the
  training error thin and dashed; each the mean over seeds with a ± 1 std
  band, at every evaluation the runs have."""
  groups = _depth_groups(study)
  depths = sorted({g['depth'] for g in groups})
  colour = {d: plotting.PALETTE[i % len(plotting.PALETTE)]
            for i, d in enumerate(depths)}
  families = ('plain', 'ResNet')
  fig, axes = plotting.figure(1, 2, height=4.4, sharex=True, sharey=True)
  data: dict[str, Any] = {'band': '± 1 std (ddof=1) over seeds',
                          'unit': 'error %', 'models': {}}
  ns = []
  for ax, family in zip(axes, families, strict=True):
    handles = []
    for g in (g for g in groups if _family(g) == family):
      c = study.group_curves(g['group'])
      if not c:
        continue
      label = model_label(g['model_name'])
      plotting.band(ax, c['step'], c['test_error'], c['test_error_std'],
                    color=colour[g['depth']], lw=2.4)
      plotting.band(ax, c['step'], c['train_error'], c['train_error_std'],
                    color=colour[g['depth']], lw=1.0, ls='--')
      handles.append(mlines.Line2D([], [], color=colour[g['depth']], lw=2.4,
                                   label=label))
      ns.append(c['n'])
      data['models'][label] = dict(
          step=c['step'], n=c['n'], test_error_mean=c['test_error'],
          test_error_std=c['test_error_std'],
          train_error_mean=c['train_error'],
          train_error_std=c['train_error_std'])
    ax.set(title=f'{family} networks' if family == 'plain' else 'ResNets',
           xlabel='training iterations')
    ax.set_ylim(bottom=0)
    if handles:
      ax.legend(handles=handles, loc='upper right')
    else:
      ax.text(0.5, 0.5, 'no runs', transform=ax.transAxes, ha='center',
              color='0.5')
  axes[0].set_ylabel('error (%)')
  key = [mlines.Line2D([], [], color='0.2', lw=2.4, label='test error'),
         mlines.Line2D([], [], color='0.2', lw=1.0, ls='--',
                       label=_train_error_text(groups)),
         mpatches.Patch(color='0.2', alpha=0.2,
                        label=f'band: ± 1 std over {seeds_text(ns)}')]
  fig.legend(handles=key, loc='outside lower center', ncols=3)
  data['train_error'] = _train_error_text(groups)
  return plotting.save(fig, path, data)


@plotting.styled
def error_vs_depth(study: Study, path: str | None = None):
  """Final training and test error vs depth, plain and ResNet, mean over
  seeds with the 95 % t-interval as error bars."""
  fig, axes = plotting.figure(1, 2, height=4.0, sharex=True)
  groups = _depth_groups(study)
  data: dict[str, Any] = {'error_bars': '95 % t-interval over seeds',
                          'unit': 'error %'}
  ns = []
  for family, colour, style in (
      ('plain', plotting.PALETTE[1], dict(ls='--', marker='s')),
      ('ResNet', plotting.PALETTE[0], dict(ls='-', marker='o'))):
    gs = [g for g in groups if _family(g) == family]
    if not gs:
      continue
    for ax, key in zip(axes, ('final_train_error', 'final_test_error'),
                       strict=True):
      values = _seed_values(study, key)
      points = [_interval(values.get(g['group'], [])) for g in gs]
      ns += [p['n'] for p in points]
      ax.errorbar([g['depth'] for g in gs], [p['mean'] for p in points],
                  yerr=[p['half95'] for p in points], capsize=4,
                  color=colour, label=family, ms=6, **style)
      data.setdefault(key, {})[family] = {
          model_label(g['model_name']): dict(depth=g['depth'], **p)
          for g, p in zip(gs, points, strict=True)}
  depths = sorted({g['depth'] for g in groups})
  for ax, what in zip(axes, (_train_error_text(groups), 'test error'),
                      strict=True):
    ax.set(xlabel='depth (weighted layers)', ylabel=f'final {what} (%)',
           title=f'final {what.split(" (")[0]}')
    ax.set_xticks(depths)
  if groups:
    axes[1].legend(title=interval_text(ns), loc='best')
  return plotting.save(fig, path, data)


@plotting.styled
def accuracy_vs_params(study: Study, path: str | None = None):
  """Final test (left) and training (right) accuracy vs parameters, one
  marker per form (the receptive-field study: one 5×5 vs two 3×3), mean
  over seeds with the 95 % t-interval as error bars."""
  fig, axes = plotting.figure(1, 2, height=4.2, sharex=True)
  groups = sorted((g for g in study.groups if g['n']),
                  key=lambda g: g['params'])
  markers = 'osD^vP*X'
  data: dict[str, Any] = {'error_bars': '95 % t-interval over seeds',
                          'unit': 'accuracy %', 'forms': {}}
  ns, handles = [], []
  for i, g in enumerate(groups):
    label = model_label(g['model_name'])
    if g['receptive_field']:
      rf = str(g['receptive_field']).replace('x', '×')
      label += f' (receptive field {rf} px)'
    # Forms of (almost) the same size side by side, a few points apart on
    # the page (the data keep their parameter counts).
    twins = [h for h in groups if abs(h['params'] - g['params'])
             <= 0.02 * g['params']]
    shift = 9 * (twins.index(g) - (len(twins) - 1) / 2)
    style = dict(color=plotting.PALETTE[i % len(plotting.PALETTE)],
                 marker=markers[i % len(markers)], ms=7, capsize=4, ls='none')
    entry = data['forms'][label] = dict(params=g['params'])
    for ax, key in zip(axes, ('final_test_error', 'final_train_error'),
                       strict=True):
      errors = _seed_values(study, key).get(g['group'], [])
      p = _interval([100 - e for e in errors])
      ns.append(p['n'])
      drawn = ax.errorbar(g['params'] / 1e3, p['mean'], yerr=p['half95'],
                          **style)
      for artist in drawn.get_children():  # after autoscaling saw the data.
        artist.set_transform(transforms.offset_copy(
            ax.transData, fig=fig, x=shift, units='points'))
      entry[key.replace('error', 'accuracy')] = p
    handles.append(mlines.Line2D([], [], label=label, **{
        k: v for k, v in style.items() if k != 'capsize'}))
  kind = _train_error_text(groups).replace('error', 'accuracy')
  for ax, what in zip(axes, ('test accuracy', kind), strict=True):
    ax.set(xlabel='parameters (thousands)', ylabel=f'final {what} (%)',
           title=f'final {what.split(" (")[0]}')
  if handles:
    fig.legend(handles=handles, loc='outside lower center', ncols=2,
               title=interval_text(ns))
  return plotting.save(fig, path, data)


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


def source_label(study: Study) -> str:
  names = {r['model_name'] for r in study.rows if r['model_name']}
  return ', '.join(sorted(model_label(n) for n in names))


def read_probes(directory: str) -> list[dict[str, Any]]:
  """The rows of a `--mode=probe` output directory's probe.csv (numbers
  parsed)."""
  with open(os.path.join(directory, 'probe.csv')) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    r.update(shots=int(r['shots']), seed=int(r['seed']), dim=int(r['dim']),
             train_accuracy=float(r['train_accuracy']),
             test_accuracy=float(r['test_accuracy']))
    for key in ('l2_reg', 'validation_accuracy'):  # older probe.csv: none.
      r[key] = float(r[key]) if r.get(key, '') != '' else ''
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


PROBE_DATA_LABELS = {'fmnist04': 'source task (Fashion-MNIST 0–4)',
                     'fmnist59': 'similar target (Fashion-MNIST 5–9)',
                     'digits': 'different target (digits)'}


@plotting.styled
def probe_curves(probes: dict[str, list[dict[str, Any]]], shots: int,
                 path: str | None = None, *, network: str | None = None):
  """Probe test accuracy vs layer, one line per probed data set (`probes`:
  label -> `read_probes` rows); mean over seeds with the 95 % t-interval as
  error bars. `network` (a model name) goes into the title."""
  fig, ax = plotting.figure()
  data: dict[str, Any] = {'error_bars': '95 % t-interval over seeds',
                          'unit': 'probe test accuracy %', 'shots': shots,
                          'data': {}}
  ns, layers, methods = [], [], set()
  known = list(PROBE_DATA_LABELS)  # source, similar, different first.
  order = sorted(probes, key=lambda d: known.index(d) if d in known
                 else len(known))
  for i, (label, rows) in enumerate((d, probes[d]) for d in order):
    methods |= {r['method'] for r in rows}
    per_layer: dict[str, list[float]] = {}
    for r in rows:
      if r['shots'] == shots:
        per_layer.setdefault(r['layer'], []).append(100 * r['test_accuracy'])
    layers += [name for name in per_layer if name not in layers]
    points = {name: _interval(v) for name, v in per_layer.items()}
    ns += [p['n'] for p in points.values()]
    ax.errorbar([layers.index(name) for name in points],
                [p['mean'] for p in points.values()],
                yerr=[p['half95'] for p in points.values()],
                marker='osD^v'[i % 5], capsize=4,
                color=plotting.PALETTE[i % len(plotting.PALETTE)],
                label=PROBE_DATA_LABELS.get(label, label))
    data['data'][label] = points
  ax.set_xticks(range(len(layers)), layers, rotation=30, ha='right')
  per_class = 'all examples' if shots == 0 else f'{shots} examples'
  ax.set(xlabel='layer (features probed)',
         ylabel='linear probe test accuracy (%)',
         title=(f'{model_label(network)}: ' if network else '')
         + f"{'/'.join(sorted(methods))} probes, {per_class} per class")
  if probes:
    ax.legend(title=interval_text(ns), loc='best')
  return plotting.save(fig, path, data)
