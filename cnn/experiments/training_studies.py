"""Figures and tables of the batch-norm, activation and gradient-flow studies.

Each function reads a sweep directory loaded with
`cnn.experiments.analysis.load(path)` (a `Study`: the rows of results.csv,
each member's curves, the groups) and, for what results.csv does not hold
(zero fractions, gradient norms), each member's `metrics.jsonl`
(`sweep_results.read_metrics(<study.path>/<member>)`):

  batchnorm_curves(study, path)        test error vs step, one curve per
                                       variant (configs/batchnorm_fmnist.py)
  steps_to_accuracy(study, threshold)  per member: the first step whose test
                                       accuracy reaches `threshold`
  steps_table(study, threshold)        Markdown: mean ± std (reached / n)
  batchnorm_table(study)               Markdown: final errors, BN vs no BN
  activations_figure(study, path)      curves, final error, zero fraction
                                       and gradient norm per layer
                                       (configs/activations_fmnist.py)
  activations_table(study)             Markdown: final errors, vs ReLU
  gradient_flow_figure(study, path)    gradient norm vs conv layer at the
                                       first, middle and last evaluation
                                       (configs/gradient_flow_fmnist.py)
  gradient_flow_table(study)           Markdown: final errors, ResNet-56 vs
                                       plain-56, ReLU vs sigmoid
  difference_interval(a, b)            Welch's 95 % interval of mean(a) -
                                       mean(b)

A study's members are grouped into *variants* by their overrides (the seed
left out): `batchnorm_variants`, `activation_variants`,
`gradient_flow_variants`. Errors are in %, 1 - accuracy; the training error
is the one `cnn.experiments.sweep_results` defines (eval mode on the
training images). Figures follow the figure standard (`cnn.plotting`):
curves are the mean over completed seeds with a ± 1 std band, final numbers
the mean with the 95 % t-interval over seeds, and each figure says which;
`path` writes the PNG, a PDF and the JSON of the numbers drawn. Members
that diverged (status 'diverged') are results: the curves mark them and
the tables count them; means use the completed members.
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Any, Callable, Hashable, Sequence

import numpy as np
from matplotlib import lines as mlines
from matplotlib import patches as mpatches

from cnn import plotting
from cnn.common import errors
from cnn.experiments import analysis, sweep_results
from cnn.training import steps as steps_lib

Study = analysis.Study
GRAD_PREFIX = steps_lib.GRAD_NORM_PREFIX  # 'grad_norm/'
ZERO_PREFIX = 'test_zero_fraction/'
# Gradient norms are drawn on a log axis: a norm of exactly 0 (a dead
# layer) is drawn at this floor instead of -infinity.
NORM_FLOOR = 1e-12

ACTIVATION_LABELS = {
    'relu': 'ReLU', 'leaky_relu': 'leaky ReLU', 'elu': 'ELU', 'selu': 'SELU',
    'gelu': 'GELU', 'tanh': 'tanh', 'sigmoid': 'sigmoid',
    'identity': 'identity (linear)', 'silu': 'SiLU', 'relu6': 'ReLU6'}


def activation_label(name: str) -> str:
  """'leaky_relu' -> 'leaky ReLU' (unknown names unchanged)."""
  return ACTIVATION_LABELS.get(name, name)


# ------------------------------------------------------------------ members


def _rows(study: Study) -> dict[str, dict[str, Any]]:
  return {r['member']: r for r in study.rows}


def _status(study: Study, member: str) -> str:
  return _rows(study)[member]['status']


def records(study: Study, member: str) -> list[dict[str, Any]]:
  """The evaluation records of `member`'s metrics.jsonl (none if the study
  directory has no such file)."""
  member_dir = os.path.join(study.path, member)
  if not os.path.exists(os.path.join(member_dir, 'metrics.jsonl')):
    return []
  return sweep_results.read_metrics(member_dir)


def variants_of(study: Study, key: Callable[[dict[str, Any]], Hashable]
                ) -> dict[Hashable, list[str]]:
  """Members grouped by `key(overrides)`, in sweep order: {variant: member
  names}. Only members whose status is a result (completed or diverged)."""
  out: dict[Hashable, list[str]] = {}
  for row in study.rows:
    if row['status'] in sweep_results.RESULT_STATUSES:
      overrides = study.overrides.get(row['member'], {})
      out.setdefault(key(overrides), []).append(row['member'])
  return out


def _completed(study: Study, members: Sequence[str]) -> list[str]:
  return [m for m in members if _status(study, m) == 'completed']


def _diverged(study: Study, members: Sequence[str]) -> list[str]:
  return [m for m in members if _status(study, m) == 'diverged']


def _values(study: Study, members: Sequence[str], metric: str) -> list[float]:
  """`metric` (an error, a fraction) of each completed member, in %."""
  rows = _rows(study)
  return [100 * float(rows[m][metric]) for m in _completed(study, members)
          if rows[m].get(metric, '') != '']


def _mean_curve(study: Study, members: Sequence[str],
                key: str = 'test_error') -> dict[str, Any]:
  """Mean and std (ddof=1; 0 for one) of the completed members' `key`
  curve, at every evaluation step all of them have; {} if none."""
  curves = [study.curves[m] for m in _completed(study, members)
            if len(study.curves.get(m, {}).get('step', ()))]
  if not curves:
    return {}
  steps = curves[0]['step']
  for c in curves[1:]:
    steps = np.intersect1d(steps, c['step'])
  # The last record of a step (a resumed run may have written it twice).
  at = [{int(t): i for i, t in enumerate(c['step'])} for c in curves]
  values = np.stack([np.asarray(c[key], float)[[a[int(t)] for t in steps]]
                     for c, a in zip(curves, at, strict=True)])
  return dict(step=np.asarray(steps), n=len(curves), mean=values.mean(0),
              std=(values.std(0, ddof=1) if len(curves) > 1
                   else np.zeros(values.shape[1])))


# --------------------------------------------------------------- statistics


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return math.nan, math.nan, 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), std, len(values)


def difference_interval(a: Sequence[float], b: Sequence[float]
                        ) -> dict[str, Any]:
  """mean(a) - mean(b) with Welch's 95 % t-interval (unequal variances).

  Args:
    a, b: the values of each seed of the two variants (e.g. final test
      errors in %); NaNs are dropped.

  Returns:
    dict(difference, half95, low, high, n_a, n_b, mean_a, mean_b); half95
    (and low/high) NaN when either side has fewer than 2 values. With both
    spreads 0 the interval is the difference itself (half95 = 0).
  """
  a = np.asarray([v for v in a if math.isfinite(v)], float)
  b = np.asarray([v for v in b if math.isfinite(v)], float)
  out = dict(n_a=int(a.size), n_b=int(b.size),
             mean_a=float(a.mean()) if a.size else math.nan,
             mean_b=float(b.mean()) if b.size else math.nan)
  out['difference'] = out['mean_a'] - out['mean_b']
  half = math.nan
  if a.size >= 2 and b.size >= 2:
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
      half = 0.0
    else:
      from scipy import stats  # pylint: disable=g-import-not-at-top
      # Welch-Satterthwaite degrees of freedom.
      dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
      half = float(stats.t.ppf(0.975, dof) * math.sqrt(va + vb))
  out.update(half95=half, low=out['difference'] - half,
             high=out['difference'] + half)
  return out


def _cell(mean: float, std: float, n: int, digits: int = 2) -> str:
  if n == 0 or not math.isfinite(mean):
    return '–'
  return f'{mean:.{digits}f} ± {std:.{digits}f} ({n})'


def variant_table(study: Study, variants: dict[str, Sequence[str]],
                  extra: dict[str, Callable[[Sequence[str]], str]]
                  | None = None) -> str:
  """Markdown, one line per variant (label -> its members): completed /
  members, diverged, final test and training error in % as mean ± std (n)
  over the completed seeds, and `extra` columns (title -> a function of
  the members giving the cell)."""
  extra = extra or {}
  head = ['variant', 'completed / members', 'diverged',
          'final test error %', 'final training error %', *extra]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for label, members in variants.items():
    cells = [label, f'{len(_completed(study, members))} / {len(members)}',
             str(len(_diverged(study, members)))]
    for metric in ('final_test_error', 'final_train_error'):
      cells.append(_cell(*_mean_std(_values(study, members, metric))))
    cells += [f(members) for f in extra.values()]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def comparison_table(study: Study,
                     comparisons: Sequence[tuple[str, Sequence[str],
                                                 Sequence[str]]],
                     metric: str = 'final_test_error') -> str:
  """Markdown, one line per (label, members of A, members of B): the
  difference of the mean `metric` (an error, in percentage points) of A's
  and B's completed seeds with Welch's 95 % interval."""
  what = metric.replace('final_', 'final ').replace('_', ' ')
  head = ['comparison (A − B)', f'A: {what} %', f'B: {what} %',
          'difference (points)', '95 % interval (Welch)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for label, a, b in comparisons:
    va, vb = _values(study, a, metric), _values(study, b, metric)
    d = difference_interval(va, vb)
    interval = ('–' if not math.isfinite(d['half95']) else
                f"[{d['low']:+.2f}, {d['high']:+.2f}]")
    difference = ('–' if not math.isfinite(d['difference'])
                  else f"{d['difference']:+.2f}")
    lines.append('| ' + ' | '.join([
        label, _cell(*_mean_std(va)), _cell(*_mean_std(vb)), difference,
        interval]) + ' |')
  return '\n'.join(lines)


# ------------------------------------------------------------ batch norm


def _batch_norm(overrides: dict[str, Any]) -> bool:
  if 'model.batch_norm' in overrides:
    return bool(overrides['model.batch_norm'])
  return '_bn' in str(overrides.get('model_name', ''))


def base_learning_rate(study: Study) -> float:
  """The study's base learning rate: the smallest one its members set (the
  base variants run at 1x it, the others at multiples)."""
  rates = [o['optimizer.learning_rate'] for o in study.overrides.values()
           if 'optimizer.learning_rate' in o]
  if not rates:
    raise errors.UserError(
        f'No member of {study.path} sets optimizer.learning_rate: pass '
        'base_lr= (the learning rate of the 1x variants).')
  return float(min(rates))


def batchnorm_variants(study: Study, base_lr: float | None = None
                       ) -> dict[str, list[str]]:
  """{label: members} of a batch-norm study, labels as 'BN, 5× lr',
  'no BN, 1× lr' or 'BN, sigmoid, 1× lr' (the activation named when it
  is not ReLU); the multiplier is the learning rate over `base_lr`
  (default `base_learning_rate`)."""
  base = base_lr or base_learning_rate(study)

  def key(o):
    mult = o.get('optimizer.learning_rate', base) / base
    act = o.get('model.activation', 'relu')
    return (_batch_norm(o), act, round(mult, 3))

  out = {}
  for (bn, act, mult), members in variants_of(study, key).items():
    act_text = '' if act == 'relu' else f', {activation_label(act)}'
    out[f"{'BN' if bn else 'no BN'}{act_text}, {mult:g}× lr"] = members
  return out


def _check_threshold(threshold: float) -> None:
  if not 0 < threshold <= 1:
    raise errors.UserError(
        f'threshold={threshold}: give the test accuracy as a fraction in '
        '(0, 1], e.g. 0.85 for 85 %.')


def steps_to_accuracy(study: Study, threshold: float
                      ) -> dict[str, int | None]:
  """{member: the first evaluation step whose test accuracy is >=
  `threshold` (a fraction), or None if none is}, for the completed and
  diverged members (a diverged member counts if it got there first).

  Evaluations before the last may use the first `eval_subset` test images
  only (the config says): the step is the first evaluation at or above the
  threshold, so its resolution is the evaluation interval.
  """
  _check_threshold(threshold)
  out: dict[str, int | None] = {}
  for row in study.rows:
    if row['status'] not in sweep_results.RESULT_STATUSES:
      continue
    curve = study.curves.get(row['member'], {})
    accuracy = 1 - np.asarray(curve.get('test_error', []), float) / 100
    reached = np.flatnonzero(accuracy >= threshold - 1e-9)
    out[row['member']] = (int(curve['step'][reached[0]]) if reached.size
                          else None)
  return out


def steps_table(study: Study, threshold: float,
                base_lr: float | None = None) -> str:
  """Markdown, one line per batch-norm variant: the steps to reach
  `threshold` test accuracy as mean ± std over the members that reached
  it, and how many did (reached / members)."""
  reached = steps_to_accuracy(study, threshold)
  head = ['variant', f'steps to {100 * threshold:g} % test accuracy',
          'reached / members', 'diverged']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for label, members in batchnorm_variants(study, base_lr).items():
    values = [reached[m] for m in members if reached.get(m) is not None]
    mean, std, n = _mean_std([float(v) for v in values])
    cell = '–' if not n else f'{mean:.0f} ± {std:.0f}'
    lines.append(f'| {label} | {cell} | {n} / {len(members)} | '
                 f'{len(_diverged(study, members))} |')
  return '\n'.join(lines)


def batchnorm_table(study: Study, base_lr: float | None = None) -> str:
  """Markdown: each variant's final errors (mean ± std (n)), then the
  comparisons with the network without BN at the base rate ('no BN, 1×
  lr'): each BN variant's final test error minus its, Welch's 95 %
  interval."""
  variants = batchnorm_variants(study, base_lr)
  parts = [variant_table(study, variants)]
  baseline = variants.get('no BN, 1× lr')
  comparisons = [(f'{label} − no BN, 1× lr', members, baseline)
                 for label, members in variants.items()
                 if baseline and label.startswith('BN')]
  if comparisons:
    parts.append(comparison_table(study, comparisons))
  return '\n\n'.join(parts)


def _member_mark(ax, curve: dict[str, np.ndarray], row: dict[str, Any],
                 colour: str) -> dict[str, Any]:
  """A diverged member: its curve thin and dotted, an × where it stopped
  (at its last evaluation, or at 90 % error at `diverged_at_step` when it
  diverged before the first)."""
  step = np.asarray(curve.get('step', []))
  error = np.asarray(curve.get('test_error', []), float)
  if step.size:
    ax.plot(step, error, color=colour, lw=0.9, ls=':')
    x, y = step[-1], error[-1]
  else:
    x, y = row.get('diverged_at_step') or 0, 90.0
  ax.plot([x], [y], marker='x', ms=8, mew=2, color=colour, ls='none')
  return dict(step=step, test_error=error,
              diverged_at_step=row.get('diverged_at_step', ''))


@plotting.styled
def batchnorm_curves(study: Study, path: str | None = None, *,
                     base_lr: float | None = None,
                     threshold: float | None = None):
  """Test error vs training step, one curve per batch-norm variant (Ioffe
  & Szegedy 2015, Fig. 2): the mean over completed seeds with a ± 1 std
  band; each diverged member thin and dotted up to its last evaluation,
  ended by an ×, and counted in the legend. `threshold` (a test accuracy,
  a fraction) draws the line whose first crossing `steps_to_accuracy`
  counts."""
  fig, ax = plotting.figure(height=5.2)
  rows = _rows(study)
  data: dict[str, Any] = {'band': '± 1 std (ddof=1) over completed seeds',
                          'unit': 'test error %', 'variants': {}}
  handles, ns = [], []
  for i, (label, members) in enumerate(
      batchnorm_variants(study, base_lr).items()):
    colour = plotting.PALETTE[i % len(plotting.PALETTE)]
    style = dict(color=colour, lw=2.0, ls='--' if 'no BN' in label else '-')
    c = _mean_curve(study, members)
    if c:
      plotting.band(ax, c['step'], c['mean'], c['std'], **style)
      ns.append(c['n'])
    diverged = _diverged(study, members)
    entry = data['variants'][label] = dict(
        n=c.get('n', 0), members=len(members), n_diverged=len(diverged),
        step=c.get('step', []), test_error_mean=c.get('mean', []),
        test_error_std=c.get('std', []), diverged={})
    for m in diverged:
      entry['diverged'][m] = _member_mark(ax, study.curves.get(m, {}),
                                          rows[m], colour)
    text = f'{label}: {len(diverged)}/{len(members)} diverged' if diverged \
        else label
    handles.append(mlines.Line2D([], [], label=text, **style))
  if threshold is not None:
    _check_threshold(threshold)
    ax.axhline(100 * (1 - threshold), color='0.35', lw=1.0, ls='-.')
    handles.append(mlines.Line2D([], [], color='0.35', lw=1.0, ls='-.',
                                 label=f'{100 * threshold:g} % test accuracy'))
    data['threshold_accuracy'] = threshold
  if any(e['n_diverged'] for e in data['variants'].values()):
    handles.append(mlines.Line2D([], [], color='0.2', marker='x', ls=':',
                                 lw=0.9, mew=2, label='diverged member'))
  band = f'band: ± 1 std over {analysis.seeds_text(ns)}'
  handles.append(mpatches.Patch(color='0.2', alpha=0.2, label=band))
  ax.set_ylim(0, 100)
  ax.set(xlabel='training steps', ylabel='test error (%)',
         title=f'{_model_text(study)}: with and without batch norm')
  fig.legend(handles=handles, loc='outside lower center', ncols=2)
  return plotting.save(fig, path, data)


def _model_text(study: Study) -> str:
  names = sorted({r['model_name'] for r in study.rows if r.get('model_name')})
  labels = [analysis.model_label(n) for n in names]
  return ', '.join(re.sub(r'^vgg(\d+)(_bn)?_small$', r'VGG-\1 (small)', n)
                   for n in labels) or 'network'


# ----------------------------------------------------------- activations


def activation_variants(study: Study) -> dict[str, list[str]]:
  """{activation name: members}, in sweep order (ReLU when unset)."""
  return variants_of(study, lambda o: o.get('model.activation', 'relu'))


def _last_record(study: Study, member: str) -> dict[str, Any]:
  rs = records(study, member)
  return rs[-1] if rs else {}


def _prefixed(record: dict[str, Any], prefix: str,
              keep: Callable[[str], bool] = lambda name: True
              ) -> dict[str, float]:
  """{name: value} of `record`'s keys `prefix + name`, in record order."""
  return {k[len(prefix):]: float(v) for k, v in record.items()
          if k.startswith(prefix) and keep(k[len(prefix):])}


def stage_order(stage: str) -> tuple[int, int, str]:
  """Sort key of the model's `out` names in forward order: 'stem', then
  'stage1', 'stage2', ..., then the rest ('pre_logits') by name
  (metrics.jsonl lists them alphabetically)."""
  if stage == 'stem':
    return (0, 0, stage)
  m = re.fullmatch(r'stage(\d+)', stage)
  return (1, int(m.group(1)), stage) if m else (2, 0, stage)


def zero_fractions(study: Study, members: Sequence[str]
                   ) -> dict[str, dict[str, float]]:
  """{stage: {'mean', 'std', 'n'}} of the fraction (in %) of exactly-zero
  activations over the test set at the last evaluation
  (`test_zero_fraction/<stage>`, `config.log_zero_fraction`), over the
  completed `members`, in forward order (`stage_order`; the logits left
  out)."""
  per_stage: dict[str, list[float]] = {}
  for m in _completed(study, members):
    for stage, v in _prefixed(_last_record(study, m), ZERO_PREFIX,
                              lambda s: s != 'logits').items():
      per_stage.setdefault(stage, []).append(100 * v)
  return {s: dict(zip(('mean', 'std', 'n'), _mean_std(per_stage[s]),
                      strict=True))
          for s in sorted(per_stage, key=stage_order)}


def _geometric(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(geometric mean, geometric std factor) over axis 0 of positive
  `values` (floored at NORM_FLOOR): the band is mean ×/÷ factor."""
  logs = np.log(np.maximum(values, NORM_FLOOR))
  spread = logs.std(0, ddof=1) if len(values) > 1 else np.zeros(
      logs.shape[1])
  return np.exp(logs.mean(0)), np.exp(spread)


def layer_grad_norms(study: Study, members: Sequence[str],
                     step: int | None = None,
                     keep: Callable[[str], bool] = lambda module: True
                     ) -> dict[str, Any]:
  """Per-layer gradient norms of the completed `members` at one evaluation.

  Args:
    study: the study.
    members: member names (a variant's seeds).
    step: the evaluation step (the last record of that step); None: each
      member's last evaluation.
    keep: which modules (paths without 'grad_norm/') to keep.

  Returns:
    dict(modules: [module path, in forward order], mean: geometric mean
    over members [layers], factor: geometric std factor [layers] (band =
    mean ×/÷ factor), values: [members, layers], n, step); {} when no
    member has the norms at that step.
  """
  rows = []
  modules: list[str] | None = None
  steps_seen = []
  for m in _completed(study, members):
    rs = records(study, m)
    if step is not None:
      rs = [r for r in rs if r['step'] == step]
    norms = _prefixed(rs[-1], GRAD_PREFIX, keep) if rs else {}
    if not norms:
      continue
    if modules is None:
      modules = list(norms)
    elif list(norms) != modules:
      continue  # another network's layers: not averaged together.
    rows.append([norms[k] for k in modules])
    steps_seen.append(rs[-1]['step'])
  if not rows:
    return {}
  values = np.asarray(rows, float)
  mean, factor = _geometric(values)
  return dict(modules=modules, mean=mean, factor=factor, values=values,
              n=len(rows), step=steps_seen[0] if step is None else step)


def _short_module(path: str) -> str:
  """'backbone/c1_conv' -> 'c1_conv', 'head' -> 'head'."""
  return path.split('/', 1)[1] if path.startswith('backbone/') else path


@plotting.styled
def activations_figure(study: Study, path: str | None = None):
  """Four panels, one colour per activation: (a) test error vs step, mean
  over seeds with a ± 1 std band; (b) final test error, mean with the 95 %
  t-interval; (c) the fraction of exactly-zero activations of each stage
  over the test set at the end, bars of the mean ± 1 std; (d) each layer's
  gradient norm at the last evaluation (mean since the previous one),
  geometric mean over seeds with a ×/÷ geometric-std band, log scale."""
  fig, axes = plotting.figure(2, 2, width=11.0, height=8.6)
  (curves_ax, final_ax), (zero_ax, grad_ax) = axes
  variants = activation_variants(study)
  data: dict[str, Any] = {
      'curves': {'band': '± 1 std (ddof=1) over seeds', 'unit':
                 'test error %'},
      'final': {'error_bars': '95 % t-interval over seeds',
                'unit': 'test error %'},
      'zero_fraction': {'band': '± 1 std over seeds',
                        'unit': '% of activations exactly 0, test set'},
      'grad_norm': {'band': 'geometric mean ×/÷ geometric std over seeds',
                    'unit': 'L2 norm of the gradient'}}
  handles, ns, names = [], [], list(variants)
  bar = 0.8 / max(1, len(names))  # width of one activation's zero bar.
  zeros_of = {name: zero_fractions(study, variants[name]) for name in names}
  stages = sorted({s for z in zeros_of.values() for s in z}, key=stage_order)
  modules: list[str] = []
  for i, name in enumerate(names):
    members = variants[name]
    colour = plotting.PALETTE[i % len(plotting.PALETTE)]
    label = activation_label(name)
    style = dict(color=colour, ls='--' if i >= len(plotting.PALETTE) else '-')
    handles.append(mlines.Line2D([], [], label=label, marker='o', **style))
    c = _mean_curve(study, members)
    if c:
      plotting.band(curves_ax, c['step'], c['mean'], c['std'], **style)
      ns.append(c['n'])
      data['curves'][label] = dict(step=c['step'], mean=c['mean'],
                                   std=c['std'], n=c['n'])
    values = _values(study, members, 'final_test_error')
    mean, half = plotting.interval95(values)
    # Horizontal: the activations' names stay readable, unrotated.
    final_ax.errorbar([mean], [i], xerr=[half], marker='o', capsize=4,
                      color=colour, ls='none')
    data['final'][label] = dict(values=values, mean=mean, half95=half,
                                n=len(values))
    zeros = zeros_of[name]
    if zeros:
      # Bars side by side per stage: most activations have no exact zeros,
      # and lines at 0 would hide each other.
      x = np.array([stages.index(s) for s in zeros]) + bar * (
          i - (len(names) - 1) / 2)
      zero_ax.bar(x, [z['mean'] for z in zeros.values()], width=bar,
                  yerr=[z['std'] for z in zeros.values()], color=colour,
                  error_kw=dict(lw=0.8, capsize=1.5))
      data['zero_fraction'][label] = zeros
    grads = layer_grad_norms(study, members)
    if grads:
      modules += [m for m in grads['modules'] if m not in modules]
      x = [modules.index(m) for m in grads['modules']]
      grad_ax.plot(x, grads['mean'], marker='o', ms=4, **style)
      grad_ax.fill_between(x, grads['mean'] / grads['factor'],
                           grads['mean'] * grads['factor'], color=colour,
                           alpha=0.2, linewidth=0)
      data['grad_norm'][label] = dict(
          step=grads['step'], n=grads['n'],
          **{m: dict(mean=v, factor=f) for m, v, f in zip(
              grads['modules'], grads['mean'], grads['factor'],
              strict=True)})
  curves_ax.set(xlabel='training steps', ylabel='test error (%)',
                title='(a) test error, mean ± 1 std')
  curves_ax.set_ylim(bottom=0)
  final_ax.set_yticks(range(len(names)),
                      [activation_label(n) for n in names])
  final_ax.set_ylim(len(names) - 0.5, -0.5)  # the first activation on top.
  final_ax.set(xlabel='final test error (%)',
               title='(b) final test error, mean ± 95 % interval')
  zero_ax.set_xticks(range(len(stages)), stages, rotation=30, ha='right')
  zero_ax.set(ylabel='activations exactly 0 (%)', ylim=(0, 100),
              title='(c) zeros over the test set at the end, ± 1 std')
  grad_ax.set_yscale('log')
  grad_ax.set_xticks(range(len(modules)), map(_short_module, modules),
                     rotation=30, ha='right')
  grad_ax.set(ylabel='gradient L2 norm',
              title='(d) gradient norm per layer at the end')
  for ax, empty in ((zero_ax, not stages), (grad_ax, not modules)):
    if empty:
      ax.text(0.5, 0.5, 'not logged', transform=ax.transAxes, ha='center',
              color='0.5')
  fig.suptitle(f'{_model_text(study)} without batch norm: one network, '
               f'{len(names)} activations ({analysis.seeds_text(ns)})')
  if handles:
    fig.legend(handles=handles, loc='outside lower center',
               ncols=min(len(handles), 4))
  return plotting.save(fig, path, data)


def activations_table(study: Study) -> str:
  """Markdown: each activation's final errors (mean ± std (n)) and the
  mean zero fraction over its stages; then every activation against ReLU
  (its final test error minus ReLU's, Welch's 95 % interval)."""
  variants = activation_variants(study)

  def zeros(members):
    z = zero_fractions(study, members)
    return (f"{np.mean([v['mean'] for v in z.values()]):.1f}" if z
            else '–')

  labelled = {activation_label(k): v for k, v in variants.items()}
  parts = [variant_table(study, labelled, {
      'zeros, mean over stages %': zeros})]
  if 'relu' in variants:
    parts.append(comparison_table(study, [
        (f'{activation_label(k)} − ReLU', v, variants['relu'])
        for k, v in variants.items() if k != 'relu']))
  return '\n\n'.join(parts)


# --------------------------------------------------------- gradient flow


def is_conv(module: str) -> bool:
  """A main-path convolution's module path ('backbone/stem_conv',
  'backbone/stage2_block1/conv1', 'backbone/c1_conv'), not a 1x1
  projection shortcut (`proj_conv`, outside the layer count as in He et
  al.)."""
  last = module.rsplit('/', 1)[-1]
  return 'conv' in last and not last.startswith('proj')


def gradient_flow_variants(study: Study) -> dict[tuple[str, str],
                                                   list[str]]:
  """{(model name, activation): members}, in sweep order."""
  rows = _rows(study)

  def key(o):
    return (o.get('model_name') or '', o.get('model.activation', 'relu'))

  out = variants_of(study, key)
  # A member without a model_name override: its row's model.
  return {(k[0] or rows[v[0]].get('model_name', ''), k[1]): v
          for k, v in out.items()}


def _evaluation_steps(study: Study, members: Sequence[str],
                      count: int = 3) -> list[int]:
  """The first, middle and last (`count` spread evenly) evaluation steps
  every completed member has gradient norms at."""
  common = None
  for m in _completed(study, members):
    steps = {r['step'] for r in records(study, m)
             if any(k.startswith(GRAD_PREFIX) for k in r)}
    common = steps if common is None else common & steps
  steps = sorted(common or ())
  if len(steps) <= count:
    return steps
  at = np.linspace(0, len(steps) - 1, count).round().astype(int)
  return [steps[i] for i in dict.fromkeys(at)]


def _epoch_of(study: Study, members: Sequence[str], step: int) -> float | None:
  for m in _completed(study, members):
    for r in records(study, m):
      if r['step'] == step and 'epoch' in r:
        return float(r['epoch'])
  return None


@plotting.styled
def gradient_flow_figure(study: Study, path: str | None = None):
  """Gradient norm (log scale) against the conv layer's index (1 = the
  input side, in forward order; `is_conv`), one panel per network and
  activation (rows: networks, columns: activations), at the first, middle
  and last evaluation: each layer's mean gradient norm since the previous
  evaluation, geometric mean over seeds with a ×/÷ geometric-std band.
  All panels share the y axis, so heights compare across networks."""
  variants = gradient_flow_variants(study)
  models = list(dict.fromkeys(k[0] for k in variants))
  acts = list(dict.fromkeys(k[1] for k in variants))
  fig, axes = plotting.figure(max(1, len(models)), max(1, len(acts)),
                              width=max(8.0, 4.6 * len(acts)),
                              height=3.4 * max(1, len(models)) + 1.0,
                              sharex=True, sharey=True, squeeze=False)
  data: dict[str, Any] = {
      'band': 'geometric mean ×/÷ geometric std over seeds',
      'unit': 'L2 norm of the gradient, mean since the previous evaluation',
      'x': 'conv layer index (1 = input side)', 'panels': {}}
  ns, drawn = [], False
  shades = (plotting.PALETTE[4], plotting.PALETTE[2], plotting.PALETTE[0])
  for r, model in enumerate(models):
    for c, act in enumerate(acts):
      ax = axes[r][c]
      title = f'{analysis.model_label(model)}, {activation_label(act)}'
      ax.set_title(title)
      members = variants.get((model, act), [])
      panel = data['panels'][title] = {}
      steps = _evaluation_steps(study, members)
      for j, step in enumerate(steps):
        g = layer_grad_norms(study, members, step, keep=is_conv)
        if not g:
          continue
        x = np.arange(1, len(g['modules']) + 1)
        colour = shades[j % len(shades)] if len(steps) <= len(shades) \
            else plotting.PALETTE[j % len(plotting.PALETTE)]
        epoch = _epoch_of(study, members, step)
        label = (f'step {step} (epoch {round(epoch, 1):g})'
                 if epoch is not None else f'step {step}')
        ax.plot(x, g['mean'], color=colour, lw=1.6, label=label)
        ax.fill_between(x, g['mean'] / g['factor'], g['mean'] * g['factor'],
                        color=colour, alpha=0.2, linewidth=0)
        ns.append(g['n'])
        drawn = True
        panel[label] = dict(step=step, epoch=epoch, n=g['n'],
                            modules=g['modules'], mean=g['mean'],
                            factor=g['factor'])
      ax.set_yscale('log')
      if panel:
        ax.legend(loc='lower right', fontsize=8)
      else:
        ax.text(0.5, 0.5, 'no gradient norms logged' if _completed(
            study, members) else 'no completed runs',
                transform=ax.transAxes, ha='center', color='0.5')
      if r == len(models) - 1:
        ax.set_xlabel('conv layer (1 = input side)')
      if c == 0:
        ax.set_ylabel('gradient L2 norm')
  fig.suptitle('Gradient norm per conv layer during training '
               f'({analysis.seeds_text(ns)}; band: ×/÷ geometric std)')
  if not drawn:
    data['note'] = 'no gradient norms (config.log_grad_norms was off?)'
  return plotting.save(fig, path, data)


def _first_last_ratio(study: Study, members: Sequence[str]) -> str:
  """Geometric mean over seeds of |grad first conv| / |grad last conv| at
  the last evaluation, as text."""
  ratios = []
  for m in _completed(study, members):
    g = layer_grad_norms(study, [m], keep=is_conv)
    if g and len(g['modules']) > 1:
      first, last = g['values'][0][0], g['values'][0][-1]
      ratios.append(max(first, NORM_FLOOR) / max(last, NORM_FLOOR))
  if not ratios:
    return '–'
  return f'{math.exp(np.mean(np.log(ratios))):.3g} ({len(ratios)})'


def gradient_flow_table(study: Study) -> str:
  """Markdown: each network and activation's final errors (mean ± std (n))
  and the ratio of the first conv layer's gradient norm to the last's at
  the end (geometric mean over seeds); then ResNet-56 − plain-56 per
  activation and sigmoid − ReLU per network (final test error, Welch's 95 %
  interval)."""
  variants = gradient_flow_variants(study)
  label = lambda k: f'{analysis.model_label(k[0])}, {activation_label(k[1])}'
  parts = [variant_table(
      study, {label(k): v for k, v in variants.items()},
      {'first / last conv gradient norm at the end': functools.partial(
          _first_last_ratio, study)})]
  comparisons = []
  for (model, act), members in variants.items():
    if model.startswith('resnet'):
      twin = ('plain' + model[len('resnet'):], act)
      if twin in variants:
        comparisons.append((f'{label((model, act))} − '
                            f'{label(twin)}', members, variants[twin]))
  for (model, act), members in variants.items():
    if act != 'relu' and (model, 'relu') in variants:
      comparisons.append((f'{label((model, act))} − '
                          f"{label((model, 'relu'))}", members,
                          variants[(model, 'relu')]))
  if comparisons:
    parts.append(comparison_table(study, comparisons))
  return '\n\n'.join(parts)
