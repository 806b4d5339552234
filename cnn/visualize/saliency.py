"""Which pixels a prediction depends on: vanilla gradients and Grad-CAM.

* Vanilla gradient (Simonyan et al., 2014): |d logit_c / d x|, max over
  input channels, for the predicted class c.
* Grad-CAM (Selvaraju et al., 2017) at a stage with maps A [h, w, K]:
  weights a_k = mean over positions of d logit_c / d A_k, map
  ReLU(sum_k a_k A_k), upsampled bilinearly to the input. It can be no finer
  than the stage: the figure says its size (LeNet's S4 is 5x5, each cell 4
  input pixels apart).
* Gradient x activation, ReLU(sum_k dlogit_c/dA_k * A_k) per position
  (HiResCAM, Draelos & Carin 2020): Grad-CAM without the averaging, so it
  shows where the logit's dependence actually sits.

Gradients at a stage come from `common.stage_and_gradient`, which works on
any model through its `out` dict.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn import plotting
from cnn.kernels import forms
from cnn.visualize import common, receptive_field


def vanilla_gradient(model, variables, images: np.ndarray,
                     classes: np.ndarray | None = None) -> np.ndarray:
  """|d logit_c / d x| max over channels: [N, H, W] (c: predicted class)."""
  images = jnp.asarray(images, jnp.float32)

  def gradient(variables, x, classes):
    logits_fn = lambda x: common.forward(model, variables, x)[0]
    if classes is None:
      classes = jnp.argmax(logits_fn(x), -1)
    picked = lambda x: jnp.take_along_axis(
        logits_fn(x), classes[:, None], 1).sum()
    return jax.grad(picked)(x)

  with forms.reference_convolutions():  # Plain lax convs for the gradient.
    grad = jax.jit(gradient)(variables, images, None if classes is None
                             else jnp.asarray(classes))
  return np.abs(np.asarray(grad)).max(-1)


def grad_cam(model, variables, images: np.ndarray, stage: str,
             classes: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Grad-CAM and gradient x activation at `stage`.

  Args:
    model, variables: a `Classifier` and its variables.
    images: [N, H, W, C] normalised images.
    stage: a spatial key of the model's `out` dict.
    classes: [N] classes to explain; default the predicted ones.

  Returns:
    {'cam': [N, h, w] at the stage's resolution, 'cam_upsampled':
    [N, H, W], 'grad_x_act': [N, h, w], 'weights': [N, K], 'classes': [N]}.
  """
  images = jnp.asarray(images, jnp.float32)
  if classes is None:
    classes = jax.jit(lambda v, x: jnp.argmax(
        common.forward(model, v, x)[0], -1))(variables, images)
  classes = jnp.asarray(classes, jnp.int32)
  acts, grads, _ = common.stage_and_gradient(model, variables, images, stage,
                                             classes)
  weights = grads.mean(axis=(1, 2))                       # [N, K]
  cam = jax.nn.relu(jnp.einsum('nhwk,nk->nhw', acts, weights))
  n, h, w, _ = images.shape
  up = jax.image.resize(cam, (n, h, w), 'bilinear')
  return {'cam': np.asarray(cam), 'cam_upsampled': np.asarray(up),
          'grad_x_act': np.asarray(jax.nn.relu((grads * acts).sum(-1))),
          'weights': np.asarray(weights), 'classes': np.asarray(classes)}


def plot_saliency(model, variables, images: np.ndarray, path: str,
                  stage: str, display_images: np.ndarray | None = None,
                  class_names: tuple[str, ...] | None = None,
                  labels: np.ndarray | None = None) -> str:
  """Figure: per image (row) the image, then |gradient|, Grad-CAM and
  gradient x activation, each drawn over the image.

  Args:
    model, variables: a `Classifier` and its variables.
    images: [N, H, W, C] normalised images (a few).
    path: PNG to write.
    stage: the Grad-CAM stage (a spatial `out` key).
    display_images: the same images on 0..1 for display.
    class_names: names of the classes, for titles.
    labels: true labels [N], for titles.
  """
  shown = images if display_images is None else display_images
  grads = vanilla_gradient(model, variables, images)
  cam = grad_cam(model, variables, images, stage)
  n, height, width = images.shape[:3]
  h, w = cam['cam'].shape[1:]
  # Gradient x activation: one cell per unit of the stage, J pixels wide,
  # centred on the centre of the unit's receptive field.
  field = receptive_field.field_geometry(model, variables, images.shape[1:],
                                         [stage])[stage]
  top, left, bottom, right = field.box(0, 0)
  cy, cx = (top + bottom - 1) / 2, (left + right - 1) / 2
  jy, jx = field.jump
  extent = (cx - jx / 2, cx + (w - 0.5) * jx, cy + (h - 0.5) * jy,
            cy - jy / 2)
  name = lambda c: class_names[c] if class_names else str(c)
  columns = ('input', '|∂logit/∂x| (vanilla gradient)',
             f'Grad-CAM at {stage} ({h}x{w})',
             f'gradient x activation ({h}x{w})')
  with plotting.style():
    fig, axes = common.grid(n, 4, width=10.0, height=2.3 * n + 0.9)
    for i in range(n):
      common.show(axes[i, 0], shown[i], columns[0] if i == 0 else None)
      truth = f'\ntrue {name(labels[i])}' if labels is not None else ''
      axes[i, 0].set_ylabel(f'pred {name(cam["classes"][i])}{truth}')
      for col, heat in ((1, grads[i]), (2, cam['cam_upsampled'][i]),
                        (3, cam['grad_x_act'][i])):
        common.overlay(axes[i, col], shown[i], heat,
                       columns[col] if i == 0 else None,
                       extent=extent if col == 3 else None)
    fig.suptitle('what the predicted class depends on, drawn over the image '
                 '(bright: more; each map scaled to its peak)\n'
                 f'Grad-CAM: a {h}x{w} grid upsampled to {height}x{width}; '
                 f'gradient x activation: a cell per unit, {jx} px apart, on '
                 'its field\'s centre')
  data: dict[str, Any] = {
      'stage': stage, 'stage_size': [h, w], 'classes': cam['classes'],
      'labels': labels, 'cam': cam['cam'], 'grad_x_act': cam['grad_x_act'],
      'gradient_max': grads.max(axis=(1, 2))}
  return common.save(fig, path, data)
