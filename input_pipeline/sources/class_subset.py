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


def split_indices(labels: np.ndarray, *, per_class: int = 0,
                  validation: float = 0, seed: int = -1
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, validation indices) of a training split, per class.

  Args:
    labels: int [N], already relabelled (`select` without `per_class`).
    per_class: if > 0, the training examples of each class (few-shot);
      0 keeps every example that is not held out.
    validation: examples per class held out for validation: an int >= 1,
      or a fraction in (0, 1) of each class (digits: 0.2); 0 for none.
    seed: -1 takes each class's examples in the split's order (the first
      `per_class` for training, the next ones for validation: a smaller
      training set is part of a larger one); >= 0 draws them per class with
      this seed, so seeds resample the few-shot examples. Validation comes
      from the examples not drawn for training.

  Returns:
    Sorted int indices into `labels`; disjoint.

  Raises:
    InputConfigError: a class too small for `per_class` plus `validation`.
  """
  rng = np.random.default_rng(seed) if seed >= 0 else None
  train, held = [], []
  for c in np.unique(labels):
    where = np.flatnonzero(labels == c)
    if rng is not None:
      where = rng.permutation(where)
    n_val = (int(round(validation * len(where))) if 0 < validation < 1
             else int(validation))
    n_train = per_class or len(where) - n_val
    if n_train + n_val > len(where) or n_train < 1:
      raise errors.InputConfigError(
          f'Class {int(c)} has {len(where)} training examples: too few for '
          f'{per_class or "the rest"} per class plus {n_val} for validation '
          '(lower config.input.per_class or validation_per_class).')
    train.append(where[:n_train])
    held.append(where[n_train:n_train + n_val])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


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
