"""The classic kernels of `cnn.fundamentals` applied to real images.

What a hand-designed filter does to a data set's images (blur, sharpen,
edges, Sobel gradients), as the first lecture shows it: each row is one
image, the original first, then its cross-correlation ('same' size, zero
padding) with every kernel, which is what a conv layer with that weight
computes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cnn import fundamentals, plotting
from cnn.visualize import common

DEFAULT_KERNELS = ('box_blur', 'gaussian_blur', 'sharpen', 'edge', 'sobel_x',
                   'sobel_y')


def apply_kernel(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Cross-correlates every channel of `image` [H, W, C] with `kernel`
  [K, K] ('same' size, zero padding): [H, W, C] float64."""
  image = np.asarray(image, np.float64)
  return np.stack([fundamentals.correlate(image[..., c], kernel, 'same')
                   for c in range(image.shape[-1])], axis=-1)


def apply_kernels(images: np.ndarray,
                  names: Sequence[str] = DEFAULT_KERNELS
                  ) -> dict[str, np.ndarray]:
  """{kernel name: responses [N, H, W, C]} of images [N, H, W, C] (0..1)."""
  return {name: np.stack([apply_kernel(im, fundamentals.get_kernel(name))
                          for im in images]) for name in names}


def _title(name: str) -> str:
  """'gaussian_blur' -> 'Gaussian blur', 'sobel_x' -> 'Sobel x'."""
  words = name.split('_')
  proper = {'gaussian': 'Gaussian', 'sobel': 'Sobel'}
  return ' '.join([proper.get(words[0], words[0].capitalize()), *words[1:]])


def plot_kernels(images: np.ndarray, path: str,
                 names: Sequence[str] = DEFAULT_KERNELS) -> str:
  """Figure: rows = images, columns = original then each kernel's response.

  Args:
    images: [N, H, W, C] images on the 0..1 scale (a few: one row each).
    path: PNG file to write (the numbers go to the same name .json).
    names: kernel names of `fundamentals.KERNELS`.

  Returns:
    `path`.
  """
  responses = apply_kernels(images, names)
  cols = len(names) + 1
  with plotting.style():
    fig, axes = common.grid(len(images), cols, width=max(8.0, 1.6 * cols),
                            height=1.6 * len(images) + 0.8)
    for i, image in enumerate(images):
      common.show(axes[i, 0], image, 'original' if i == 0 else None)
      for j, name in enumerate(names):
        r = responses[name][i]
        signed = fundamentals.get_kernel(name).sum() == 0  # Edges: +/- values.
        m = np.abs(r).max() or 1.0
        common.show(axes[i, j + 1], r[..., 0] if r.shape[-1] == 1 else
                    np.abs(r).mean(-1), _title(name) if i == 0 else None,
                    **({'cmap': 'RdBu_r', 'vmin': -m, 'vmax': m}
                       if signed and r.shape[-1] == 1 else {}))
    fig.suptitle('classic kernels, cross-correlated with test images (same '
                 'size, zero padding);\nedge and Sobel responses: red > 0 > '
                 'blue')
  data = {
      'kernels': {n: fundamentals.get_kernel(n) for n in names},
      'response_stats': {
          n: {'min': float(r.min()), 'max': float(r.max()),
              'mean': float(r.mean()), 'mean_abs': float(np.abs(r).mean())}
          for n, r in responses.items()},
      'images': len(images),
      'note': 'responses of images on the 0..1 scale; red > 0 > blue',
  }
  return common.save(fig, path, data)
