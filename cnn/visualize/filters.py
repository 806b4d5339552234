"""Learned first-layer filters beside the same filters at initialisation.

The first convolution of any model is found by watching the module calls of
one abstract forward pass (`nn.intercept_methods`), so no model-specific code
is needed. Each filter is scaled on its own (by its largest |weight|, or
min..max for colour filters): the figure shows shapes, not relative
strengths (those are in the JSON).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn import plotting
from cnn.visualize import common


def conv_paths(model, variables, input_shape) -> list[tuple[str, ...]]:
  """Module paths of every `nn.Conv` call, in execution order."""
  paths = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and (
        context.method_name == '__call__'):
      path = tuple(context.module.path)
      if path not in paths:
        paths.append(path)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: common.forward(model, variables, x), x)
  return paths


def first_conv_kernel(model, variables, input_shape) -> tuple[str, np.ndarray]:
  """('backbone/c1_conv', kernel [KH, KW, C_in, C_out]) of the first conv."""
  paths = conv_paths(model, variables, input_shape)
  if not paths:
    raise ValueError('The model has no convolution.')
  node = variables['params']
  for key in paths[0]:
    node = node[key]
  return '/'.join(paths[0]), np.asarray(node['kernel'])


def filter_images(kernel: np.ndarray) -> np.ndarray:
  """[KH, KW, C_in, C_out] -> [C_out, KH, KW, 1 or 3], each in 0..1.

  Three input channels are shown as colour; any other count as the mean over
  input channels (grey).
  """
  k = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)
  if k.shape[-1] != 3:
    k = k.mean(-1, keepdims=True)
  lo = k.min(axis=(1, 2, 3), keepdims=True)
  hi = k.max(axis=(1, 2, 3), keepdims=True)
  return (k - lo) / np.where(hi > lo, hi - lo, 1.0)


def signed_filters(kernel: np.ndarray) -> np.ndarray:
  """[KH, KW, C_in, C_out] -> [C_out, KH, KW]: the mean over input channels,
  each filter divided by its largest |weight| (so -1..1: the sign shows)."""
  k = np.moveaxis(np.asarray(kernel, np.float64), -1, 0).mean(-1)
  peak = np.abs(k).max(axis=(1, 2), keepdims=True)
  return k / np.where(peak > 0, peak, 1.0)


def _mosaic(tiles: np.ndarray) -> np.ndarray:
  """[n, kh, kw, c] tiles on a near-square canvas, one pixel apart (NaN)."""
  n = len(tiles)
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  kh, kw, c = tiles.shape[1:]
  canvas = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1, c), np.nan)
  for i, t in enumerate(tiles):
    r, q = divmod(i, cols)
    canvas[r * (kh + 1):r * (kh + 1) + kh, q * (kw + 1):q * (kw + 1) + kw] = t
  return canvas


def _show_filter(ax, tile: np.ndarray, colour: bool, title: str) -> None:
  if colour:
    common.show(ax, np.nan_to_num(tile, nan=1.0), title, vmin=0, vmax=1)
  else:
    common.show(ax, tile, title, cmap='RdBu_r', vmin=-1, vmax=1)


def plot_filters(trained: np.ndarray, initial: np.ndarray, path: str,
                 layer: str = 'first conv', max_separate: int = 32) -> str:
  """Figure: the filters at initialisation (top) and after training.

  One panel per filter (up to `max_separate` filters; more are drawn as one
  mosaic per state). Colour filters (three input channels) show as RGB
  scaled min..max; others as the mean over input channels on a diverging
  map, red > 0 > blue, each scaled by its largest |weight|.

  Args:
    trained, initial: kernels [KH, KW, C_in, C_out] of the same layer.
    path: PNG file to write.
    layer: the layer's name, for the title.
    max_separate: most filters drawn in panels of their own.

  Returns:
    `path`.
  """
  flat = lambda k: np.moveaxis(k, -1, 0).reshape(k.shape[-1], -1)
  t, i = flat(np.asarray(trained)), flat(np.asarray(initial))
  cos = (t * i).sum(1) / (np.linalg.norm(t, axis=1) *
                          np.linalg.norm(i, axis=1) + 1e-12)
  kh, kw, c_in, n = np.shape(trained)
  colour = c_in == 3
  tiles = {'initialisation': initial, 'trained': trained}
  tiles = {k: (filter_images(v) if colour else signed_filters(v)[..., None])
           for k, v in tiles.items()}
  with plotting.style():
    if n <= max_separate:
      cols = min(n, 8)
      per_state = int(np.ceil(n / cols))
      fig, axes = common.grid(2 * per_state, cols,
                              width=max(8.0, 1.3 * cols),
                              height=2 * per_state * 1.45 + 0.8)
      for s, (state, stack) in enumerate(tiles.items()):
        for f in range(per_state * cols):
          ax = axes[s * per_state + f // cols, f % cols]
          if f >= n:
            ax.remove()
            continue
          label = (f'#{f}' if state == 'initialisation'
                   else f'#{f}  cos {cos[f]:.2f}')
          _show_filter(ax, stack[f] if colour else stack[f, ..., 0], colour,
                       label)
        axes[s * per_state, 0].set_ylabel(state)
    else:
      fig, axes = common.grid(1, 2, width=12.0, height=6.6)
      for ax, (state, stack) in zip(axes[0], tiles.items(), strict=True):
        m = _mosaic(stack)
        _show_filter(ax, m if colour else m[..., 0], colour, state)
    fig.suptitle(f'{layer}: {n} filters {kh}x{kw}x{c_in}, at initialisation '
                 'and trained (cos: cosine to the initial filter)'
                 + ('' if colour else '\n' + (
                     'mean over input channels, ' if c_in > 1 else '')
                    + 'each scaled by its largest |w|: red > 0 > blue'))
  data = {
      'layer': layer, 'kernel_shape': list(np.shape(trained)),
      'norm_trained': np.linalg.norm(t, axis=1),
      'norm_initial': np.linalg.norm(i, axis=1),
      'cosine_trained_vs_initial': cos,
      'note': 'each filter scaled on its own in the figure',
  }
  return common.save(fig, path, data)
