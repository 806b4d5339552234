"""Theoretical vs measured (effective) receptive fields, per stage.

Theoretical: the region of input pixels that can influence one unit, from
the size accounting's data-flow pass (`cnn.summary.output_receptive_fields`:
r += (k - 1) d j, j *= s through every conv and pool; the largest branch at
an addition).

Effective (Luo et al., 2016): |d y_c / d x| for the centre unit c of a
stage's output map, i.e. one backward pass (`jax.vjp`) with a cotangent that
is one at the centre position (every channel: the sum over channels) and zero
elsewhere; absolute values summed over input channels and averaged over
images. It is Gaussian-like and fills only part of the theoretical field.

The figure places the theoretical square (clipped to the image) around the
measured field (on its centroid, moved to contain its non-zero support);
both are in input pixels.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import patches

from cnn import summary
from cnn.kernels import forms
from cnn.visualize import common

Array = jax.Array


def measure_erf(stage_fn: Callable[[Array], Array], images: Array,
                center: tuple[int, int] | None = None) -> np.ndarray:
  """Effective receptive field of one unit of `stage_fn`'s output map.

  Args:
    stage_fn: images [N, H, W, C] -> maps [N, h, w, c], images independent.
    images: [N, H, W, C] inputs.
    center: (row, column) of the unit; default the centre (h // 2, w // 2).

  Returns:
    [H, W] float64: mean over images of sum over input channels of
    |d (sum_c y[n, row, col, c]) / d x[n]|.
  """
  images = jnp.asarray(images, jnp.float32)

  def input_gradient(images):
    y, pullback = jax.vjp(stage_fn, images)
    _, h, w, _ = y.shape
    row, col = center if center is not None else (h // 2, w // 2)
    # One at the centre position of every channel: d(sum_c y_c)/dx.
    cotangent = jnp.zeros_like(y).at[:, row, col, :].set(1.0)
    return pullback(cotangent)[0]

  with forms.reference_convolutions():  # Plain lax convs for the gradient.
    grad = jax.jit(input_gradient)(images)
  return np.abs(np.asarray(grad, np.float64)).sum(-1).mean(0)


def support_box(erf: np.ndarray, rel: float = 0.0) -> tuple[int, int]:
  """(height, width) of the bounding box of the pixels where erf > rel*max."""
  mask = erf > rel * erf.max() if erf.max() > 0 else erf > 0
  if not mask.any():
    return 0, 0
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def _square(erf: np.ndarray, rf: tuple[int, int]) -> tuple[int, ...]:
  """(top, left, bottom, right) of the theoretical field, clipped to the
  image (pixels, end exclusive): on the erf's centroid, moved as little as
  needed to contain the erf's non-zero support where that fits."""
  h, w = erf.shape
  total = erf.sum()
  if total > 0:
    cy = (erf.sum(1) * np.arange(h)).sum() / total
    cx = (erf.sum(0) * np.arange(w)).sum() / total
  else:
    cy, cx = (h - 1) / 2, (w - 1) / 2
  top = int(round(cy - (rf[0] - 1) / 2))
  left = int(round(cx - (rf[1] - 1) / 2))
  if total > 0:
    # Where the support fits in the field, the square must contain it.
    rows = np.nonzero(erf.any(1))[0]
    cols = np.nonzero(erf.any(0))[0]
    top = min(max(top, rows[-1] - rf[0] + 1), rows[0])
    left = min(max(left, cols[-1] - rf[1] + 1), cols[0])
  return (max(top, 0), max(left, 0), min(top + rf[0], h),
          min(left + rf[1], w))


def erf_stats(erf: np.ndarray, rf: tuple[int, int]) -> dict[str, Any]:
  """Numbers comparing a measured field with the theoretical size `rf`.

  Returns:
    theoretical (rf), theoretical_area_in_image (the square clipped to the
    image), support (bounding box of non-zero gradient), mass_inside (share
    of the gradient inside the square), area95_fraction (fewest pixels
    holding 95 % of the gradient, over the clipped area), radius_px (the
    gradient-weighted standard deviation of the distance to the centroid).
  """
  t, l, b, r = _square(erf, rf)
  area = max((b - t) * (r - l), 1)
  total = erf.sum()
  inside = erf[t:b, l:r].sum() / total if total > 0 else 0.0
  ranked = np.sort(erf.ravel())[::-1]
  n95 = int(np.searchsorted(np.cumsum(ranked), 0.95 * total) + 1) if (
      total > 0) else 0
  h, w = erf.shape
  yy, xx = np.mgrid[:h, :w]
  if total > 0:
    cy, cx = (erf * yy).sum() / total, (erf * xx).sum() / total
    radius = np.sqrt((erf * ((yy - cy)**2 + (xx - cx)**2)).sum() / total)
  else:
    radius = 0.0
  return {'theoretical': list(rf), 'theoretical_area_in_image': area,
          'support': list(support_box(erf)), 'mass_inside': float(inside),
          'area95_fraction': n95 / area, 'radius_px': float(radius)}


def theoretical_fields(model, input_shape) -> dict[str, tuple[Any, Any]]:
  """{stage: ((rf_h, rf_w), (jump_h, jump_w))} of every `out` entry."""
  fields = summary.output_receptive_fields(model, tuple(input_shape))
  return {k: v for k, v in fields[1].items() if v is not None}


def stage_fn(model, variables, stage: str) -> Callable[[Array], Array]:
  return lambda x: common.forward(model, variables, x)[1][stage]


def model_erf(model, variables, stage: str, images: np.ndarray
               ) -> np.ndarray:
  """`measure_erf` of a model's stage, with the variables as arguments of
  the compiled program (not constants folded into it)."""
  def input_gradient(variables, images):
    y, pullback = jax.vjp(stage_fn(model, variables, stage), images)
    _, h, w, _ = y.shape
    cotangent = jnp.zeros_like(y).at[:, h // 2, w // 2, :].set(1.0)
    return pullback(cotangent)[0]

  with forms.reference_convolutions():
    grad = jax.jit(input_gradient)(variables, jnp.asarray(images,
                                                          jnp.float32))
  return np.abs(np.asarray(grad, np.float64)).sum(-1).mean(0)


def measure(model, variables_by_label: Mapping[str, Any], images: np.ndarray,
            stages: Sequence[str] | None = None) -> dict[str, Any]:
  """ERFs and statistics of every spatial stage, for each set of variables.

  Args:
    model: a `Classifier`.
    variables_by_label: e.g. {'init': ..., 'trained': ...}.
    images: [N, H, W, C] normalised images to average over.
    stages: the stages measured; default every spatial stage.

  Returns:
    {'theoretical': {stage: [rf, jump]}, label: {stage: {'erf': [H, W],
    **erf_stats}}}.
  """
  input_shape = images.shape[1:]
  first = next(iter(variables_by_label.values()))
  valid = common.stage_names(model, first, input_shape)
  for stage in stages or ():
    common.check_stage(stage, valid)
  stages = list(stages or valid)
  theory = theoretical_fields(model, input_shape)
  data: dict[str, Any] = {'theoretical': {s: theory[s] for s in stages}}
  for label, variables in variables_by_label.items():
    data[label] = {}
    for stage in stages:
      erf = model_erf(model, variables, stage, images)
      data[label][stage] = {'erf': erf,
                            **erf_stats(erf, theory[stage][0])}
  return data


def _draw(ax, erf: np.ndarray, rf, title: str) -> None:
  common.show(ax, erf / (erf.max() or 1.0), title, cmap='magma', vmin=0,
              vmax=1)
  t, l, b, r = _square(erf, rf)
  ax.add_patch(patches.Rectangle((l - 0.5, t - 0.5), r - l, b - t,
                                 fill=False, edgecolor='cyan', lw=0.8))


def plot_measured(data: Mapping[str, Any], path: str, title: str = '') -> str:
  """Figure of `measure(...)`'s result: rows = labels, columns = stages."""
  labels = [k for k in data if k != 'theoretical']
  stages = list(data['theoretical'])
  fig, axes = common.subplots(len(labels), len(stages), cell=1.6)
  for i, label in enumerate(labels):
    for j, stage in enumerate(stages):
      d = data[label][stage]
      rf = data['theoretical'][stage][0]
      _draw(axes[i, j], d['erf'], rf,
            f'{label} {stage}\nRF {rf[0]}, 95% in '
            f'{100 * d["area95_fraction"]:.0f}%')
  fig.suptitle(title or 'effective receptive field |dy_c/dx| (magma) in the '
               'theoretical field (cyan)', fontsize=8)
  return common.save(fig, path, data)


def plot_receptive_fields(model, variables_by_label: Mapping[str, Any],
                          images: np.ndarray, path: str) -> str:
  """Measures (`measure`) and plots; returns `path`."""
  return plot_measured(measure(model, variables_by_label, images), path)


def plot_comparison(runs: Mapping[str, tuple[Any, Any]], images: np.ndarray,
                    path: str) -> str:
  """ERFs of several trained models side by side (a ResNet and its plain
  twin), rows = runs, columns = stages.

  Args:
    runs: {label: (model, variables)}; models take the same input.
    images: [N, H, W, C] normalised images.
    path: PNG to write.
  """
  data: dict[str, Any] = {}
  theory = None
  for label, (model, variables) in runs.items():
    measured = measure(model, {label: variables}, images)
    theory = theory or measured['theoretical']
    data[label] = measured[label]
  data = {'theoretical': theory, **data}
  return plot_measured(data, path, 'trained ERFs: ' + ' vs '.join(runs))
