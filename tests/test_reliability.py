"""Reliability: exact resume after a kill, preemption, damaged checkpoints,
NaN/Inf, and a golden checkpoint that pins the on-disk format.

Runs that must die (SIGKILL, SIGTERM, SIGINT) are `main.py` subprocesses;
the rest call `train.train_and_evaluate` in this process. Everything uses the
tiny LeNet-5 config `configs/default.py:runlocal` (512 training examples,
batch 32; `tests/helpers.py`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from cnn.training import checkpoint as checkpoint_lib
from cnn.training import checkpoint_integrity, optim, sharding, train
from cnn.training import experiment_identity as identity_lib
from cnn.training.metrics import read_metrics
from configs import zoo
from tests.golden import make_golden
from tests.helpers import (
  REPO,
  assert_trees_equal,
  file_digests,
  main_args,
  run_main,
  tiny_config,
)


def popen_main(args: list[str]) -> subprocess.Popen:
  """Starts `python main.py ARGS` without waiting (to signal it)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.Popen([sys.executable, 'main.py', *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def checkpoint_steps(workdir) -> list[int]:
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def wait_for_checkpoint(proc: subprocess.Popen, workdir, after: int = 0,
                        timeout: float = 120) -> int:
  """Polls until `workdir` holds a finished checkpoint newer than `after`."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    newer = [s for s in checkpoint_steps(workdir) if s > after]
    if newer:
      return newer[-1]
    if proc.poll() is not None:
      _, err = proc.communicate()
      pytest.fail(f'main.py exited ({proc.returncode}) before a checkpoint '
                  f'after step {after}:\n{err[-3000:]}')
    time.sleep(0.01)
  proc.kill()
  pytest.fail(f'no checkpoint after step {after} within {timeout} s')


# ------------------------------------------------------------ exact resume


def test_sigkill_then_rerun_is_bit_identical_to_one_run(tmp_path):
  # 96 steps, a checkpoint every 4: the kill lands on a random step, possibly
  # in the middle of an asynchronous save (a half-written checkpoint).
  overrides = {'num_epochs': 6.0, 'checkpoint_every_steps': 4,
               'log_every_steps': 4, 'eval_every_epochs': 3.0}
  once, killed = str(tmp_path / 'once'), str(tmp_path / 'killed')
  train.train_and_evaluate(tiny_config(**overrides), once)

  args = main_args(killed, overrides)
  # Random, but counted in steps rather than seconds, so that a faster
  # machine does not finish before the kill.
  rng = random.Random()
  target, delay = rng.randrange(4, 72, 4), rng.uniform(0.0, 0.05)
  proc = popen_main(args)
  wait_for_checkpoint(proc, killed, after=target - 1)
  time.sleep(delay)
  assert proc.poll() is None, f'the run ended before the kill ({target=})'
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  at_kill = checkpoint_steps(killed)
  assert at_kill and at_kill[-1] < 96, (target, delay, at_kill)

  rerun = run_main(args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed = re.search(r'Resumed from the checkpoint at step (\d+)',
                      rerun.stderr)
  assert resumed, rerun.stderr[-3000:]
  assert int(resumed.group(1)) in at_kill, (resumed.group(1), at_kill)
  print(f'killed {delay:.3f} s after checkpoint {target}; checkpoints then: '
        f'{at_kill}; resumed at {resumed.group(1)}; half-written save found: '
        f'{"half-written" in rerun.stderr}')

  # Same config on both sides (main_args reproduces tiny_config) ...
  with open(os.path.join(once, 'config.json')) as f1, open(
      os.path.join(killed, 'config.json')) as f2:
    assert json.load(f1) == json.load(f2)
  # ... and the same bits at the end: data order, augmentation and dropout
  # follow (seed, step), and the restored state is exact.
  step_a, a = checkpoint_lib.load_arrays(once)
  step_b, b = checkpoint_lib.load_arrays(killed)
  assert step_a == step_b == 96
  assert_trees_equal(a, b)
  ma, mb = read_metrics(once), read_metrics(killed)
  assert [r['step'] for r in ma] == [r['step'] for r in mb] == [48, 96]
  assert [r['test_loss'] for r in ma] == [r['test_loss'] for r in mb]


# -------------------------------------------------------------- preemption


def _stopped_at(stderr: str, signal_name: str) -> int:
  match = re.search(rf'Stopped by {signal_name} at step (\d+)', stderr)
  assert match, stderr[-3000:]
  assert 'again to resume' in stderr
  assert 'Traceback' not in stderr, stderr[-3000:]
  return int(match.group(1))


def test_sigterm_and_sigint_save_and_the_rerun_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  # 320 steps: long enough that a signal after the first checkpoint lands
  # mid-run; evaluation only at the end keeps each step cheap.
  overrides = {'num_epochs': 20.0, 'checkpoint_every_steps': 16,
               'log_every_steps': 16, 'eval_every_epochs': 20.0,
               'schedule.name': 'constant'}
  args = main_args(workdir, overrides)

  proc = popen_main(args)
  wait_for_checkpoint(proc, workdir)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 3, err[-3000:]  # preempted: rerun to continue.
  term_step = _stopped_at(err, 'SIGTERM')
  assert 0 < term_step < 320
  # Saved at the very step it stopped, and finished writing before exit.
  assert checkpoint_steps(workdir)[-1] == term_step
  assert not glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*'))

  proc = popen_main(args)
  wait_for_checkpoint(proc, workdir, after=term_step)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 3, err[-3000:]
  assert f'Resumed from the checkpoint at step {term_step}.' in err
  int_step = _stopped_at(err, 'SIGINT')
  assert term_step < int_step < 320
  assert checkpoint_steps(workdir)[-1] == int_step

  final = run_main(args)
  assert final.returncode == 0, final.stderr[-3000:]
  assert f'Resumed from the checkpoint at step {int_step}.' in final.stderr
  assert 'completed at step 320' in final.stderr
  assert [r['step'] for r in read_metrics(workdir)] == [320]


def test_sigterm_before_training_exits_3_with_one_line(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = popen_main(main_args(workdir))
  for line in proc.stderr:  # JAX is up: set-up (imports, data) follows.
    if 'local devices' in line:
      break
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 3, err[-3000:]
  assert 'Stopped by SIGTERM before training started' in err, err[-3000:]
  assert 'again to continue' in err and 'Traceback' not in err
  assert not checkpoint_steps(workdir)


@pytest.mark.parametrize('when', ['reading data', 'writing the workdir'])
def test_signal_during_set_up_stops_it_as_preempted(tmp_path, monkeypatch,
                                                    caplog, when):
  if threading.current_thread() is not threading.main_thread():
    pytest.skip('signal handlers need the main thread')
  # The signal arrives inside set-up: while the data are read (stops at
  # once, nothing written) or after the workdir is first written (stops
  # before the first step, nothing saved).
  module, name = ((train.input_pipeline, 'get_input_info')
                  if when == 'reading data' else
                  (train.metrics_lib, 'MetricWriter'))
  original = getattr(module, name)

  def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

  monkeypatch.setattr(module, name, signalled)
  workdir = str(tmp_path / 'run')
  before = signal.getsignal(signal.SIGTERM)
  with caplog.at_level('WARNING'):
    result = train.train_and_evaluate(tiny_config(), workdir)
  assert (result.status, result.step) == (
      'preempted', -1 if when == 'reading data' else 0)
  assert 'Stopped by SIGTERM before training started' in caplog.text
  assert signal.getsignal(signal.SIGTERM) is before
  assert os.path.exists(workdir) == (when != 'reading data')
  assert not checkpoint_steps(workdir)


# ---------------------------------------------------- damaged checkpoints


@pytest.fixture(scope='module')
def small_state():
  """A freshly initialised tiny LeNet-5 TrainState (no training)."""
  config = tiny_config()
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=16,
                                     total_steps=32)
  return train.create_train_state(config, model, (28, 28, 1), lr, mesh)


def _largest_array_file(step_dir: str) -> str:
  files = glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'),
                    recursive=True)
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(step_dir):
  # Inside the array data: orbax stores no checksum, so only the fingerprint
  # in the metadata can notice this.
  path = _largest_array_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(16)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


def _garble_manifest(step_dir):
  with open(os.path.join(step_dir, 'state', 'manifest.ocdbt'), 'wb') as f:
    f.write(b'not a manifest')


def _garble_meta(step_dir):
  with open(os.path.join(step_dir, 'meta', 'metadata'), 'w') as f:
    f.write('{"identity": ')


def _drop_commit_and_arrays(step_dir):
  # A step directory without its data, as a non-atomic file system can leave.
  os.remove(os.path.join(step_dir, 'commit_success.txt'))
  for path in glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_*')):
    shutil.rmtree(path)


@pytest.mark.parametrize('damage', [_truncate, _flip_bytes, _garble_manifest,
                                    _garble_meta, _drop_commit_and_arrays])
def test_damaged_latest_checkpoint_falls_back_and_is_set_aside(
    tmp_path, small_state, damage, caplog):
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=5)
  for step in (1, 2, 3):
    checkpointer.save(small_state.replace(step=small_state.step + step),
                      {'identity': {}})
  checkpointer.close()
  directory = os.path.join(str(tmp_path), 'checkpoints')
  good = {s: file_digests(os.path.join(directory, str(s))) for s in (1, 2)}
  damage(os.path.join(directory, '3'))

  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=5)
  with caplog.at_level('WARNING'):
    restored, _ = checkpointer.restore_latest(small_state)
  checkpointer.close()
  assert int(restored.step) == 2
  assert_trees_equal(restored.params, small_state.params)
  assert 'step 3 could not be restored' in caplog.text
  assert checkpoint_steps(str(tmp_path)) == [1, 2]
  assert os.listdir(directory + '.damaged') == ['3']
  for s in (1, 2):  # the good ones are untouched, byte for byte.
    assert file_digests(os.path.join(directory, str(s))) == good[s]


def test_checkpoint_of_other_code_is_refused_not_set_aside(
    tmp_path, small_state):
  # Same config identity, other arrays (as after a change to the model
  # code): not damage, so nothing may be moved and the run must not restart.
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  checkpointer.save(small_state, {'identity': {}})
  checkpointer.close()
  before = file_digests(str(tmp_path))
  config = tiny_config(**{'model.widths': (6, 16, 100, 84)})
  model = train.create_model(config, num_classes=10)
  lr = optim.create_learning_rate_fn(config, 16, 32)
  other = train.create_train_state(config, model, (28, 28, 1), lr,
                                   sharding.create_mesh())
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match=r'other arrays than this code builds.*'
                           r'only saved: \[\(\(120,\).*only expected: '
                           r'\[\(\(100,\)'):
    checkpointer.restore_latest(other)
  checkpointer.close()
  assert file_digests(str(tmp_path)) == before


def test_broken_and_half_written_checkpoints_through_main(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(), workdir)  # checkpoints 16, 24, 32
  directory = os.path.join(workdir, 'checkpoints')
  # A save killed midway: orbax writes `<step>.orbax-checkpoint-tmp` first.
  half = os.path.join(directory, '40.orbax-checkpoint-tmp')
  shutil.copytree(os.path.join(directory, '32'), half)
  os.remove(os.path.join(half, 'commit_success.txt'))
  _garble_manifest(os.path.join(directory, '32'))
  good = {s: file_digests(os.path.join(directory, str(s))) for s in (16, 24)}

  result = run_main(main_args(workdir, {'num_epochs': 3.0,
                                        'keep_checkpoints': 5}))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-5000:]
  assert 'half-written checkpoint 40.orbax-checkpoint-tmp' in result.stderr
  assert 'step 32 could not be restored' in result.stderr
  assert 'Resumed from the checkpoint at step 24.' in result.stderr
  assert 'completed at step 48' in result.stderr
  assert sorted(os.listdir(directory + '.damaged')) == [
      '32', '40.orbax-checkpoint-tmp']
  assert checkpoint_steps(workdir) == [16, 24, 32, 40, 48]
  for s in (16, 24):
    assert file_digests(os.path.join(directory, str(s))) == good[s]
  assert [r['epoch'] for r in read_metrics(workdir)] == [1.0, 2.0, 3.0]


def test_unretrieved_read_errors_of_a_damaged_checkpoint_are_not_printed():
  # Restoring a damaged checkpoint fails in one of orbax's parallel reads;
  # asyncio later reports the sibling failures, with tracebacks, as "Task
  # exception was never retrieved" (under orbax's coroutine or asyncio's
  # wrapper, depending on timing). The one-line report is ours.
  quiet = checkpoint_integrity.QuietDamagedReads()
  record = lambda message: logging.LogRecord('asyncio', logging.ERROR, '', 0,
                                             message, None, None)
  for coro in ('async_deserialize', '_wrap_awaitable'):
    assert not quiet.filter(record(
        f"Task exception was never retrieved\nfuture: <Task coro=<{coro}()> "
        "exception=ValueError('DATA_LOSS: Error opening \"zarr\" driver')>"))
  assert quiet.filter(record(
      "Task exception was never retrieved\nfuture: <Task coro=<mine()> "
      "exception=ValueError('a bug of ours')>"))
  assert quiet.filter(record('Executing <Task> took 0.2 seconds'))


_FILTERS_IN_A_FRESH_PROCESS = r'''
import logging, sys
from cnn.training import checkpoint, checkpoint_integrity
quiet = lambda: sum(isinstance(f, checkpoint_integrity.QuietDamagedReads)
                    for f in logging.getLogger('asyncio').filters)
wrapped = lambda: getattr(sys.unraisablehook, 'drops_abandoned_reads', False)
print(quiet(), wrapped())
for _ in range(2):
  checkpoint.Checkpointer(sys.argv[1]).close()
print(quiet(), wrapped())
'''


def test_log_filters_are_installed_by_a_checkpointer_not_by_import(tmp_path):
  result = subprocess.run(
      [sys.executable, '-c', _FILTERS_IN_A_FRESH_PROCESS, str(tmp_path)],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  # Importing changes nothing; two Checkpointers install each filter once.
  assert result.stdout.split() == ['0', 'False', '1', 'True'], result.stdout


# ----------------------------------------------------------------- NaN/Inf


def test_nonfinite_loss_stops_with_a_clean_message_and_saves_nothing(
    tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_epochs=1.0), workdir)  # 8, 16
  directory = os.path.join(workdir, 'checkpoints')
  before = file_digests(directory)

  # Resumes at 16 (another learning rate, accepted and recorded), then
  # diverges: Adam's first step moves every weight by ~lr.
  result = run_main(main_args(workdir, {'optimizer.learning_rate': 1e30,
                                        'accept_recipe_change': True}))
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr, result.stderr[-5000:]
  message = re.search(r'error: (Non-finite .*)', result.stderr)
  assert message, result.stderr[-3000:]
  assert re.search(r'at step 1[6-9]\b', message.group(1)), message.group(1)
  assert f'last good checkpoint is step 16 in {directory}' in message.group(1)
  assert file_digests(directory) == before
  assert not os.path.exists(directory + '.damaged')


def test_nonfinite_loss_before_any_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.NonFiniteLossError,
                     match=r'at step [0-7]\b.*no checkpoint had been saved'):
    train.train_and_evaluate(
        tiny_config(**{'optimizer.learning_rate': 1e30}), workdir)
  assert checkpoint_steps(workdir) == []


def test_skip_nonfinite_completes_and_counts_skipped_steps(tmp_path):
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(
      tiny_config(**{'optimizer.learning_rate': 1e30,
                     'on_nonfinite': 'skip'}), workdir)
  assert result.status == 'completed' and result.step == 32
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [16, 32]
  assert all(r['nonfinite_steps'] > 0 for r in records), records
  # Skipped updates never reach the state: every saved array is finite.
  _, arrays = checkpoint_lib.load_arrays(workdir)
  for leaf in jax.tree.leaves(arrays['params']):
    assert np.all(np.isfinite(leaf))


# ------------------------------------------------------ golden checkpoint


def test_golden_checkpoint_restores_with_the_current_libraries(tmp_path):
  with open(make_golden.EXPECTED) as f:
    expected = json.load(f)
  # A copy: a failed restore moves a checkpoint aside, and the committed
  # golden files must never change.
  workdir = str(tmp_path / 'golden')
  shutil.copytree(make_golden.WORKDIR, workdir)

  # 1. Model-free: the raw arrays, bit for bit.
  step, arrays = checkpoint_lib.load_arrays(workdir)
  assert step == expected['step']
  assert make_golden.describe(arrays) == expected['arrays']

  # 2. As training restores it: into a TrainState of the golden config,
  # fingerprint verified, identity unchanged.
  config = make_golden.golden_config()
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=8,
                                     total_steps=expected['step'])
  target = train.create_train_state(config, model, (28, 28, 1), lr, mesh)
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  restored, meta = checkpointer.restore_latest(target)
  checkpointer.close()
  assert restored is not None, 'the golden checkpoint did not restore'
  assert int(restored.step) == expected['step']
  assert meta == expected['meta']
  assert_trees_equal(restored.params, arrays['params'])
  assert_trees_equal(restored.batch_stats, arrays['batch_stats'])
  assert not os.path.exists(os.path.join(workdir, 'checkpoints.damaged'))


# ----------------------------------------------------- experiment identity


def test_how_it_is_computed_is_not_part_of_the_identity():
  identity = identity_lib.experiment_identity
  assert (identity(tiny_config(conv_impl='xla'))
          == identity(tiny_config(conv_impl='banded'))
          == identity(tiny_config(**{'optimizer.learning_rate': 1.0,
                                     'num_epochs': 5.0})))
  resnet = zoo.get_config('resnet20')
  remat = zoo.get_config('resnet20')
  remat.model.remat = not resnet.model.remat
  assert identity(remat) == identity(resnet)
  assert 'remat' not in identity(resnet)['model']
  # What the network is, is.
  assert (identity(tiny_config(**{'model.activation': 'tanh'}))
          != identity(tiny_config()))


def test_identity_check_names_each_differing_field(tmp_path):
  workdir = str(tmp_path)
  check = identity_lib.identity_check(tiny_config(), workdir)
  check({'identity': identity_lib.experiment_identity(
      tiny_config(conv_impl='xla'))})  # accepted
  other = identity_lib.experiment_identity(
      tiny_config(**{'model.activation': 'tanh', 'optimizer.name': 'sgd'}))
  with pytest.raises(checkpoint_lib.CheckpointMismatchError) as error:
    check({'identity': other})
  message = str(error.value)
  assert message.startswith(
      f'{workdir} holds checkpoints of a different experiment (model: '
      "checkpoint has {'activation': 'tanh'")
  assert "optimizer.name: checkpoint has 'sgd', config asks 'adamw'" in message
  assert message.endswith(
      'Nothing was changed. Use a new --workdir, or delete '
      f'{os.path.join(workdir, "checkpoints")} to start this one afresh.')
  with pytest.raises(checkpoint_lib.CheckpointMismatchError):
    check({})  # a checkpoint without identity is another experiment too.


def test_golden_checkpoint_has_the_identity_of_its_config(tmp_path):
  # A change of the identity refuses every existing workdir: it must be
  # deliberate, as a format change is. An option a model gained since (at
  # its default) is no change: the golden LeNet-5 predates `connectivity`.
  with open(make_golden.EXPECTED) as f:
    stored = json.load(f)['meta']['identity']
  identity_lib.identity_check(make_golden.golden_config(), str(tmp_path))(
      {'identity': stored})
  current = identity_lib.experiment_identity(make_golden.golden_config())
  assert {k: v for k, v in current['model'].items()
          if k in stored['model']} == stored['model']


def test_an_option_added_since_counts_only_at_its_default(tmp_path):
  saved = identity_lib.experiment_identity(tiny_config())
  del saved['model']['connectivity']  # a checkpoint from before the option.
  identity_lib.identity_check(tiny_config(), str(tmp_path))(
      {'identity': saved})
  local = tiny_config(**{'model.connectivity': 'local'})
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match="'connectivity': 'local'"):
    identity_lib.identity_check(local, str(tmp_path))({'identity': saved})
