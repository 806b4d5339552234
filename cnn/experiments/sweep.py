"""Sweeps: one config file, many runs, each in its own sub-directory.

A sweep config is an ordinary config file with one more function,
`get_sweep()`, returning the members as a list of override dicts built with
the helpers below (the vocabulary of Google's JAX codebases: `hyper.sweep`,
`product`, `zipit`, `chainit`, `fixed`):

  def get_sweep():
    return sweep.product(
        sweep.axis('model_name', ['plain20', 'resnet20']),
        sweep.axis('seed', range(3)))

`python main.py --config=configs/<study>.py --workdir=DIR` runs every member
into `DIR/<name>/`. A member's name comes from its overrides
(`plain20-seed1`), never from its position, so adding members later renames
nothing. All state is in files:

  DIR/sweep.json          the definition and the member list (written first)
  DIR/<name>/config.json, metrics.jsonl, checkpoints/   the spine's run files
  DIR/<name>/result.json  status ('completed', 'diverged' (a non-finite
                          loss or gradient: a result of the recipe, kept,
                          not retried) or 'failed' + message) and
                          provenance (git commit, versions, devices), written
                          atomically when the member ends

A completed or diverged member is skipped, a half-finished one resumes from
its checkpoint, a failed one is tried again. `cnn.experiments.sweep_results`
aggregates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, Sequence

import ml_collections
from absl import logging

from cnn.common import errors
from cnn.training import recipe

Overrides = dict[str, Any]
PLAN_FILE = 'sweep.json'
LOCK_DIR = '.locks'
RESULT_FILE = 'result.json'
# Statuses a member ends in: skipped by a rerun (a failed one is retried).
FINAL_STATUSES = ('completed', 'diverged')


# The repository root (cnn/experiments/sweep.py is two levels down): git
# provenance and the directory cluster jobs start in.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class SweepError(errors.UserError):
  """A sweep definition or workdir that cannot be run as given."""


# ------------------------------------------------------------------ helpers


def axis(key: str, values: Iterable[Any]) -> list[Overrides]:
  """One member per value of the dotted config field `key`."""
  return [{key: v} for v in values]


def fixed(key: str, value: Any) -> list[Overrides]:
  """A one-member sweep setting `key` (to combine with `product`)."""
  return [{key: value}]


def product(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """Every combination, the last sweep varying fastest."""
  return [_merge(combo) for combo in itertools.product(*sweeps)]


def zipit(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """Member i of every sweep together; the sweeps must be equally long."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise SweepError(f'zipit needs sweeps of equal length, got {lengths}.')
  return [_merge(combo) for combo in zip(*sweeps)]


