"""Translation: equivariance of the stages, invariance, classification
consistency.

The input is shifted right by k pixels (circularly: the columns that leave
on the right come back on the left; Fashion-MNIST's border is background,
so this moves the object on a uniform background). For each stage with
cumulative stride (jump) J and receptive field r:

* aligned error (equivariance): the stage's output of the shifted image
  against its unshifted output moved by m = k / J units, relative L2 over
  the interior (units whose field stays clear of the borders, which the
  model's own padding pins). Zero for a stack of convolutions when J divides
  k; for other k the best of m = floor(k / J) and ceil(k / J) is taken, and
  what remains is the aliasing of the strided layers.
* unaligned error: the same outputs compared position by position (how much
  the map changes, i.e. its lack of invariance), and after global average
  pooling over the map (invariance of a pooled descriptor).
* consistency (Zhang, 2019): the fraction of images whose predicted class
  under a shift of k pixels equals the unshifted prediction, and the
  fraction whose prediction stays the same for every shift 0..k.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cnn import plotting
from cnn.visualize import common, receptive_field

Array = jax.Array


def shift_images(images: Array, k: int, axis: int = 2) -> Array:
  """Circular shift of [N, H, W, C] images by k pixels (axis 2: rightwards)."""
  return jnp.roll(images, k, axis=axis)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
  norm = np.linalg.norm(a)
  return float(np.linalg.norm(b - a) / norm) if norm > 0 else float(
      np.linalg.norm(b - a))


def aligned_error(base: np.ndarray, shifted: np.ndarray, k: int, jump: int,
                  rf: int, start: int | None = None,
                  width: int | None = None) -> tuple[float, bool]:
  """Equivariance error of maps [N, h, w, c] for an input shift of k pixels.

  Compares column c of `shifted` with column c - m of `base` (m = k / J;
  the better of floor and ceil when J does not divide k) over the clean
  columns: those whose field [start + c J, start + c J + rf) lies inside the
  input and right of the k wrapped-in columns. Without `start` (the input
  column where column 0's field begins) a symmetric margin of
  ceil((rf - 1) / 2J) units is used.

  Returns:
    (relative L2 error, whether clean columns existed; without them the
    whole maps are compared, borders included).
  """
  w = base.shape[2]
  errors, interior = [], True
  for m in sorted({k // jump, -(-k // jump)}):
    if start is not None and width is not None:
      cols = [c for c in range(m, w) if start + c * jump >= k
              and start + c * jump + rf <= width]
    else:
      margin = math.ceil((rf - 1) / 2 / jump)
      cols = list(range(margin + m, w - margin))
    if cols:
      cols = np.asarray(cols)
      errors.append(_rel(base[:, :, cols - m], shifted[:, :, cols]))
    else:  # The map is too small for clean columns: compare it all.
      interior = False
      errors.append(_rel(np.roll(base, m, axis=2), shifted))
  return min(errors), interior


def shift_errors(fn: Callable[[Array], Mapping[str, Array]],
                 images: np.ndarray, fields: Mapping[str, Any],
                 max_shift: int = 8,
                 starts: Mapping[str, int | None] | None = None
                 ) -> dict[str, Any]:
  """Aligned, unaligned and pooled errors of every map of `fn` per shift.

  Args:
    fn: images [N, H, W, C] -> {stage: maps [N, h, w, c]} (jit it: it
      runs once per shift).
    images: [N, H, W, C].
    fields: {stage: ((rf_h, rf_w), (jump_h, jump_w))}, e.g. from
      `receptive_field.theoretical_fields`.
    max_shift: shifts k = 0..max_shift pixels (rightwards).
    starts: {stage: input column where the field of map column 0 begins}
      (see `aligned_error`); default a symmetric margin.

  Returns:
    {'shifts': [...], stage: {'jump', 'rf', 'aligned', 'unaligned',
    'pooled', 'interior'}} with one error per shift.
  """
  base = jax.device_get(fn(jnp.asarray(images)))
  data: dict[str, Any] = {'shifts': list(range(max_shift + 1))}
  base = {s: base[s] for s in sorted(base, key=common.stage_order)}
  for stage in base:
    (_, rf), (_, jump) = fields[stage]
    data[stage] = {'jump': jump, 'rf': rf, 'aligned': [], 'unaligned': [],
                   'pooled': [], 'interior': True,
                   'field_start': (starts or {}).get(stage)}
  for k in data['shifts']:
    out = jax.device_get(fn(shift_images(jnp.asarray(images), k)))
    for stage, a in base.items():
      a, b, d = np.asarray(a, np.float64), np.asarray(out[stage]), data[stage]
      err, interior = aligned_error(a, b, k, d['jump'], d['rf'],
                                    d['field_start'], images.shape[2])
      d['aligned'].append(err)
      d['interior'] = d['interior'] and interior
      d['unaligned'].append(_rel(a, b))
      d['pooled'].append(_rel(a.mean(axis=(1, 2)), b.mean(axis=(1, 2))))
  return data


def consistency(predict: Callable[[Array], Array], images: np.ndarray,
                max_shift: int = 8) -> dict[str, list[float]]:
  """Classification consistency under shifts of 0..max_shift pixels.

  Args:
    predict: images [N, H, W, C] -> predicted classes [N].
    images: [N, H, W, C].
    max_shift: largest shift in pixels (rightwards).

  Returns:
    {'shifts', 'same_as_unshifted': fraction per k, 'same_for_all_up_to':
    fraction whose class is unchanged for every shift 0..k}.
  """
  preds = np.stack([
      common.batched(lambda x, k=k: predict(shift_images(x, k)), images)
      for k in range(max_shift + 1)])
  same = preds == preds[0]
  return {'shifts': list(range(max_shift + 1)),
          'same_as_unshifted': same.mean(1),
          'same_for_all_up_to': np.cumprod(same, axis=0).mean(1)}


def field_starts(model, variables, images: np.ndarray, stages, fields=None
                 ) -> dict[str, int | None]:
  """{stage: input column where the field of map column 0 begins}, from
  `receptive_field.field_geometry` (`fields` is not needed any more; kept
  for callers that pass it)."""
  del fields
  geometry = receptive_field.field_geometry(model, variables,
                                            images.shape[1:], stages)
  return {s: geometry[s].start[1] for s in stages}


def measure(model, variables, images: np.ndarray, consistency_images:
            np.ndarray | None = None, max_shift: int = 8) -> dict[str, Any]:
  """`shift_errors` of every spatial stage of a `Classifier` plus its
  consistency (on `consistency_images`, default `images`)."""
  stages = common.stage_names(model, variables, images.shape[1:])
  fields = receptive_field.theoretical_fields(model, images.shape[1:])

  # Variables as arguments: not constants folded into the programs.
  maps = jax.jit(lambda v, x: {s: common.forward(model, v, x)[1][s]
                               for s in stages})
  predict = jax.jit(
      lambda v, x: jnp.argmax(common.forward(model, v, x)[0], -1))
  data = shift_errors(lambda x: maps(variables, x), images, fields,
                      max_shift, field_starts(model, variables, images[:8],
                                              stages, fields))
  data['consistency'] = consistency(
      lambda x: predict(variables, x),
      images if consistency_images is None else consistency_images, max_shift)
  return data


def _finish(fig, axes, title: str) -> None:
  for ax in axes:
    ax.set_xlabel('shift k (pixels)')
  axes[0].set_ylabel('relative L2 change')
  axes[2].set_ylabel('fraction of images')
  axes[2].set_ylim(0, 1.02)
  fig.suptitle(title)


def plot_shift(data: Mapping[str, Any], path: str, title: str = '') -> str:
  """Figure of `measure(...)`: aligned / unaligned errors, consistency."""
  shifts = data['shifts']
  stages = [k for k in data if k not in ('shifts', 'consistency')]
  with plotting.style():
    fig, axes = plotting.figure(1, 3, width=12.0, height=4.6)
    for stage in stages:
      d = data[stage]
      line, = axes[0].plot(shifts, d['aligned'], 'o-', ms=4,
                           label=f'{stage} (stride J = {d["jump"]} px)')
      axes[1].plot(shifts, d['unaligned'], 'o-', ms=4,
                   color=line.get_color())
      axes[1].plot(shifts, d['pooled'], '--', color=line.get_color())
    axes[0].set_title('equivariance: aligned by J')
    axes[1].set_title('unaligned (—), globally pooled (- -)')
    c = data['consistency']
    axes[2].plot(c['shifts'], c['same_as_unshifted'], 'o-', ms=4,
                 color='black', label='same class as k = 0')
    axes[2].plot(c['shifts'], c['same_for_all_up_to'], 's--', ms=4,
                 color='0.55', label='same for all 0..k')
    axes[2].set_title('classification consistency')
    axes[2].legend(loc='lower left')
    fig.legend(*axes[0].get_legend_handles_labels(),
               loc='outside lower center', ncols=min(len(stages), 4))
    _finish(fig, axes, title or 'translation: the input shifted right by k '
            'pixels (circularly)')
  return common.save(fig, path, data)


def plot_shift_comparison(runs: Mapping[str, Mapping[str, Any]], path: str
                          ) -> str:
  """Several runs' `measure(...)`: the last stage's aligned and pooled
  errors, and consistency, one colour per run."""
  summary = {}
  with plotting.style():
    fig, axes = plotting.figure(1, 3, width=12.0, height=4.6)
    for label, data in runs.items():
      stages = [k for k in data if k not in ('shifts', 'consistency')]
      last = data[stages[-1]]
      shifts = data['shifts']
      line, = axes[0].plot(shifts, last['aligned'], 'o-', ms=4,
                           label=f'{label} ({stages[-1]}, J = '
                           f'{last["jump"]} px)')
      axes[1].plot(shifts, last['pooled'], 'o-', ms=4,
                   color=line.get_color())
      c = data['consistency']
      axes[2].plot(c['shifts'], c['same_as_unshifted'], 'o-', ms=4,
                   color=line.get_color())
      axes[2].plot(c['shifts'], c['same_for_all_up_to'], 's--', ms=4,
                   color=line.get_color())
      summary[label] = data
    axes[0].set_title('last stage, aligned by its stride')
    axes[1].set_title('last stage, globally pooled')
    axes[2].set_title('consistency: same class as k = 0 (—),\n'
                      'for all shifts 0..k (- -)')
    fig.legend(*axes[0].get_legend_handles_labels(),
               loc='outside lower center', ncols=len(runs))
    _finish(fig, axes, 'translation: ' + ' vs '.join(runs))
  return common.save(fig, path, summary)
