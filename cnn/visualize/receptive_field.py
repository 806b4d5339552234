"""Theoretical vs measured (effective) receptive fields, per stage.

Theoretical: the region of input pixels that can influence one unit. Its
size r and jump J (distance between neighbouring units) come from the size
accounting's data-flow pass (`cnn.summary.output_receptive_fields`:
r += (k - 1) d j, j *= s through every conv and pool; the largest branch at
an addition); where unit 0's field starts (the padding's offset, which the
accounting does not track) comes from `field_geometry`: the input pixels
that reach the centre unit. Unit
(i, j) then sees input rows start_h + i J_h ... + r_h - 1, and columns alike.

Effective (Luo et al., 2016): |d y_c / d x| for the centre unit c of a
stage's output map, i.e. one backward pass (`jax.vjp`) with a cotangent that
is one at the centre position (every channel: the sum over channels) and zero
elsewhere; absolute values summed over input channels and averaged over
images (256 by default: a single image's map is noisy, the average is the
smooth, Gaussian-like field of the paper). Each map gets a least-squares
fit of an isotropic 2-D Gaussian, whose sigma (pixels) measures how much of
the theoretical field is actually used, and a radial profile (mean over
rings of integer distance from the fitted centre).

The figure draws each averaged map with the centre unit's theoretical field
outlined (cyan, exact: from r, J and start), and its radial profile beside
it with the fitted Gaussian.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import patches

from cnn import plotting, summary
from cnn.kernels import forms
from cnn.visualize import common

Array = jax.Array
ERF_IMAGES = 256  # Images averaged per map (Luo et al. average many).


class Field(NamedTuple):
  """Geometry of a stage's units in input pixels, per axis (rows, columns).

  Unit (i, j) sees rows start[0] + i * jump[0] ... + rf[0] - 1 and columns
  start[1] + j * jump[1] ... + rf[1] - 1 (negative or past the image: the
  field hangs over the border into the padding).
  """

  rf: tuple[int, int]
  jump: tuple[int, int]
  start: tuple[int, int]

  def box(self, row: int, col: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of unit (row, col)'s field, end exclusive,
    not clipped to the image."""
    top = self.start[0] + row * self.jump[0]
    left = self.start[1] + col * self.jump[1]
    return top, left, top + self.rf[0], left + self.rf[1]


def theoretical_fields(model, input_shape) -> dict[str, tuple[Any, Any]]:
  """{stage: ((rf_h, rf_w), (jump_h, jump_w))} of every `out` entry."""
  fields = summary.output_receptive_fields(model, tuple(input_shape))
  return {k: v for k, v in fields[1].items() if v is not None}


