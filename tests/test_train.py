"""The training spine end to end on tiny configs."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn.training import optim, sharding, steps, train
from cnn.training.metrics import read_metrics
from tests.helpers import tiny_config


def _state_and_batch(config, batch_size=64):
  import input_pipeline  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=10,
                                     total_steps=100)
  state = train.create_train_state(config, model, (28, 28, 1), lr, mesh)
  batch = next(input_pipeline.create_eval_batches(
      config.input, split='train', batch_size=batch_size))
  return state, {'image': batch['image'], 'label': batch['label']}


def test_train_steps_lower_the_loss_on_a_fixed_batch():
  config = tiny_config(**{'schedule.name': 'constant',
                          'optimizer.learning_rate': 3e-3})
  state, batch = _state_and_batch(config)
  step = jax.jit(lambda s, m, b: steps.train_step(
      s, m, b, label_smoothing=0.0, aux_weight=0.0, skip_nonfinite=False))
  losses = []
  for _ in range(20):
    metrics = steps.empty_train_metrics()
    state, metrics = step(state, metrics, batch)
    losses.append(float(metrics['loss_sum'] / metrics['count']))
  assert int(state.step) == 20
  assert losses[-1] < 0.5 * losses[0], losses


def test_eval_step_counts_only_unmasked_rows():
  config = tiny_config()
  state, batch = _state_and_batch(config, batch_size=8)
  mask = jnp.array([1, 1, 1, 0, 0, 1, 0, 0], jnp.float32)
  full = steps.eval_step(state, steps.empty_eval_metrics(),
                         dict(batch, mask=jnp.ones(8)))
  part = steps.eval_step(state, steps.empty_eval_metrics(),
                         dict(batch, mask=mask))
  assert float(part['count']) == 4.0
  assert float(full['count']) == 8.0
  assert float(part['loss_sum']) < float(full['loss_sum'])


def test_end_to_end_train_eval_resume(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config()
  result = train.train_and_evaluate(config, workdir)
  assert result.status == 'completed'
  records = read_metrics(workdir)
  assert [r['epoch'] for r in records] == [1.0, 2.0]
  for key in ('step', 'epoch', 'train_loss', 'train_accuracy', 'test_loss',
              'test_accuracy', 'learning_rate', 'examples_per_sec',
              'wall_time_s'):
    assert key in records[-1], key
  assert records[-1]['test_count'] == 1000  # 1,000 with batch 384: padded.
  assert records[-1]['test_accuracy'] > 0.5
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model_name'] == 'lenet5'
  assert os.listdir(os.path.join(workdir, 'tensorboard'))

  # A rerun of a finished run trains nothing and keeps its metrics.
  again = train.train_and_evaluate(config, workdir)
  assert again.step == result.step
  assert read_metrics(workdir) == records

  # Asking for more epochs resumes from the last checkpoint.
  longer = tiny_config(num_epochs=3.0)
  resumed = train.train_and_evaluate(longer, workdir)
  assert resumed.step == 3 * 16
  assert [r['epoch'] for r in read_metrics(workdir)] == [1.0, 2.0, 3.0]


def test_resume_lands_where_one_run_lands(tmp_path):
  # Stopping after epoch 1 and resuming must end exactly where one
  # uninterrupted run ends: data order and dropout follow (seed, step). A
  # constant schedule, because a schedule's length depends on num_epochs.
  const = {'schedule.name': 'constant'}
  full_dir, split_dir = str(tmp_path / 'full'), str(tmp_path / 'split')
  train.train_and_evaluate(tiny_config(**const), full_dir)
  train.train_and_evaluate(tiny_config(num_epochs=1.0, **const), split_dir)
  train.train_and_evaluate(tiny_config(**const), split_dir)
  a, b = read_metrics(full_dir)[-1], read_metrics(split_dir)[-1]
  assert a['step'] == b['step']
  assert a['test_loss'] == b['test_loss']
  assert a['test_accuracy'] == b['test_accuracy']


def test_workdir_of_another_model_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_epochs=1.0), workdir)
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  other = tiny_config(**{'model.activation': 'tanh', 'num_epochs': 1.0})
  other.unlock()
  other.model_name = 'lenet5'
  other.model.batch_norm = False
  other.lock()
  with pytest.raises(ValueError, match='different experiment.*new --workdir'):
    train.train_and_evaluate(other, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before


def test_batch_size_must_divide_over_devices(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  with pytest.raises(ValueError, match='multiple of 8'):
    sharding.check_batch_size(100)


LR = 3e-3  # the default config's peak learning rate.
# {schedule: (config overrides, {step: learning rate})}, for 10 steps an epoch
# and 100 steps in all, computed by hand from the formulas optax documents.
SCHEDULE_VALUES = {
    'constant': ({}, {0: LR, 50: LR, 99: LR}),
    # The plateau scale lives in the optimizer state; the schedule is flat.
    'reduce_on_plateau': ({}, {0: LR, 99: LR}),
    # lr * (f + (1 - f) * (1 + cos(pi * t / 100)) / 2), final fraction f.
    'cosine': ({'schedule.final_fraction': 0.1},
               {0: LR, 50: 0.55 * LR, 100: 0.1 * LR}),
    # 2 epochs = 20 steps from 0 up to lr, then cosine over the other 80.
    'warmup_cosine': ({'schedule.warmup_epochs': 2.0},
                      {0: 0.0, 10: LR / 2, 20: LR, 60: LR / 2, 100: 0.0}),
    # lr / 25 at the start, lr at 30 % of the run, lr / 25 / 1e4 at its end.
    'onecycle': ({}, {0: LR / 25, 30: LR, 100: LR / 25 / 1e4}),
    # x0.1 from epoch 3 (step 30) and again from epoch 6 (step 60).
    'step': ({'schedule.decay_epochs': (3, 6)},
             {0: LR, 29: LR, 30: LR / 10, 59: LR / 10, 60: LR / 100}),
}


def test_every_schedule_has_known_values():
  assert set(SCHEDULE_VALUES) == set(optim.SCHEDULES)


@pytest.mark.parametrize('name', list(optim.SCHEDULES))
def test_schedule_values_at_known_steps(name):
  overrides, expected = SCHEDULE_VALUES[name]
  config = tiny_config(**{'schedule.name': name,
                          'optimizer.learning_rate': LR}, **overrides)
  fn = optim.create_learning_rate_fn(config, steps_per_epoch=10,
                                     total_steps=100)
  got = {step: float(fn(step)) for step in expected}
  np.testing.assert_allclose(list(got.values()), list(expected.values()),
                             rtol=1e-5, atol=1e-12, err_msg=str(got))


def test_training_loss_is_logged_between_evaluations(tmp_path):
  # runlocal: 16 steps an epoch, evaluation every epoch; a line every 4.
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(
      log_every_steps=4, num_epochs=1.0,
      **{'optimizer.learning_rate': 4e-5, 'schedule.name': 'constant'}),
      workdir)
  logged = read_metrics(workdir, kind='train')
  assert [r['step'] for r in logged] == [4, 8, 12]
  assert all(np.isfinite(r['train_loss'])
             and r['learning_rate'] == pytest.approx(4e-5)
             for r in logged)
  assert [r['step'] for r in read_metrics(workdir)] == [16]
  assert [r['step'] for r in read_metrics(workdir, kind='all')] == [
      4, 8, 12, 16]
  # The console keeps significant digits of a small learning rate.
  assert train._significant(read_metrics(workdir)[-1])['learning_rate'] == (
      4e-05)


def test_eval_subset_makes_evaluations_before_the_last_cheap(tmp_path):
  # runlocal: 2 epochs of 16 steps, evaluation every half epoch.
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(
      eval_subset=100, eval_every_epochs=0.5, eval_on_train=True), workdir)
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [8, 16, 24, 32]
  assert [r['test_count'] for r in records] == [100, 100, 100, 1000]
  assert [r['train_eval_count'] for r in records] == [100, 100, 100, 512]
