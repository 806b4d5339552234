"""Tiny configs, subprocess helpers, a tree and a convolution check for the
tests.

In-process tests build `tiny_config(**overrides)`; subprocesses run
`main.py` with `main_args(workdir, overrides)`. Both start from
`configs/default.py:runlocal`, so the two train the same thing.
"""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The --config of a subprocess that trains what `tiny_config()` builds.
TINY_CONFIG = 'configs/default.py:runlocal'


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """`configs/default.py:runlocal` (512 training examples, batch 32, 2 epochs,
  1,000 test examples, evaluation every epoch) with `overrides`, locked.

  Args:
    **overrides: dotted field names and values, e.g.
      `tiny_config(**{'model.activation': 'tanh'}, num_epochs=1.0)`: the same
      fields a subprocess sets with `--config.model.activation=tanh`.
  """
  config = default.get_config('runlocal')
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


def _flat(config: ml_collections.ConfigDict, prefix: str = ''
          ) -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def runlocal_fields() -> dict[str, Any]:
  """{dotted field: value} of what `runlocal` changes in the default config,
  to shrink another config file the same way from the command line."""
  full = _flat(default.get_config())
  tiny = _flat(default.get_config('runlocal'))
  return {k: v for k, v in tiny.items() if full[k] != v}


def main_args(workdir, overrides: dict[str, Any] | None = None) -> list[str]:
  """main.py flags training `tiny_config(**overrides)` in `workdir`."""
  return ([f'--config={TINY_CONFIG}', f'--workdir={workdir}']
          + [f'--config.{k}={v}' for k, v in (overrides or {}).items()])


def run_main(args: list[str], *, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python main.py ARGS` in a fresh process from the repo root."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
  return subprocess.run(
      [sys.executable, 'main.py', *args], cwd=REPO, env=full_env,
      capture_output=True, text=True, timeout=timeout)


def preempt_main(args: list[str], once_exists: str, *, timeout: float = 120
                 ) -> subprocess.CompletedProcess:
  """Starts `python main.py ARGS`, sends it SIGTERM once the file
  `once_exists` appears, and returns what it printed and its exit status
  (3 when it stopped as preempted)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen([sys.executable, 'main.py', *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while not os.path.exists(once_exists) and time.time() < deadline:
    time.sleep(0.05)
  if not os.path.exists(once_exists):
    proc.kill()
    raise AssertionError(f'{once_exists} never appeared: '
                         f'{proc.communicate()[1][-3000:]}')
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=timeout)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def file_digests(directory) -> dict[str, str]:
  """sha256 of every file under `directory` (to prove nothing changed)."""
  digests = {}
  for path in sorted(glob.glob(os.path.join(directory, '**'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return digests


def assert_trees_equal(a, b) -> None:
  """Bit-identical leaves (NaN == NaN), with the first differing path."""
  paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
  leaves_b = jax.tree.leaves(b)
  assert len(paths_a) == len(leaves_b)
  for (path, x), y in zip(paths_a, leaves_b, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert x.tobytes() == y.tobytes(), (
        f'{jax.tree_util.keystr(path)} differs: max |diff| '
        f'{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))}')


def assert_conv_matches_lax(conv, x_shape, k_shape, strides, pads) -> None:
  """`conv(x, kernel)` (NHWC, HWIO, float32) equals `lax.conv_general_dilated`
  with `strides` and explicit `pads`: values and both gradients, jitted."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)

  def reference(x, k):
    return jax.lax.conv_general_dilated(
        x, k, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  want, got = reference(x, k), jax.jit(conv)(x, k)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  cot = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  grads_want = jax.vjp(reference, x, k)[1](cot)
  grads_got = jax.jit(lambda x, k, c: jax.vjp(conv, x, k)[1](c))(x, k, cot)
  for g, w in zip(grads_got, grads_want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-3)
