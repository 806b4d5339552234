"""Activation maps of one image at every stage of a network.

One row per spatial stage of the model's `out` dict (`stem`, `stage1`, ...):
the input, then the `channels` most active maps of that stage (largest mean
activation over the image), each scaled on its own. The row title gives the
map size, which shows how the resolution falls stage by stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnn.visualize import common


def stage_activations(model, variables, image: np.ndarray
                      ) -> dict[str, np.ndarray]:
  """{stage: activations [h, w, c]} of one image [H, W, C] (normalised)."""
  _, out = jax.jit(lambda v, x: common.forward(model, v, x))(
      variables, jnp.asarray(image)[None])
  return {k: np.asarray(out[k][0]) for k in common.spatial_stages(out)}


def plot_activations(model, variables, image: np.ndarray, path: str,
                     channels: int = 8, display_image: np.ndarray | None = None
                     ) -> str:
  """Figure: the image and the most active maps of every stage.

  Args:
    model, variables: a `Classifier` and its variables.
    image: [H, W, C] normalised input.
    path: PNG file to write.
    channels: maps shown per stage.
    display_image: the same image for display (0..1); default `image`.

  Returns:
    `path`.
  """
  acts = stage_activations(model, variables, image)
  fig, axes = common.subplots(len(acts), channels + 1)
  data = {'stages': {}}
  for row, (stage, a) in enumerate(acts.items()):
    common.show(axes[row, 0], image if display_image is None
                else display_image, 'input' if row == 0 else None)
    strength = a.mean(axis=(0, 1))
    order = np.argsort(-strength)[:channels]
    for col in range(channels):
      ax = axes[row, col + 1]
      if col < len(order):
        common.show(ax, a[..., order[col]], f'#{order[col]}')
      else:
        ax.axis('off')
    h, w, c = a.shape
    axes[row, 0].set_ylabel(f'{stage}\n{h}x{w}x{c}', fontsize=7)
    data['stages'][stage] = {
        'shape': [h, w, c], 'channels_shown': order,
        'mean': float(a.mean()), 'max': float(a.max()),
        'fraction_zero': float((a == 0).mean()),
        'mean_per_channel': strength}
  fig.suptitle('activation maps (most active channels per stage)',
               fontsize=8)
  return common.save(fig, path, data)
