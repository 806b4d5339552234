"""What units learn beyond the first layer: their most exciting image patches.

Zeiler & Fergus (2014) show, for units of every layer, the image regions
that excite them most; this is the cheap form of it, for any registered
model through its `out` dict of stages. For a few units (channels) of every
spatial stage, the top-k test images are those with the largest activation
of that channel at any position (max over positions), and each is cropped to
the receptive field of the unit at its maximal position (i, j): rows
start_h + i J_h ... + r_h - 1, columns alike, with r and J from
`cnn.summary` and the start from `receptive_field.field_geometry`. Read
down the stages, the patches grow from edges and blobs (a few pixels)
through textures to object parts (fields as large as the image: there the
crop is the whole image and a cross marks the field's centre).

Units shown: those whose top-k images stand out most from the rest
(mean of the top-k maxima minus the median over all images).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn import plotting
from cnn.visualize import common, receptive_field

# Outside the image (a field hanging over the border): pale blue, which no
# grey image has; white separates the patches of a unit.
PAD_RGB = (0.78, 0.86, 0.96)


def max_activations(model, variables, images: np.ndarray,
                    stages: Sequence[str], batch_size: int = 250
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{stage: (max over positions [N, C], argmax position [N, C, 2] as (row,
  column))} of normalised images [N, H, W, C]: one compiled program over
  batches."""
  stages = list(stages)

  def maxima(v, x):
    out = common.forward(model, v, x)[1]
    result = {}
    for s in stages:
      n, h, w, c = out[s].shape
      flat = out[s].reshape(n, h * w, c).astype(jnp.float32)
      where = jnp.argmax(flat, axis=1)
      result[s] = (flat.max(axis=1), jnp.stack([where // w, where % w], -1))
    return result

  fn = jax.jit(maxima)
  out = common.batched(lambda x: fn(variables, x),
                       np.asarray(images, np.float32), batch_size)
  return {s: (np.asarray(v), np.asarray(p)) for s, (v, p) in out.items()}


def top_images(values: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest of `values` [N], largest first (ties: lower
  index first)."""
  return np.argsort(-np.asarray(values), kind='stable')[:k]


def select_units(values: np.ndarray, count: int, k: int) -> np.ndarray:
  """The `count` channels of `values` [N, C] whose top-k maxima stand out
  most from their median image, in channel order."""
  top = -np.sort(-values, axis=0)[:k].mean(0)
  score = top - np.median(values, axis=0)
  return np.sort(np.argsort(-score, kind='stable')[:count])


def crop_box(field: receptive_field.Field, row: int, col: int,
             image_hw: Sequence[int]) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) of what is shown of unit (row, col): its
  field, or the whole image along an axis where the field is larger than
  the image."""
  t, left, b, r = field.box(row, col)
  if b - t > image_hw[0]:
    t, b = 0, image_hw[0]
  if r - left > image_hw[1]:
    left, r = 0, image_hw[1]
  return t, left, b, r


def crop(image: np.ndarray, box: Sequence[int],
         fill: Sequence[float] = PAD_RGB) -> np.ndarray:
  """`image` [H, W, C] (0..1) inside `box` (top, left, bottom, right; may
  reach past the border) as RGB [bottom - top, right - left, 3]; pixels
  outside the image are `fill`."""
  image = np.asarray(image, np.float64)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, -1)
  image = image[..., :3]
  h, w = image.shape[:2]
  t, left, b, r = box
  out = np.empty((b - t, r - left, 3))
  out[:] = fill
  ct, cl, cb, cr = max(t, 0), max(left, 0), min(b, h), min(r, w)
  if cb > ct and cr > cl:
    out[ct - t:cb - t, cl - left:cr - left] = image[ct:cb, cl:cr]
  return out


def top_patches(model, variables, images: np.ndarray,
                display_images: np.ndarray | None = None, units: int = 6,
                k: int = 6,
                geometry: Mapping[str, receptive_field.Field] | None = None,
                stages: Sequence[str] | None = None) -> dict[str, Any]:
  """The top-k images of a few units of every spatial stage, and their
  crops.

  Args:
    model, variables: a `Classifier` and its variables.
    images: [N, H, W, C] normalised images searched (e.g. 1,000 test
      images).
    display_images: the same on 0..1, cropped for display; default `images`
      scaled to 0..1 each.
    units: channels shown per stage.
    k: images per channel.
    geometry: {stage: Field}; default `receptive_field.field_geometry` of
      `variables`.
    stages: default every spatial stage.

  Returns:
    {stage: {'field': (rf, jump, start), 'units': [{'channel', 'images'
    [k], 'values' [k], 'positions' [k, 2], 'boxes' [k, 4], 'crops': [k]
    arrays [r_h, r_w, 3]}]}}.
  """
  input_shape = images.shape[1:]
  stages = list(stages or common.stage_names(model, variables, input_shape))
  geometry = geometry or receptive_field.field_geometry(
      model, variables, input_shape, stages)
  if display_images is None:
    display_images = np.stack([common.display(im) for im in images])
    if display_images.ndim == 3:
      display_images = display_images[..., None]
  maxima = max_activations(model, variables, images, stages)
  data: dict[str, Any] = {}
  for s in stages:
    values, positions = maxima[s]
    field = geometry[s]
    chosen = []
    for ch in select_units(values, units, k):
      best = top_images(values[:, ch], k)
      pos = positions[best, ch]
      boxes = [crop_box(field, int(i), int(j), input_shape[:2])
               for i, j in pos]
      chosen.append({
          'channel': int(ch), 'images': best, 'values': values[best, ch],
          'positions': pos, 'boxes': boxes,
          'crops': [crop(display_images[n], box)
                    for n, box in zip(best, boxes, strict=True)]})
    data[s] = {'field': tuple(field), 'units': chosen}
  return data


def _mosaic(crops: Sequence[np.ndarray], cols: int
            ) -> tuple[np.ndarray, int]:
  """Equal-size RGB crops on a grid with white gaps; (canvas, gap)."""
  ph, pw = crops[0].shape[:2]
  gap = max(1, round(max(ph, pw) / 10))
  rows = int(np.ceil(len(crops) / cols))
  canvas = np.ones((rows * (ph + gap) - gap, cols * (pw + gap) - gap, 3))
  for n, c in enumerate(crops):
    r, q = divmod(n, cols)
    canvas[r * (ph + gap):r * (ph + gap) + ph,
           q * (pw + gap):q * (pw + gap) + pw] = c
  return canvas, gap


def plot_top_patches(model, variables, images: np.ndarray, path: str,
                     display_images: np.ndarray | None = None,
                     units: int = 6, k: int = 6,
                     geometry: Mapping[str, receptive_field.Field]
                     | None = None, title: str = '') -> str:
  """Figure of `top_patches`: rows = stages, one panel per unit holding its
  k patches (2 rows), most exciting first; returns `path` (the JSON has the
  image indices, activations, positions and crop boxes, not the pixels).
  Arguments as `top_patches`."""
  data = top_patches(model, variables, images, display_images, units, k,
                     geometry)
  stages = list(data)
  cols = int(np.ceil(k / 2))
  with plotting.style():
    fig, axes = common.grid(len(stages), units, width=max(8.0, 2.0 * units),
                            height=1.75 * len(stages) + 1.0)
    for row, s in enumerate(stages):
      rf, jump, _ = data[s]['field']
      for col in range(units):
        ax = axes[row, col]
        if col >= len(data[s]['units']):
          ax.remove()
          continue
        unit = data[s]['units'][col]
        canvas, gap = _mosaic(unit['crops'], cols)
        common.show(ax, canvas, f'#{unit["channel"]}', scale=False)
        ph, pw = unit['crops'][0].shape[:2]
        if rf[0] > images.shape[1] or rf[1] > images.shape[2]:
          # The crop is the whole image: mark the unit's field centre.
          for n, (box, (i, j)) in enumerate(zip(
              unit['boxes'], unit['positions'], strict=True)):
            t, left, _, _ = box
            full = receptive_field.Field(rf, jump, data[s]['field'][2])
            ft, fl, fb, fr = full.box(int(i), int(j))
            r, q = divmod(n, cols)
            ax.plot(q * (pw + gap) + (fl + fr - 1) / 2 - left,
                    r * (ph + gap) + (ft + fb - 1) / 2 - t, '+',
                    color=plotting.PALETTE[1], ms=7, mew=1.5)
          ax.set_xlim(-0.5, canvas.shape[1] - 0.5)
          ax.set_ylim(canvas.shape[0] - 0.5, -0.5)
      axes[row, 0].set_ylabel(f'{s}\nRF {rf[0]}x{rf[1]} px')
    fig.suptitle(
        title or f'per unit (channel #), the {k} of {len(images):,} test '
        'images that excite it most,\neach cropped to its receptive field '
        'at the maximal position\npale blue: outside the image; +: the '
        'centre of a field larger than the image')
  out = {s: {'field': d['field'],
             'units': [{key: v for key, v in u.items() if key != 'crops'}
                       for u in d['units']]} for s, d in data.items()}
  out['images_searched'] = int(len(images))
  return common.save(fig, path, out)
