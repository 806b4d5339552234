"""Aggregates a sweep workdir from its files only (never from flags).

  rows = collect(workdir)             one dict per member (see `COLUMNS`)
  groups = group_over_seeds(rows)     mean, std and n over seeds
  write(workdir)                      results.csv, results.json

Errors are 1 - accuracy. The training error is `train_eval_accuracy` (the
training examples evaluated in eval mode, without augmentation, as
`config.eval_on_train` records it) where a run has it, else the running
accuracy of the training batches (`train_accuracy`, augmented, with the
weights changing during the epoch).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from cnn.experiments import sweep
from cnn.training import metrics as metrics_lib

COLUMNS = (
    'member', 'status', 'model_name', 'depth', 'residual', 'kernel_layout',
    'params', 'conv_params', 'macs', 'receptive_field', 'seed', 'epochs',
    'train_error_kind', 'final_train_error', 'best_train_error',
    'final_test_error', 'best_test_error', 'final_validation_error',
    'best_validation_error', 'diverged_at_step', 'wall_time_s',
    'examples_per_sec',
    'git_commit', 'jax', 'flax', 'devices', 'error')
# Between 'seed' and 'epochs': the sweep's own axes (every overridden field
# but model_name and seed), by their dotted names (`axis_columns`).
AXES_AFTER = 'seed'

# What `final_train_error` / `best_train_error` measure: with
# `eval_on_train`, the training images in eval mode (no augmentation, no
# dropout); else the running mean over the training batches since the
# previous evaluation (train mode, augmented).
TRAIN_ERROR_KINDS = {True: 'eval_mode', False: 'running_batches'}

# Decimal places kept in results.csv / results.json.
ROUNDING = {'error': 5, 'wall_time_s': 1, 'examples_per_sec': 1, 'epochs': 3}

# Averaged over seeds by `group_over_seeds`.
METRICS = ('final_train_error', 'best_train_error', 'final_test_error',
           'best_test_error', 'final_validation_error',
           'best_validation_error', 'wall_time_s', 'examples_per_sec')

# Member statuses that are results: 'completed', and 'diverged' (the loss or
# a gradient went non-finite: a learning rate too high for the network is
# what a study may be measuring, not a failure of the sweep). Means over
# seeds use completed members only.
RESULT_STATUSES = ('completed', 'diverged')


def read_metrics(member_dir: str) -> list[dict[str, Any]]:
  """The evaluation records of `metrics.jsonl` (a half-written last line is
  ignored)."""
  return metrics_lib.read_metrics(member_dir)


def axis_columns(plan_members: Sequence[dict[str, Any]]) -> list[str]:
  """The dotted fields a sweep varies or fixes (its override keys, in order
  of first appearance), but model_name and seed, which have their columns:
  a reader filters rows by them instead of parsing member names."""
  seen = dict.fromkeys(k for m in plan_members for k in m['overrides'])
  return [k for k in seen if k not in ('model_name', 'seed')]


def _dotted(config: dict[str, Any], field: str) -> Any:
  for part in field.split('.'):
    if not isinstance(config, dict) or part not in config:
      return ''
    config = config[part]
  return json.dumps(config) if isinstance(config, (list, dict)) else config


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
  """Floats to what they mean (`ROUNDING`): errors to 5 places, seconds and
  images/s to one."""
  out = dict(row)
  for key, value in row.items():
    if not isinstance(value, float) or math.isnan(value):
      continue
    if key in ROUNDING:
      out[key] = round(value, ROUNDING[key])
    elif '_error' in key:
      out[key] = round(value, ROUNDING['error'])
    elif key.startswith(('wall_time_s', 'examples_per_sec')):
      out[key] = round(value, 1)
  return out


def train_errors(records: Sequence[dict[str, Any]]) -> list[float]:
  key = ('train_eval_accuracy' if records and 'train_eval_accuracy'
         in records[-1] else 'train_accuracy')
  return [1.0 - r[key] for r in records]


def test_errors(records: Sequence[dict[str, Any]]) -> list[float]:
  return [1.0 - r['test_accuracy'] for r in records]


def validation_errors(records: Sequence[dict[str, Any]]) -> list[float]:
  """1 - `validation_accuracy` of the records that have it (runs with
  `config.input.validation_*`)."""
  return [1.0 - r['validation_accuracy'] for r in records
          if 'validation_accuracy' in r]


@functools.lru_cache(maxsize=64)
def _model_facts(model_name: str, model_json: str,
                 input_shape: tuple[int, int, int], num_classes: int
                 ) -> dict[str, Any]:
  """Parameters, multiply-adds, depth and receptive field (of the last
  convolution) from `cnn.summary`. Depth counts the conv and dense layers of the main path
  (1x1 shortcut projections `proj_*` excluded, as in He et al.)."""
  from cnn import summary  # pylint: disable=g-import-not-at-top
  s = summary.summarize(model_name, input_shape, num_classes,
                        **json.loads(model_json))
  weighted = [r for r in s.rows if r.type in ('Conv', 'Dense')]
  convs = [r for r in weighted if r.type == 'Conv']
  # The field of the last convolution (before any global pooling, whose
  # field is the whole image).
  last_rf = convs[-1].rf if convs and convs[-1].rf else None
  return dict(
      params=s.totals['params'], macs=s.totals['macs'],
      conv_params=sum(r.params for r in convs),
      depth=sum('proj_' not in r.name.split('/')[-1] for r in weighted),
      receptive_field='x'.join(map(str, last_rf)) if last_rf else '')


def _input_shape(config: dict[str, Any]) -> tuple[tuple[int, int, int], int]:
  from input_pipeline.sources import datasets  # pylint: disable=g-import-not-at-top
  inp = config['input']
  info = datasets.get_dataset_info(
      inp['dataset'], data_dir=inp['data_dir'], manual_dir=inp['manual_dir'],
      download=inp['download'], image_size=inp['image_size'])
  return tuple(info.image_shape), info.num_classes


def member_row(workdir: str, name: str, axes: Sequence[str] = ()
               ) -> dict[str, Any]:
  """One row of `COLUMNS` (and of the sweep's `axes`) for member `name`
  (status 'missing' if it never started, 'running' if it started but has no
  result)."""
  member_dir = os.path.join(workdir, name)
  row: dict[str, Any] = {c: '' for c in (*COLUMNS, *axes)}
  result = sweep.read_result(member_dir) or {}
  row.update(member=name, status=result.get('status', 'missing'),
             error=result.get('error', ''))
  config_path = os.path.join(member_dir, 'config.json')
  if not os.path.exists(config_path):  # never started, or failed at set-up.
    return row
  with open(config_path) as f:
    config = json.load(f)
  model = config['model']
  row.update(status=result.get('status', 'running'),
             model_name=config['model_name'], seed=config['seed'],
             residual=model.get('residual', ''),
             kernel_layout=model.get('kernel_layout', ''),
             error=result.get('error', ''))
  for key in ('git_commit', 'jax', 'flax', 'wall_time_s',
              'diverged_at_step'):
    row[key] = result.get(key, '')
  for field in axes:
    row[field] = _dotted(config, field)
  row['train_error_kind'] = TRAIN_ERROR_KINDS[bool(config.get(
      'eval_on_train', False))]
  row['devices'] = ' '.join(result.get('devices', []))
  shape, num_classes = _input_shape(config)
  row.update(_model_facts(config['model_name'],
                          json.dumps(model, sort_keys=True), shape,
                          num_classes))
  records = read_metrics(member_dir)
  if records:
    train, test = train_errors(records), test_errors(records)
    # Best over the evaluations of the final one's size (with
    # `eval_subset`, earlier ones saw fewer examples: noisier minima).
    full = [r.get('test_count') == records[-1].get('test_count')
            for r in records]
    row.update(epochs=records[-1]['epoch'], final_train_error=train[-1],
               best_train_error=min(t for t, f in zip(train, full) if f),
               final_test_error=test[-1],
               best_test_error=min(t for t, f in zip(test, full) if f),
               examples_per_sec=float(np.nanmean(
                   [r['examples_per_sec'] for r in records])))
    validation = validation_errors(records)
    if validation:
      row.update(final_validation_error=validation[-1],
                 best_validation_error=min(validation))
  return row


def collect(workdir: str) -> list[dict[str, Any]]:
  """A row per member listed in `workdir/sweep.json`, in sweep order."""
  with open(os.path.join(workdir, sweep.PLAN_FILE)) as f:
    plan = json.load(f)
  axes = axis_columns(plan['members'])
  return [member_row(workdir, m['name'], axes) for m in plan['members']]


def group_name(overrides: dict[str, Any]) -> str:
  """A member's group: its name with the seed override left out."""
  return sweep.member_name({k: v for k, v in overrides.items()
                            if k != 'seed'})


def group_over_seeds(workdir: str, rows: Sequence[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
  """Mean, std (ddof=1; 0 for n = 1) and n over the completed seeds of
  each group of members that differ only in `seed`."""
  with open(os.path.join(workdir, sweep.PLAN_FILE)) as f:
    plan = {m['name']: m for m in json.load(f)['members']}
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    key = group_name(plan[row['member']]['overrides'])
    groups.setdefault(key, []).append(row)
  out = []
  for key, members in groups.items():
    done = [r for r in members if r['status'] == 'completed']
    # Sizes from any member that got as far as writing its config.
    first = next((r for r in members if r['model_name']), members[0])
    group = dict(group=key, n=len(done), n_planned=len(members),
                 n_diverged=sum(r['status'] == 'diverged' for r in members))
    for c in ('model_name', 'depth', 'residual', 'kernel_layout', 'params',
              'conv_params', 'macs', 'receptive_field', 'train_error_kind',
              *[c for c in first if c not in COLUMNS]):  # the sweep's axes.
      group[c] = first[c]
    for metric in METRICS:
      values = np.array([r[metric] for r in done if r[metric] != ''], float)
      group[f'{metric}_mean'] = float(values.mean()) if values.size else (
          math.nan)
      group[f'{metric}_std'] = (float(values.std(ddof=1)) if values.size > 1
                                else 0.0 if values.size else math.nan)
    out.append(group)
  return out


def write(workdir: str) -> dict[str, Any]:
  """Writes results.csv (a row per member) and results.json (rows, groups
  over seeds, missing and failed members) into `workdir`; returns the JSON
  data."""
  rows = collect(workdir)
  groups = [_rounded(g) for g in group_over_seeds(workdir, rows)]
  rows = [_rounded(r) for r in rows]
  axes = [c for c in rows[0] if c not in COLUMNS] if rows else []
  at = COLUMNS.index(AXES_AFTER) + 1
  columns = [*COLUMNS[:at], *axes, *COLUMNS[at:]]
  with open(os.path.join(workdir, 'results.csv.tmp'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(os.path.join(workdir, 'results.csv.tmp'),
             os.path.join(workdir, 'results.csv'))
  data = dict(
      rows=rows, groups=groups,
      missing=[r['member'] for r in rows
               if r['status'] not in (*RESULT_STATUSES, 'failed')],
      diverged=[r['member'] for r in rows if r['status'] == 'diverged'],
      failed={r['member']: r['error'] for r in rows
              if r['status'] == 'failed'})
  sweep.write_json_atomically(os.path.join(workdir, 'results.json'), data)
  return data


def format_groups(groups: Sequence[dict[str, Any]],
                  metrics: Sequence[str] = ('final_train_error',
                                            'final_test_error')) -> str:
  """A Markdown table: one line per group, errors in % as mean ± std."""
  head = ['group', 'params', 'receptive field', 'n',
          *[m.replace('_', ' ') + ' %' for m in metrics]]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for g in groups:
    params = f"{g['params']:,}" if g['params'] != '' else '–'
    cells = [g['group'], params, g['receptive_field'],
             f"{g['n']}/{g['n_planned']}"]
    for m in metrics:
      mean, std = g[f'{m}_mean'], g[f'{m}_std']
      cells.append('–' if math.isnan(mean) else
                   f'{100 * mean:.2f} ± {100 * std:.2f}')
    lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
  return '\n'.join(lines)
