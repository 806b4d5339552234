"""Linear probes: how linearly separable the classes are at every stage.

    python main.py --config=configs/default.py --workdir=runs/default \
        --mode=probe --probe_shots=10,100,0

Zeiler & Fergus (2014, table of "which layer to take features from") fit a
linear classifier on the frozen features of each layer; big_vision's
`evaluators/fewshot_lsr.py` does it in closed form with ridge regression on
{-1, 1} one-hot targets, which needs no learning rate or epochs and is exact.

`probe_workdir(config, workdir)` loads the workdir's newest checkpoint,
computes eval-mode features of every named stage (`out` of the model's
`__call__`, 4D maps global-average-pooled to [N, C]) for the training
examples (the first `config.input.train_subset`, or all) and the test split,
then for every shots value (examples per class drawn from the training
features; 0 = all) and seed fits a probe ('ridge', or sklearn's 'logistic' /
'svm'; all on features standardised with the probe's training examples'
statistics) and measures train and test accuracy.
`write_probe_results(rows, out_dir)` writes `out_dir/probe.{csv,png}`
(`main.py --mode=probe`: WORKDIR/probe, or --probe_out). The model is built
with the checkpoint's own head, so a source network can be probed on a
target task's data (`--config.input.classes=...`, another data set).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from cnn import plotting
from cnn.common import errors
from cnn.experiments import sweep
from cnn.kernels import forms
from cnn.training import checkpoint, train
from cnn.visualize import common
from input_pipeline import errors as input_errors
from input_pipeline.sources import class_subset

METHODS = ('ridge', 'logistic', 'svm')
COLUMNS = ('layer', 'shots', 'seed', 'method', 'l2_reg', 'train_accuracy',
           'validation_accuracy', 'test_accuracy', 'dim', 'git_commit')


# ----------------------------------------------------------------- the probes


def _one_hot_pm1(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[N] int -> [N, K] float64 targets, +1 for the class and -1 elsewhere
  (big_vision's fewshot_lsr: symmetric targets keep the bias near zero)."""
  return 2.0 * np.eye(num_classes)[np.asarray(labels, np.int64)] - 1.0


def ridge_fit(features: np.ndarray, labels: np.ndarray, num_classes: int,
              l2_reg: float) -> tuple[np.ndarray, np.ndarray]:
  """Closed-form ridge regression onto {-1, 1} one-hot targets.

  Minimises ||Xc W - Yc||² + l2_reg ||W||² with Xc, Yc the centred features
  and targets, so the bias is not regularised: b = mean(Y) - mean(X) W.
  Solved on the host in float64: the primal (XcᵀXc + λI) W = XcᵀYc when
  N >= D, the dual W = Xcᵀ (XcXcᵀ + λI)⁻¹ Yc when N < D (an N x N system
  instead of D x D; the same W).

  Args:
    features: [N, D] float.
    labels: [N] int in 0..num_classes-1.
    num_classes: K.
    l2_reg: λ > 0.

  Returns:
    (W [D, K], b [K]), float64.
  """
  x = np.asarray(features, np.float64)
  y = _one_hot_pm1(labels, num_classes)
  x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
  xc, yc = x - x_mean, y - y_mean
  n, d = xc.shape
  if n >= d:
    w = np.linalg.solve(xc.T @ xc + l2_reg * np.eye(d), xc.T @ yc)
  else:
    w = xc.T @ np.linalg.solve(xc @ xc.T + l2_reg * np.eye(n), yc)
  return w, y_mean - x_mean @ w


def ridge_predict(features: np.ndarray, w: np.ndarray, b: np.ndarray
                  ) -> np.ndarray:
  """[N, D] features -> [N] int predicted classes (argmax of X W + b)."""
  return np.argmax(np.asarray(features, np.float64) @ w + b, axis=1)


# The regularisation each method uses without a validation split, and the
# grid it is chosen from with one (λ of ridge; λ = 1/C of sklearn's
# logistic regression and linear SVM, on standardised features).
DEFAULT_L2 = {'ridge': 2.0**10, 'logistic': 1 / 0.316, 'svm': 1.0}
L2_GRIDS = {'ridge': tuple(2.0 ** np.arange(0, 21, 2)),
            'logistic': tuple(10.0 ** np.arange(-3, 3.5, 0.5)),
            'svm': tuple(10.0 ** np.arange(-3, 4))}


