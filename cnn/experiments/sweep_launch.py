"""Running a sweep config from `main.py`: here, one member, or on SLURM.

The launcher options (`--launcher`, `--slurm_*`) live here, beside the code
they steer; `main.py` only calls `run`.

    main.py --config=configs/depth_study_fmnist.py --workdir=W              # every member here
    main.py ... --member=plain56-seed1                                      # one member
    main.py ... --launcher=slurm --slurm_partition=gpu --slurm_gpus_per_node=1
"""

from __future__ import annotations

import inspect
import os
import sys

from absl import flags

LAUNCHERS = ('local', 'slurm', 'submitit_local')

flags.DEFINE_enum('launcher', 'local', LAUNCHERS,
                  'Sweep configs: local (members one after the other in this '
                  'process), slurm (a submitit job array, one task per '
                  'unfinished member), submitit_local (the same jobs as local '
                  'processes, for testing).')
flags.DEFINE_string('slurm_partition', None, '--launcher=slurm: partition.')
flags.DEFINE_integer('slurm_timeout_min', 24 * 60,
                     '--launcher=slurm: time limit of each member job.')
flags.DEFINE_integer('slurm_gpus_per_node', 0,
                     '--launcher=slurm: GPUs of each member job.')
flags.DEFINE_integer('slurm_array_parallelism', 64,
                     '--launcher=slurm: member jobs running at once.')
flags.DEFINE_integer('pack', None,
                     'Sweep configs: train at most this many members that '
                     'differ only in their seed together, in one compiled '
                     'step (1 = one after the other). Default: the config '
                     "file's PACK (what it was measured to pay), else 1. "
                     'Under --launcher=slurm, one array task per group.')

FLAGS = flags.FLAGS


def _executor(workdir: str):
  import submitit  # pylint: disable=g-import-not-at-top
  folder = os.path.join(workdir, 'submitit', '%j')
  if FLAGS.launcher == 'submitit_local':
    return submitit.LocalExecutor(folder=folder)
  executor = submitit.AutoExecutor(folder=folder)
  executor.update_parameters(
      timeout_min=FLAGS.slurm_timeout_min, slurm_partition=FLAGS.slurm_partition,
      gpus_per_node=FLAGS.slurm_gpus_per_node or None,
      slurm_array_parallelism=FLAGS.slurm_array_parallelism,
      slurm_signal_delay_s=120)
  return executor


def members_of(module, config_arg: str | None):
  """The sweep's members: `module.get_sweep(config_arg)` for a config that
  takes the ARG of `--config=FILE:ARG` (`:runlocal` shrinks the member list
  as it shrinks the base), else `module.get_sweep()`."""
  # pylint: disable=g-import-not-at-top
  from cnn.experiments import sweep
  get_sweep = module.get_sweep
  takes_arg = bool(inspect.signature(get_sweep).parameters)
  overrides = get_sweep(config_arg) if takes_arg else get_sweep()
  return sweep.members_of(overrides,
                          getattr(module, 'member_name', sweep.member_name))


def run(config, sweep_name: str, module, config_arg: str | None = None, *,
        workdir: str, mode: str, member: str | None) -> int:
  """Runs (or submits) the members of a sweep config; returns the exit code.

  Args:
    config: the base experiment (`module.get_config()` with the command
      line's overrides).
    sweep_name: the config file's name (`depth_study_fmnist`).
    module: the config module, with `get_sweep()` (and optionally
      `member_name(overrides)`).
    config_arg: ARG of `--config=FILE:ARG` (e.g. 'runlocal'), or None.
    workdir: the sweep's directory; members train into `workdir/<name>/`.
    mode: 'train' or 'results' (only write results.csv/json).
    member: run only this member, or a comma list of members (what a
      cluster task does), or None.
  """
  # pylint: disable=g-import-not-at-top
  from cnn.experiments import sweep, sweep_results
  members = members_of(module, config_arg)
  for m in members:  # every member's overrides are checked before any runs.
    sweep.member_config(config, m)
  if mode == 'results':
    print(sweep_results.format_groups(sweep_results.write(workdir)['groups']))
    return 0
  sweep.write_plan(workdir, config, sweep_name, members)
  pack = FLAGS.pack if FLAGS.pack is not None else getattr(module, 'PACK', 1)
  if member:
    members = sweep.select_all(members, member)
  if FLAGS.launcher != 'local' and not member:
    command = [sys.executable, os.path.abspath(sys.argv[0])] + [
        a for a in sys.argv[1:] if not a.startswith(('--launcher', '--pack'))
    ] + [f'--pack={pack}']
    groups = sweep.pack_groups(
        members, [sweep.member_config(config, m) for m in members], pack)
    jobs = sweep.submit(members, workdir, command, _executor(workdir), groups)
    print(f'Submitted {len(jobs)} jobs for {len(members)} members; rerun '
          'with --mode=results when they are done.')
    if FLAGS.launcher == 'submitit_local':
      for job in jobs:
        job.result()
    return 0
  outcome = sweep.run_local(config, members, workdir, pack=pack)
  if not member:
    data = sweep_results.write(workdir)
    print(sweep_results.format_groups(data['groups']))
  print(sweep.summary_line(outcome, members, workdir))
  return outcome.exit_code


def member_run(config, module, config_arg: str | None = None, *,
               workdir: str, member: str | None, mode: str):
  """(member config, member workdir) for a mode that reads one trained run
  (`--mode=inspect`, `--mode=probe`) of a sweep config.

  Raises:
    errors.UserError: no --member, or one the sweep does not have.
  """
  # pylint: disable=g-import-not-at-top
  from cnn.common import errors
  from cnn.experiments import sweep
  members = members_of(module, config_arg)
  if not member:
    raise errors.UserError(
        f'--mode={mode} reads one trained run: pass --member=NAME, one of '
        f'{[m.name for m in members]}.')
  chosen = sweep.select(members, member)
  return (sweep.member_config(config, chosen),
          os.path.join(workdir, chosen.name))
