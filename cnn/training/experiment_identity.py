"""What a checkpoint is a checkpoint of: the experiment's identity.

A checkpoint's metadata stores `experiment_identity(config)`: the config
fields that decide what its arrays mean (model and its options, dtype, data
set, optimizer and schedule names). `identity_check(config, workdir)` is the
`check_meta` callback of `Checkpointer.restore_latest`: a workdir whose
checkpoint has another identity holds another experiment and is refused,
never overwritten. Everything else (learning rate, epochs, batch size, how
convolutions are computed) may change between runs of one experiment.

`cnn.training.checkpoint` re-exports all three names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from cnn.common import errors

# Fields that decide what a checkpoint holds: a workdir whose checkpoint
# differs in these is another experiment and is never overwritten.
IDENTITY_FIELDS = ('model_name', 'model', 'dtype', 'input.dataset',
                   'input.image_size', 'optimizer.name', 'schedule.name')

# Backbone options that change how the network is computed, not what it is:
# a run may resume with them changed.
IMPLEMENTATION_OPTIONS = ('remat',)


class CheckpointMismatchError(errors.UserError):
  """The workdir holds a checkpoint of a different experiment."""


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """`config.a.b` for 'a.b' (a section as a plain dict); KeyError if absent."""
  for part in dotted.split('.'):
    config = config[part]
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return config


def experiment_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `IDENTITY_FIELDS` of `config`, as stored in a checkpoint's meta.

  Returns:
    {dotted field name: value}; `model` without `IMPLEMENTATION_OPTIONS`,
    and every value as it reads back from JSON (tuples become lists).
  """
  identity = {f: _field(config, f) for f in IDENTITY_FIELDS}
  identity['model'] = {k: v for k, v in identity['model'].items()
                       if k not in IMPLEMENTATION_OPTIONS}
  return json.loads(json.dumps(identity))


def _with_added_defaults(found: dict[str, Any], expected: dict[str, Any],
                         model_name: str) -> dict[str, Any]:
  """The checkpoint's model options, plus each option the model gained
  since it was saved (absent from `found`) where the config asks for the
  option's default: such a checkpoint is of the same network (LeNet-5
  before `connectivity` existed is `connectivity='conv'`)."""
  from cnn.models import registry  # pylint: disable=g-import-not-at-top
  try:
    defaults = json.loads(json.dumps(registry.backbone_options(model_name)))
  except errors.UserError:
    return found  # an unknown model: compared as stored.
  added = {k: v for k, v in expected.items()
           if k not in found and k in defaults and defaults[k] == v}
  return {**found, **added}


def identity_check(config: ml_collections.ConfigDict, workdir: str
                   ) -> Callable[[dict[str, Any]], None]:
  """A `check_meta` for `Checkpointer.restore_latest` that refuses others.

  Args:
    config: the experiment about to run.
    workdir: its workdir (named in the error message).

  Returns:
    check(meta), which raises `CheckpointMismatchError` (listing each
    differing field) when `meta['identity']` is not the identity of
    `config`.
  """
  expected = experiment_identity(config)

  def check(meta: dict[str, Any]) -> None:
    found = dict(meta.get('identity', {}))
    if isinstance(found.get('model'), dict):
      found['model'] = _with_added_defaults(found['model'], expected['model'],
                                            expected['model_name'])
    diffs = {k: (found.get(k), v) for k, v in expected.items()
             if found.get(k) != v}
    if diffs:
      lines = '; '.join(f'{k}: checkpoint has {a!r}, config asks {b!r}'
                        for k, (a, b) in diffs.items())
      raise CheckpointMismatchError(
          f'{workdir} holds checkpoints of a different experiment ({lines}). '
          'Nothing was changed. Use a new --workdir, or delete '
          f'{os.path.join(workdir, "checkpoints")} to start this one afresh.')

  return check