def fit_probe(method: str, train_x: np.ndarray, train_y: np.ndarray,
              num_classes: int, l2_reg: float, *,
              start: Callable | None = None
              ) -> Callable[[np.ndarray], np.ndarray]:
  """Fits one probe on [N, D] `train_x` (standardised with its own
  statistics); returns `predict([M, D]) -> [M]` classes.

  'ridge': `ridge_fit` (closed form). 'logistic': multinomial logistic
  regression solved to convergence by L-BFGS (sklearn: ½||W||² + C Σ
  cross-entropy, C = 1 / l2_reg, stopped when the largest gradient entry is
  below 1e-6; a convex problem, so its optimum depends on no learning rate
  or step count). 'svm': sklearn's LinearSVC. `start`: a logistic probe
  this function returned for the same examples, whose weights L-BFGS starts
  from (a regularisation path, strong to weak L2, converges in a fraction
  of the iterations; the optimum is the same).
  """
  train_x = np.asarray(train_x, np.float64)
  mean = train_x.mean(axis=0)
  std = train_x.std(axis=0)
  # Stages differ in scale by orders of magnitude: on raw pooled maps a
  # fixed ridge λ shrinks W to ~0 and the bias (the class frequencies)
  # decides; sklearn's solvers converge (and C means the same) on unit-scale
  # inputs too. The statistics come from the probe's training examples only.
  std = np.where(std > 1e-12, std, 1.0)
  scale = lambda x: (np.asarray(x, np.float64) - mean) / std
  if method == 'ridge':
    w, b = ridge_fit(scale(train_x), train_y, num_classes, l2_reg)
    return lambda x: ridge_predict(scale(x), w, b)
  # Imported here: sklearn costs seconds to import and ridge needs none.
  from sklearn import linear_model, svm  # pylint: disable=g-import-not-at-top
  if method == 'logistic':
    clf = linear_model.LogisticRegression(C=1 / l2_reg, solver='lbfgs',
                                          max_iter=10_000, tol=1e-6,
                                          warm_start=start is not None)
    if start is not None:
      clf.coef_ = start.model.coef_.copy()
      clf.intercept_ = start.model.intercept_.copy()
  elif method == 'svm':
    clf = svm.LinearSVC(C=1 / l2_reg, max_iter=10_000)
  else:
    raise errors.UserError(f'Unknown probe method {method!r}; valid: '
                           f'{list(METHODS)}.')
  with warnings.catch_warnings():  # LinearSVC's slow convergence on tiny C.
    warnings.simplefilter('ignore')
    clf.fit(scale(train_x), train_y)

  def predict(x):
    return clf.predict(scale(x))

  predict.model = clf
  return predict


def fit_and_score(method: str, train_x: np.ndarray, train_y: np.ndarray,
                  test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                  l2_reg: float) -> tuple[float, float]:
  """Fits one probe on [N, D] `train_x`; returns (train, test) accuracy."""
  predict = fit_probe(method, train_x, train_y, num_classes, l2_reg)
  return (float(np.mean(predict(train_x) == train_y)),
          float(np.mean(predict(test_x) == test_y)))


def fit_on_validation(method: str, train: tuple[np.ndarray, np.ndarray],
                      validation: tuple[np.ndarray, np.ndarray],
                      test: tuple[np.ndarray, np.ndarray], num_classes: int,
                      l2_grid: Sequence[float] | None = None
                      ) -> dict[str, float]:
  """The probe whose L2 (from `l2_grid`, default `L2_GRIDS[method]`) scores
  best on `validation` (ties: the stronger L2); the test split is scored
  once, with that one.

  Args:
    method: 'ridge', 'logistic' or 'svm'.
    train, validation, test: (features [N, D], labels [N]).
    num_classes: K.
    l2_grid: the candidate λ.

  Returns:
    dict(l2_reg, train_accuracy, validation_accuracy, test_accuracy).
  """
  best, predict = None, None
  for l2 in sorted(l2_grid or L2_GRIDS[method], reverse=True):
    predict = fit_probe(method, *train, num_classes, l2,
                        start=predict if method == 'logistic' else None)
    accuracy = float(np.mean(predict(validation[0]) == validation[1]))
    if best is None or accuracy > best[1]:
      best = (l2, accuracy, predict)
  l2, val_acc, predict = best
  return dict(l2_reg=float(l2),
              train_accuracy=float(np.mean(predict(train[0]) == train[1])),
              validation_accuracy=val_acc,
              test_accuracy=float(np.mean(predict(test[0]) == test[1])))


