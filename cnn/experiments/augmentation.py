"""The augmentation study (issue #36, study 1): its augmentations, table and
figure.

Lecture 002, "effect of data augmentation": augmentation narrows the gap
between training and test error. `AUGMENTATIONS` names the settings of
`config.input.augment` the study compares (configs/augmentation_fmnist.py
builds its sweep from them); a member's augmentation is read back from its
sweep overrides (`augmentation_of`), its training-set size from its resolved
config (the `input.train_subset` column of results.csv).

  augmentation_table(study)           Markdown: train, test error and gap
                                      per augmentation and size
  augmentation_figure(study, path)    the gap per augmentation (95 %
                                      intervals); error vs training-set size

Errors are in %, 1 - accuracy; the training error is measured in eval mode
on the training images without augmentation (`config.eval_on_train`), so
the gap = test error - training error is the generalisation gap of the
network, not of the augmented batches.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import lines as mlines

from cnn import plotting
from cnn.experiments import analysis

PREFIX = 'input.augment.'

# name -> (the `input.augment` fields it sets, legend label). Strengths for
# 28x28 Fashion-MNIST on the 0..1 scale: translations of up to ±2 px (a
# tenth of an item's ~20 px), small rotations and zooms, brightness and
# contrast changes and noise a person still reads through. 'all' sets every
# one at once; flip_ud is included although an upside-down shoe is no
# shoe a test set holds: the study shows what it costs.
AUGMENTATIONS: dict[str, tuple[dict[str, Any], str]] = {
    'none': ({}, 'none'),
    'crop': ({'crop_padding': 2}, 'random crop (±2 px)'),
    'flip_lr': ({'flip_lr': True}, 'left-right flip'),
    'flip_ud': ({'flip_ud': True}, 'up-down flip'),
    'rotation': ({'rotation_degrees': 10.0}, 'rotation (±10°)'),
    'scale': ({'scale': (0.9, 1.1)}, 'zoom (crop side ×0.9–1.1)'),
    'brightness': ({'brightness': 0.1}, 'brightness (±0.1)'),
    'contrast': ({'contrast': 0.2}, 'contrast (×0.8–1.2)'),
    'noise': ({'noise_std': 0.1}, 'Gaussian noise (σ = 0.1)'),
}
AUGMENTATIONS['all'] = (
    {k: v for fields, _ in AUGMENTATIONS.values() for k, v in fields.items()},
    'all of them together')
SIZE_KEY = 'input.train_subset'


def overrides_of(name: str) -> dict[str, Any]:
  """The sweep overrides of augmentation `name` ({'input.augment.<field>':
  value}; {} for 'none')."""
  return {PREFIX + k: v for k, v in AUGMENTATIONS[name][0].items()}


def augmentation_of(overrides: Mapping[str, Any]) -> str:
  """The `AUGMENTATIONS` name whose fields a member's overrides set
  (exactly those, with those values); '' for none of them."""
  fields = {k[len(PREFIX):]: tuple(v) if isinstance(v, list) else v
            for k, v in overrides.items() if k.startswith(PREFIX)}
  for name, (settings, _) in AUGMENTATIONS.items():
    if fields == settings:
      return name
  return ''


def _label(name: str) -> str:
  return AUGMENTATIONS[name][1] if name in AUGMENTATIONS else name or '?'


def _cells(study: analysis.Study) -> dict[tuple[str, int], dict[str, list]]:
  """{(augmentation, training images): {'train', 'test', 'gap': [% per
  completed seed]}} in `AUGMENTATIONS` order, then by size."""
  cells: dict[tuple[str, int], dict[str, list]] = {}
  for row in study.rows:
    if (row['status'] != 'completed' or row['final_test_error'] == ''
        or row['final_train_error'] == ''):
      continue
    name = augmentation_of(study.overrides[row['member']])
    size = int(row.get(SIZE_KEY) or 0)
    train = 100 * float(row['final_train_error'])
    test = 100 * float(row['final_test_error'])
    cell = cells.setdefault((name, size), {'train': [], 'test': [],
                                           'gap': []})
    cell['train'].append(train)
    cell['test'].append(test)
    cell['gap'].append(test - train)
  order = list(AUGMENTATIONS)
  return dict(sorted(cells.items(), key=lambda kv: (
      order.index(kv[0][0]) if kv[0][0] in order else len(order),
      kv[0][1])))


def _mean_std(values: Sequence[float]) -> str:
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f'{np.mean(values):.2f} ± {std:.2f} ({len(values)})'


def augmentation_table(study: analysis.Study) -> str:
  """Markdown: one line per augmentation and training-set size; training
  error (eval mode, no augmentation), test error and their gap in %, each
  mean ± std (ddof=1) over the completed seeds (n)."""
  lines = ['| augmentation | training images | train error % | '
           'test error % | gap (test − train) % |',
           '| --- | ---: | --- | --- | --- |']
  for (name, size), cell in _cells(study).items():
    lines.append(
        f"| {_label(name)} | {size:,} | {_mean_std(cell['train'])} | "
        f"{_mean_std(cell['test'])} | {_mean_std(cell['gap'])} |")
  return '\n'.join(lines)


def _size_text(sizes: Sequence[int]) -> str:
  return f'{sizes[0]:,} training images' if len(sizes) == 1 else (
      'training images ' + ', '.join(f'{s:,}' for s in sizes))


@plotting.styled
def augmentation_figure(study: analysis.Study, path: str | None = None, *,
                        size: int | None = None,
                        compared: tuple[str, str] = ('none', 'all')):
  """Left: the gap (test − training error) per augmentation at `size`
  training images (default: the size most augmentations were run at), mean
  with the 95 % t-interval over seeds. Right: training (dashed) and test
  (solid) error vs the training-set size for the `compared` augmentations,
  mean with the 95 % t-interval."""
  cells = _cells(study)
  counts: dict[int, int] = {}
  for _, n in cells:
    counts[n] = counts.get(n, 0) + 1
  if size is None and counts:
    size = max(counts, key=lambda n: (counts[n], -n))
  fig, (left, right) = plotting.figure(1, 2, width=12.0, height=4.8)
  data: dict[str, Any] = {
      'error_bars': '95 % t-interval over seeds', 'unit': 'error %',
      'train_error': 'eval mode on the training images, no augmentation',
      'gap': {}, 'vs_size': {}}
  ns = []
  names = [name for name, n in cells if n == size]
  for i, name in enumerate(names):
    mean, half = plotting.interval95(cells[(name, size)]['gap'])
    ns.append(len(cells[(name, size)]['gap']))
    colour = plotting.PALETTE[2] if name == 'none' else (
        plotting.PALETTE[1] if name == 'all' else plotting.PALETTE[0])
    left.barh(i, mean, color=colour, alpha=0.8)
    left.errorbar(mean, i, xerr=0 if np.isnan(half) else half, color='0.15',
                  capsize=3, lw=1.2)
    data['gap'][name] = dict(label=_label(name), mean=mean, half95=half,
                             values=cells[(name, size)]['gap'])
  left.set_yticks(range(len(names)), [_label(n) for n in names])
  left.invert_yaxis()
  left.axvline(0, color='0.3', lw=0.8)
  left.set(xlabel='gap: test error − training error (percentage points)',
           title=f'gap per augmentation, {_size_text([size or 0])}')
  left.grid(axis='y', visible=False)
  handles = []
  for i, name in enumerate(compared):
    sizes = sorted(n for a, n in cells if a == name)
    if not sizes:
      continue
    colour = plotting.PALETTE[2] if i == 0 else plotting.PALETTE[1]
    for key, style in (('test', '-'), ('train', '--')):
      points = [plotting.interval95(cells[(name, n)][key]) for n in sizes]
      ns += [len(cells[(name, n)][key]) for n in sizes]
      right.errorbar(sizes, [m for m, _ in points],
                     yerr=[0 if np.isnan(h) else h for _, h in points],
                     color=colour, ls=style, marker='o' if key == 'test'
                     else 's', ms=4, capsize=3)
      data['vs_size'].setdefault(name, {})[key] = {
          str(n): dict(mean=m, half95=h)
          for n, (m, h) in zip(sizes, points, strict=True)}
    handles.append(mlines.Line2D([], [], color=colour, marker='o',
                                 label=f'augmentation: {_label(name)}'))
  all_sizes = sorted({n for a, n in cells if a in compared})
  right.set_xscale('log')
  if all_sizes:
    right.set_xticks(all_sizes, [f'{n:,}' for n in all_sizes])
    right.minorticks_off()
  right.set(xlabel='training images', ylabel='error (%)',
            title='error vs training-set size')
  right.set_ylim(bottom=0)
  handles += [mlines.Line2D([], [], color='0.2', ls='-', label='test error'),
              mlines.Line2D([], [], color='0.2', ls='--',
                            label='training error (eval mode)')]
  right.legend(handles=handles, loc='upper right')
  fig.suptitle(f'{analysis.source_label(study) or "?"}: data augmentation '
               f'and the generalisation gap ({analysis.interval_text(ns)})')
  return plotting.save(fig, path, data)
