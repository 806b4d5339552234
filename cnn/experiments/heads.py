"""The classifier-head study (configs/heads_fmnist.py): table and figure.

  family(overrides)                  'flatten_fc', 'gap' or 'googlenet'
  variant_label(overrides)           'global average pooling → classifier,
                                     dropout 0.5' (tables, figure labels)
  short_label(overrides)             'GAP, dropout 0.5' (curve legends)
  head_parameters(name, model, ...)  the head's and auxiliary heads' weights
  study_head_parameters(study)       the same for each group, from its files
  heads_table(study)                 Markdown, mean ± std over seeds
  heads_figure(study, path)          final errors (95 % intervals) + curves

A study is a `cnn.experiments.analysis.Study` (`analysis.load(path)`). The
"head" is everything after the trunk's last feature map: VGG's flatten /
average pool and FC layers (`backbone/classifier_*`) and the classifier
(`head`); GoogLeNet's auxiliary classifiers (`aux1`, `aux2`, used in
training only) are counted apart. Errors are in %, 1 - accuracy; the
training error is the one `cnn.experiments.sweep_results` defines (eval
mode on the training images with `eval_on_train`), the gap is test minus
training error of each seed. Tables give mean ± std (ddof=1) over seeds,
the figure's final numbers the mean with the 95 % t-interval
(`plotting.interval95`), its curves the mean with a ± 1 std band.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from matplotlib import lines as mlines
from matplotlib import patches as mpatches

from cnn import plotting
from cnn.experiments import analysis

GOOGLENET_FAMILY = 'googlenet'
# Colour of each variant in the figure (Okabe-Ito, `plotting.PALETTE`):
# related hues for the two dropouts of one head, the aux pair apart.
VARIANT_COLOURS = {
    ('flatten_fc', False): '#0072B2', ('flatten_fc', True): '#56B4E9',
    ('gap', False): '#D55E00', ('gap', True): '#E69F00',
    (GOOGLENET_FAMILY, False): '#009E73', (GOOGLENET_FAMILY, True): '#CC79A7'}
METRICS = ('final_train_error', 'final_test_error', 'gap')


def family(overrides: dict[str, Any]) -> str:
  """'flatten_fc' (flatten + hidden FC layers), 'gap' (global average
  pooling + the classifier) or 'googlenet', from a member's overrides."""
  if GOOGLENET_FAMILY in str(overrides.get('model_name', '')):
    return GOOGLENET_FAMILY
  pooled = overrides.get('model.pool_to', 'unset') is None
  return 'gap' if pooled and not overrides.get('model.fc') else 'flatten_fc'


def variant_label(overrides: dict[str, Any]) -> str:
  """A variant as the figure and table name it, from a member's overrides:
  'flatten → FC 256 → FC 256 → classifier, dropout 0.5', 'global average
  pooling → classifier, dropout 0', 'GoogLeNet-small, auxiliary heads
  (loss weight 0.3)', 'GoogLeNet-small, no auxiliary heads'."""
  kind = family(overrides)
  if kind == GOOGLENET_FAMILY:
    weight = overrides.get('loss.aux_weight', 0.0)
    if overrides.get('model.aux_heads', True) and weight:
      return f'GoogLeNet-small, auxiliary heads (loss weight {weight:g})'
    return 'GoogLeNet-small, no auxiliary heads'
  if kind == 'gap':
    head = 'global average pooling → classifier'
  else:
    hidden = ''.join(f' → FC {n}' for n in overrides.get('model.fc') or ())
    head = f'flatten{hidden} → classifier'
  dropout = overrides.get('head_dropout', overrides.get('model.dropout'))
  return head if dropout is None else f'{head}, dropout {dropout:g}'


def _variant_key(overrides: dict[str, Any]) -> tuple[str, bool]:
  """(family, with dropout / with auxiliary heads): the colour's key."""
  kind = family(overrides)
  if kind == GOOGLENET_FAMILY:
    return kind, bool(overrides.get('model.aux_heads', True)
                      and overrides.get('loss.aux_weight', 0.0))
  return kind, bool(overrides.get('head_dropout',
                                  overrides.get('model.dropout')))


