"""Helpers for locked `ml_collections` configs: readable errors for typos."""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections


def load_config_module(path: str):
  """The module of a config file (`path`, without any ':ARG')."""
  path = path.partition(':')[0]
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file {path!r} does not exist; configs '
                            f'available: {sorted(os.listdir("configs"))}.'
                            if os.path.isdir('configs') else
                            f'Config file {path!r} does not exist.')
  spec = importlib.util.spec_from_file_location('_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file (as `config_flags` does)."""
  arg = path.partition(':')[2]
  module = load_config_module(path)
  return module.get_config(arg) if arg else module.get_config()


def explain_override_error(config: ml_collections.ConfigDict,
                           dotted_keys: list[str]) -> str | None:
  """Names the first override key that is not a field, with the valid ones.

  Args:
    config: the config the overrides apply to.
    dotted_keys: field paths given on the command line ('optimizer.lr').

  Returns:
    A message, or None if every key exists.
  """
  for dotted in dotted_keys:
    node, path = config, []
    for part in dotted.split('.'):
      if not isinstance(node, ml_collections.ConfigDict):
        break
      if part not in node:
        where = 'config' + ''.join('.' + p for p in path)
        valid = sorted(node.keys())
        close = difflib.get_close_matches(part, valid, n=1)
        hint = f' Did you mean {where}.{close[0]}?' if close else ''
        return (f'Unknown config field {where}.{part}.{hint} Valid fields of '
                f'{where}: {valid}.')
      node, path = node[part], path + [part]
  return None
