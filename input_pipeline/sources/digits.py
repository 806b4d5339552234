"""scikit-learn's 8x8 handwritten digits as a tiny offline image data set.

1,797 grey images with values 0..16, rescaled to 0..255 and split by a fixed
seeded permutation into 1,437 train and 360 test images.
"""

from __future__ import annotations

import numpy as np

NUM_EXAMPLES = {'train': 1437, 'test': 360}
IMAGE_SHAPE = (8, 8, 1)
CLASS_NAMES = tuple(str(i) for i in range(10))
# Train-split statistics on the 0..1 scale (recomputed in the tests).
MEAN = (0.3055,)
STD = (0.3759,)
_SPLIT_SEED = 0


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns images uint8 [N, 8, 8, 1] (0..255) and labels int32 [N]."""
  from sklearn import datasets
  if split not in NUM_EXAMPLES:
    raise ValueError(f"digits has splits 'train' and 'test', not {split!r}.")
  raw = datasets.load_digits()
  # 16 is the brightest value in the source; round so 16 maps to 255 exactly.
  images = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = raw.target.astype(np.int32)
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
  n_train = NUM_EXAMPLES['train']
  keep = order[:n_train] if split == 'train' else order[n_train:]
  return images[keep], labels[keep]