# ------------------------------------------------------------------ features


def _pool(x: jax.Array) -> jax.Array:
  # Maps [N, H, W, C] -> [N, C]: flattening would give D = H * W * C (150k
  # for a ResNet's stem) and a probe of positions rather than of features.
  x = x.astype(jnp.float32)
  return x.mean(axis=(1, 2)) if x.ndim == 4 else x.reshape(x.shape[0], -1)


def stage_features(model, variables: dict, batches: Iterable[dict],
                   layers: Sequence[str], *, with_labels: bool = False):
  """Eval-mode features of `layers` over every real row of `batches`.

  4D maps [B, H, W, C] are global-average-pooled to [B, C] (as probing
  papers and big_vision do, to keep D small); 2D features [B, F] are kept as
  they are. Padding rows (batch 'mask' 0) are dropped. The forward pass is
  jitted once (every batch has the same shape).

  Args:
    model: a `Classifier` (`model.apply(variables, x, train=False)` returns
      `(logits, out)`).
    variables: {'params', ('batch_stats')}.
    batches: dicts with 'image' [B, H, W, C], 'label' [B], 'mask' [B].
    layers: names of `out` entries.
    with_labels: also return the labels.

  Returns:
    {layer: [N, D] float32 numpy}, and with `with_labels` also [N] int labels.
  """
  layers = tuple(layers)

  @jax.jit
  def forward(variables, images):
    _, out = model.apply(variables, images, train=False)
    return {name: _pool(out[name]) for name in layers}

  parts = {name: [] for name in layers}
  labels = []
  for batch in batches:
    keep = np.asarray(batch['mask']) > 0
    feats = jax.device_get(forward(variables, jnp.asarray(batch['image'])))
    for name in layers:
      parts[name].append(np.asarray(feats[name])[keep])
    labels.append(np.asarray(batch['label'])[keep])
  features = {name: np.concatenate(parts[name]) for name in layers}
  if with_labels:
    return features, np.concatenate(labels).astype(np.int64)
  return features


