"""Shared helpers: forward passes, stage lookup, gradients at a stage, files.

Every figure module works through the common model interface:
`model.apply(variables, images, train=False)` returns `(logits, out)`, where
`out` maps stage names (`stem`, `stage1`, ...) to intermediates. Figures are
made with `cnn.plotting.figure` (here `grid`, always a 2-D array of axes) and
written with `save`, which is `cnn.plotting.save` (PNG at 150 dpi, PDF and the
JSON of the numbers) returning the PNG path.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from cnn import plotting
from cnn.common import errors
from cnn.kernels import forms

Array = jax.Array


def forward(model, variables, images: Array) -> tuple[Array, dict]:
  """Evaluation-mode `(logits [N, classes], out dict)` of `images` [N,H,W,C]."""
  return model.apply(variables, images, train=False)


def stage_order(name: str) -> tuple:
  # Traced outputs come back with sorted keys ('stage10' < 'stage2' <
  # 'stem'); the model's order is the stem, then stages by number.
  digits = ''.join(ch for ch in name if ch.isdigit())
  return (name != 'stem', name.rstrip('0123456789'),
          int(digits) if digits else -1, name)


def spatial_stages(out: dict) -> list[str]:
  """Names of the `out` entries that are maps [N, H, W, C], in model order
  (the stem, then stage1, stage2, ...)."""
  return sorted((k for k, v in out.items()
                 if k not in ('logits', 'pre_logits')
                 and getattr(v, 'ndim', 0) == 4), key=stage_order)


def stage_names(model, variables, input_shape) -> list[str]:
  """The spatial stages of `model` (abstract trace, no compute)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  _, out = jax.eval_shape(lambda x: forward(model, variables, x), x)
  return spatial_stages(out)


def check_stage(stage: str, valid: list[str]) -> None:
  if stage not in valid:
    raise errors.UserError(
        f'Unknown stage {stage!r}; this model has the spatial stages '
        f'{valid} (pass one of them).')


def check_index(index: int, count: int, what: str = 'image index') -> None:
  if not 0 <= index < count:
    raise errors.UserError(
        f'{what} {index} is out of range: there are {count} images, pass '
        f'0..{count - 1}.')


def _perturbed(closed, target: int) -> Callable[..., list[Any]]:
  """The jaxpr `closed` evaluated with `delta` added to output `target`.

  Adding delta where the output value is produced makes every later use
  (the rest of the network) see it too, so d(outputs)/d(delta) at 0 is the
  gradient with respect to that intermediate. Works for any model whose
  intermediate is in its returned `out` dict, without touching the model.
  """
  jaxpr = closed.jaxpr
  target_var = jaxpr.outvars[target]
  literal = jex.core.Literal

  def run(delta, *args):
    env = {}
    read = lambda v: v.val if isinstance(v, literal) else env[v]
    for v, c in zip(jaxpr.constvars, closed.consts, strict=True):
      env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
      env[v] = a
    if target_var in env:
      env[target_var] = env[target_var] + delta
    for eqn in jaxpr.eqns:
      params = eqn.primitive.get_bind_params(eqn.params)
      ans = eqn.primitive.bind(*map(read, eqn.invars), **params)
      outs = ans if eqn.primitive.multiple_results else [ans]
      for v, a in zip(eqn.outvars, outs, strict=True):
        env[v] = a + delta if v == target_var else a
    return [read(v) for v in jaxpr.outvars]

  return run


