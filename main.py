"""Launches every experiment of the project.

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/default.py --workdir=runs/x \
        --config.optimizer.learning_rate=1e-3 --config.num_epochs=5
    python main.py --config=configs/default.py --mode=summary

A config file with a `get_sweep()` (configs/depth_study_fmnist.py, ...) is a
sweep: every member trains into WORKDIR/<member>/, then WORKDIR/results.csv
and results.json are written (`--mode=results` writes them alone).
`--member=NAME` runs one member (what a cluster job does);
`--launcher=slurm` submits the unfinished members as a SLURM job array
through submitit instead of running them here.

Multi-process (one process per host, or per GPU): start the same command on
every process with --coordinator_address=HOST:PORT --num_processes=N
--process_id=I, or just --distributed under SLURM / on a TPU pod, where JAX
finds them itself.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Each mode's own options are defined beside the code they steer.
from cnn.experiments import probe_mode, sweep_launch

FLAGS = flags.FLAGS
MODES = ('train', 'summary', 'results', 'inspect', 'probe')

config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.DEFINE_enum('mode', 'train', MODES,
                  'train: train and evaluate (resuming from workdir; every '
                  'member of a sweep config); summary: print the '
                  'size-accounting table of the model; results: aggregate a '
                  'sweep workdir into results.csv/json; inspect: write '
                  'figures of a trained workdir to WORKDIR/figures/; probe: '
                  'linear probes of every layer of a trained workdir into '
                  'WORKDIR/probe/.')
flags.DEFINE_string('member', None,
                    'Sweep configs: run only this member (by name); with '
                    '--mode=inspect or probe, the member to read.')
flags.DEFINE_bool('json', False, 'summary mode: machine-readable output.')
flags.DEFINE_string(
    'compilation_cache_dir',
    os.path.join(os.path.expanduser('~'), '.cache', 'cnn-study', 'xla'),
    'Persistent XLA compilation cache (a rerun skips compiling); empty to '
    'disable.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (auto-detects SLURM, '
                  'Open MPI, TPU pods).')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process: address:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-process: process count.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process.')


def _initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address:
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


class _QuietLibraries:
  """Drops INFO lines of orbax (dozens per checkpoint) from the absl log, and
  JAX's INFO "Unable to initialize backend 'tpu'" (logged for the backends
  JAX only tries, on every machine without one; which backends JAX uses is
  unchanged, and a backend asked for by name still fails loudly)."""

  def filter(self, record) -> bool:
    # record.levelno is a standard-library level (WARNING = 30).
    return record.levelno >= 30 or not (
        '/orbax/' in record.pathname
        or str(record.msg).startswith('Unable to initialize backend'))


def _stopped_before_training(signum, frame) -> None:
  """SIGTERM/SIGINT before the trainer takes them over (it saves a
  checkpoint first): nothing to save yet, so stop as preempted (status 3)."""
  del frame
  print(f'Stopped by {signal.Signals(signum).name} before training started; '
        'nothing was lost. Run the same command again to continue.',
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Not sys.exit: its SystemExit is raised wherever the signal lands, and
  # inside a callback that swallows exceptions (JAX's gc callback) the run
  # went on training. Nothing is open for writing yet, so exit at once.
  os._exit(3)  # pylint: disable=protected-access


def _sweep_definition():
  """(config file name, module, ARG) when --config=FILE[:ARG] names a sweep
  config, else Nones; ARG reaches `get_sweep(ARG)` as it reaches
  `get_config(ARG)` (`:runlocal` shrinks both)."""
  from cnn.common import config_utils  # pylint: disable=g-import-not-at-top
  path, arg = _config_flag(sys.argv)
  module = config_utils.load_config_module(path) if path else None
  if module is None or not hasattr(module, 'get_sweep'):
    return None, None, None
  return os.path.splitext(os.path.basename(path))[0], module, arg or None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise app.UsageError('--config is required, e.g. '
                         '--config=configs/default.py')
  if FLAGS.mode == 'train':  # exit status 3 = preempted, rerun to continue.
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, _stopped_before_training)
  logging.get_absl_logger().addFilter(_QuietLibraries())
  # Before JAX initialises its backends.
  std_logging.getLogger('jax._src.xla_bridge').addFilter(_QuietLibraries())
  _initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

  config = FLAGS.config
  sweep_name, sweep_module, sweep_arg = _sweep_definition()
  if FLAGS.mode == 'summary':
    from cnn import summary  # pylint: disable=g-import-not-at-top
    summary.print_summary_for_config(config, as_json=FLAGS.json)
    return
  if not FLAGS.workdir:
    raise app.UsageError(f'--workdir is required for --mode={FLAGS.mode}.')
  if FLAGS.mode == 'results' and sweep_module is None:
    raise app.UsageError('--mode=results needs a sweep config (one with '
                         'get_sweep()).')

  logging.info('JAX %s, backend %s; process %d of %d; local devices: %s',
               jax.__version__, jax.default_backend(), jax.process_index(),
               jax.process_count(), jax.local_devices())
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from cnn.common import errors  # pylint: disable=g-import-not-at-top
  from cnn.training import train  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.mode in ('inspect', 'probe'):
      workdir = FLAGS.workdir
      if sweep_module is not None:  # one member of a sweep: --member=NAME.
        config, workdir = sweep_launch.member_run(
            config, sweep_module, sweep_arg, workdir=workdir,
            member=FLAGS.member, mode=FLAGS.mode)
      if FLAGS.mode == 'probe':
        probe_mode.run(config, workdir)
      else:
        from cnn.visualize import run  # pylint: disable=g-import-not-at-top
        run.write_all(config, workdir)
      return
    if sweep_module is not None:
      sys.exit(sweep_launch.run(config, sweep_name, sweep_module, sweep_arg,
                                workdir=FLAGS.workdir, mode=FLAGS.mode,
                                member=FLAGS.member))
    result = train.train_and_evaluate(config, FLAGS.workdir)
  except (errors.UserError, input_pipeline.DatasetError,
          input_pipeline.InputConfigError) as e:
    # Mistakes a user can make (names, sizes, data, workdir) come as
    # ValueErrors with the fix in the message: show it (once), no traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if result.status == 'preempted':
    sys.exit(3)  # rerun to continue; as a preempted sweep (train.py said so).
  logging.info('%s at step %d: %s', result.status, result.step, result.metrics)


def _config_flag(argv: list[str]) -> tuple[str | None, str]:
  """(PATH, ARG) of --config=PATH[:ARG] (or --config PATH[:ARG]) in `argv`;
  (None, '') without one."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      path, _, config_arg = arg.split('=', 1)[1].partition(':')
      return path, config_arg
    if arg == '--config' and i + 1 < len(argv):
      path, _, config_arg = argv[i + 1].partition(':')
      return path, config_arg
  return None, ''


