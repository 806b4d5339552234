"""The same training on 1 device, 8 (simulated) devices and 2 processes.

The train step is one `jax.jit` over a 1-D mesh with the global batch fixed,
so the device count changes only the order of floating-point sums: one step
from the same state agrees to rounding, and a whole run to the small drift
that training makes of it, batch-norm statistics included (they are computed
over the global batch, not per device). Checkpoints restore with the
restoring run's shardings, so a workdir moves between topologies.

Runs with another device count are `main.py` subprocesses, since XLA reads
`--xla_force_host_platform_device_count` only when JAX starts.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cnn.training import checkpoint as checkpoint_lib
from cnn.training import optim, sharding, train
from cnn.training.metrics import read_metrics
from tests import helpers
from tests.helpers import REPO, run_main, tiny_config

EIGHT_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}

# lax.conv: the per-example arithmetic is then the same on 1 and 8 devices
# (max difference 5e-7 after 32 steps). The banded CPU form sums the weight
# gradient over (batch x rows) in one matmul whose blocking depends on the
# shard size; Adam amplifies that rounding to ~1e-4 after 32 steps, which
# would hide a real defect of the same size.
CONV = {'conv_impl': 'xla'}

# One step from the same state: the device count changes only the order of
# that step's sums, so its update (new - old arrays) agrees to rounding:
# worst leaf 1.4e-5 in relative L2 norm on one machine. A real defect (batch
# statistics per device, a gradient shard lost) changes the update by O(1).
STEP_RTOL = 5e-4
# 32 Adam steps from the same start: sums split over 8 devices round
# differently (~1e-7 relative per step) and training amplifies that, Adam
# most (it divides by the root of small second moments). Measured worst leaf,
# relative L2 norm of the difference: 3.4e-3 on one machine; small leaves such
# as C1's batch-norm bias drift most, and a few elements of any leaf move by
# more than any elementwise tolerance that would still mean something. So
# whole leaves are compared by norm, with room for other machines' rounding;
# per-device batch statistics or a lost gradient shard differ by far more.
LEAF_RTOL = 3e-2


def topo_config(**overrides):
  """`tiny_config` with the convolution choice `CONV`."""
  return tiny_config(**CONV, **overrides)


def main_args(workdir, overrides: dict | None = None) -> list[str]:
  """main.py flags training `topo_config(**overrides)`."""
  return helpers.main_args(workdir, dict(CONV, **(overrides or {})))


def relative_errors(a, b) -> dict[str, float]:
  """Per leaf of `a`: |a - b| / |b| in L2 norm, keyed by the leaf's path."""
  paths = jax.tree_util.tree_flatten_with_path(a)[0]
  errors = {}
  for (path, x), y in zip(paths, jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape, jax.tree_util.keystr(path)
    errors[jax.tree_util.keystr(path)] = float(
        np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12))
  return errors


def assert_trees_near(a, b, what: str, rtol: float = LEAF_RTOL) -> None:
  """Every leaf of `a` within `rtol` of `b`'s in relative L2 norm."""
  errors = relative_errors(a, b)
  worst = max(errors, key=errors.get)
  assert errors[worst] < rtol, (
      f'{what}: {worst} differs by {errors[worst]:.2e} (bound {rtol:.0e})')


def assert_metrics_match(reference: str, workdir: str) -> None:
  """Same evaluation steps, every test example once, accuracy and loss."""
  m1, m2 = read_metrics(reference), read_metrics(workdir)
  assert [r['step'] for r in m1] == [r['step'] for r in m2] == [16, 32]
  for r1, r2 in zip(m1, m2, strict=True):
    assert r1['test_count'] == r2['test_count'] == 1000
    assert abs(r1['test_accuracy'] - r2['test_accuracy']) <= 0.003
    np.testing.assert_allclose(r1['test_loss'], r2['test_loss'], rtol=1e-3)


@pytest.fixture(scope='module')
def one_device_run(tmp_path_factory) -> str:
  """The tiny default run (LeNet-5 with batch norm) in this process."""
  if jax.device_count() != 1:
    pytest.skip('the test process must have one device (unset XLA_FLAGS)')
  workdir = str(tmp_path_factory.mktemp('topology') / 'one_device')
  train.train_and_evaluate(topo_config(), workdir)
  return workdir


@pytest.fixture(scope='module')
def eight_device_run(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp('topology') / 'eight_devices')
  result = run_main(main_args(workdir), env=EIGHT_DEVICES)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'CpuDevice(id=7)' in result.stderr  # really 8 devices.
  return workdir


def test_eight_devices_train_like_one(one_device_run, eight_device_run):
  step_1, one = checkpoint_lib.load_arrays(one_device_run)
  step_8, eight = checkpoint_lib.load_arrays(eight_device_run)
  assert step_1 == step_8 == 32
  assert_trees_near(eight['params'], one['params'], 'params')
  # Per-device statistics over 4 examples would be far off the global ones.
  assert_trees_near(eight['batch_stats'], one['batch_stats'], 'batch_stats')
  assert_metrics_match(one_device_run, eight_device_run)


