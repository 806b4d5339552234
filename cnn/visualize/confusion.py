"""Where a classifier errs: the confusion matrix and its surest mistakes."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from cnn import plotting
from cnn.visualize import common


def predict_probs(model, variables, images: np.ndarray,
                  batch_size: int = 500) -> np.ndarray:
  """Softmax probabilities [N, classes] of normalised images [N, H, W, C]."""
  fn = jax.jit(lambda v, x: jax.nn.softmax(common.forward(model, v, x)[0],
                                           -1))
  return common.batched(lambda x: fn(variables, x), images, batch_size)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[true, predicted] counts, int64 [classes, classes]."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (labels, preds), 1)
  return m


def confident_mistakes(labels: np.ndarray, probs: np.ndarray,
                       count: int = 16) -> np.ndarray:
  """Indices of the `count` misclassified images with the highest predicted
  probability, surest first."""
  preds = probs.argmax(-1)
  wrong = np.nonzero(preds != labels)[0]
  return wrong[np.argsort(-probs[wrong, preds[wrong]])][:count]


def plot_confusion(probs: np.ndarray, labels: np.ndarray,
                   display_images: np.ndarray, path: str,
                   class_names: tuple[str, ...] | None = None,
                   count: int = 16) -> str:
  """Figure: confusion matrix (left), surest mistakes (right grid).

  Args:
    probs: [N, classes] predicted probabilities.
    labels: [N] true labels.
    display_images: [N, H, W, C] the same images on 0..1.
    path: PNG to write.
    class_names: label names.
    count: mistakes shown.
  """
  num_classes = probs.shape[1]
  preds = probs.argmax(-1)
  m = confusion_matrix(labels, preds, num_classes)
  worst = confident_mistakes(labels, probs, count)
  names = list(class_names or map(str, range(num_classes)))
  cols = 4
  rows = max(1, int(np.ceil(len(worst) / cols)))
  side = max(5.5, 0.55 * num_classes + 1.5)  # The matrix's panel, inches.
  with plotting.style():
    fig, axes = common.grid(
        rows, 2 + cols, width=side + 1.75 * cols,
        height=max(side, 1.75 * rows) + 0.5,
        gridspec_kw={'width_ratios': [side / 2] * 2 + [1.75] * cols})
    spec = axes[0, 0].get_gridspec()
    for ax in axes[:, :2].ravel():
      ax.remove()
    ax = fig.add_subplot(spec[:, :2])
    ax.imshow(m, cmap='Blues')
    ax.grid(False)
    size = 10 if num_classes <= 10 else 8 if num_classes <= 20 else 6
    for i in range(num_classes):
      for j in range(num_classes):
        if num_classes <= 30:
          ax.text(j, i, str(m[i, j]), ha='center', va='center',
                  fontsize=size,
                  color='white' if m[i, j] > m.max() / 2 else 'black')
    ax.set_xticks(range(num_classes))
    ax.set_xticklabels(names, rotation=45, ha='right',
                       rotation_mode='anchor')
    ax.set_yticks(range(num_classes))
    ax.set_yticklabels(names)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(f'accuracy {np.mean(preds == labels):.3f} on '
                 f'{len(labels):,} test images')
    for n in range(rows * cols):
      a = axes[n // cols, 2 + n % cols]
      if n >= len(worst):
        a.remove()
        continue
      idx = worst[n]
      common.show(a, display_images[idx],
                  f'{names[labels[idx]]}\n→ {names[preds[idx]]} '
                  f'{probs[idx, preds[idx]]:.2f}')
      a.title.set_fontsize(9)
    fig.suptitle('confusion matrix (counts); the most confident mistakes: '
                 'true class → predicted class, probability')
  data: dict[str, Any] = {
      'class_names': names, 'confusion': m, 'accuracy': float(
          np.mean(preds == labels)), 'count': int(len(labels)),
      'mistakes': [{'index': int(i), 'label': int(labels[i]),
                    'pred': int(preds[i]), 'prob': float(probs[i, preds[i]])}
                   for i in worst]}
  return common.save(fig, path, data)
