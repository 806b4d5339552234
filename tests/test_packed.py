"""Packed members (cnn/training/packed.py): K seeds in one compiled step
write what each would write alone, and a killed packed sweep resumes."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from cnn.experiments import sweep, sweep_results
from cnn.training import checkpoint, packed, train
from cnn.training.metrics import read_metrics
from tests.helpers import tiny_config


def _config(seed: int, **overrides):
  # 8 steps an epoch; a training-log line every 2, a checkpoint every 4.
  return tiny_config(**{'input.train_subset': 256, 'input.test_subset': 256,
                        'num_train_steps': 8, 'log_every_steps': 2,
                        'checkpoint_every_steps': 4, 'seed': seed,
                        **overrides})


def _close(a, b, rtol=2e-4, atol=2e-5):
  assert a.keys() == b.keys()
  for key in a:
    if key in ('wall_time_s', 'examples_per_sec', 'compile_time_s'):
      continue
    if isinstance(a[key], float):
      assert a[key] == pytest.approx(b[key], rel=rtol, abs=atol), key
    else:
      assert a[key] == b[key], key


def test_packed_seeds_write_what_each_writes_alone(tmp_path):
  seeds = (0, 1, 2)
  alone = [str(tmp_path / f'alone{s}') for s in seeds]
  together = [str(tmp_path / f'packed{s}') for s in seeds]
  # With what the studies log too: per-module gradient norms, zero
  # fractions at the last evaluation.
  logged = dict(log_grad_norms=True, log_zero_fraction=True)
  for s, w in zip(seeds, alone):
    train.train_and_evaluate(_config(s, **logged), w)
  results = train.train_and_evaluate_packed(
      [_config(s, **logged) for s in seeds], together)
  assert [r.status for r in results] == ['completed'] * 3
  for a, b in zip(alone, together):
    ra, rb = read_metrics(a, kind='all'), read_metrics(b, kind='all')
    assert [r['step'] for r in ra] == [r['step'] for r in rb] == [2, 4, 6, 8]
    for x, y in zip(ra, rb):
      _close(x, y)
    assert sorted(os.listdir(os.path.join(a, 'checkpoints'))) == sorted(
        os.listdir(os.path.join(b, 'checkpoints')))
    (_, pa), (_, pb) = checkpoint.load_arrays(a), checkpoint.load_arrays(b)
    flat = lambda p: np.concatenate([np.ravel(v) for v in jax.tree.leaves(p)])
    for collection in ('params', 'batch_stats'):
      np.testing.assert_allclose(flat(pa[collection]), flat(pb[collection]),
                                 rtol=1e-3, atol=1e-5)
  final = read_metrics(together[0])[-1]
  assert any(k.startswith('grad_norm/') for k in final)
  assert any(k.startswith('test_zero_fraction/') for k in final)
  # The seeds did differ.
  assert (read_metrics(together[0])[-1]['test_loss']
          != read_metrics(together[1])[-1]['test_loss'])


def test_what_cannot_be_packed_is_refused_before_training(tmp_path):
  with pytest.raises(packed.PackingError, match='differ only in'):
    train.train_and_evaluate_packed(
        [_config(0), _config(1, **{'optimizer.learning_rate': 0.1})],
        [str(tmp_path / 'a'), str(tmp_path / 'b')])
  # Members saved at different steps (a kill between their saves).
  train.train_and_evaluate(_config(0, num_train_steps=4),
                           str(tmp_path / 'c'))
  # ... the first resumes at 4 (a longer run extends it), the second at 0.
  with pytest.raises(packed.PackingError, match='resumes at step 0'):
    train.train_and_evaluate_packed([_config(0), _config(1)],
                                    [str(tmp_path / 'c'), str(tmp_path / 'd')])


def test_pack_groups_keep_a_program_together():
  base = _config(0)
  members = sweep.members_of(sweep.product(
      sweep.axis('model.activation', ['relu', 'tanh']),
      sweep.axis('seed', [0, 1, 2])))
  configs = [sweep.member_config(base, m) for m in members]
  assert sweep.pack_groups(members, configs, 1) == [[i] for i in range(6)]
  assert sweep.pack_groups(members, configs, 2) == [[0, 1], [2], [3, 4], [5]]
  assert sweep.pack_groups(members, configs, 3) == [[0, 1, 2], [3, 4, 5]]


def _rows(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return {r['member']: r for r in csv.DictReader(f)}


def _signal_when(path: str, timeout: float = 120) -> threading.Thread:
  """SIGTERM to this process once `path` exists (a preemption mid-run)."""
  def watch():
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGTERM)
  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


def test_killed_packed_sweep_resumes_each_member(tmp_path):
  # In this process (the runner's signal handling is the same as main.py's;
  # tests/test_sweep.py kills a real main.py): 2 epochs of 8 steps.
  base = _config(0, num_train_steps=16, eval_every_epochs=1.0,
                 eval_on_train=True)
  members = sweep.members_of(sweep.axis('seed', [0, 1]))
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  for workdir in (whole, split):
    sweep.write_plan(workdir, base, 'tiny', members)
  assert sweep.run_local(base, members, whole, pack=1).exit_code == 0
  # Both members train at once: stop at their first log line.
  watcher = _signal_when(os.path.join(split, 'seed1', 'metrics.jsonl'))
  outcome = sweep.run_local(base, members, split, pack=2)
  watcher.join()
  assert outcome.exit_code == 3 and outcome.preempted
  for name in ('seed0', 'seed1'):
    assert sweep.read_result(os.path.join(split, name)) is None
    assert read_metrics(os.path.join(split, name), kind='all')[-1]['step'] < 16
  assert sweep.run_local(base, members, split, pack=2).completed == [
      'seed0', 'seed1']
  sweep_results.write(whole)
  sweep_results.write(split)
  a, b = _rows(whole), _rows(split)
  assert a.keys() == b.keys()
  for name in a:
    for key in ('final_train_error', 'final_test_error', 'best_test_error'):
      assert float(a[name][key]) == pytest.approx(float(b[name][key]),
                                                  abs=0.01), (name, key)
    result = sweep.read_result(os.path.join(split, name))
    assert result['packed_with'] == ['seed0', 'seed1']


def test_slurm_gets_one_array_task_per_packed_group(tmp_path):
  class FakeExecutor:
    """Collects what submitit would run."""

    def __init__(self):
      self.commands = []

    def batch(self):
      import contextlib  # pylint: disable=g-import-not-at-top
      return contextlib.nullcontext()

    def submit(self, fn, command, cwd):
      del fn, cwd
      self.commands.append(command)
      return type('Job', (), {'job_id': str(len(self.commands))})()

  base = _config(0)
  members = sweep.members_of(sweep.axis('seed', [0, 1, 2]))
  groups = sweep.pack_groups(
      members, [sweep.member_config(base, m) for m in members], 2)
  executor = FakeExecutor()
  sweep.submit(members, str(tmp_path), ['main.py', '--pack=2'], executor,
               groups)
  assert [c[-1] for c in executor.commands] == ['--member=seed0,seed1',
                                                '--member=seed2']
