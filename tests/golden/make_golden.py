"""Writes the golden checkpoint that `tests/test_reliability.py` restores.

    .venv/bin/python -m tests.golden.make_golden

A LeNet-5 trained for 3 steps on 256 Fashion-MNIST images, saved by
`cnn.training.checkpoint.Checkpointer` exactly as training saves it
(`tests/golden/lenet5/checkpoints/3/`, < 1 MB), and `expected.json` with the
step, the metadata and a sha256 of every array. The test restores the
committed files with whatever orbax/flax/jax are installed: a change of the
on-disk format, of the TrainState layout or of the restore path fails it.

Regenerate only on purpose (a deliberate format change), and say so in the
commit: old workdirs will then no longer resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
WORKDIR = os.path.join(GOLDEN_DIR, 'lenet5')
EXPECTED = os.path.join(GOLDEN_DIR, 'expected.json')
STEPS = 3


def golden_config() -> ml_collections.ConfigDict:
  """The default config with every field that shapes the checkpoint pinned.

  Pinned rather than inherited, so that a later change of the defaults (a new
  optimizer, say) does not change what this checkpoint is restored into.
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.seed = 0
  config.model_name = 'lenet5'
  config.model.batch_norm = True
  config.model.activation = 'relu'
  config.model.pool = 'max'
  config.dtype = 'float32'
  config.input.dataset = 'fashion_mnist'
  config.input.image_size = 0
  config.input.train_subset = 256
  config.input.test_subset = 100
  config.input.batch_size = 32
  config.input.eval_batch_size = 100
  config.optimizer.name = 'adamw'
  config.schedule.name = 'constant'
  config.num_train_steps = STEPS
  config.checkpoint_every_steps = STEPS
  config.log_every_steps = STEPS
  config.keep_checkpoints = 1
  config.progress_bar = False
  config.lock()
  return config


def describe(arrays: Any) -> dict[str, dict[str, Any]]:
  """{path: dtype, shape, sha256 of the bytes, sum} for every array leaf."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
    leaf = np.array(leaf, order='C')  # ascontiguousarray makes 0-d 1-d.
    out[jax.tree_util.keystr(path)] = dict(
        dtype=str(leaf.dtype), shape=list(leaf.shape),
        sha256=hashlib.sha256(leaf.tobytes()).hexdigest(),
        sum=float(leaf.astype(np.float64).sum()))
  return out


def main() -> None:
  import flax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from cnn.training import checkpoint, train  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    train.train_and_evaluate(golden_config(), tmp)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    shutil.copytree(os.path.join(tmp, 'checkpoints', str(STEPS)),
                    os.path.join(WORKDIR, 'checkpoints', str(STEPS)))
  step, arrays = checkpoint.load_arrays(WORKDIR)
  checkpointer = checkpoint.Checkpointer(WORKDIR)
  meta = checkpointer.read_meta(step)
  checkpointer.close()
  expected = dict(
      step=step, meta=meta, arrays=describe(arrays),
      written_with=dict(jax=jax.__version__, flax=flax.__version__,
                        orbax=ocp.__version__))
  with open(EXPECTED, 'w') as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write('\n')
  size = sum(os.path.getsize(os.path.join(d, n))
             for d, _, names in os.walk(WORKDIR) for n in names)
  print(f'Wrote {WORKDIR} ({size / 1e6:.2f} MB) and {EXPECTED}.')


if __name__ == '__main__':
  main()
