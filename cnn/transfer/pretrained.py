"""`config.init_from`: start a run from trained weights.

As big_vision's `load(init_params, checkpoint, dont_load=[regexes])`: the
loaded tree is merged into the freshly initialised one. Parameters *and*
batch-norm statistics are carried over; every name of the model must be
found in the checkpoint or be matched by `config.init_dont_load` (regexes,
full match, over 'params/backbone/stem_conv/kernel'-style names; the head
is added when its shape differs from the checkpoint's, i.e. another class
count), and every name of the checkpoint must be used or matched, else the
run fails before training with the unmatched names on both sides. A shape
that differs is an error naming the parameter, never a silent skip.

Sources: a training workdir of ours (its latest checkpoint, read with
`cnn.training.checkpoint.load_arrays` and checked against the fingerprint saved with
it; a workdir of another architecture is refused) or a torchvision
`state_dict` file (`.pth`, `.pt`, `.npz`: `cnn.transfer.torch_convert`).
`config.transfer.copy_groups = n` loads only the first n backbone parameter
groups (Yosinski et al. 2014); the rest keep their random initialisation.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import numpy as np
from absl import logging

from cnn.common import errors
from cnn.training import checkpoint as checkpoint_lib
from cnn.transfer import regimes

TORCH_SUFFIXES = ('.pth', '.pt', '.npz')
HEAD_REGEX = r'(params|batch_stats)/head/.*'


def _flat(tree) -> dict[str, Any]:
  return dict(zip(regimes.path_names(tree), jax.tree.leaves(tree)))


def _source_variables(init_from: str, model_name: str,
                      num_classes: int) -> dict[str, Any]:
  """{'params', 'batch_stats'} (numpy) of a workdir or a state_dict file."""
  path = os.path.expanduser(init_from)
  if not os.path.exists(path):
    raise errors.UserError(
        f'config.init_from={init_from!r} does not exist: give a training '
        f'workdir or a state_dict file ({", ".join(TORCH_SUFFIXES)}).')
  if os.path.isfile(path):
    if not path.endswith(TORCH_SUFFIXES):
      raise errors.UserError(
          f'config.init_from={init_from!r}: a file must be a PyTorch '
          f'state_dict ({", ".join(TORCH_SUFFIXES)}); a workdir is a '
          'directory.')
    from cnn.transfer import torch_convert  # torch only for these files.
    return torch_convert.from_torch_state_dict(
        model_name, torch_convert.load_state_dict_file(path),
        num_classes=num_classes)
  return _workdir_variables(path, model_name)


def _workdir_variables(workdir: str, model_name: str) -> dict[str, Any]:
  config_file = os.path.join(workdir, 'config.json')
  try:
    with open(config_file) as f:
      source_model = json.load(f).get('model_name')
  except FileNotFoundError:
    raise errors.UserError(
        f'config.init_from={workdir!r} is not a training workdir (no '
        'config.json): give the --workdir of a finished run.') from None
  if source_model != model_name:
    raise errors.UserError(
        f'config.init_from={workdir!r} holds a {source_model!r} network, not '
        f'{model_name!r}: set --config.model_name (and its config) to match, '
        'or start from another workdir.')
  return checkpoint_lib.load_variables(workdir)[1]


def _copy_groups_regexes(groups: list[str], copy_groups: int) -> list[str]:
  """dont_load regexes for every backbone group after the first n (`groups`
  in the order the network applies them)."""
  if copy_groups < 0:
    return []
  if copy_groups > len(groups):
    raise errors.UserError(
        f'config.transfer.copy_groups={copy_groups}, but the network has '
        f'{len(groups)} groups {groups}: choose 0..{len(groups)} or -1.')
  return [f'(params|batch_stats)/{regimes.group_regex(g)}'
          for g in groups[copy_groups:]] + [HEAD_REGEX]


def merge(loaded: dict[str, Any], fresh: dict[str, Any],
          dont_load: list[str]) -> dict[str, Any]:
  """`fresh` with every leaf not matched by `dont_load` taken from `loaded`.

  Args:
    loaded, fresh: {'params': ..., 'batch_stats': ...} nested dicts.
    dont_load: regexes (full match) of names that keep their fresh value.

  Raises:
    UserError: names only on one side (listed), or a shape mismatch.
  """
  regexes = [re.compile(r) for r in dont_load]
  skip = lambda name: any(r.fullmatch(name) for r in regexes)
  have = {k: v for k, v in _flat(loaded).items() if not skip(k)}
  want = {k: v for k, v in _flat(fresh).items() if not skip(k)}
  missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  if missing or extra:
    raise errors.UserError(
        f'init_from does not fit the model: {len(missing)} model name(s) not '
        f'in the checkpoint {missing[:8]}, {len(extra)} checkpoint name(s) '
        f'not in the model {extra[:8]}; add regexes to config.init_dont_load '
        'for the names to leave freshly initialised.')
  for name, value in want.items():
    if tuple(np.shape(have[name])) != tuple(value.shape):
      raise errors.UserError(
          f'init_from: {name} has shape {tuple(np.shape(have[name]))} in the '
          f'checkpoint but {tuple(value.shape)} in the model; add it to '
          'config.init_dont_load to initialise it afresh.')

  def pick(path, leaf):
    name = '/'.join(str(k.key) for k in path)
    return (np.asarray(have[name], leaf.dtype) if name in have else leaf)

  return jax.tree_util.tree_map_with_path(pick, fresh)


def load_pretrained(config, fresh: dict[str, Any], groups: list[str],
                    labels: Any = None) -> dict[str, Any]:
  """The variables to start `config`'s run from: `fresh` (numpy or device
  arrays, {'params', 'batch_stats'}) merged with `config.init_from`;
  `groups`: the backbone's parameter groups in application order
  (`base.backbone_groups`, for `config.transfer.copy_groups`); `labels`:
  each parameter's training rule (`regimes.param_labels`), for the table
  of what was done (logged) and the check that nothing re-initialised is
  frozen."""
  num_classes = fresh['params']['head']['bias'].shape[0]
  loaded = _source_variables(config.init_from, config.model_name,
                             num_classes)
  loaded = {'params': loaded['params'],
            'batch_stats': loaded.get('batch_stats') or {}}
  reasons = [(r, 'init_dont_load') for r in config.init_dont_load]
  head = loaded['params'].get('head', {})
  if head.get('bias') is not None and np.shape(head['bias'])[0] != num_classes:
    reasons.append((HEAD_REGEX, f'new head: {np.shape(head["bias"])[0]} -> '
                                f'{num_classes} classes'))
  copy_groups = config.transfer.copy_groups
  reasons += [(r, f'copy_groups={copy_groups}')
              for r in _copy_groups_regexes(groups, copy_groups)]
  merged = merge(loaded, fresh, [r for r, _ in reasons])
  if labels is not None:
    rows = transfer_table(fresh, reasons, labels)
    check_no_frozen_fresh(rows, config.init_from)
    logging.info('Transfer from %s:\n%s', config.init_from, format_table(rows))
  return merged


def _module(name: str) -> str:
  """'params/backbone/stage1_block0/conv1/kernel' -> 'backbone/stage1_block0',
  'params/head/kernel' -> 'head'."""
  parts = name.split('/')[1:-1]  # no collection, no leaf name.
  return '/'.join(parts[:2])


def transfer_table(fresh: dict[str, Any], reasons: list[tuple[str, str]],
                   labels: Any) -> list[dict[str, Any]]:
  """What `init_from` did to each top module's parameters.

  Args:
    fresh: the model's variables ({'params', 'batch_stats'}).
    reasons: (regex over 'params/...' names, why) of what is not loaded.
    labels: `regimes.param_labels(fresh['params'], rules)`.

  Returns:
    One dict per (module, origin, training) in forward order: `module`,
    `params` (count), `origin` ('loaded' or 're-initialised: <why>'),
    `training` ('frozen' or 'lr_x<multiplier>').
  """
  compiled = [(re.compile(r), why) for r, why in reasons]
  names = regimes.path_names(fresh['params'])
  rows: dict[tuple[str, str, str], dict[str, Any]] = {}
  for name, leaf, label in zip(names, jax.tree.leaves(fresh['params']),
                               jax.tree.leaves(labels), strict=True):
    full = f'params/{name}'
    why = next((w for r, w in compiled if r.fullmatch(full)), None)
    origin = 'loaded' if why is None else f're-initialised: {why}'
    key = (_module(full), origin, label)
    row = rows.setdefault(key, dict(module=key[0], params=0, origin=origin,
                                    training=label))
    row['params'] += int(np.prod(np.shape(leaf)))
  return list(rows.values())


def check_no_frozen_fresh(rows: list[dict[str, Any]], init_from: str) -> None:
  """A re-initialised parameter that is also frozen would stay random: an
  error naming the modules, not a silently random frozen layer."""
  bad = [r['module'] for r in rows
         if r['origin'] != 'loaded' and r['training'] == 'frozen']
  if bad:
    raise errors.UserError(
        f'init_from={init_from!r}: {bad} are re-initialised and frozen, so '
        'they would stay random; train them (config.transfer.regime or '
        'rules) or load them (config.init_dont_load, copy_groups).')


def format_table(rows: list[dict[str, Any]]) -> str:
  """The table logged at start: module, parameters, origin, training."""
  width = max([len(r['module']) for r in rows] + [6])
  lines = [f'{"module":<{width}}  {"params":>10}  {"training":<10}  origin']
  lines += [f'{r["module"]:<{width}}  {r["params"]:>10,}  '
            f'{r["training"]:<10}  {r["origin"]}' for r in rows]
  return '\n'.join(lines)