def continue_one_step(workdir: str, env: dict | None = None) -> None:
  """Trains `workdir`'s step-32 run one more step (33), in a subprocess with
  `env` or, without it, in this process."""
  if env is None:
    assert train.train_and_evaluate(
        topo_config(num_train_steps=33), workdir).step == 33
    return
  result = run_main(main_args(workdir, {'num_train_steps': 33}), env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from the checkpoint at step 32.' in result.stderr
  assert 'completed at step 33' in result.stderr


def one_step_update(before: str, after: str) -> dict:
  """`after`'s params and batch_stats minus `before`'s."""
  _, old = checkpoint_lib.load_arrays(before)
  step, new = checkpoint_lib.load_arrays(after)
  assert step == 33
  keys = ('params', 'batch_stats')
  return jax.tree.map(np.subtract, {k: new[k] for k in keys},
                      {k: old[k] for k in keys})


def test_checkpoints_move_between_one_and_eight_devices(
    tmp_path, one_device_run, eight_device_run):
  # 8 -> 1, in this process: arrays come back with the target's sharding.
  from_eight = str(tmp_path / 'from_eight')
  shutil.copytree(eight_device_run, from_eight)
  config = topo_config(num_train_steps=33)
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=16,
                                     total_steps=33)
  target = train.create_train_state(config, model, (28, 28, 1), lr, mesh)
  checkpointer = checkpoint_lib.Checkpointer(from_eight)
  restored, _ = checkpointer.restore_latest(target)
  checkpointer.close()
  assert int(restored.step) == 32
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target),
                       strict=True):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
  _, saved = checkpoint_lib.load_arrays(eight_device_run)
  for got, want in zip(jax.tree.leaves(restored.params),
                       jax.tree.leaves(saved['params']), strict=True):
    np.testing.assert_array_equal(np.asarray(got), want)
  continue_one_step(from_eight)

  # 1 -> 8, in a subprocess with 8 devices; and the same step on 1 device.
  # The two steps start from one state, so they agree to rounding.
  on_eight, on_one = str(tmp_path / 'on_eight'), str(tmp_path / 'on_one')
  shutil.copytree(one_device_run, on_eight)
  shutil.copytree(one_device_run, on_one)
  continue_one_step(on_eight, env=EIGHT_DEVICES)
  continue_one_step(on_one)
  assert_trees_near(one_step_update(one_device_run, on_eight),
                    one_step_update(one_device_run, on_one),
                    'the update of step 33', rtol=STEP_RTOL)
  assert [r['step'] for r in read_metrics(on_eight)] == [16, 32, 33]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_two_processes(workdir, overrides) -> list[subprocess.Popen]:
  address = f'localhost:{_free_port()}'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('XLA_FLAGS', None)
  return [
      subprocess.Popen(
          [sys.executable, 'main.py', *main_args(workdir, overrides),
           f'--coordinator_address={address}', '--num_processes=2',
           f'--process_id={i}'],
          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          text=True)
      for i in range(2)]


def _wait_all(procs: list[subprocess.Popen], expected: int = 0) -> list[str]:
  """Waits for every process; returns their stderr; all must exit with
  `expected` (0 done, 3 preempted)."""
  try:
    errs = [p.communicate(timeout=300)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, err) in enumerate(zip(procs, errs, strict=True)):
    assert p.returncode == expected, f'process {i}:\n{err[-3000:]}'
    assert f'process {i} of 2' in err
    assert 'Traceback' not in err, err[-3000:]
  return errs


@pytest.mark.parametrize('pipeline', [
    'device', pytest.param('tfdata', marks=pytest.mark.slow)])
def test_two_processes_preempted_and_resumed_train_like_one(
    tmp_path, one_device_run, pipeline):
  # Two processes with one CPU device each, joined by jax.distributed (CPU
  # collectives: gloo, JAX's default). 'device': each process holds the
  # train set and computes the rows of the global batch that live on its
  # devices; 'tfdata': each process reads only its half of every batch. Eval
  # batches are split by process in both. Process 0 writes the metrics; both
  # write their shards of the checkpoint (orbax, collectively).
  overrides = {'input.pipeline': pipeline}
  if pipeline == 'device':
    reference = one_device_run
  else:
    reference = str(tmp_path / 'one_process')
    train.train_and_evaluate(topo_config(**overrides), reference)
  workdir = str(tmp_path / 'two_processes')

  # SIGTERM to process 1 only: both must stop at the same step (saving is
  # collective), save, and exit as preempted (3).
  procs = _start_two_processes(workdir, overrides)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + 240
  while not (os.path.isdir(ckpt_dir)
             and any(n.isdigit() for n in os.listdir(ckpt_dir))):
    assert time.time() < deadline and all(p.poll() is None for p in procs), (
        'no checkpoint from the two processes')
    time.sleep(0.01)
  procs[1].send_signal(signal.SIGTERM)
  errs = _wait_all(procs, expected=3)  # preempted: rerun to continue.
  stopped = [re.search(r'Stopped by (.*) at step (\d+)', e) for e in errs]
  assert all(stopped), [e[-2000:] for e in errs]
  assert stopped[1].group(1) == 'SIGTERM'
  assert stopped[0].group(1) == 'a signal to another process'
  stop_step = int(stopped[0].group(2))
  assert stop_step == int(stopped[1].group(2)) < 32

  # The rerun resumes in both processes and ends where one process ends.
  errs = _wait_all(_start_two_processes(workdir, overrides))
  for err in errs:
    assert f'Resumed from the checkpoint at step {stop_step}.' in err
    assert 'completed at step 32' in err
  step, two = checkpoint_lib.load_arrays(workdir)
  _, one = checkpoint_lib.load_arrays(reference)
  assert step == 32
  assert_trees_near(two['params'], one['params'], 'params')
  assert_trees_near(two['batch_stats'], one['batch_stats'], 'batch_stats')
  assert_metrics_match(reference, workdir)
