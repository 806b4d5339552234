"""`config.log_grad_norms`: per-module gradient norms in metrics.jsonl."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax

from cnn.training import optim, recipe, sharding, steps, train
from cnn.training.metrics import read_metrics
from tests.helpers import tiny_config

# LeNet-5 with batch norm (the tiny config's model) in forward order.
LENET_MODULES = ['backbone/c1_conv', 'backbone/c1_bn', 'backbone/c3_conv',
                 'backbone/c3_bn', 'backbone/f5', 'backbone/f6', 'head']


def test_off_by_default_and_free_on_a_rerun():
  assert tiny_config().log_grad_norms is False
  assert 'log_grad_norms' in recipe.RERUN_FREE_FIELDS
  assert set(steps.empty_train_metrics()) == set(steps.empty_train_metrics(()))
  assert not any(k.startswith('grad_norm') for k in steps.empty_train_metrics())


def test_tiny_run_logs_grad_norms_at_each_evaluation(tmp_path):
  workdir = str(tmp_path / 'run')
  # 16 steps an epoch: evaluations at steps 2 and 4.
  config = tiny_config(log_grad_norms=True, num_train_steps=4,
                       eval_every_epochs=0.125)
  train.train_and_evaluate(config, workdir)
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [2, 4]
  for record in records:
    keys = [k for k in record if k.startswith('grad_norm/')]
    assert keys == [f'grad_norm/{m}' for m in LENET_MODULES]
    for key in keys:
      assert math.isfinite(record[key]) and record[key] > 0, (key, record)


def test_logged_norm_is_the_norm_of_jax_grad():
  import input_pipeline  # pylint: disable=g-import-not-at-top
  # Without batch norm (and LeNet-5 has no dropout): a deterministic loss.
  config = tiny_config(**{'schedule.name': 'constant',
                          'model.batch_norm': False})
  model = train.create_model(config, num_classes=10)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=10,
                                     total_steps=100)
  state = train.create_train_state(config, model, (28, 28, 1), lr,
                                   sharding.create_mesh())
  raw = next(input_pipeline.create_eval_batches(
      config.input, split='train', batch_size=8))
  batch = {'image': raw['image'], 'label': raw['label']}

  def loss_fn(params):
    logits, _ = model.apply({'params': params}, batch['image'], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']).mean()

  grads = jax.grad(loss_fn)(state.params)
  norm = lambda tree: np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                                  for g in jax.tree.leaves(tree)))
  expected = {'backbone/c3_conv': norm(grads['backbone']['c3_conv']),
              'head': norm(grads['head'])}  # kernel and bias together.
  metrics = steps.empty_train_metrics(
      [m for m in LENET_MODULES if not m.endswith('_bn')])
  _, metrics = jax.jit(lambda s, m, b: steps.train_step(
      s, m, b, label_smoothing=0.0, aux_weight=0.0, skip_nonfinite=False))(
          state, metrics, batch)
  assert float(metrics[steps.GRAD_NORM_COUNT]) == 1.0
  for module, norm in expected.items():
    np.testing.assert_allclose(float(metrics[f'grad_norm/{module}']), norm,
                               rtol=1e-4)
