"""`python -m cnn.summary --model=NAME --plot=FILE.png`: where the cost goes.

Three bar charts over the layers (in execution order): activation memory,
parameters and FLOPs per image. In a CNN memory sits early (large maps, few
channels) and parameters late (small maps, many channels, dense layers).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# A bare Figure, not pyplot: it writes a PNG under any backend (a notebook's
# included) and chooses none, and nothing keeps it once written.
from matplotlib.figure import Figure

if TYPE_CHECKING:
  from cnn.summary import accounting


def plot_summary(s: accounting.Summary, path: str, dpi: int = 90) -> str:
  """Writes the three bar charts of `s` to `path` (PNG); returns `path`."""
  rows = [r for r in s.rows if r.activation_bytes or r.params or r.flops]
  names = [r.name[len('backbone/'):] if r.name.startswith('backbone/')
           else r.name for r in rows]
  series = (
      ('activation memory (KiB, forward)',
       [r.activation_bytes / 1024 for r in rows], 'tab:blue'),
      ('parameters (K)', [r.params / 1e3 for r in rows], 'tab:orange'),
      ('FLOPs (M)', [r.flops / 1e6 for r in rows], 'tab:green'),
  )
  height = max(2.5, 0.16 * len(rows) + 1)
  fig = Figure(figsize=(11, height))
  axes = fig.subplots(1, 3, sharey=True)
  y = range(len(rows))
  for ax, (title, values, color) in zip(axes, series, strict=True):
    ax.barh(y, values, color=color)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
  axes[0].set_yticks(list(y))
  axes[0].set_yticklabels(names, fontsize=max(3, min(7, 400 // len(rows))))
  axes[0].invert_yaxis()
  t = s.totals
  fig.suptitle(
      f'{s.model} ({"x".join(map(str, s.input_shape))}): '
      f'{t["activation_bytes"] / 1024:.0f} KiB activations, '
      f'{t["params"]:,} parameters, {t["flops"] / 1e6:.1f} MFLOPs '
      f'(train step ~{t["train_flops"] / 1e6:.1f})', fontsize=9)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, bbox_inches='tight')
  return path