def _position(unit: str, h: int, w: int) -> tuple[int, int]:
  return {'centre': (h // 2, w // 2), 'first': (0, 0),
          'last': (h - 1, w - 1)}[unit]


def _axis_start(supports: Mapping[int, np.ndarray], rf: int, jump: int
                ) -> int | None:
  """Start of unit 0's field on one axis from {unit index: the input lines
  (bool [size]) reaching that unit}.

  In order of trust: a support exactly r wide (the field itself); one that
  touches neither border but is narrower (paths that are zero, e.g. a
  residual branch initialised to zero: centred in the field); one that
  touches one border (the other edge is the field's); None when every
  field spans the axis.
  """
  size = len(next(iter(supports.values())))
  found = {}
  for unit, support in supports.items():
    lines = np.nonzero(support)[0]
    if not len(lines):
      continue
    lo, hi = lines[0], lines[-1]
    if hi - lo + 1 == rf:
      found.setdefault(0, lo - unit * jump)
    elif lo > 0 and hi < size - 1:
      found.setdefault(1, int(np.floor((lo + hi - rf + 1) / 2))
                       - unit * jump)
    elif lo > 0:
      found.setdefault(2, lo - unit * jump)
    elif hi < size - 1:
      found.setdefault(2, hi - rf + 1 - unit * jump)
  return int(found[min(found)]) if found else None


def field_geometry(model, variables, input_shape: Sequence[int],
                   stages: Sequence[str] | None = None,
                   probes: int = 16, seed: int = 0) -> dict[str, Field]:
  """{stage: Field} for the spatial stages of a `Classifier`.

  r and J from `cnn.summary.output_receptive_fields`; the start from the
  input pixels that reach a unit: the non-zero support of its input
  gradient summed over `probes` random normal images (many images, so every
  pixel of the field, every max-pool winner and every ReLU's active side is
  reached by some image), for the centre unit and the first and last ones
  (a field larger than the image often still ends inside it at a corner
  unit). The support of a field that lies inside the image is the field
  (the tests check this against the accounting); `_axis_start` says what is
  read off the others. Where every field spans the image, the probe is
  repeated on a larger image (grown by a multiple of the largest jump, so
  that every layer pads the same); a model that takes only its own size
  gets the middle unit's field centred on the image instead.

  Args:
    model, variables: a `Classifier` and its variables (random ones at
      initialisation are best: no dead units).
    input_shape: (H, W, C).
    stages: default every spatial stage.
    probes: random images whose gradient supports are united.
    seed: of the random images.
  """
  stages = list(stages or common.stage_names(model, variables, input_shape))
  theory = {s: theoretical_fields(model, input_shape)[s] for s in stages}
  starts = _probe_starts(model, variables, input_shape, stages, theory,
                         probes, seed)
  if any(v is None for st in starts.values() for v in st):
    # Grow each axis by a multiple of the largest jump, to fit every field.
    top = max(j for _, jump in theory.values() for j in jump)
    grown = list(input_shape)
    for axis in (0, 1):
      need = max(rf[axis] for rf, _ in theory.values()) + 2 - grown[axis]
      grown[axis] += top * max(0, -(-need // top))
    try:
      larger = _probe_starts(model, variables, grown, stages, theory,
                             probes, seed)
    except Exception:  # pylint: disable=broad-except
      larger = {}  # A model of one input size (a dense layer on the map).
    for s, st in starts.items():
      starts[s] = [v if v is not None else larger.get(s, (None, None))[a]
                   for a, v in enumerate(st)]
  geometry = {}
  for s in stages:
    rf, jump = theory[s]
    start = list(starts[s])
    for axis in (0, 1):
      if start[axis] is None:  # Centre the middle unit's field.
        units = -(-input_shape[axis] // jump[axis])
        start[axis] = ((input_shape[axis] - rf[axis]) // 2
                       - (units // 2) * jump[axis])
    geometry[s] = Field(tuple(rf), tuple(jump), tuple(int(v) for v in start))
  return geometry


def _probe_starts(model, variables, input_shape, stages, theory, probes,
                  seed) -> dict[str, list[int | None]]:
  """{stage: [row start, column start] or None} from the gradient supports
  of the centre, first and last units (see `field_geometry`)."""
  images = np.random.default_rng(seed).normal(
      size=(probes, *input_shape)).astype(np.float32)
  shapes = jax.eval_shape(lambda x: common.forward(model, variables, x)[1],
                          jax.ShapeDtypeStruct((1, *input_shape),
                                               jnp.float32))
  erfs = _unit_erfs(model, variables, stages, images,
                    ('centre', 'first', 'last'))
  starts = {}
  for s in stages:
    rf, jump = theory[s]
    h, w = shapes[s].shape[1:3]
    starts[s] = []
    for axis in (0, 1):
      supports = {}
      for unit, maps in erfs.items():
        index = _position(unit, h, w)[axis]
        supports.setdefault(index, (maps[s] > 0).any(1 - axis))
      starts[s].append(_axis_start(supports, rf[axis], jump[axis]))
  return starts


def measure_erf(stage_fn: Callable[[Array], Array], images: Array,
                center: tuple[int, int] | None = None,
                batch_size: int = 128) -> np.ndarray:
  """Effective receptive field of one unit of `stage_fn`'s output map.

  Args:
    stage_fn: images [N, H, W, C] -> maps [N, h, w, c], images independent.
    images: [N, H, W, C] inputs.
    center: (row, column) of the unit; default the centre (h // 2, w // 2).
    batch_size: images per compiled backward pass.

  Returns:
    [H, W] float64: mean over images of sum over input channels of
    |d (sum_c y[n, row, col, c]) / d x[n]|.
  """
  def input_gradient(images):
    y, pullback = jax.vjp(stage_fn, images)
    _, h, w, _ = y.shape
    row, col = center if center is not None else (h // 2, w // 2)
    # One at the centre position of every channel: d(sum_c y_c)/dx.
    cotangent = jnp.zeros_like(y).at[:, row, col, :].set(1.0)
    return jnp.abs(pullback(cotangent)[0]).sum(-1)

  with forms.reference_convolutions():  # Plain lax convs for the gradient.
    fn = jax.jit(input_gradient)
    grads = common.batched(fn, np.asarray(images, np.float32), batch_size)
  return np.asarray(grads, np.float64).mean(0)


def stage_fn(model, variables, stage: str) -> Callable[[Array], Array]:
  return lambda x: common.forward(model, variables, x)[1][stage]


def model_erfs(model, variables, stages: Sequence[str], images: np.ndarray,
               batch_size: int = 128, unit: str = 'centre'
               ) -> dict[str, np.ndarray]:
  """{stage: ERF [H, W]} of one unit of every stage in `stages`, averaged
  over `images` [N, H, W, C]: one compiled program (one forward, one
  backward per stage; the variables are its arguments, not constants) run
  over batches of `batch_size`. `unit`: 'centre' (h // 2, w // 2), 'first'
  (0, 0) or 'last' (h - 1, w - 1)."""
  return _unit_erfs(model, variables, stages, images, (unit,),
                    batch_size)[unit]


def _unit_erfs(model, variables, stages: Sequence[str], images: np.ndarray,
               units: Sequence[str], batch_size: int = 128
               ) -> dict[str, dict[str, np.ndarray]]:
  """{unit: {stage: ERF [H, W]}} for several units (`model_erfs`), all in
  one compiled program."""
  stages = list(stages)

  def input_gradients(variables, x):
    ys, pullback = jax.vjp(
        lambda x: {s: common.forward(model, variables, x)[1][s]
                   for s in stages}, x)
    grads = {}
    for unit in units:
      for s in stages:
        cotangent = {t: jnp.zeros_like(y) for t, y in ys.items()}
        row, col = _position(unit, *ys[s].shape[1:3])
        cotangent[s] = cotangent[s].at[:, row, col, :].set(1.0)
        grads[unit, s] = jnp.abs(pullback(cotangent)[0]).sum(-1)  # [B,H,W]
    return grads

  with forms.reference_convolutions():
    fn = jax.jit(input_gradients)
    grads = common.batched(lambda x: fn(variables, x),
                           np.asarray(images, np.float32), batch_size)
  return {unit: {s: np.asarray(grads[unit, s], np.float64).mean(0)
                 for s in stages} for unit in units}


def model_erf(model, variables, stage: str, images: np.ndarray
              ) -> np.ndarray:
  """`model_erfs` of one stage: its centre unit's ERF [H, W]."""
  return model_erfs(model, variables, [stage], images)[stage]


def support_box(erf: np.ndarray, rel: float = 0.0) -> tuple[int, int]:
  """(height, width) of the bounding box of the pixels where erf > rel*max."""
  mask = erf > rel * erf.max() if erf.max() > 0 else erf > 0
  if not mask.any():
    return 0, 0
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def clipped(box: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
  """(top, left, bottom, right) `box` clipped to an image of `shape`."""
  t, left, b, r = box
  return max(t, 0), max(left, 0), min(b, shape[0]), min(r, shape[1])


def fit_gaussian(erf: np.ndarray) -> dict[str, Any]:
  """Least-squares fit of a * exp(-|p - c|^2 / (2 sigma^2)) to `erf` / max.

  Returns:
    {'sigma_px', 'center' [row, col], 'amplitude' (of the map scaled to peak
    1), 'r2' (share of the map's variance the fit explains)}.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  peak = erf.max()
  if not peak > 0:
    return {'sigma_px': 0.0, 'center': [float('nan')] * 2, 'amplitude': 0.0,
            'r2': 0.0}
  z = erf / peak
  h, w = z.shape
  yy, xx = np.mgrid[:h, :w]
  total = z.sum()
  cy, cx = (z * yy).sum() / total, (z * xx).sum() / total
  spread = np.sqrt((z * ((yy - cy)**2 + (xx - cx)**2)).sum() / total / 2)

  def residual(p):
    a, y0, x0, s = p
    return (a * np.exp(-((yy - y0)**2 + (xx - x0)**2) / (2 * s * s))
            - z).ravel()

  fit = optimize.least_squares(
      residual, [1.0, cy, cx, max(spread, 0.5)],
      bounds=([0, -h, -w, 0.2], [np.inf, 2 * h, 2 * w, 4.0 * max(h, w)]))
  a, y0, x0, s = fit.x
  r2 = 1 - (fit.fun**2).sum() / max(((z - z.mean())**2).sum(), 1e-30)
  return {'sigma_px': float(s), 'center': [float(y0), float(x0)],
          'amplitude': float(a), 'r2': float(r2)}


def radial_profile(erf: np.ndarray, center: Sequence[float]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(radii 0, 1, 2, ... px, mean erf / max over the ring of pixels whose
  distance to `center` rounds to each radius)."""
  h, w = erf.shape
  yy, xx = np.mgrid[:h, :w]
  ring = np.rint(np.hypot(yy - center[0], xx - center[1])).astype(int)
  z = erf / (erf.max() or 1.0)
  counts = np.bincount(ring.ravel())
  sums = np.bincount(ring.ravel(), z.ravel())
  keep = counts > 0
  return np.nonzero(keep)[0], sums[keep] / counts[keep]


def erf_stats(erf: np.ndarray, box: Sequence[int]) -> dict[str, Any]:
  """Numbers comparing a measured field with the theoretical field `box`
  (top, left, bottom, right; unclipped).

  Returns:
    theoretical_area_in_image (the box clipped to the image), support
    (bounding box of non-zero gradient), mass_inside (share of the gradient
    inside the box), area95_fraction (fewest pixels holding 95 % of the
    gradient, over the clipped area), radius_px (the gradient-weighted
    standard deviation of the distance to the centroid), the Gaussian fit
    (`fit_gaussian`: sigma_px, center, amplitude, r2) and the radial profile
    (profile_radius_px, profile).
  """
  t, left, b, r = clipped(box, erf.shape)
  area = max((b - t) * (r - left), 1)
  total = erf.sum()
  inside = erf[t:b, left:r].sum() / total if total > 0 else 0.0
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
  fit = fit_gaussian(erf)
  radii, profile = radial_profile(
      erf, fit['center'] if fit['sigma_px'] > 0 else ((h - 1) / 2,
                                                       (w - 1) / 2))
  return {'box': list(box), 'theoretical_area_in_image': area,
          'support': list(support_box(erf)), 'mass_inside': float(inside),
          'area95_fraction': n95 / area, 'radius_px': float(radius), **fit,
          'profile_radius_px': radii, 'profile': profile}


def measure(model, variables_by_label: Mapping[str, Any], images: np.ndarray,
            stages: Sequence[str] | None = None,
            batch_size: int = 128) -> dict[str, Any]:
  """ERFs and statistics of every spatial stage, for each set of variables.

  Args:
    model: a `Classifier`.
    variables_by_label: e.g. {'init': ..., 'trained': ...}.
    images: [N, H, W, C] normalised images averaged over (256 in the
      figures; `ERF_IMAGES`).
    stages: the stages measured; default every spatial stage.
    batch_size: images per compiled backward pass.

  Returns:
    {'theoretical': {stage: [rf, jump, start]}, 'images': N, label: {stage:
    {'erf': [H, W], **erf_stats}}}.
  """
  input_shape = images.shape[1:]
  first = next(iter(variables_by_label.values()))
  valid = common.stage_names(model, first, input_shape)
  for stage in stages or ():
    common.check_stage(stage, valid)
  stages = list(stages or valid)
  geometry = field_geometry(model, first, input_shape, stages)
  shapes = jax.eval_shape(
      lambda x: common.forward(model, first, x)[1],
      jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  boxes = {s: geometry[s].box(shapes[s].shape[1] // 2,
                              shapes[s].shape[2] // 2) for s in stages}
  data: dict[str, Any] = {
      'theoretical': {s: tuple(geometry[s]) for s in stages},
      'images': int(len(images))}
  for label, variables in variables_by_label.items():
    erfs = model_erfs(model, variables, stages, images, batch_size)
    data[label] = {s: {'erf': erfs[s], **erf_stats(erfs[s], boxes[s])}
                   for s in stages}
  return data


def _draw_map(ax, erf: np.ndarray, box: Sequence[int], title: str) -> None:
  """The map scaled to its peak, zoomed on the field (half a field of
  margin, at least 4 px), the theoretical field outlined."""
  common.show(ax, erf / (erf.max() or 1.0), title, cmap='magma', vmin=0,
              vmax=1)
  t, left, b, r = box
  ax.add_patch(patches.Rectangle((left - 0.5, t - 0.5), r - left, b - t,
                                 fill=False, edgecolor='cyan', lw=1.5))
  h, w = erf.shape
  margin = max(4, (b - t) // 2, (r - left) // 2)
  side = max(b - t, r - left) + 2 * margin  # A square view.
  cy, cx = (t + b) / 2, (left + r) / 2
  view_top = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
  view_left = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
  ax.set_xlim(view_left - 0.5, min(view_left + side, w) - 0.5)
  ax.set_ylim(min(view_top + side, h) - 0.5, view_top - 0.5)


def _draw_profile(ax, d: Mapping[str, Any], rf: Sequence[int]) -> None:
  radii = np.asarray(d['profile_radius_px'], float)
  far = min(radii.max() if len(radii) else 1.0, 0.75 * max(rf) + 3)
  near = radii <= far
  ax.plot(radii[near], np.asarray(d['profile'])[near], 'o', ms=4,
          label='measured (ring mean)')
  r = np.linspace(0, far, 200)
  s = d['sigma_px']
  if s > 0:
    ax.plot(r, d['amplitude'] * np.exp(-r**2 / (2 * s * s)), '-',
            label='Gaussian fit')
  if max(rf) / 2 <= far:
    ax.axvline(max(rf) / 2, color='0.4', ls=':', lw=1.2,
               label='theoretical half-width')
  ax.set_ylim(0, 1.05 * max(1.0, d['amplitude']))
  # Fixed ticks: the PNG and the PDF (drawn at another size) label alike.
  ax.set_yticks([0, 0.5, 1.0])
  ax.set_xlim(0, far)


def plot_measured(data: Mapping[str, Any], path: str, title: str = '') -> str:
  """Figure of `measure(...)`'s result: rows = stages, a map and its radial
  profile per label."""
  labels = [k for k in data if k not in ('theoretical', 'images')]
  stages = list(data['theoretical'])
  n = data.get('images', '?')
  with plotting.style():
    fig, axes = common.grid(
        len(stages), 2 * len(labels), width=max(8.0, 2.6 * 2 * len(labels)),
        height=2.3 * len(stages) + 0.9,
        gridspec_kw={'width_ratios': [1, 1.15] * len(labels)})
    for i, stage in enumerate(stages):
      rf = data['theoretical'][stage][0]
      for j, label in enumerate(labels):
        d = data[label][stage]
        _draw_map(axes[i, 2 * j], np.asarray(d['erf']), d['box'],
                  f'{label} {stage}: RF {rf[0]} px\n'
                  f'σ = {d["sigma_px"]:.1f} px')
        _draw_profile(axes[i, 2 * j + 1], d, rf)
        if j == 0:
          axes[i, 1].set_ylabel('|∂y/∂x| ÷ peak')
        if i == len(stages) - 1:
          axes[i, 2 * j + 1].set_xlabel('distance from centre (px)')
    handles, names = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, names, loc='outside lower center', ncols=3)
    fig.suptitle(title or 'effective receptive fields (Luo et al. 2016): '
                 f'|∂y/∂x| of the centre unit,\nmean over {n} images; cyan: '
                 'theoretical field of that unit')
  return common.save(fig, path, data)


def plot_receptive_fields(model, variables_by_label: Mapping[str, Any],
                          images: np.ndarray, path: str) -> str:
  """Measures (`measure`) and plots; returns `path`."""
  return plot_measured(measure(model, variables_by_label, images), path)


def plot_comparison(runs: Mapping[str, tuple[Any, Any]], images: np.ndarray,
                    path: str) -> str:
  """ERFs of several trained models side by side (a ResNet and its plain
  twin): rows = stages, a map and a profile per run.

  Args:
    runs: {label: (model, variables)}; models take the same input.
    images: [N, H, W, C] normalised images (256 or more).
    path: PNG to write.
  """
  data: dict[str, Any] = {}
  theory = None
  for label, (model, variables) in runs.items():
    measured = measure(model, {label: variables}, images)
    theory = theory or measured['theoretical']
    data[label] = measured[label]
  data = {'theoretical': theory, 'images': int(len(images)), **data}
  return plot_measured(
      data, path, 'trained effective receptive fields: ' + ' vs '.join(runs)
      + f'\n|∂y/∂x| of the centre unit, mean over {len(images)} images; '
      'cyan: theoretical field')