def short_label(overrides: dict[str, Any]) -> str:
  """The curves' legend: 'flatten + FC, dropout 0.5', 'GAP, dropout 0',
  'no auxiliary heads', 'auxiliary heads (weight 0.3)'."""
  kind, on = _variant_key(overrides)
  if kind == GOOGLENET_FAMILY:
    weight = overrides.get('loss.aux_weight', 0.0)
    return (f'auxiliary heads (weight {weight:g})' if on
            else 'no auxiliary heads')
  head = 'GAP' if kind == 'gap' else 'flatten + FC'
  dropout = overrides.get('head_dropout', overrides.get('model.dropout'))
  return head if dropout is None else f'{head}, dropout {dropout:g}'


def head_parameters(model_name: str, model: dict[str, Any],
                    input_shape: Sequence[int], num_classes: int
                    ) -> dict[str, int]:
  """Parameters of a model's head, from the size accounting (`cnn.summary`).

  Args:
    model_name: registry name.
    model: the backbone options (a member's `config.model`).
    input_shape: (H, W, C) of the images the member trains on.
    num_classes: classes of the classifier.

  Returns:
    {'total': all parameters, 'head': the classifier and the layers between
    the trunk's last feature map and it (VGG's `classifier_*` FCs),
    'aux': the auxiliary classifiers' (GoogLeNet; 0 elsewhere)}.
  """
  from cnn import summary  # pylint: disable=g-import-not-at-top
  s = summary.summarize(model_name, tuple(input_shape), num_classes, **model)
  head = aux = 0
  for row in s.rows:
    parts = row.name.split('/')
    if parts[0] == 'head' or (len(parts) > 1 and
                              parts[1].startswith('classifier_')):
      head += row.params
    elif len(parts) > 1 and parts[1].startswith('aux'):
      aux += row.params
  return dict(total=int(s.totals['params']), head=int(head), aux=int(aux))


def _input_shape(config: dict[str, Any]) -> tuple[tuple[int, ...], int]:
  """((H, W, C), classes) of the images a member's config trains on."""
  from input_pipeline.sources import datasets  # pylint: disable=g-import-not-at-top
  inp = config['input']
  info = datasets.get_dataset_info(
      inp['dataset'], data_dir=inp['data_dir'], manual_dir=inp['manual_dir'],
      download=inp['download'], image_size=inp['image_size'])
  return tuple(info.image_shape), info.num_classes


def study_head_parameters(study: analysis.Study) -> dict[str, dict[str, int]]:
  """`head_parameters` of each group, from the `config.json` of its first
  member that has one under `study.path`; groups without one are left out."""
  out = {}
  for row in study.rows:
    group = study.group_of[row['member']]
    path = os.path.join(study.path, row['member'], 'config.json')
    if group in out or not os.path.exists(path):
      continue
    with open(path) as f:
      config = json.load(f)
    shape, classes = _input_shape(config)
    out[group] = head_parameters(config['model_name'], config['model'],
                                 shape, classes)
  return out


def _variants(study: analysis.Study) -> list[dict[str, Any]]:
  """The groups in sweep order, each with its label, family, sizes and
  per-seed final errors in % (completed members only): {'group', 'label',
  'short', 'family', 'colour', 'params', 'n', 'final_train_error',
  'final_test_error', 'gap'} (the last three lists over seeds, in the same
  seed order)."""
  sizes = {g['group']: g for g in study.groups}
  out: dict[str, dict[str, Any]] = {}
  for row in study.rows:
    group = study.group_of[row['member']]
    overrides = study.overrides.get(row['member'], {})
    v = out.setdefault(group, dict(
        group=group, label=variant_label(overrides), family=family(overrides),
        short=short_label(overrides),
        colour=VARIANT_COLOURS[_variant_key(overrides)],
        params=sizes.get(group, {}).get('params', row.get('params', '')),
        **{m: [] for m in METRICS}))
    if (row['status'] != 'completed' or row['final_test_error'] == ''
        or row['final_train_error'] == ''):
      continue
    train = 100 * float(row['final_train_error'])
    test = 100 * float(row['final_test_error'])
    v['final_train_error'].append(train)
    v['final_test_error'].append(test)
    v['gap'].append(test - train)
  for v in out.values():
    v['n'] = len(v['final_test_error'])
  return list(out.values())