def _config_path(argv: list[str]) -> str | None:
  """The file of --config=PATH[:ARG] (or --config PATH) in `argv`."""
  return _config_flag(argv)[0]


def _check_config_file(argv: list[str]) -> None:
  """Exits with a message when the --config file does not exist.

  ml_collections defers that error to the first use of the config, which
  then surfaces as a traceback from deep inside training.
  """
  path = _config_path(argv)
  if path is None or os.path.isfile(path):
    return
  available = (sorted(n for n in os.listdir('configs') if n.endswith('.py'))
               if os.path.isdir('configs') else [])
  hint = f' Configs in configs/: {available}.' if available else ''
  sys.exit(f'error: config file {path!r} does not exist.{hint}')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a readable message for config-field typos."""
  _check_config_file(argv)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}\nPass --helpshort to see the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these while applying --config.a.b=... overrides.
    from cnn.common import config_utils  # pylint: disable=g-import-not-at-top
    config_path = next((a.split('=', 1)[1] for a in argv
                        if a.startswith('--config=')), None)
    keys = [a[len('--config.'):].split('=', 1)[0] for a in argv
            if a.startswith('--config.')]
    message = None
    if config_path:
      try:
        message = config_utils.explain_override_error(
            config_utils.load_config_file(config_path), keys)
      except Exception:  # pylint: disable=broad-except
        message = None
    sys.exit(f'error: {message or e}')


if __name__ == '__main__':
  # TensorFlow is imported only by the tf.data path, which hides every
  # accelerator from it (input_pipeline/lazy_tf.py); here it is only kept
  # quiet. Set before the flags are parsed: a config file may import JAX,
  # and a value set after JAX's C++ libraries load no longer reaches
  # TensorFlow's log.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # Before JAX starts its threads (cnn/training/host_memory.py): `import cnn` itself
  # changes no process setting.
  from cnn.training import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_freed_memory()
  app.run(main, flags_parser=_parse_flags)
