"""Folders of your own images: `config.input.dataset='folder:<dir>'`.

Layout (class names are the sub-directory names, labels their sorted order):

    <dir>/train/<class>/*.{jpg,jpeg,png,gif,bmp}
    <dir>/test/<class>/*

Only the file list is read here (no TensorFlow, no pixels); the images are
decoded by the streaming pipeline (`streaming.py`, which decodes every file
once before training: `checked_listing`), so any size of folder works. Every mistake in the layout raises a `DatasetError` of one line that
names the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from input_pipeline.errors import DatasetError, InputConfigError

PREFIX = 'folder:'
EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
SPLITS = ('train', 'test')


@dataclasses.dataclass(frozen=True)
class Listing:
  """The files of one folder data set.

  Attributes:
    root: the folder.
    class_names: sorted sub-directory names; label i is class_names[i].
    files: split -> (paths: str [N] sorted by class then name, labels: int32
      [N]).
  """

  root: str
  class_names: tuple[str, ...]
  files: dict[str, tuple[np.ndarray, np.ndarray]]


def is_folder(name: str) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def folder_of(name: str) -> str:
  """'folder:<dir>' -> absolute <dir>."""
  root = name[len(PREFIX):]
  if not root:
    raise InputConfigError(
        "config.input.dataset='folder:' needs a directory: "
        "--config.input.dataset=folder:/path/to/images.")
  return os.path.abspath(os.path.expanduser(root))


def _classes(split_dir: str) -> list[str]:
  return sorted(e.name for e in os.scandir(split_dir)
                if e.is_dir() and not e.name.startswith('.'))


def _images(class_dir: str) -> list[str]:
  return sorted(
      e.path for e in os.scandir(class_dir)
      if e.is_file() and e.name.lower().endswith(EXTENSIONS))


@functools.lru_cache(maxsize=8)
def scan(name: str) -> Listing:
  """Lists `folder:<dir>`; checks the layout.

  Raises:
    DatasetError: missing folder or split, no class sub-directories, train
      and test with different classes, or a class without images.
  """
  root = folder_of(name)
  layout = f'expected {root}/train/<class>/*.jpg and {root}/test/<class>/*'
  if not os.path.isdir(root):
    raise DatasetError(f'Image folder {root} does not exist; {layout}.')
  classes = {}
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise DatasetError(
          f'Image folder {root} has no {split}/ sub-directory; {layout}.')
    classes[split] = _classes(split_dir)
    if not classes[split]:
      raise DatasetError(
          f'{split_dir} has no class sub-directories; {layout} (one '
          'directory per class).')
  if classes['train'] != classes['test']:
    only_train = sorted(set(classes['train']) - set(classes['test']))
    only_test = sorted(set(classes['test']) - set(classes['train']))
    raise DatasetError(
        f'Image folder {root}: train and test have different classes '
        f'(only in train: {only_train}, only in test: {only_test}); give '
        'both splits the same class sub-directories.')
  files = {}
  for split in SPLITS:
    paths, labels = [], []
    for label, cls in enumerate(classes[split]):
      found = _images(os.path.join(root, split, cls))
      if not found:
        raise DatasetError(
            f'{os.path.join(root, split, cls)} holds no image '
            f'({"/".join(EXTENSIONS)}); add images or remove the directory.')
      paths += found
      labels += [label] * len(found)
    files[split] = (np.asarray(paths), np.asarray(labels, np.int32))
  return Listing(root=root, class_names=tuple(classes['train']), files=files)


def check_image_size(name: str, image_size: int) -> None:
  """Folder images come in any size: a square target size is required."""
  if not image_size or image_size < 0:
    raise InputConfigError(
        f'Data set {name!r}: images of a folder are resized to one square '
        'size; set --config.input.image_size (e.g. 32 or 224).')
