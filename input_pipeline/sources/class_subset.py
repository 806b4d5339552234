"""Class subsets of a split (transfer learning's source and target tasks).

`config.input.classes` keeps only the listed classes of the train and test
splits, relabelled 0..k-1 in the order given (Fashion-MNIST classes 0-4 as a
source task, 5-9 as a target task); `config.input.per_class` keeps the first
N training examples of each kept class (10, 100, 1,000 examples per class),
in the split's own order, so a smaller set is always part of a larger one.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from input_pipeline import errors
from input_pipeline.sources import datasets


def check(classes: Sequence[int], per_class: int, num_classes: int) -> None:
  """Fails with a one-line message on class ids out of range or repeated."""
  bad = [c for c in classes if not 0 <= int(c) < num_classes]
  if bad or len(set(classes)) != len(classes):
    raise errors.InputConfigError(
        f'config.input.classes={tuple(classes)} must be distinct class ids in '
        f'0..{num_classes - 1} of the data set (or empty for all).')
  if per_class < 0:
    raise errors.InputConfigError(
        f'config.input.per_class must be >= 0 (0 = all), got {per_class}.')


def select(images: np.ndarray, labels: np.ndarray, classes: Sequence[int],
           per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The examples of `classes` (all when empty), relabelled 0..k-1.

  Args:
    images: [N, H, W, C]; labels: int [N].
    classes: class ids to keep, in their new order; empty keeps all.
    per_class: if > 0, the first `per_class` examples of each kept class.

  Returns:
    (images [M, H, W, C], labels int32 [M]) in the split's order.
  """
  classes = [int(c) for c in classes] or sorted(np.unique(labels).tolist())
  keep = np.zeros(len(labels), bool)
  for c in classes:
    where = np.flatnonzero(labels == c)
    keep[where[:per_class] if per_class else where] = True
  new_label = np.full(max(int(labels.max()), max(classes)) + 1, -1, np.int32)
  new_label[classes] = np.arange(len(classes), dtype=np.int32)
  return images[keep], new_label[labels[keep]]


def subset_info(info: datasets.DatasetInfo, classes: Sequence[int]
                ) -> datasets.DatasetInfo:
  """`info` of the class subset: k classes and their names (split sizes and
  mean/std stay those of the whole data set, which normalises both tasks
  alike)."""
  if not classes:
    return info
  return dataclasses.replace(
      info, num_classes=len(classes),
      class_names=tuple(info.class_names[int(c)] for c in classes))
