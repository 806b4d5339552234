"""Where a classifier errs: the confusion matrix and its surest mistakes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
  short = [n[:7] for n in names]
  cols = 4
  rows = max(1, int(np.ceil(len(worst) / cols)))
  fig = common.plt.figure(figsize=(10, max(4.2, 1.3 * rows)))
  grid = fig.add_gridspec(rows, 2 + cols)
  ax = fig.add_subplot(grid[:, :2])
  ax.imshow(m, cmap='Blues')
  for i in range(num_classes):
    for j in range(num_classes):
      ax.text(j, i, str(m[i, j]), ha='center', va='center', fontsize=5,
              color='white' if m[i, j] > m.max() / 2 else 'black')
  ax.set_xticks(range(num_classes))
  ax.set_xticklabels(short, rotation=90, fontsize=6)
  ax.set_yticks(range(num_classes))
  ax.set_yticklabels(short, fontsize=6)
  ax.set_xlabel('predicted', fontsize=7)
  ax.set_ylabel('true', fontsize=7)
  ax.set_title(f'accuracy {np.mean(preds == labels):.4f} on {len(labels)}',
               fontsize=8)
  for n, idx in enumerate(worst):
    a = fig.add_subplot(grid[n // cols, 2 + n % cols])
    common.show(a, display_images[idx],
                f'{short[labels[idx]]}->{short[preds[idx]]} '
                f'{probs[idx, preds[idx]]:.2f}')
  fig.suptitle('confusion matrix; most confident mistakes (true->pred p)',
               fontsize=8)
  data: dict[str, Any] = {
      'class_names': names, 'confusion': m, 'accuracy': float(
          np.mean(preds == labels)), 'count': int(len(labels)),
      'mistakes': [{'index': int(i), 'label': int(labels[i]),
                    'pred': int(preds[i]), 'prob': float(probs[i, preds[i]])}
                   for i in worst]}
  return common.save(fig, path, data)