def layer_names(model, variables: dict, input_shape: tuple[int, int, int]
                ) -> list[str]:
  """The probe-able entries of `out` (all but 'logits'), stem first and
  pre_logits last (an abstract trace, no compute)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  _, out = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False), variables, x)
  names = sorted((k for k in out if k not in ('logits', 'pre_logits')),
                 key=common.stage_order)
  return names + (['pre_logits'] if 'pre_logits' in out else [])


# ------------------------------------------------------------------- workdir


def _load_model(config: ml_collections.ConfigDict, workdir: str,
                input_shape) -> tuple[Any, int, dict]:
  """(model, step, variables) of the newest checkpoint, the model built with
  the checkpoint's own head (the probed data may have another class count:
  a source network probed on a target task)."""
  step, variables = checkpoint.load_variables(workdir)
  if not variables['batch_stats']:
    del variables['batch_stats']
  head_bias = variables['params'].get('head', {}).get('bias')
  if head_bias is None:
    raise errors.UserError(
        f'The checkpoint in {workdir} has no classification head '
        "(params/head): it is not a run of this codebase's Classifier.")
  model = train.create_model(config, int(head_bias.shape[0]))
  # A config for another model would fail deep inside flax; say it plainly.
  want = jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
      jnp.zeros((1, *input_shape), jnp.float32), train=False))
  want = {k: want[k] for k in variables if k in want}
  shapes = lambda tree: sorted(
      (jax.tree_util.keystr(path), tuple(a.shape))
      for path, a in jax.tree_util.tree_flatten_with_path(tree)[0])
  if shapes(want) != shapes(variables):
    raise errors.UserError(
        f'The checkpoint in {workdir} does not fit the model of this config '
        '(other arrays); pass the --config (and overrides) the run was '
        'trained with.')
  return model, int(step), jax.tree.map(jnp.asarray, variables)


def probe_workdir(config: ml_collections.ConfigDict, workdir: str, *,
                  layers: Sequence[str] | None = None,
                  shots: Sequence[int] = (10, 100, 1000),
                  seeds: Sequence[int] = (0, 1, 2), method: str = 'ridge',
                  l2_reg: float | None = None) -> list[dict[str, Any]]:
  """Linear probes of every layer of the run in `workdir`.

  The examples of each (shots, seed) are drawn as a training run with
  `config.input.per_class=shots` and `sample_seed=seed` draws them
  (`class_subset.split_indices`), so a probe and a trained member of the
  same seed see the same examples. With `config.input.validation_per_class`
  (or `validation_fraction`) the validation examples are held out as such a
  run holds them out, and each probe's L2 is chosen on them from
  `L2_GRIDS[method]` (the test split is scored once, with the choice);
  without, the L2 is `l2_reg` (default `DEFAULT_L2[method]`).

  Args:
    config: the config of the run (as given on the command line), with the
      probed data's `config.input` (classes, validation).
    workdir: a trained workdir; its newest checkpoint is probed.
    layers: `out` names to probe; default all but 'logits'.
    shots: training examples per class (0 = every training example not
      held out); a value larger than the rarest class allows is skipped
      with a warning.
    seeds: seeds of the draw of the examples.
    method: 'ridge' (closed form), 'logistic' (multinomial, L-BFGS) or
      'svm'.
    l2_reg: the L2 without a validation split.

  Returns:
    One dict per (layer, shots, seed): `COLUMNS` (accuracies in [0, 1],
    validation_accuracy '' without a validation split, `dim` the feature
    dimension D).

  Raises:
    errors.UserError: unknown method or layer, bad shots, no checkpoint,
      a checkpoint of another model. All before any data is read.
  """
  if method not in METHODS:
    raise errors.UserError(f'Unknown probe method {method!r}; valid: '
                           f'{list(METHODS)}.')
  shots = [int(s) for s in shots]
  if not shots or any(s < 0 for s in shots) or not seeds:
    raise errors.UserError(f'Probe shots must be integers >= 0 (0 = all) and '
                           f'seeds not empty; got shots={shots}, '
                           f'seeds={list(seeds)}.')
  inp = config.input
  validation = inp.validation_per_class or inp.validation_fraction
  # The features of every training example of the task; the draws below
  # divide them as the input pipeline divides the training split.
  whole = ml_collections.ConfigDict(inp.to_dict())
  whole.per_class, whole.sample_seed = 0, -1
  whole.validation_per_class, whole.validation_fraction = 0, 0.0
  info = input_pipeline.get_input_info(whole)
  model, step, variables = _load_model(config, workdir, info.image_shape)
  valid = layer_names(model, variables, info.image_shape)
  layers = list(layers) if layers else valid
  unknown = [name for name in layers if name not in valid]
  if unknown:
    raise errors.UserError(f'Unknown probe layer(s) {unknown}; this model has '
                           f'{valid} (pass a comma list of them).')

  def features(split):
    batches = input_pipeline.create_eval_batches(
        whole, split=split, batch_size=int(inp.eval_batch_size))
    return stage_features(model, variables, batches, layers, with_labels=True)

  with forms.use_conv_impl(config.get('conv_impl', 'auto')):
    train_feats, train_labels = features('train')
    test_feats, test_labels = features('test')
  logging.info('Probing step %d: %d training, %d test examples, layers %s.',
               step, len(train_labels), len(test_labels), layers)
  draws = {}
  for s in shots:
    for seed in seeds:
      try:
        draws[s, seed] = class_subset.split_indices(
            train_labels, per_class=s, validation=validation, seed=int(seed))
      except input_errors.InputConfigError as e:
        logging.warning('Skipping %d examples per class: %s', s, e)
        break
  if not draws:
    raise errors.UserError(
        f'Every shots value {shots} exceeds what the rarest class has '
        f'({np.bincount(train_labels).min()} training examples, validation '
        'held out); pass smaller --probe_shots (or 0 = all).')
  l2_reg = DEFAULT_L2[method] if l2_reg is None else l2_reg
  commit = sweep.git_state()[0] or ''
  rows = []
  for layer in layers:
    x, test = train_feats[layer], (test_feats[layer], test_labels)
    for (s, seed), (idx, held) in draws.items():
      train_set = (x[idx], train_labels[idx])
      if validation:
        scores = fit_on_validation(method, train_set,
                                   (x[held], train_labels[held]), test,
                                   info.num_classes)
      else:
        train_acc, test_acc = fit_and_score(method, *train_set, *test,
                                            info.num_classes, l2_reg)
        scores = dict(l2_reg=l2_reg, train_accuracy=train_acc,
                      validation_accuracy='', test_accuracy=test_acc)
      rows.append(dict(layer=layer, shots=s, seed=int(seed), method=method,
                       dim=int(x.shape[1]), git_commit=commit, **scores))
  return rows


# ------------------------------------------------------------------- results


def summarise(rows: Sequence[dict[str, Any]]
              ) -> tuple[list[str], list[int], dict[tuple[str, int], tuple]]:
  """(layers in row order, shots in row order, {(layer, shots): (mean, std,
  seeds)} of the test accuracy over seeds)."""
  layers = list(dict.fromkeys(r['layer'] for r in rows))
  shots = list(dict.fromkeys(r['shots'] for r in rows))
  stats = {}
  for layer in layers:
    for s in shots:
      acc = [r['test_accuracy'] for r in rows
             if r['layer'] == layer and r['shots'] == s]
      if acc:
        stats[layer, s] = (float(np.mean(acc)), float(np.std(acc)), len(acc))
  return layers, shots, stats


def _shots_name(s: int) -> str:
  return 'all' if s == 0 else f'{s}-shot'


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown table: test accuracy mean ± std over seeds, layer x shots."""
  layers, shots, stats = summarise(rows)
  dims = {r['layer']: r['dim'] for r in rows}
  lines = ['| layer | dim | ' + ' | '.join(_shots_name(s) for s in shots)
           + ' |', '|---|---:|' + '---:|' * len(shots)]
  for layer in layers:
    cells = [f'{stats[layer, s][0]:.3f} ± {stats[layer, s][1]:.3f}'
             if (layer, s) in stats else '' for s in shots]
    lines.append(f'| {layer} | {dims[layer]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _replace_atomically(path: str, write) -> None:
  """`write(file)` into a temporary file beside `path`, then renames it: a
  reader sees the old file or the whole new one, never half of one."""
  directory = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                             suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_probe_results(rows: Sequence[dict[str, Any]], out_dir: str
                        ) -> tuple[str, str]:
  """Writes `out_dir/probe.csv` (one row per fit, the figure's numbers) and
  `probe.png` (`probe_figure`), each atomically. Returns the two paths."""
  os.makedirs(out_dir, exist_ok=True)
  csv_path = os.path.join(out_dir, 'probe.csv')
  png_path = os.path.join(out_dir, 'probe.png')

  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=COLUMNS)
  writer.writeheader()
  for r in rows:
    writer.writerow({k: r.get(k, '') for k in COLUMNS})
  _replace_atomically(csv_path, lambda f: f.write(text.getvalue().encode()))
  probe_figure(rows, png_path)
  return csv_path, png_path


