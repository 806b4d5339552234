"""The weight-sharing study (lectures 000/001): why convolutions share.

configs/weight_sharing_fmnist.py trains LeNet-5 with C1/C3 fully connected
(the MLP), locally connected and convolutional, on natural and on
pixel-permuted Fashion-MNIST; this module draws what it shows:

  pixel_correlation(images, max_distance)   Pearson correlation of two pixels
                                            vs their distance (the prior a
                                            convolution builds in)
  permute_pixels(images, seed)              the study's fixed permutation
  pixel_correlation_figure(images, path)    natural vs permuted, one axis
  select_on_validation(rows, axis, group_by)  per group, the axis value (a
                                            learning rate) with the lowest
                                            mean validation error; any study
  weight_sharing_figure(study, path)        test error per network, natural
                                            vs permuted pixels
  weight_sharing_table(study)               Markdown: sizes, chosen learning
                                            rates, test errors

Errors are in % (1 - accuracy) in figures and tables. Final numbers are the
mean over seeds with the 95 % t-interval (`plotting.interval95`) in the
figure and mean ± std (ddof=1) with n in the table; each says which.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from cnn import plotting
from cnn.common import errors
from cnn.experiments import analysis

CONNECTIVITY = 'model.connectivity'
PERMUTE = 'input.permute_pixels'
LEARNING_RATE = 'optimizer.learning_rate'
# The three forms of LeNet-5's C1/C3 (cnn/models/lenet.py), least shared
# first, as the lectures tell it.
NETWORK_LABELS = {'dense': 'fully connected (MLP)',
                  'local': 'locally connected',
                  'conv': 'convolutional (CNN)'}
PIXEL_LABELS = {'natural': 'natural pixels', 'permuted': 'permuted pixels'}


# ----------------------------------------------------------------- pixels


def permute_pixels(images: np.ndarray, seed: int) -> np.ndarray:
  """`images` [N, H, W, C] with their H*W positions shuffled by the one
  permutation drawn with `seed` (channels move together), exactly as the
  input pipeline applies `config.input.permute_pixels`
  (`input_pipeline/create.py`; tests/test_weight_sharing.py holds them
  equal)."""
  n, h, w, c = images.shape
  order = np.random.default_rng(seed).permutation(h * w)
  return images.reshape(n, h * w, c)[:, order].reshape(n, h, w, c)


def _correlations(images: np.ndarray) -> tuple[np.ndarray, int, int]:
  """(Pearson correlation of every pair of pixel positions [H*W, H*W], H,
  W); NaN for a pixel that is constant over the images."""
  x = np.asarray(images, np.float64)
  if x.ndim == 4:  # colour: the mean over channels (a grey value).
    x = x.mean(axis=-1)
  if x.ndim != 3 or len(x) < 2:
    raise ValueError(f'images must be [N >= 2, H, W] or [N, H, W, C], got '
                     f'shape {np.shape(images)}.')
  n, h, w = x.shape
  centred = x.reshape(n, h * w) - x.reshape(n, h * w).mean(axis=0)
  norm = np.sqrt((centred ** 2).sum(axis=0))
  with np.errstate(invalid='ignore', divide='ignore'):
    return (centred.T @ centred) / np.outer(norm, norm), h, w


def pixel_correlation(images: np.ndarray, max_distance: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Correlation between two pixels' values as a function of their distance.

  For every pair of distinct pixel positions, the Pearson correlation of
  their values over the images; pairs are binned by their Euclidean
  distance rounded to the nearest integer (the diagonal neighbour, sqrt(2)
  apart, falls in bin 1) and each bin is the mean over its pairs. Memory
  and time grow as (H * W)^2: for small images (28x28: 784^2 pairs).

  Args:
    images: [N, H, W] or [N, H, W, C] (channels averaged), N >= 2; any
      numeric dtype (uint8 0..255 as stored).
    max_distance: the largest distance reported, in pixels; None: the
      image's diagonal, rounded.

  Returns:
    (distances int [D] = 1..max_distance in pixels, correlation float [D]):
    the mean correlation at each distance; NaN where no pair of
    non-constant pixels lies at that distance (a constant pixel has no
    correlation and is left out).
  """
  corr, h, w = _correlations(images)
  if max_distance is None:
    max_distance = int(round(math.hypot(h - 1, w - 1)))
  rows, cols = np.divmod(np.arange(h * w), w)
  distance = np.rint(np.hypot(rows[:, None] - rows[None, :],
                              cols[:, None] - cols[None, :])).astype(int)
  use = np.isfinite(corr) & (distance >= 1) & (distance <= max_distance)
  sums = np.bincount(distance[use], weights=corr[use],
                     minlength=max_distance + 1)
  counts = np.bincount(distance[use], minlength=max_distance + 1)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean = sums / counts
  return np.arange(1, max_distance + 1), mean[1:]


