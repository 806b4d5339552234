"""Wall time from process start to a test accuracy, split into its parts.

    python -m benchmarks.time_to_accuracy                  # default config
    python -m benchmarks.time_to_accuracy --plain --target=0.91
    python -m benchmarks.time_to_accuracy --config=configs/default.py \
        --workdir=/tmp/tta --keep_running

Starts a fresh Python process that imports the trainer and calls
`cnn.training.train.train_and_evaluate(config, workdir)` on the config (in a new
temporary workdir unless --workdir is given), watches `workdir/metrics.jsonl`
and stops the run (SIGTERM: the trainer checkpoints and exits) at the first
evaluation with `test_accuracy >= --target`, unless --keep_running. Reports:

  interpreter   process start -> first line of the child script
  imports       jax, the trainer, the config
  data          loading the train source and the evaluation batches
  compile       the first train step (`compile_time_s` of the record: the
                compilation plus one step)
  training      train steps after the first (from each record's
                `examples_per_sec`)
  eval+other    the rest up to the target evaluation (evaluations, their
                compilation, checkpoints, state initialisation)
  total         process start -> the evaluation that reached the target

By default the child runs the trainer as committed (with the CPU forms of
`benchmarks/FINDINGS.md`: oneDNN or banded convolutions, stored ResNet
activations, batch norm as one multiply-add); with --plain its train and
eval steps are traced inside `cnn.kernels.forms.reference_convolutions()`
(`benchmarks.cpu_speedups.plain`), i.e. the naive network, for the "before"
of the ablation. XLA's persistent compilation cache is off unless
--compilation_cache_dir is given, so `compile` is a cold compile.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child: times its imports and the data loading, then trains.
_CHILD = r'''
import json, os, sys, time
t_start = time.time()
sys.path.insert(0, {repo!r})
import importlib.util
from cnn.training import host_memory
host_memory.keep_freed_memory()  # as main.py, before JAX starts
import jax
import input_pipeline
from cnn.training import train
spec = importlib.util.spec_from_file_location('experiment_config', {config!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
for key, value in {overrides!r}.items():
  node = config
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
if {compilation_cache_dir!r}:
  jax.config.update('jax_compilation_cache_dir', {compilation_cache_dir!r})
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
if {plain!r}:
  from benchmarks import cpu_speedups
  from cnn.training import steps
  steps.train_step = cpu_speedups.plain(steps.train_step)
  steps.eval_step = cpu_speedups.plain(steps.eval_step)
t_imported = time.time()
data_s = [0.0]
def timed(fn):
  def wrapper(*args, **kwargs):
    t = time.time()
    try:
      return fn(*args, **kwargs)
    finally:
      data_s[0] += time.time() - t
  return wrapper
input_pipeline.create_train_source = timed(input_pipeline.create_train_source)
if hasattr(train, '_eval_batches'):
  train._eval_batches = timed(train._eval_batches)
timings = dict(t_start=t_start, t_imported=t_imported)
def dump():
  timings['data_s'] = data_s[0]
  with open(os.path.join({workdir!r}, 'tta_timings.json'), 'w') as f:
    json.dump(timings, f)
dump()
# Rewrite the timings at every evaluation (the parent may stop the run).
from cnn.training import metrics as metrics_lib
_write = metrics_lib.MetricWriter.write
def write(self, record):
  _write(self, record)
  dump()
metrics_lib.MetricWriter.write = write
train.train_and_evaluate(config, {workdir!r})
dump()
'''


def read_records(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          break  # a line being written
  return [r for r in records if r.get('kind', 'eval') == 'eval']


def split_times(records: list[dict], target_index: int, batch_size: int
                ) -> tuple[float, float]:
  """(compile, training) seconds up to and including records[target_index]."""
  compile_s = float(records[0].get('compile_time_s') or 0.0)
  training, prev_step = 0.0, 0
  for i, r in enumerate(records[:target_index + 1]):
    n = r['step'] - prev_step - (1 if i == 0 else 0)
    rate = r.get('examples_per_sec') or float('nan')
    if n > 0 and rate == rate and rate > 0:
      training += n * batch_size / rate
    prev_step = r['step']
  return compile_s, training


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default=os.path.join(REPO, 'configs',
                                                       'default.py'))
  parser.add_argument('--workdir', default='')
  parser.add_argument('--target', type=float, default=0.91)
  parser.add_argument('--plain', action='store_true',
                      help='the naive network (without the models\' CPU forms)')
  parser.add_argument('--keep_running', action='store_true',
                      help='let the run finish after reaching the target')
  parser.add_argument('--compilation_cache_dir', default='')
  parser.add_argument('--set', action='append', default=[],
                      metavar='KEY=JSON', help='config override, e.g. '
                      '--set=num_epochs=20 --set=input.pipeline=\'"tfdata"\'')
  parser.add_argument('--timeout', type=float, default=3600.0)
  args = parser.parse_args(argv)
  overrides = {}
  for item in args.set:
    key, value = item.split('=', 1)
    overrides[key] = json.loads(value)
  workdir = args.workdir or tempfile.mkdtemp(prefix='tta_')
  os.makedirs(workdir, exist_ok=True)
  if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    raise SystemExit(f'{workdir} already holds a run; use a new --workdir.')
  child = _CHILD.format(repo=REPO, config=os.path.abspath(args.config),
                        overrides=overrides, workdir=workdir, plain=args.plain,
                        compilation_cache_dir=args.compilation_cache_dir)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  t_spawn = time.time()
  proc = subprocess.Popen([sys.executable, '-c', child], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  target_index = None
  while proc.poll() is None and time.time() - t_spawn < args.timeout:
    time.sleep(0.5)
    records = read_records(metrics_path)
    hits = [i for i, r in enumerate(records)
            if r.get('test_accuracy', 0.0) >= args.target]
    if hits and target_index is None:
      target_index = hits[0]
      if not args.keep_running:
        proc.send_signal(signal.SIGTERM)
  try:
    _, stderr = proc.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    proc.kill()
    _, stderr = proc.communicate()
  with open(os.path.join(workdir, 'tta_stderr.txt'), 'w') as f:
    f.write(stderr)
  if proc.returncode not in (0, -signal.SIGTERM) and (
      target_index is None or args.keep_running):
    print(f'The training process failed (exit code {proc.returncode}); its '
          f'stderr is in {workdir}/tta_stderr.txt. Last lines:')
    print('\n'.join(stderr.splitlines()[-15:]))
  records = read_records(metrics_path)
  if target_index is None:
    hits = [i for i, r in enumerate(records)
            if r.get('test_accuracy', 0.0) >= args.target]
    target_index = hits[0] if hits else None
  print(f'workdir {workdir}, config {args.config}, plain={args.plain}, '
        f'load {os.getloadavg()[0]:.1f}')
  if not records:
    print('No evaluation was written. Child stderr (last lines):')
    print('\n'.join(stderr.splitlines()[-30:]))
    raise SystemExit(1)
  best = max(r.get('test_accuracy', 0.0) for r in records)
  if target_index is None:
    print(f'Test accuracy never reached {args.target} (best {best:.4f} in '
          f'{len(records)} evaluations).')
    raise SystemExit(1)
  with open(os.path.join(workdir, 'tta_timings.json')) as f:
    timings = json.load(f)
  with open(os.path.join(workdir, 'config.json')) as f:
    batch_size = json.load(f)['input']['batch_size']
  rec = records[target_index]
  interpreter = timings['t_start'] - t_spawn
  imports = timings['t_imported'] - timings['t_start']
  data = timings['data_s']
  compile_s, training = split_times(records, target_index, batch_size)
  in_trainer = rec['wall_time_s']
  other = in_trainer - data - compile_s - training
  total = interpreter + imports + in_trainer
  print(f'test_accuracy {rec["test_accuracy"]:.4f} >= {args.target} at '
        f'epoch {rec["epoch"]:.2f} (step {rec["step"]})')
  print('| part | seconds | share |')
  print('|---|---|---|')
  for name, s in (('interpreter', interpreter), ('imports', imports),
                  ('data', data), ('compile (+1 step)', compile_s),
                  ('training', training), ('eval+other', other),
                  ('total', total)):
    print(f'| {name} | {s:.1f} | {s / total:.0%} |')


if __name__ == '__main__':
  main()