def _mean_std(values: Sequence[float]) -> str:
  if not values:
    return '–'
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f'{np.mean(values):.2f} ± {std:.2f}'


def _count(value) -> str:
  return f'{value:,}' if isinstance(value, (int, np.integer)) else '–'


def heads_table(study: analysis.Study,
                head_params: dict[str, dict[str, int]] | None = None) -> str:
  """The study as a Markdown table, one line per variant in sweep order.

  Columns: variant, parameters (all, as trained: GoogLeNet's include its
  auxiliary heads), head parameters (`head_parameters`; '+ N aux' for the
  auxiliary classifiers), final training error, test error and their gap
  (test - training, per seed), each in % as mean ± std (ddof=1) over the
  completed seeds, and n (completed / planned).

  Args:
    study: an `analysis.Study` of configs/heads_fmnist.py.
    head_params: group -> `head_parameters`; None reads them from the
      members' config.json under `study.path` (`study_head_parameters`).
  """
  if head_params is None:
    head_params = study_head_parameters(study)
  planned = {}
  for row in study.rows:
    group = study.group_of[row['member']]
    planned[group] = planned.get(group, 0) + 1
  lines = ['| variant | parameters | head parameters | training error % | '
           'test error % | gap (test − training) % | n |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for v in _variants(study):
    sizes = head_params.get(v['group'])
    params = sizes['total'] if sizes else v['params']
    head = '–'
    if sizes:
      head = f"{sizes['head']:,}"
      if sizes['aux']:
        head += f" + {sizes['aux']:,} aux"
    cells = [v['label'], _count(params), head,
             *(_mean_std(v[m]) for m in METRICS),
             f"{v['n']}/{planned[v['group']]}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _sizes_text(v: dict[str, Any], sizes: dict[str, int] | None) -> str:
  """'391,338 parameters, 330,762 in the head' (what the figure shows)."""
  total = sizes['total'] if sizes else v['params']
  if not isinstance(total, (int, np.integer)):
    return ''
  text = f'{total:,} parameters'
  if sizes:
    text += f", {sizes['head']:,} in the head"
    if sizes['aux']:
      text += f", {sizes['aux']:,} in the aux heads"
  return text


def _interval(values: Sequence[float]) -> dict[str, Any]:
  mean, half = plotting.interval95(values)
  return dict(values=list(values), mean=mean, half95=half, n=len(values))


def _curve_panel(ax, study: analysis.Study, variants: Sequence[dict],
                 data: dict[str, Any]) -> list[int]:
  """Test (solid) and training (dashed) error vs iterations of `variants`,
  mean over seeds with a ± 1 std band; returns the seed counts drawn."""
  ns, handles = [], []
  for v in variants:
    c = study.group_curves(v['group'])
    if not c or not len(c['step']):
      continue
    plotting.band(ax, c['step'], c['test_error'], c['test_error_std'],
                  color=v['colour'], lw=2.2)
    plotting.band(ax, c['step'], c['train_error'], c['train_error_std'],
                  color=v['colour'], lw=1.0, ls='--')
    handles.append(mlines.Line2D([], [], color=v['colour'], lw=2.2,
                                 label=v['short']))
    ns.append(c['n'])
    data[v['label']] = dict(
        step=c['step'], n=c['n'], test_error_mean=c['test_error'],
        test_error_std=c['test_error_std'], train_error_mean=c['train_error'],
        train_error_std=c['train_error_std'])
  if handles:
    ax.legend(handles=handles, loc='best')
  else:
    ax.text(0.5, 0.5, 'no runs', transform=ax.transAxes, ha='center',
            color='0.5')
  ax.set(xlabel='training iterations', ylabel='error (%)')
  ax.set_ylim(bottom=0)
  return ns


@plotting.styled
def heads_figure(study: analysis.Study, path: str | None = None,
                 head_params: dict[str, dict[str, int]] | None = None):
  """The classifier-head study in one figure.

  Top: the final test error (filled) and training error (hollow) of every
  variant, mean over seeds with the 95 % t-interval, each labelled with its
  parameters (all, and in the head). Bottom: error vs training iterations,
  test solid and training dashed, mean ± 1 std over seeds: the VGG-style
  trunk's four heads (left) and GoogLeNet-small without / with its
  auxiliary heads (right), in the colours of the top panel's labels.

  Args:
    study: an `analysis.Study` of configs/heads_fmnist.py.
    path: where to write the PNG (+ PDF + the JSON of the numbers drawn);
      None writes nothing.
    head_params: group -> `head_parameters`; None reads them from the
      members' files (`study_head_parameters`).

  Returns:
    The figure.
  """
  if head_params is None:
    head_params = study_head_parameters(study)
  variants = _variants(study)
  # Two sub-figures, each with its own constrained layout: the top panel's
  # long labels do not narrow the curves below.
  fig = plotting.Figure(figsize=(11.0, 9.5), layout='constrained')
  upper, lower = fig.subfigures(2, 1, height_ratios=(1.1, 1))
  top = upper.subplots()
  left, right = lower.subplots(1, 2)
  data: dict[str, Any] = {
      'error_bars': '95 % t-interval over seeds', 'unit': 'error %',
      'band': '± 1 std (ddof=1) over seeds', 'variants': {}, 'curves': {}}
  kinds = {g.get('train_error_kind') for g in study.groups}
  train_text = ('training error (eval mode)' if kinds <= {'eval_mode'}
                else 'training error')
  ns, ticks = [], []
  for y, v in enumerate(variants):
    test, train = (_interval(v['final_test_error']),
                   _interval(v['final_train_error']))
    ns.append(test['n'])
    top.errorbar(test['mean'], y - 0.14, xerr=test['half95'], fmt='o',
                 color=v['colour'], ms=7, capsize=4)
    top.errorbar(train['mean'], y + 0.14, xerr=train['half95'], fmt='o',
                 color=v['colour'], mfc='white', ms=7, capsize=4)
    sizes = head_params.get(v['group'])
    ticks.append(f"{v['label']}\n{_sizes_text(v, sizes)}")
    data['variants'][v['label']] = dict(
        group=v['group'], params=sizes['total'] if sizes else v['params'],
        head_params=sizes['head'] if sizes else None,
        aux_params=sizes['aux'] if sizes else None,
        final_test_error=test, final_train_error=train,
        gap=_interval(v['gap']))
  top.set_yticks(range(len(variants)), ticks)
  for tick, v in zip(top.get_yticklabels(), variants, strict=True):
    tick.set_color(v['colour'])
  top.set_ylim(len(variants) - 0.5, -0.5)  # sweep order, top to bottom.
  top.set_xlim(left=0)
  top.grid(False, axis='y')
  top.set(xlabel='final error (%)',
          title=f'Final error per head: mean ± 95 % interval, '
                f'{analysis.seeds_text(ns)}')
  top.legend(handles=[
      mlines.Line2D([], [], color='0.3', marker='o', ls='none',
                    label='test error'),
      mlines.Line2D([], [], color='0.3', marker='o', mfc='white', ls='none',
                    label=train_text)],
             loc='upper left', bbox_to_anchor=(1.01, 1.0))
  curve_ns = []
  for ax, in_panel, title in (
      (left, [v for v in variants if v['family'] != GOOGLENET_FAMILY],
       'VGG-style trunk: four heads'),
      (right, [v for v in variants if v['family'] == GOOGLENET_FAMILY],
       'GoogLeNet-small: auxiliary heads')):
    curve_ns += _curve_panel(ax, study, in_panel, data['curves'])
    ax.set_title(title)
  band = f'band: ± 1 std over {analysis.seeds_text(curve_ns)}'
  lower.legend(handles=[
      mlines.Line2D([], [], color='0.2', lw=2.2, label='test error'),
      mlines.Line2D([], [], color='0.2', lw=1.0, ls='--', label=train_text),
      mpatches.Patch(color='0.2', alpha=0.2, label=band)],
               loc='outside lower center', ncols=3)
  data['train_error'] = train_text
  return plotting.save(fig, path, data)
