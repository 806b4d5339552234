"""Tiny configs and subprocess helpers shared by the tests."""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys

import ml_collections

from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """The default LeNet-5 config shrunk to seconds: 512 training examples,
  batch 32, 2 epochs, 1,000 test examples, evaluation every epoch."""
  config = default.get_config()
  config.input.train_subset = 512
  config.input.test_subset = 1000
  config.input.batch_size = 32
  config.input.eval_batch_size = 384  # does not divide 1,000: tests padding.
  config.num_epochs = 2.0
  config.log_every_steps = 8
  config.checkpoint_every_steps = 8
  config.progress_bar = False
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


def run_main(args: list[str], *, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python main.py ARGS` in a fresh process from the repo root."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
  return subprocess.run(
      [sys.executable, 'main.py', *args], cwd=REPO, env=full_env,
      capture_output=True, text=True, timeout=timeout)


def file_digests(directory) -> dict[str, str]:
  """sha256 of every file under `directory` (to prove nothing changed)."""
  digests = {}
  for path in sorted(glob.glob(os.path.join(directory, '**'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return digests