def chainit(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """The members of each sweep, one after the other."""
  return [dict(m) for s in sweeps for m in s]


def _merge(dicts: Iterable[Overrides]) -> Overrides:
  merged: Overrides = {}
  for d in dicts:
    for k, v in d.items():
      if k in merged and merged[k] != v:
        raise SweepError(f'Two sweep axes set {k!r} ({merged[k]!r}, {v!r}).')
      merged[k] = v
  return merged


def member_name(overrides: Overrides) -> str:
  """A readable, stable directory name: `model_name`'s value as is, every
  other field as its last dotted part + value ('plain56-seed1',
  'resnet20-width0.5-seed0'); characters outside [A-Za-z0-9._=+-] become
  '_'."""
  parts = []
  for key, value in overrides.items():
    text = (f'{value:g}' if isinstance(value, float) else
            'x'.join(map(str, value)) if isinstance(value, (tuple, list))
            else str(value))
    parts.append(text if key == 'model_name' else key.split('.')[-1] + text)
  return re.sub(r'[^A-Za-z0-9._=+-]', '_', '-'.join(parts)) or 'base'


# ------------------------------------------------------------------ members


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a sweep: its directory name and its config overrides."""

  name: str
  overrides: Overrides


def members_of(sweep: Sequence[Overrides],
               name_fn: Callable[[Overrides], str] = member_name
               ) -> list[Member]:
  """Names every member; two members with the same name are an error."""
  members, seen = [], {}
  for overrides in sweep:
    name = name_fn(overrides)
    if name in seen:
      raise SweepError(
          f'Two sweep members are both named {name!r} ({seen[name]} and '
          f'{overrides}); make their overrides differ or pass a name '
          'function.')
    seen[name] = overrides
    members.append(Member(name, dict(overrides)))
  return members


def member_config(base: ml_collections.ConfigDict, member: Member
                  ) -> ml_collections.ConfigDict:
  """`base` with the member's overrides applied, locked.

  A `model_name` override also swaps `config.model` for that model's own
  backbone options (`registry.backbone_options`: a plain twin gets
  `residual=False`, another depth its `stage_sizes`), keeping the options
  the base config changed from its own model's defaults (e.g. a `width`
  given on the command line) where the new model has them. An unknown field
  or a value of the wrong type fails naming the member and the field.
  """
  config = ml_collections.ConfigDict(base.to_dict(preserve_field_references
                                                  =True))
  name = member.overrides.get('model_name', base.model_name)
  if name != base.model_name:
    from cnn.models import registry  # pylint: disable=g-import-not-at-top
    base_defaults = registry.backbone_options(base.model_name)
    model = registry.backbone_options(name)
    model.update({k: v for k, v in base.model.items()
                  if k in model and base_defaults.get(k) != v})
    config.model_name = name
    config.model = ml_collections.ConfigDict(model)
  config.lock()
  for dotted, value in member.overrides.items():
    node, parts = config, dotted.split('.')
    try:
      for part in parts[:-1]:
        node = node[part]
      if parts[-1] not in node:
        raise KeyError(parts[-1])
      node[parts[-1]] = value
    except (AttributeError, KeyError) as e:
      valid = sorted(node.keys()) if hasattr(node, 'keys') else []
      raise SweepError(
          f'Sweep member {member.name!r}: unknown config field '
          f'config.{dotted} ({e}); valid fields there: {valid}.') from None
    except TypeError as e:
      raise SweepError(f'Sweep member {member.name!r}: config.{dotted}='
                       f'{value!r} has the wrong type ({e}).') from None
  return config


def select(members: Sequence[Member], name: str) -> Member:
  for m in members:
    if m.name == name:
      return m
  raise SweepError(f'No sweep member {name!r}; members: '
                   f'{[m.name for m in members]}.')


def select_all(members: Sequence[Member], names: str) -> list[Member]:
  """The members of a comma list of names ('a' or 'a,b,c'), in that order."""
  return [select(members, n.strip()) for n in names.split(',') if n.strip()]


# --------------------------------------------------------------------- plan


def _definition(base: ml_collections.ConfigDict, sweep_name: str) -> dict:
  """What makes two sweeps the same sweep: the config file and the base
  config. A rerun may change what `cnn.training.recipe` lets any run change
  (cadences, implementation; raise the training length); another recipe
  needs a new workdir or `accept_recipe_change` (finished members are never
  redone)."""
  return dict(sweep=sweep_name, base=json.loads(base.to_json_best_effort()))


def write_plan(workdir: str, base: ml_collections.ConfigDict,
               sweep_name: str, members: Sequence[Member]) -> None:
  """Writes `sweep.json`, refusing a workdir made by another sweep.

  Members already listed keep their entry (a member whose overrides changed
  under the same name is refused); new members are appended.
  """
  path = os.path.join(workdir, PLAN_FILE)
  definition = _definition(base, sweep_name)
  listed: list[dict] = []
  history: list[dict] = []  # accepted base-config changes, oldest first.
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old['definition']['sweep'] != sweep_name:
      raise SweepError(
          f"{workdir} holds sweep {old['definition']['sweep']!r}; nothing "
          'was changed. Use a new --workdir for this sweep.')
    changes = recipe.recipe_changes(old['definition']['base'], base)
    if changes and not base.accept_recipe_change:
      raise SweepError(
          f'{workdir} holds another base experiment ({recipe.describe(changes)}'
          '); nothing was changed. Use a new --workdir for this sweep, or '
          'rerun with --config.accept_recipe_change=True (each member records '
          'the change with its step).')
    history = old.get('history', [])
    changed = recipe.all_changes(old['definition']['base'], base)
    if changed:
      history.append(dict(time=time.strftime('%Y-%m-%dT%H:%M:%S'),
                          changes={k: list(v) for k, v in changed.items()}))
    listed = old['members']
  by_name = {m['name']: m for m in listed}
  for m in members:
    overrides = json.loads(json.dumps(m.overrides))
    if m.name in by_name and by_name[m.name]['overrides'] != overrides:
      raise SweepError(
          f'Sweep member {m.name!r} in {workdir} was run with overrides '
          f"{by_name[m.name]['overrides']}, now {overrides}; nothing was "
          'changed. Give the new member another name or use a new --workdir.')
    if m.name not in by_name:
      listed.append(dict(name=m.name, overrides=overrides))
      by_name[m.name] = listed[-1]
  os.makedirs(workdir, exist_ok=True)
  write_json_atomically(path, dict(definition=definition, members=listed,
                                   **({'history': history} if history else {})))


def write_json_atomically(path: str, data: Any) -> None:
  """Temp file + rename: a kill leaves the old file or the new one."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_result(member_dir: str) -> dict | None:
  path = os.path.join(member_dir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def provenance() -> dict[str, Any]:
  """Git commit (of the code this process loaded), library versions and
  devices of this process."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  commit, dirty = git_state()
  return dict(git_commit=commit, git_dirty=dirty, jax=jax.__version__,
              flax=flax.__version__, python=sys.version.split()[0],
              backend=jax.default_backend(),
              devices=[str(d) for d in jax.devices()],
              process_count=jax.process_count())


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
  """(commit, dirty) of the repository, read once per process: `run_local`
  reads it before training, so a sweep's results carry the commit of the
  code it runs, not HEAD when each member finished."""
  try:
    commit = subprocess.run(
        ['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
        text=True, timeout=10, check=True).stdout.strip()
    dirty = bool(subprocess.run(
        ['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO,
        capture_output=True, text=True, timeout=10).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    commit, dirty = None, None
  return commit, dirty


# ---------------------------------------------------------------------- run


@dataclasses.dataclass
class SweepOutcome:
  """completed / diverged / failed / preempted: member names; skipped:
  finished ones;
  busy: members another process was running (left to it)."""

  completed: list[str] = dataclasses.field(default_factory=list)
  diverged: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  busy: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  preempted: str | None = None

  @property
  def exit_code(self) -> int:
    return 3 if self.preempted else 1 if self.failed else 0


def run_member(config: ml_collections.ConfigDict, member: Member,
               workdir: str) -> str:
  """Trains one member in `workdir/<name>`; returns its status.

  'completed', 'diverged' and 'failed' are written to result.json;
  'preempted' writes nothing (the checkpoint is saved and a rerun resumes);
  'skipped' means result.json already said completed or diverged; 'busy'
  that another process holds the member's lock (`workdir/.locks/<name>`:
  two processes on one sweep share its members instead of training one
  twice).
  """
  with _member_lock(workdir, member.name) as held:
    if not held:
      return 'busy'
    return _run_locked_member(config, member, workdir)


@contextlib.contextmanager
def _member_lock(workdir: str, name: str) -> Iterator[bool]:
  """An exclusive, non-blocking `flock` on workdir/.locks/<name>; yields
  whether it was acquired. The kernel releases it when the process ends,
  however it ends."""
  lock_dir = os.path.join(workdir, LOCK_DIR)
  os.makedirs(lock_dir, exist_ok=True)
  with open(os.path.join(lock_dir, name), 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


SEGMENTS_FILE = 'segments.jsonl'


def _add_segment(member_dir: str, seconds: float) -> float:
  """Appends a training segment's wall time to the member's
  `segments.jsonl`; returns the total over its segments so far."""
  os.makedirs(member_dir, exist_ok=True)
  path = os.path.join(member_dir, SEGMENTS_FILE)
  with open(path, 'a') as f:
    f.write(json.dumps(dict(seconds=seconds)) + '\n')
  with open(path) as f:
    return sum(json.loads(line)['seconds'] for line in f if line.strip())


def _run_locked_member(config: ml_collections.ConfigDict, member: Member,
                       workdir: str) -> str:
  from cnn.training import train  # pylint: disable=g-import-not-at-top
  member_dir = os.path.join(workdir, member.name)
  previous = read_result(member_dir)
  if previous and previous['status'] in FINAL_STATUSES:
    return 'skipped'
  start = time.time()
  record = dict(name=member.name, overrides=member.overrides)
  try:
    result = train.train_and_evaluate(config, member_dir)
  except train.NonFiniteLossError as e:
    logging.warning('Sweep member %s diverged: %s', member.name, e)
    record.update(status='diverged', diverged_at_step=e.step,
                  error=f'{type(e).__name__}: {e}')
  except Exception as e:  # pylint: disable=broad-except
    # Recorded and reported; the sweep goes on with the next member.
    logging.error('Sweep member %s failed:\n%s', member.name,
                  traceback.format_exc())
    record.update(status='failed', error=f'{type(e).__name__}: {e}')
  else:
    if result.status == 'preempted':
      _add_segment(member_dir, time.time() - start)
      return 'preempted'
    record.update(status='completed', step=result.step,
                  final_metrics=result.metrics)
  # Every segment of a resumed member counts (a SIGKILLed one cannot say).
  record.update(wall_time_s=_add_segment(member_dir, time.time() - start),
                **provenance())
  os.makedirs(member_dir, exist_ok=True)
  write_json_atomically(os.path.join(member_dir, RESULT_FILE), record)
  return record['status']


def pack_groups(members: Sequence[Member],
                configs: Sequence[ml_collections.ConfigDict], pack: int
                ) -> list[list[int]]:
  """Indices of the members that train together, at most `pack` a group.

  Members whose configs differ only in what keeps the compiled program's
  shapes (`cnn.training.packed.packing_key`: the seed) share a group, in
  order of first appearance; `pack=1` gives one member a group, in sweep
  order (today's behaviour).
  """
  if pack < 1:
    raise SweepError(f'--pack must be >= 1, got {pack}.')
  if pack == 1:
    return [[i] for i in range(len(members))]
  from cnn.training import packed  # pylint: disable=g-import-not-at-top
  by_key: dict[str, list[int]] = {}
  for i, config in enumerate(configs):
    by_key.setdefault(packed.packing_key(config), []).append(i)
  return [indices[j:j + pack] for indices in by_key.values()
          for j in range(0, len(indices), pack)]


def run_group(configs: Sequence[ml_collections.ConfigDict],
              members: Sequence[Member], workdir: str) -> dict[str, str]:
  """Trains `members` (one program's worth, `pack_groups`) and returns
  {name: status} as `run_member` would for each.

  More than one unfinished member: they train packed, in one compiled step
  over stacked states (`cnn.training.packed`), each writing exactly the
  files it would write alone. A group that cannot be packed (members at
  different steps after a kill) or that fails (a NaN in one member) falls
  back to its members one by one, which resume from their checkpoints: a
  failure stays the failing member's own.
  """
  statuses: dict[str, str] = {}
  with contextlib.ExitStack() as stack:
    todo = []
    for config, member in zip(configs, members, strict=True):
      if not stack.enter_context(_member_lock(workdir, member.name)):
        statuses[member.name] = 'busy'
      elif (read_result(os.path.join(workdir, member.name)) or {}).get(
          'status') in FINAL_STATUSES:
        statuses[member.name] = 'skipped'
      else:
        todo.append((config, member))
    if len(todo) > 1:
      packed_statuses = _run_packed(todo, workdir)
      if packed_statuses is not None:
        return {**statuses, **packed_statuses}
    for config, member in todo:
      statuses[member.name] = _run_locked_member(config, member, workdir)
      if statuses[member.name] == 'preempted':
        break
  return statuses


def _run_packed(todo, workdir: str) -> dict[str, str] | None:
  """Statuses of a packed run of `todo` [(config, member)], or None when
  it must run member by member (see `run_group`)."""
  # pylint: disable=g-import-not-at-top
  from cnn.training import packed, train
  names = [m.name for _, m in todo]
  start = time.time()
  try:
    results = train.train_and_evaluate_packed(
        [c for c, _ in todo], [os.path.join(workdir, n) for n in names])
  except packed.PackingError as e:
    logging.info('Members %s run one by one: %s', names, e)
    return None
  except Exception:  # pylint: disable=broad-except
    logging.warning('Packed members %s failed; each runs alone (from its '
                    'checkpoint) so a failure is its own:\n%s', names,
                    traceback.format_exc())
    return None
  # Amortised: a member's share of the group's time.
  seconds = (time.time() - start) / len(todo)
  statuses = {}
  for (_, member), result in zip(todo, results, strict=True):
    member_dir = os.path.join(workdir, member.name)
    if result.status == 'preempted':
      _add_segment(member_dir, seconds)
      statuses[member.name] = 'preempted'
      continue
    record = dict(name=member.name, overrides=member.overrides,
                  status='completed', step=result.step,
                  final_metrics=result.metrics, packed_with=names,
                  wall_time_s=_add_segment(member_dir, seconds),
                  **provenance())
    write_json_atomically(os.path.join(member_dir, RESULT_FILE), record)
    statuses[member.name] = 'completed'
  return statuses


def run_local(base: ml_collections.ConfigDict, members: Sequence[Member],
              workdir: str, pack: int = 1) -> SweepOutcome:
  """Runs every unfinished member in this process: `pack` (or fewer) of the
  members that differ only in their seed at a time, in one compiled step
  (`pack_groups`); with pack=1 one after the other (members with equal
  shapes still share compiled steps; data is loaded once)."""
  configs = [member_config(base, m) for m in members]  # all fail first.
  git_state()  # the commit of the code about to run (`provenance`).
  outcome = SweepOutcome()
  for group in pack_groups(members, configs, pack):
    for m in (members[i] for i in group):
      logging.info('Sweep member %s: %s', m.name, m.overrides)
    statuses = run_group([configs[i] for i in group],
                         [members[i] for i in group], workdir)
    for name, status in statuses.items():
      if status == 'preempted':
        outcome.preempted = outcome.preempted or name
      elif status == 'failed':
        outcome.failed[name] = read_result(
            os.path.join(workdir, name))['error']
      else:
        getattr(outcome, status).append(name)
    if outcome.preempted:
      break
  return outcome


def unfinished(members: Sequence[Member], workdir: str) -> list[Member]:
  return [m for m in members
          if (read_result(os.path.join(workdir, m.name)) or {}).get('status')
          not in FINAL_STATUSES]


def submit(members: Sequence[Member], workdir: str, command: list[str],
           executor: Any, groups: Sequence[Sequence[int]] | None = None
           ) -> list[Any]:
  """Hands unfinished members to a submitit executor: one job (an array
  task on SLURM) per group of `groups` (indices into `members`, from
  `pack_groups`; default one member a job), each running `command +
  ['--member=NAME[,NAME...]']` (`python main.py` with the same flags, so
  the same --pack) from the repository root.

  Returns the submitit jobs.
  """
  todo = {m.name for m in unfinished(members, workdir)}
  groups = groups if groups is not None else [[i] for i in range(len(members))]
  names = [[members[i].name for i in g if members[i].name in todo]
           for g in groups]
  names = [n for n in names if n]
  commands = [[*command, f'--member={",".join(n)}'] for n in names]
  with executor.batch():
    jobs = [executor.submit(_run_command, c, REPO) for c in commands]
  for n, job in zip(names, jobs, strict=True):
    logging.info('Sweep member(s) %s: job %s', n, job.job_id)
  return jobs


def _run_command(command: list[str], cwd: str) -> int:
  """What a cluster job runs: the member's own `main.py` process."""
  returncode = subprocess.run(command, cwd=cwd).returncode
  if returncode not in (0, 3):
    raise RuntimeError(f'{command} exited with status {returncode}.')
  return returncode


def summary_line(outcome: SweepOutcome, members: Sequence[Member],
                 workdir: str) -> str:
  left = [m.name for m in unfinished(members, workdir)]
  parts = [f'{len(members) - len(left)} of {len(members)} members completed '
           f'({len(outcome.completed)} now, {len(outcome.skipped)} before)']
  if outcome.diverged:
    parts.append(f'diverged (a result, not retried): {outcome.diverged}')
  if outcome.failed:
    parts.append('failed: ' + '; '.join(f'{k} ({v})'
                                        for k, v in outcome.failed.items()))
  if outcome.busy:
    parts.append(f'left to the process running them: {outcome.busy}')
  if outcome.preempted:
    parts.append(f'stopped during {outcome.preempted}: rerun the same '
                 'command to continue')
  if left:
    parts.append(f'still missing: {left}')
  return '. '.join(parts) + '.'