@plotting.styled
def probe_figure(rows: Sequence[dict[str, Any]], path: str | None = None,
                 *, title: str | None = None):
  """Probe test accuracy (%) vs layer, a line per shots value: the mean over
  seeds with the 95 % t-interval as error bars. Written to `path` (PNG
  only: the rows' probe.csv beside it is its data) in the figure standard
  (`cnn.plotting`); returns the figure. `title` (the network and data
  probed) heads it."""
  layers = list(dict.fromkeys(r['layer'] for r in rows))
  shots = list(dict.fromkeys(r['shots'] for r in rows))
  fig, ax = plotting.figure()
  seeds = set()
  for i, s in enumerate(shots):
    points = []
    for x, layer in enumerate(layers):
      acc = [100 * r['test_accuracy'] for r in rows
             if r['layer'] == layer and r['shots'] == s]
      if acc:
        points.append((x, *plotting.interval95(acc)))
        seeds.add(len(acc))
    ax.errorbar([p[0] for p in points], [p[1] for p in points],
                yerr=[p[2] for p in points], marker='osD^v'[i % 5],
                capsize=4,
                label='all examples' if s == 0 else f'{s} examples per class')
  ax.set_xticks(range(len(layers)), layers, rotation=30, ha='right')
  ax.set_ylim(0, 100)
  methods = '/'.join(sorted({r['method'] for r in rows})) or 'linear'
  lo, hi = min(seeds, default=0), max(seeds, default=0)
  n = f'{lo}–{hi}' if hi > lo else str(lo)
  n += ' seed' if n == '1' else ' seeds'
  ax.set(xlabel='layer (features probed)', ylabel='probe test accuracy (%)',
         title=f'{title}: {methods} probes' if title
         else f'{methods} probes on each layer')
  if rows:
    ax.legend(title=f'mean ± 95 % interval, n = {n}', loc='best')
  return plotting.save(fig, path, vector=False)
