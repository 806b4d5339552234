"""`config.log_zero_fraction`: the share of exactly-zero activations per
stage of the `out` dict at the last evaluation, over the whole test set."""

from __future__ import annotations

import numpy as np

import input_pipeline
from cnn.training import checkpoint, recipe, train
from cnn.training.metrics import read_metrics
from tests.helpers import tiny_config


def test_last_evaluation_counts_zeros_as_numpy_does(tmp_path):
  workdir = str(tmp_path / 'run')
  # 16 steps an epoch: evaluations at steps 2 and 4; no batch norm (the
  # restored model needs no running statistics), ReLU.
  config = tiny_config(log_zero_fraction=True, num_train_steps=4,
                       eval_every_epochs=0.125,
                       **{'model.batch_norm': False})
  train.train_and_evaluate(config, workdir)
  first, last = read_metrics(workdir)
  assert not any('zero_fraction' in k for k in first)
  fractions = {k.split('/', 1)[1]: v for k, v in last.items()
               if k.startswith('test_zero_fraction/')}
  assert set(fractions) == {'stem', 'stage1', 'stage2', 'stage3', 'stage4',
                            'stage5', 'pre_logits'}

  # The same fractions from the checkpoint's model over the test set.
  model = train.create_model(config, num_classes=10)
  _, variables = checkpoint.load_variables(workdir)
  zeros, values = {}, {}
  for batch in input_pipeline.create_eval_batches(config.input):
    rows = batch['mask'] > 0
    _, out = model.apply({'params': variables['params']}, batch['image'])
    for name in fractions:
      x = np.asarray(out[name])[rows]
      zeros[name] = zeros.get(name, 0) + (x == 0).sum()
      values[name] = values.get(name, 0) + x.size
  for name, fraction in fractions.items():
    np.testing.assert_allclose(fraction, zeros[name] / values[name],
                               atol=1e-6, err_msg=name)
  assert 0 < fractions['stem'] < 1  # ReLU: some units off, not all.


def test_off_by_default_and_free_on_a_rerun():
  assert tiny_config().log_zero_fraction is False
  assert 'log_zero_fraction' in recipe.RERUN_FREE_FIELDS
