"""Backprop through a convolution: where one input pixel's gradient comes
from.

x-bar_p = sum over the output units o whose window covers p of
y-bar_o * w[tap], tap being the kernel entry that unit applied to p (the
lecture's x-bar = y-bar * w). The figure draws, for one input pixel of a few
convolution geometries, the pixel on the input grid and the units it
collects from on the output grid, each labelled with its tap (i, j).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib import patches

from cnn import fundamentals, plotting
from cnn.visualize import common

# (title, input size, kernel, stride, padding, dilation, pixel).
DEFAULT_CASES = (
    ('3x3, stride 1, pad 1', 7, 3, 1, 1, 1, (3, 3)),
    ('3x3, stride 2, pad 1', 7, 3, 2, 1, 1, (3, 3)),
    ('3x3, dilation 2, pad 2', 7, 3, 1, 2, 2, (3, 3)),
    ('2x2, stride 2 (pool-like)', 8, 2, 2, 0, 1, (3, 4)),
)


def _grid(ax, size: tuple[int, int], title: str) -> None:
  ax.set_xlim(-0.5, size[1] - 0.5)
  ax.set_ylim(size[0] - 0.5, -0.5)
  ax.set_xticks(np.arange(size[1]) - 0.5, minor=True)
  ax.set_yticks(np.arange(size[0]) - 0.5, minor=True)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.grid(False)
  ax.grid(which='minor', color='0.6', lw=0.6, alpha=1)
  ax.tick_params(which='both', length=0, labelbottom=False, labelleft=False)
  ax.set_aspect('equal')
  for spine in ax.spines.values():
    spine.set_visible(False)
  ax.add_patch(patches.Rectangle((-0.5, -0.5), size[1], size[0], fill=False,
                                 edgecolor='0.3', lw=1.0))
  ax.set_title(title)


def plot_backprop(path: str, cases: Sequence[tuple] = DEFAULT_CASES,
                  seed: int = 0) -> str:
  """Figure: per case, the input pixel (left) and its gradient's sources.

  Also checks, for random y-bar and w, that x-bar at the pixel equals the sum
  over the highlighted units (numbers in the JSON).
  """
  rng = np.random.default_rng(seed)
  with plotting.style():
    fig, axes = common.grid(2, len(cases), width=max(8.0, 2.8 * len(cases)),
                            height=6.6)
    data = _draw_cases(axes, cases, rng)
    fig.suptitle('backprop through a convolution: x̄_p = Σ over the output '
                 'units o reading p of ȳ_o · w[tap]\n(red: the input pixel '
                 'p; blue: the units o, labelled with the tap i,j they '
                 'apply to p)')
  return common.save(fig, path, data)


def _draw_cases(axes, cases, rng) -> dict[str, Any]:
  data: dict[str, Any] = {'cases': []}
  for col, (title, size, k, s, p, d, pixel) in enumerate(cases):
    taps = fundamentals.input_pixel_consumers((size, size), (k, k), pixel, s,
                                              p, d)
    oh, ow = taps.shape
    w = rng.standard_normal((k, k, 1, 1))
    dy = rng.standard_normal((1, oh, ow, 1))
    dx = fundamentals.conv2d_input_grad(dy, w, (1, size, size, 1), s, p, d)
    by_sum = sum(dy[0, o[0], o[1], 0] * w.reshape(-1)[t]
                 for o, t in np.ndenumerate(taps) if t >= 0)
    ax_in, ax_out = axes[0, col], axes[1, col]
    _grid(ax_in, (size, size), f'{title}\ninput {size}x{size}, pixel {pixel}')
    ax_in.add_patch(patches.Rectangle((pixel[1] - 0.5, pixel[0] - 0.5), 1, 1,
                                      color=plotting.PALETTE[1]))
    sources = int((taps >= 0).sum())
    _grid(ax_out, (oh, ow), f'output {oh}x{ow}:\n{sources} '
          + ('unit sends' if sources == 1 else 'units send') + ' ȳ to p')
    for (r, c), t in np.ndenumerate(taps):
      if t >= 0:
        ax_out.add_patch(patches.Rectangle((c - 0.5, r - 0.5), 1, 1,
                                           color=plotting.PALETTE[5]))
        ax_out.text(c, r, f'{t // k},{t % k}', ha='center', va='center',
                    fontsize=9)
    data['cases'].append({
        'title': title, 'input': size, 'kernel': k, 'stride': s,
        'padding': p, 'dilation': d, 'pixel': list(pixel), 'taps': taps,
        'x_bar_at_pixel': float(dx[0, pixel[0], pixel[1], 0]),
        'sum_over_sources': float(by_sum)})
  return data
