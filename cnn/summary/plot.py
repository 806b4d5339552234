"""`python -m cnn.summary --model=NAME --plot=FILE.png` (and `--mode=inspect`'s
cost.png): where the cost goes.

Three bar charts over the layers (in execution order): activation memory,
parameters and FLOPs per image, in the figure standard (`cnn.plotting`). In
a CNN memory sits early (large maps, few channels) and parameters late
(small maps, many channels, dense layers).
"""

from __future__ import annotations

from typing import Any

from cnn import plotting
from cnn.summary import accounting


def plot_summary(s: accounting.Summary, path: str) -> str:
  """Three bar charts over the layers of `s` (a `cnn.summary.Summary`), in
  execution order; writes `path` (PNG, PDF) and its JSON (totals, groups,
  per-layer values); returns `path`."""
  rows = [r for r in s.rows if r.activation_bytes or r.params or r.flops]
  names = [r.name[len('backbone/'):] if r.name.startswith('backbone/')
           else r.name for r in rows]
  series = (
      ('activation memory\n(KiB per image, forward)',
       [r.activation_bytes / 1024 for r in rows]),
      ('parameters\n(thousands)', [r.params / 1e3 for r in rows]),
      ('FLOPs\n(millions per image, forward)', [r.flops / 1e6 for r in rows]),
  )
  t = s.totals
  with plotting.style():
    fig, axes = plotting.figure(1, 3, width=12.0,
                                height=max(4.0, 0.2 * len(rows) + 1.8),
                                sharey=True)
    y = list(range(len(rows)))
    for ax, (title, values), colour in zip(axes, series, plotting.PALETTE,
                                           strict=False):
      ax.barh(y, values, color=colour)
      ax.set_title(title)
      ax.grid(axis='y', visible=False)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=max(6, min(9, 500 // len(rows))))
    axes[0].set_ylim(len(rows) - 0.4, -0.6)  # First layer on top.
    fig.suptitle(
        f'{s.model} on {"x".join(map(str, s.input_shape))} inputs: '
        f'{t["activation_bytes"] / 1024:,.0f} KiB of activations, '
        f'{t["params"]:,} parameters, {t["flops"] / 1e6:,.1f} MFLOPs per '
        f'image forward\n(a training step: about '
        f'{t["train_flops"] / 1e6:,.1f} MFLOPs per image, 3 x the forward '
        'pass)')
  data: dict[str, Any] = {
      'totals': t, 'groups': s.groups(),
      'layers': [{'name': n, 'activation_bytes': r.activation_bytes,
                  'params': r.params, 'flops': r.flops}
                 for n, r in zip(names, rows, strict=True)]}
  plotting.save(fig, path, data)
  return path