def stage_and_gradient(model, variables, images: Array, stage: str,
                       classes: Array) -> tuple[Array, Array, Array]:
  """A stage's activations and d logit[class] / d activations.

  Args:
    model, variables: a `Classifier` and its variables.
    images: [N, H, W, C] normalised images.
    stage: a key of the model's `out` dict holding a map.
    classes: [N] int class per image whose logit is differentiated.

  Returns:
    (activations [N, h, w, c], gradient [N, h, w, c], logits [N, classes]).
  """
  fn = lambda v, x: forward(model, v, x)
  # Plain lax convolutions: the jaxpr holds only standard primitives. The
  # variables are arguments, not constants baked into the program.
  with forms.reference_convolutions():
    closed = jax.make_jaxpr(fn)(variables, images)
    shapes = jax.eval_shape(fn, variables, images)
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  marked = jax.tree_util.tree_unflatten(treedef, list(range(len(leaves))))
  check_stage(stage, spatial_stages(shapes[1]))
  target, logits_index = marked[1][stage], marked[0]
  run = _perturbed(closed, target)

  def selected(delta, variables, images, classes):
    outs = run(delta, *jax.tree.leaves((variables, images)))
    logits = outs[logits_index]
    picked = jnp.take_along_axis(logits, classes[:, None], axis=1).sum()
    return picked, (outs[target], logits)

  zeros = jnp.zeros(leaves[target].shape, leaves[target].dtype)
  grad, (acts, logits) = jax.jit(jax.grad(selected, has_aux=True))(
      zeros, variables, images, jnp.asarray(classes))
  return acts, grad, logits


def batched(fn: Callable[[Array], Any], images: np.ndarray,
            batch_size: int = 500) -> Any:
  """`fn` over `images` in batches (fixed shape: one compile), concatenated."""
  n = len(images)
  outs = []
  for i in range(0, n, batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk) if n > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    out = jax.device_get(fn(chunk))
    outs.append(jax.tree.map(lambda a, m=len(chunk) - pad: a[:m], out))
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def display(image: np.ndarray) -> np.ndarray:
  """[H, W, C] image -> something `imshow` shows: [H, W] grey or RGB 0..1."""
  image = np.asarray(image, np.float64)
  lo, hi = image.min(), image.max()
  image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
  return image[..., 0] if image.shape[-1] == 1 else image[..., :3]


def show(ax, image: np.ndarray, title: str | None = None, *,
         scale: bool = True, **kwargs) -> None:
  """An image on `ax` without ticks or grid ([H, W] maps: grey colormap;
  [H, W, C] images scaled to 0..1 by `display` unless `scale` is False)."""
  image = np.asarray(image)
  if image.ndim == 3 and scale:
    image = display(image)
  kwargs.setdefault('cmap', 'gray')
  kwargs.setdefault('interpolation', 'nearest')
  ax.imshow(image, **kwargs)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.grid(False)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if title:
    ax.set_title(title)


def grid(rows: int, cols: int, *, width: float, height: float, **kwargs):
  """`plotting.figure` of rows x cols axes, always a 2-D array of axes.

  Args:
    rows, cols: the panel grid.
    width, height: inches (150 dpi: 8 inches = 1,200 px).
    **kwargs: passed to `Figure.subplots` (gridspec_kw, sharey, ...).
  """
  return plotting.figure(rows, cols, width=width, height=height,
                         squeeze=False, **kwargs)


def overlay(ax, image: np.ndarray, heat: np.ndarray, title: str | None = None,
            cmap: str = 'inferno', alpha: float = 0.55,
            extent: tuple[float, float, float, float] | None = None) -> None:
  """A heat map (scaled to its own 0..max) over `image` [H, W, C] shown grey.

  `heat` is [H, W] on the image's pixels, or any [h, w] grid placed by
  `extent` (left, right, bottom, top in pixel coordinates: pixel centres
  are integers), drawn as cells.
  """
  show(ax, image, title)
  heat = np.asarray(heat, np.float64)
  peak = heat.max() if heat.size and heat.max() > 0 else 1.0
  # Nearest: each value is one pixel (or cell), as computed; small PNGs.
  ax.imshow(heat / peak, cmap=cmap, vmin=0, vmax=1, alpha=alpha,
            interpolation='nearest', extent=extent)
  h, w = np.shape(image)[:2]
  ax.set_xlim(-0.5, w - 0.5)
  ax.set_ylim(h - 0.5, -0.5)


def save(fig, path: str, data: dict[str, Any]) -> str:
  """`cnn.plotting.save` (PNG, PDF, JSON of `data` rounded to 6 digits);
  returns `path`."""
  plotting.save(fig, path, data, digits=6)
  return path
