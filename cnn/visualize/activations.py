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

from cnn import plotting
from cnn.visualize import common, receptive_field


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
  fields = receptive_field.theoretical_fields(model, np.shape(image))
  data = {'stages': {}}
  with plotting.style():
    fig, axes = common.grid(
        len(acts), channels + 1, width=max(8.0, 1.3 * (channels + 1)),
        height=1.45 * len(acts) + 0.8)
    common.show(axes[0, 0], image if display_image is None else
                display_image, 'input {}x{}'.format(*np.shape(image)[:2]))
    for row, (stage, a) in enumerate(acts.items()):
      if row:
        axes[row, 0].remove()
      strength = a.mean(axis=(0, 1))
      order = np.argsort(-strength)[:channels]
      for col in range(channels):
        ax = axes[row, col + 1]
        if col < len(order):
          common.show(ax, a[..., order[col]], f'#{order[col]}',
                      cmap='viridis')
        else:
          ax.remove()
      h, w, c = a.shape
      rf = fields.get(stage, ((None,),))[0][0]
      axes[row, 1].set_ylabel(f'{stage}\n{h}x{w}x{c}'
                              + (f'\nRF {rf} px' if rf else ''))
      data['stages'][stage] = {
          'shape': [h, w, c], 'channels_shown': order,
          'mean': float(a.mean()), 'max': float(a.max()),
          'fraction_zero': float((a == 0).mean()),
          'mean_per_channel': strength}
    fig.suptitle(f'activation maps of one test image:\nthe {channels} most '
                 'active channels (#) of every stage, each scaled on its own')
  return common.save(fig, path, data)
