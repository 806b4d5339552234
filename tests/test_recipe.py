"""A rerun in an existing workdir: which config changes it may make.

A changed recipe is refused before anything is written (config.json stays
byte-identical); cadences and a longer run pass; opting in continues and
records the change with its step (cnn/training/recipe.py).
"""

from __future__ import annotations

import json
import os

import pytest

from cnn.training import recipe, train
from tests.helpers import tiny_config


def _config(**overrides):
  return tiny_config(**{'input.train_subset': 128, 'input.test_subset': 128,
                        'num_train_steps': 4, 'log_every_steps': 2,
                        'checkpoint_every_steps': 2, **overrides})


def test_which_changes_count():
  base = _config()
  same = _config(log_every_steps=1, conv_impl='xla',
                 **{'model.remat': True, 'input.eval_batch_size': 64})
  assert recipe.recipe_changes(base, same) == {}
  assert recipe.recipe_changes(base, _config(num_train_steps=8)) == {}
  assert recipe.recipe_changes(base, _config(num_train_steps=2)) == {
      'num_train_steps': (4, 2)}
  assert recipe.recipe_changes(base, _config(
      **{'optimizer.learning_rate': 0.5, 'seed': 3})) == {
          'optimizer.learning_rate': (0.003, 0.5), 'seed': (0, 3)}


def test_changed_recipe_is_refused_and_nothing_is_written(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(), workdir)
  path = os.path.join(workdir, 'config.json')
  before = open(path, 'rb').read()
  listing = sorted(os.listdir(workdir))
  metrics_before = open(os.path.join(workdir, 'metrics.jsonl'), 'rb').read()
  with pytest.raises(recipe.RecipeChangeError,
                     match=r'optimizer\.learning_rate: 0\.003 -> 0\.5'):
    train.train_and_evaluate(_config(**{'optimizer.learning_rate': 0.5}),
                             workdir)
  assert open(path, 'rb').read() == before
  assert sorted(os.listdir(workdir)) == listing
  assert open(os.path.join(workdir, 'metrics.jsonl'), 'rb').read() == (
      metrics_before)
  # The same command again leaves config.json as it was, byte for byte.
  train.train_and_evaluate(_config(), workdir)
  assert open(path, 'rb').read() == before

  # Opting in continues and keeps the history.
  result = train.train_and_evaluate(_config(**{
      'optimizer.learning_rate': 0.5, 'num_train_steps': 6,
      'accept_recipe_change': True}), workdir)
  assert result.status == 'completed' and result.step == 6
  assert open(os.path.join(workdir, recipe.ORIGINAL_CONFIG_FILE),
              'rb').read() == before
  with open(os.path.join(workdir, recipe.HISTORY_FILE)) as f:
    history = [json.loads(line) for line in f]
  assert len(history) == 1 and history[0]['step'] == 4
  assert history[0]['changes']['optimizer.learning_rate'] == [0.003, 0.5]
  assert history[0]['changes']['num_train_steps'] == [4, 6]
  assert recipe.read_config(workdir)['optimizer']['learning_rate'] == 0.5


def test_a_workdir_without_checkpoints_starts_afresh(tmp_path):
  (tmp_path / 'config.json').write_text(
      _config(seed=7).to_json_best_effort(indent=2))
  recipe.check_rerun(_config(), str(tmp_path), has_trained=False)
  with pytest.raises(recipe.RecipeChangeError, match='seed: 7 -> 0'):
    recipe.check_rerun(_config(), str(tmp_path), has_trained=True)


def test_fields_added_since_a_workdir_trained_are_not_changes():
  old = json.loads(_config().to_json_best_effort())
  del old['eval_subset'], old['input']['sample_seed']
  assert recipe.recipe_changes(old, _config()) == {}
