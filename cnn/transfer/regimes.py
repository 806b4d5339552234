"""Which parameters train, and how fast: transfer regimes as rules.

A rule list maps parameter paths ('backbone/stage2_block1/conv1/kernel',
'head/bias') to a learning-rate multiplier or to `None` (frozen), as
big_vision's `config.schedule = [(regex, schedule), ...]`: the first rule
whose regex matches the whole path decides; every parameter must be covered
and every rule must match something, else a `UserError` before training.
`optimizer` turns the rules into `optax.multi_transform`: each multiplier
group gets the configured optimizer followed by `optax.scale(multiplier)`
(so weight decay and momentum scale with it), frozen groups
`optax.set_to_zero()` — no update, no decay, no optimiser state.

Regimes (`config.transfer.regime`), for a network started from trained
weights (`config.init_from`):
  full                everything trains at the configured learning rate;
  fine_tune           the head at the configured rate (the lecture's 0.01),
                      the last `fine_tune_groups` backbone parameter groups
                      (default 2) at `pretrained_lr_mult` times it (0.1:
                      0.001), the rest frozen (fine_tune_groups = -1: no
                      group frozen, every one at the lower rate): freezing
                      and a lower rate at once;
  freeze_first        the first `freeze_groups` backbone groups frozen,
                      everything after them and the head trained at the
                      configured rate: freezing alone (the lectures' "little
                      data, different domain: fix the first layers, train
                      the rest"; Yosinski et al.'s AnB);
  feature_extraction  the backbone frozen, only the new head trains;
  scratch             `full` from a random initialisation (the baseline:
                      `init_from` is not loaded).
`config.transfer.rules`, when not empty, replaces the regime's rules.
With `config.transfer.freeze_batch_stats` the batch norms whose parameters
are all frozen (`frozen_norms`) run in eval mode inside the training step
(`forms.batch_norms_in_eval_mode`): a frozen group computes exactly the
features it computed on the source.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import optax

from cnn.common import errors

REGIMES = ('full', 'fine_tune', 'freeze_first', 'feature_extraction',
           'scratch')
Rule = tuple[str, float | None]


def path_names(tree) -> list[str]:
  """'a/b/c' names of the leaves of a nested dict, in flattening order."""
  return ['/'.join(str(k.key) for k in path) for path, _ in
          jax.tree_util.tree_flatten_with_path(tree)[0]]


def group_regex(group: str) -> str:
  """Matches the parameters of backbone group `group` ('stage1' matches
  'stage1_block2/...' but not 'stage10_...')."""
  return f'backbone/{re.escape(group)}(_[^/]*)?/.*'


def regime_rules(transfer_config, groups: Sequence[str]) -> list[Rule]:
  """The rules of `transfer_config.regime` (or its explicit `rules`);
  `groups`: the backbone's parameter groups in the order the network applies
  them (`base.backbone_groups`)."""
  if transfer_config.rules:
    return [(str(r), None if m is None else float(m))
            for r, m in transfer_config.rules]
  regime = transfer_config.regime
  if regime not in REGIMES:
    raise errors.UserError(
        f'config.transfer.regime must be one of {list(REGIMES)}, got '
        f'{regime!r}.')
  if regime in ('full', 'scratch'):
    return [('.*', 1.0)]
  if regime == 'feature_extraction':
    return [('head/.*', 1.0), ('.*', None)]
  groups = list(groups)
  if regime == 'freeze_first':
    k = transfer_config.freeze_groups
    if not 1 <= k < len(groups):
      raise errors.UserError(
          f'config.transfer.freeze_groups={k}: choose 1..{len(groups) - 1} '
          f'(the first k of the groups {groups} frozen); for all of them use '
          "regime='feature_extraction', for none regime='full'.")
    return ([('head/.*', 1.0)] + [(group_regex(g), 1.0) for g in groups[k:]]
            + [('.*', None)])
  k = transfer_config.fine_tune_groups
  if not -1 <= k <= len(groups) or k == 0:
    raise errors.UserError(
        f'config.transfer.fine_tune_groups={k}: choose 1..{len(groups)} (the '
        f'last k of the groups {groups}) or -1 for all of them; for none '
        "use regime='feature_extraction'.")
  trained = groups if k == -1 else groups[len(groups) - k:]
  mult = float(transfer_config.pretrained_lr_mult)
  frozen = [('.*', None)] if len(trained) < len(groups) else []
  return ([('head/.*', 1.0)] + [(group_regex(g), mult) for g in trained] +
          frozen)


def rule_label(multiplier: float | None) -> str:
  return 'frozen' if multiplier is None else f'lr_x{multiplier:g}'


def param_labels(params, rules: Sequence[Rule]) -> Any:
  """A pytree like `params` of `rule_label`s; fails on an uncovered
  parameter, a rule that matches nothing, or a multiplier <= 0."""
  names = path_names(params)
  compiled = [(re.compile(r), m) for r, m in rules]
  for regex, m in rules:
    if m is not None and m <= 0:
      raise errors.UserError(
          f'Rule {regex!r}: learning-rate multiplier must be > 0 (got {m}); '
          'use None to freeze.')
  labels, used = [], set()
  for name in names:
    for i, (regex, m) in enumerate(compiled):
      if regex.fullmatch(name):
        labels.append(rule_label(m))
        used.add(i)
        break
    else:
      raise errors.UserError(
          f'Parameter {name!r} is matched by no rule of {list(rules)}; add '
          "a catch-all rule such as ('.*', None) at the end.")
  unused = [rules[i][0] for i in range(len(rules)) if i not in used]
  if unused:
    raise errors.UserError(
        f'Rule(s) {unused} match no parameter (names look like '
        f'{names[:3]}); fix the regex or remove the rule.')
  return jax.tree.unflatten(jax.tree.structure(params), labels)


def optimizer(make_tx, labels) -> optax.GradientTransformationExtraArgs:
  """`optax.multi_transform` of `make_tx()` scaled per label, frozen labels
  set to zero. Without any frozen or scaled group it is `make_tx()` itself
  (the same optimiser state as before transfer existed)."""
  names = sorted(set(jax.tree.leaves(labels)))
  if names == ['lr_x1']:
    return make_tx()
  transforms = {}
  for name in names:
    if name == 'frozen':
      transforms[name] = optax.set_to_zero()
    else:
      mult = float(name[len('lr_x'):])
      transforms[name] = (make_tx() if mult == 1.0 else
                          optax.chain(make_tx(), optax.scale(mult)))
  return optax.multi_transform(transforms, labels)


def frozen_norms(batch_stats, labels) -> frozenset[tuple[str, ...]]:
  """Paths of the modules that hold running statistics and whose parameters
  are all frozen: with `config.transfer.freeze_batch_stats` they run in
  eval mode (`forms.batch_norms_in_eval_mode`)."""
  frozen, trained = set(), set()
  for name, label in zip(path_names(labels), jax.tree.leaves(labels)):
    module = tuple(name.split('/')[:-1])
    (frozen if label == 'frozen' else trained).add(module)
  with_stats = {tuple(name.split('/')[:-1])
                for name in path_names(batch_stats)}
  return frozenset(with_stats & (frozen - trained))
