"""Which config changes a rerun in an existing workdir may make.

A workdir's `config.json` says what trained there; the notebooks and
`cnn.experiments.analysis` read it. A rerun may change only what leaves the
trained result equal up to float noise — `RERUN_FREE_FIELDS` (logging,
checkpoint and evaluation cadence, how convolutions are computed, where the
data lies) — or raise `EXTENDABLE_FIELDS` to train longer. Any other change
is refused before anything is written (`check_rerun`), with one message
listing each field's old and new value. `config.accept_recipe_change=True`
opts in: the run continues with the new values, `config.json` becomes the
config in effect, the first one is kept as `config.original.json`, and
`config_history.jsonl` gets one line per change with the step at which it
took effect (`record`).

The trainer (`cnn.training.train`) and the sweep runner
(`cnn.experiments.sweep`, for a sweep's base config) share these lists.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import ml_collections

from cnn.common import errors
from cnn.training import experiment_identity

CONFIG_FILE = 'config.json'
ORIGINAL_CONFIG_FILE = 'config.original.json'
HISTORY_FILE = 'config_history.jsonl'

# Fields whose change leaves what a run computes equal up to float noise:
# bookkeeping, evaluation cadence, implementation, data location.
RERUN_FREE_FIELDS = (
    'accept_recipe_change', 'checkpoint_every_steps', 'conv_impl',
    'eval_every_epochs', 'eval_on_train', 'eval_subset', 'input.data_dir',
    'input.eval_batch_size', 'input.manual_dir', 'keep_checkpoints',
    'log_every_steps', 'log_grad_norms', 'log_zero_fraction', 'model.remat',
    'progress_bar')

# Fields that may be raised (never lowered) to extend a run.
EXTENDABLE_FIELDS = ('num_epochs', 'num_train_steps')


class RecipeChangeError(errors.UserError):
  """A rerun asks for another recipe than the one its workdir trained."""


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """{'optimizer.learning_rate': 0.003, ...}: every leaf by its dotted name,
  valued as it reads back from JSON (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      for k, v in flatten(value).items():
        flat[f'{key}.{k}'] = v
    else:
      flat[key] = json.loads(json.dumps(value))
  return flat


def recipe_changes(old: dict | ml_collections.ConfigDict,
                   new: dict | ml_collections.ConfigDict
                   ) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old, new)} of the changes a rerun may not make alone.

  Free fields and raised extendable fields are left out, and so are fields
  present on one side only: a field added to the configs since the workdir
  trained (new options come at the value that keeps the old behaviour), or
  one since removed.
  """
  a, b = flatten(old), flatten(new)
  changes = {}
  for field in sorted(set(a) & set(b)):
    before, after = a.get(field), b.get(field)
    if before == after or field in RERUN_FREE_FIELDS:
      continue
    if (field in EXTENDABLE_FIELDS and isinstance(before, (int, float))
        and isinstance(after, (int, float)) and after >= before):
      continue
    changes[field] = (before, after)
  return changes


def all_changes(old: dict | ml_collections.ConfigDict,
                new: dict | ml_collections.ConfigDict
                ) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old, new)} of every changed field, free ones too."""
  a, b = flatten(old), flatten(new)
  return {f: (a.get(f), b.get(f)) for f in sorted(set(a) | set(b))
          if a.get(f) != b.get(f)}


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
  """'optimizer.learning_rate: 0.003 -> 0.5; seed: 0 -> 1'."""
  return '; '.join(f'{f}: {a!r} -> {b!r}' for f, (a, b) in changes.items())


def _is_identity(field: str) -> bool:
  """A field of `experiment_identity.IDENTITY_FIELDS` (or inside one)."""
  if field.startswith('model.') and field.split('.', 1)[1] in (
      experiment_identity.IMPLEMENTATION_OPTIONS):
    return False
  return any(field == f or field.startswith(f + '.')
             for f in experiment_identity.IDENTITY_FIELDS)


def read_config(workdir: str) -> dict | None:
  """The workdir's `config.json` as a dict, or None when there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_rerun(config: ml_collections.ConfigDict, workdir: str,
                has_trained: bool, what: str = 'config') -> None:
  """Raises `RecipeChangeError` when `config` changes the recipe that
  trained in `workdir` and does not opt in; writes nothing.

  Args:
    config: the config about to run.
    workdir: its workdir.
    has_trained: whether the workdir holds a checkpoint (without one,
      nothing trained persists and any config may start afresh).
    what: how the message names the config ('config', 'sweep base config').
  """
  old = read_config(workdir)
  if old is None or not has_trained:
    return
  changes = recipe_changes(old, config)
  identity = {f: v for f, v in changes.items() if _is_identity(f)}
  if identity:  # other arrays: no opt-in can continue these checkpoints.
    raise RecipeChangeError(
        f'{workdir} holds a different experiment ({describe(identity)}). '
        'Nothing was changed. Use a new --workdir, or delete '
        f'{os.path.join(workdir, "checkpoints")} to start this one afresh.')
  if not changes or config.accept_recipe_change:
    return
  raise RecipeChangeError(
      f'{workdir} was trained with another {what}: {describe(changes)}. '
      'Nothing was changed. Use a new --workdir, or rerun with '
      '--config.accept_recipe_change=True to continue with the new values '
      f'(recorded with the step in {os.path.join(workdir, HISTORY_FILE)}).')


def record(config: ml_collections.ConfigDict, workdir: str,
           step: int) -> None:
  """Writes `config.json` for a run that starts (or resumes) at `step`.

  A new workdir gets the config. A rerun with the same config leaves the
  file untouched (byte for byte); one with changes (already accepted by
  `check_rerun`) keeps the first config as `config.original.json`, appends
  `{"step", "time", "changes": {field: [old, new]}}` to
  `config_history.jsonl` and writes the config now in effect.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  old = read_config(workdir)
  text = config.to_json_best_effort(indent=2)
  if old is not None:
    changes = all_changes(old, config)
    if not changes:
      return
    if step > 0:
      original = os.path.join(workdir, ORIGINAL_CONFIG_FILE)
      if not os.path.exists(original):
        shutil.copyfile(path, original)
      with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
        f.write(json.dumps(dict(
            step=step, time=time.strftime('%Y-%m-%dT%H:%M:%S'),
            changes={k: list(v) for k, v in changes.items()})) + '\n')
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