def image_wide_correlation(images: np.ndarray) -> float:
  """The mean Pearson correlation over every pair of distinct (non-constant)
  pixel positions: what a permutation leaves at every distance."""
  corr, h, w = _correlations(images)
  off_diagonal = ~np.eye(h * w, dtype=bool) & np.isfinite(corr)
  return float(corr[off_diagonal].mean())


@plotting.styled
def pixel_correlation_figure(images: np.ndarray, path: str | None = None, *,
                             permutation_seed: int = 0,
                             max_distance: int | None = None,
                             name: str = 'Fashion-MNIST'):
  """The prior behind locality: pixel correlation vs distance, natural vs
  permuted images on one axis.

  Natural images: neighbours go together, and less so further apart.
  Permuted (`permute_pixels(images, permutation_seed)`, the study's
  permutation): the pixels that end up adjacent were anywhere in the
  image, so every distance shows the image-wide mean correlation (drawn as
  a line), distance 1 included: a 5x5 window no longer sees related pixels.

  Args:
    images: training images [N, H, W, C] (uint8 as stored).
    path: 'dir/name.png' (+ .pdf, .json of the numbers drawn); None draws
      only.
    permutation_seed: `config.input.permute_pixels` of the permuted runs.
    max_distance: the largest distance drawn, in pixels; None: the image's
      side less one (27 for 28x28: further bins hold only the few pairs
      near opposite corners).
    name: the data set, for the title.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if max_distance is None:
    max_distance = min(images.shape[1:3]) - 1
  distance, natural = pixel_correlation(images, max_distance)
  _, permuted = pixel_correlation(permute_pixels(images, permutation_seed),
                                  max_distance)
  average = image_wide_correlation(images)
  fig, ax = plotting.figure()
  ax.axhline(average, color='0.45', ls=':', lw=1.4,
             label=f'mean over all pixel pairs ({average:.2f})')
  ax.plot(distance, natural, marker='o', ms=4, color=plotting.PALETTE[0],
          label=PIXEL_LABELS['natural'])
  ax.plot(distance, permuted, marker='s', ms=4, ls='--',
          color=plotting.PALETTE[1],
          label=f"{PIXEL_LABELS['permuted']} (one fixed permutation)")
  ax.set(xlabel='distance between the two pixels (pixels, rounded)',
         ylabel='Pearson correlation of their values',
         title=f'{name}: pixel correlation vs distance '
               f'({len(images):,} training images)')
  ax.set_xlim(0, distance[-1] + 1)
  ax.legend(loc='upper right')
  data = dict(distance=distance, natural=natural, permuted=permuted,
              image_wide_mean=average, n_images=len(images),
              permutation_seed=permutation_seed,
              binning='Euclidean distance rounded to the nearest integer; '
                      'mean over the pixel pairs of each bin')
  return plotting.save(fig, path, data)


# ---------------------------------------------------------- model selection


@dataclasses.dataclass
class Selection:
  """The axis value chosen for one group.

  value: the chosen value of the axis (e.g. a learning rate).
  validation_error: its mean validation error over seeds (a fraction).
  rows: the completed rows (members) at that value, one per seed.
  candidates: every eligible axis value -> its mean validation error.
  """

  value: Any
  validation_error: float
  rows: list[dict[str, Any]]
  candidates: dict[Any, float]


def select_on_validation(rows: Sequence[dict[str, Any]],
                         axis: Sequence[str] | str,
                         group_by: Sequence[str] | str,
                         metric: str = 'final_validation_error'
                         ) -> dict[tuple, Selection]:
  """Per group, the value of `axis` with the lowest mean validation error.

  Generic model selection for any sweep that trains each setting with
  several seeds and holds out a validation split
  (`config.input.validation_*`): e.g. the learning rate per network and
  pixel order here, or per model of another study. The test split is never
  looked at.

  Args:
    rows: `cnn.experiments.sweep_results` rows (`analysis.Study.rows`): each
      with 'status', the `axis` and `group_by` columns (a sweep's override
      keys are columns) and `metric`.
    axis: the column chosen over, e.g. 'optimizer.learning_rate', or
      several chosen together (a grid), e.g. ('optimizer.learning_rate',
      'optimizer.weight_decay'): then each value is a tuple of theirs.
    group_by: the column(s) that make a group, e.g. ('model.connectivity',
      'input.permute_pixels').
    metric: the error minimised (mean over a value's completed seeds).

  Returns:
    {group values (a tuple, in `group_by` order): Selection}. Only
    completed rows count; an axis value with a diverged member is not
    eligible (a learning rate that diverges for some seed is no choice);
    ties go to the value met first. Groups with no eligible value are left
    out.

  Raises:
    UserError: no completed row has `metric` (the sweep held out no
      validation split).
  """
  group_by = (group_by,) if isinstance(group_by, str) else tuple(group_by)
  if isinstance(axis, str):
    value_of = lambda row: row[axis]
  else:
    value_of = lambda row: tuple(row[c] for c in axis)
  by_group: dict[tuple, dict[Any, list[dict[str, Any]]]] = {}
  diverged: set[tuple] = set()
  for row in rows:
    key = tuple(row[c] for c in group_by)
    if row['status'] == 'diverged':
      diverged.add((key, value_of(row)))
    elif row['status'] == 'completed' and row.get(metric, '') != '':
      by_group.setdefault(key, {}).setdefault(value_of(row), []).append(row)
  if not by_group:
    raise errors.UserError(
        f'No completed member has {metric}: the sweep held out no '
        'validation split. Train it with --config.input.'
        'validation_per_class (or validation_fraction) to choose '
        f'{axis} on validation.')
  out = {}
  for key, values in by_group.items():
    candidates = {v: float(np.mean([float(r[metric]) for r in rs]))
                  for v, rs in values.items() if (key, v) not in diverged}
    if not candidates:
      continue
    best = min(candidates, key=candidates.get)
    out[key] = Selection(best, candidates[best], values[best], candidates)
  return out


# ------------------------------------------------------- figure and table


def _pixels(permute: Any) -> str:
  return 'permuted' if int(permute) >= 0 else 'natural'


def _by_network(study: analysis.Study
                ) -> dict[str, dict[str, Selection]]:
  """network ('dense', ...) -> {'natural' | 'permuted': Selection}, in
  `NETWORK_LABELS` order."""
  selections = select_on_validation(study.rows, LEARNING_RATE,
                                    (CONNECTIVITY, PERMUTE))
  out: dict[str, dict[str, Selection]] = {}
  for (network, permute), selection in selections.items():
    out.setdefault(network, {})[_pixels(permute)] = selection
  order = [*NETWORK_LABELS, *sorted(set(out) - set(NETWORK_LABELS))]
  return {n: out[n] for n in order if n in out}


def _test_errors(selection: Selection) -> list[float]:
  return [100 * float(r['final_test_error']) for r in selection.rows
          if r['final_test_error'] != '']


def _size(selections: dict[str, Selection], column: str) -> Any:
  """A size column ('params', 'macs') of a network's members: equal for
  all of them (pixel order and learning rate change no weight)."""
  rows = [r for s in selections.values() for r in s.rows]
  return next((r[column] for r in rows if r.get(column, '') != ''), '')


@plotting.styled
def weight_sharing_figure(study: analysis.Study, path: str | None = None):
  """Test error of each network on natural vs permuted pixels.

  One pair of bars per network (LeNet-5's C1/C3 fully connected, locally
  connected, convolutional), each at the learning rate chosen for that
  network and pixel order on the validation split (`select_on_validation`;
  written under the bar pair): the mean over seeds with the 95 %
  t-interval as error bars and each seed as a dot. Weights in the labels.
  What the lectures predict: the CNN best on natural pixels and worse on
  permuted ones; the MLP the same on both.
  """
  networks = _by_network(study)
  fig, ax = plotting.figure(height=4.6)
  data: dict[str, Any] = {
      'error_bars': '95 % t-interval over seeds', 'unit': 'test error %',
      'selection': 'per network and pixel order, the learning rate with '
                   'the lowest mean final validation error over seeds',
      'networks': {}}
  width, ns, ticks = 0.38, [], []
  for i, (network, selections) in enumerate(networks.items()):
    label = NETWORK_LABELS.get(network, network)
    entry = data['networks'][label] = dict(
        connectivity=network, params=_size(selections, 'params'),
        macs=_size(selections, 'macs'))
    for j, pixels in enumerate(PIXEL_LABELS):
      if pixels not in selections:
        continue
      s = selections[pixels]
      values = _test_errors(s)
      mean, half = plotting.interval95(values)
      ns.append(len(values))
      x = i + (j - 0.5) * width
      ax.bar(x, mean, width * 0.92, color=plotting.PALETTE[j],
             yerr=0 if math.isnan(half) else half, capsize=4,
             error_kw=dict(lw=1.2), label=PIXEL_LABELS[pixels] if i == 0
             else None)
      ax.plot([x] * len(values), values, 'o', ms=3.5, color='0.15',
              zorder=3)
      entry[pixels] = dict(learning_rate=s.value,
                           validation_error=100 * s.validation_error,
                           values=values, mean=mean, half95=half,
                           n=len(values))
    lrs = ' / '.join(f'{selections[p].value:g}' if p in selections else '–'
                     for p in PIXEL_LABELS)
    params = entry['params']
    ticks.append(f'{label}\n' + (f'{params:,} weights\n' if params != ''
                                 else '') + f'lr {lrs}')
  ax.set_xticks(range(len(ticks)), ticks)
  ax.set(ylabel='test error (%)',
         xlabel='learning rate: natural / permuted pixels, each chosen on '
                'the validation split',
         title='LeNet-5 layout, C1 and C3 three ways: test error')
  ax.set_ylim(bottom=0)
  if ns:
    ax.legend(title=analysis.interval_text(ns), loc='upper left')
  return plotting.save(fig, path, data)


def _mean_std_n(values: Sequence[float]) -> str:
  if not values:
    return '–'
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f'{np.mean(values):.2f} ± {std:.2f} ({len(values)})'


def weight_sharing_table(study: analysis.Study) -> str:
  """Markdown: one line per network with its weights, connections
  (multiply-adds of its weighted layers, without biases; the pools' 6,304
  reads, equal in all three, left out), the learning rate chosen on
  validation for natural / permuted pixels, and the test error (%) on each
  as mean ± std (ddof=1) over seeds (n)."""
  lines = ['| network | weights | connections (multiply-adds) | learning '
           'rate (natural / permuted) | test error natural % | test error '
           'permuted % |', '|' + ' --- |' * 6]
  for network, selections in _by_network(study).items():
    params, macs = _size(selections, 'params'), _size(selections, 'macs')
    lrs = ' / '.join(f'{selections[p].value:g}' if p in selections else '–'
                     for p in PIXEL_LABELS)
    cells = [NETWORK_LABELS.get(network, network),
             f'{params:,}' if params != '' else '–',
             f'{macs:,}' if macs != '' else '–', lrs,
             *(_mean_std_n(_test_errors(selections[p])) if p in selections
               else '–' for p in PIXEL_LABELS)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
