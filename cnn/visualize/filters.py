"""Learned first-layer filters beside the same filters at initialisation.

The first convolution of any model is found by watching the module calls of
one abstract forward pass (`nn.intercept_methods`), so no model-specific code
is needed. Each filter is normalised on its own (min..max -> 0..1): the
figure shows shapes, not relative strengths (those are in the JSON).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def _grid(ax, tiles: np.ndarray, title: str) -> None:
  n = len(tiles)
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  kh, kw, c = tiles.shape[1:]
  canvas = np.ones((rows * (kh + 1) - 1, cols * (kw + 1) - 1, c))
  for i, t in enumerate(tiles):
    r, q = divmod(i, cols)
    canvas[r * (kh + 1):r * (kh + 1) + kh, q * (kw + 1):q * (kw + 1) + kw] = t
  common.show(ax, canvas[..., 0] if c == 1 else canvas, title,
              vmin=0, vmax=1)


def plot_filters(trained: np.ndarray, initial: np.ndarray, path: str,
                 layer: str = 'first conv') -> str:
  """Figure: filter grids at initialisation (left) and after training.

  Args:
    trained, initial: kernels [KH, KW, C_in, C_out] of the same layer.
    path: PNG file to write.
    layer: the layer's name, for the title.

  Returns:
    `path`.
  """
  fig, axes = common.subplots(1, 2, cell=3.0)
  _grid(axes[0, 0], filter_images(initial), f'{layer} at initialisation')
  _grid(axes[0, 1], filter_images(trained), f'{layer} trained')
  flat = lambda k: np.moveaxis(k, -1, 0).reshape(k.shape[-1], -1)
  t, i = flat(np.asarray(trained)), flat(np.asarray(initial))
  cos = (t * i).sum(1) / (np.linalg.norm(t, axis=1) *
                          np.linalg.norm(i, axis=1) + 1e-12)
  data = {
      'layer': layer, 'kernel_shape': list(np.shape(trained)),
      'norm_trained': np.linalg.norm(t, axis=1),
      'norm_initial': np.linalg.norm(i, axis=1),
      'cosine_trained_vs_initial': cos,
      'note': 'each filter normalised on its own (min..max) in the figure',
  }
  return common.save(fig, path, data)
