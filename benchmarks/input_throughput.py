"""Input pipeline throughput (images/s, with augmentation) vs training speed.

    python -m benchmarks.input_throughput               # about 1-2 min
    python -m benchmarks.input_throughput --pipelines=device --crop_padding=0

Measures, on Fashion-MNIST with random horizontal flips and a random crop
from a `--crop_padding`-pixel zero-padded image (the augmentations of the
default config, plus the crop):

  device           `DeviceSource.get_batch` alone, jitted (gather, uint8 ->
                   float, augment, normalise); what the trainer fuses into
                   its step.
  device_in_step   the LeNet-5 train step with the batch made inside it by
                   `get_batch`, against the same step fed a ready batch:
                   reported as the pipeline's share of the step.
  tfdata           `TfDataSource.iterator()` on the host: numpy batches out
                   of tf.data (parallel map + prefetch), as the trainer
                   consumes them.

and the LeNet-5 training throughput (`jax`, the step as committed, and
`jax_plain`, the naive network, of `benchmarks.train_throughput`), measured
interleaved with the pipelines. The target is pipeline >= 3 x training
throughput, so that the input never limits training. The host pipeline
competes with training for the same two cores; its number here is measured
alone.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

import input_pipeline  # noqa: E402
from benchmarks import train_throughput as tt  # noqa: E402
from cnn import host_memory, steps  # noqa: E402


def input_config(args) -> dict:
  augment = input_pipeline.default_augment_config()
  augment.update(flip_lr=True, crop_padding=args.crop_padding)
  return dict(dataset='fashion_mnist', data_dir=None, manual_dir=None,
              download=False, pipeline='device', batch_size=args.batch_size,
              eval_batch_size=1000, train_subset=0, test_subset=0,
              image_size=0, augment=augment)


def device_pipeline_runner(source, seed: int):
  """Runs `get_batch` alone; returns run(n) -> None."""
  get = jax.jit(lambda data, step: source.get_batch(data, seed, step))
  carry = {'step': 0}

  def run(n: int) -> None:
    out = None
    for _ in range(n):
      out = get(source.data, carry['step'])
      carry['step'] += 1
    jax.block_until_ready(out)

  run(1)
  return run


def step_with_device_batch_runner(source, config, naive: bool):
  """LeNet-5 train step that makes its own batch with `get_batch`."""
  import functools

  from benchmarks import cpu_speedups
  from cnn import optim, sharding, train
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  lr_fn = optim.create_learning_rate_fn(config, 500, 10_000)
  state = train.create_train_state(config, model, (28, 28, 1), lr_fn, mesh)
  step_fn = functools.partial(
      steps.train_step, label_smoothing=config.loss.label_smoothing,
      aux_weight=config.loss.aux_weight, skip_nonfinite=False)
  if naive:
    step_fn = cpu_speedups.plain(step_fn)

  def device_step(state, metrics, data):
    batch = source.get_batch(data, config.seed, state.step)
    return step_fn(state, metrics, batch)

  jitted = jax.jit(device_step, donate_argnums=(0, 1))
  carry = {'state': state,
           'metrics': jax.device_put(steps.empty_train_metrics(),
                                     sharding.replicated(mesh))}

  def run(n: int) -> None:
    s, m = carry['state'], carry['metrics']
    for _ in range(n):
      s, m = jitted(s, m, source.data)
    jax.block_until_ready(m)
    carry.update(state=s, metrics=m)

  run(1)
  return run


def tfdata_runner(source):
  iterator = source.iterator(0)
  next(iterator)

  def run(n: int) -> None:
    for _ in range(n):
      next(iterator)

  return run


def main(argv=None) -> None:
  # Before JAX first computes: CPU steps then reuse freed memory instead of
  # faulting it in again (cnn/host_memory.py).
  host_memory.keep_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pipelines', default='device,tfdata')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--crop_padding', type=int, default=2)
  parser.add_argument('--steps', type=int, default=40,
                      help='batches per round and variant')
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args(argv)
  inp = input_config(args)
  pipelines = args.pipelines.split(',')
  config = tt.make_config('lenet5', 'adamw', 'float32')
  runners = {}
  t0 = time.perf_counter()
  device_source = input_pipeline.create_train_source(
      dict(inp, pipeline='device'), seed=0, global_batch_size=args.batch_size)
  print(f'device source ready in {time.perf_counter() - t0:.1f} s')
  if 'device' in pipelines:
    runners['device pipeline'] = device_pipeline_runner(device_source, 0)
    for naive in (False, True):
      runners[f'train step{" plain" if naive else ""} + device batch'] = (
          step_with_device_batch_runner(device_source, config, naive))
  if 'tfdata' in pipelines:
    t0 = time.perf_counter()
    tf_source = input_pipeline.create_train_source(
        dict(inp, pipeline='tfdata'), seed=0,
        global_batch_size=args.batch_size)
    runners['tfdata pipeline'] = tfdata_runner(tf_source)
    print(f'tf.data source ready in {time.perf_counter() - t0:.1f} s')
  for name in ('jax', 'jax_plain'):
    runner = tt.jax_runner(name, config, (28, 28, 1), args.batch_size,
                           naive=name == 'jax_plain')
    runners[f'train step ({name}), batch as argument'] = runner.run
  rates = {k: [] for k in runners}
  for _ in range(args.rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run(args.steps)
      rates[name].append(args.steps * args.batch_size /
                         (time.perf_counter() - start))
  med = {k: float(np.median(v)) for k, v in rates.items()}
  print(f'\nbatch {args.batch_size}, flips + crop (padding '
        f'{args.crop_padding}), {args.rounds} rounds, load '
        f'{os.getloadavg()[0]:.1f}')
  print('| measured | images/s (median) | min - max |')
  print('|---|---|---|')
  for k, v in rates.items():
    print(f'| {k} | {med[k]:,.0f} | {min(v):,.0f} - {max(v):,.0f} |')
  train_best = max(med['train step (jax), batch as argument'],
                   med['train step (jax_plain), batch as argument'])
  print(f'\nfastest LeNet-5 training: {train_best:,.0f} images/s')
  for k in ('device pipeline', 'tfdata pipeline'):
    if k in med:
      print(f'  {k}: {med[k] / train_best:.1f} x training throughput '
            f'(target >= 3)')
  for naive, name in ((False, 'jax'), (True, 'jax_plain')):
    key = f'train step{" plain" if naive else ""} + device batch'
    if key in med:
      plain = med[f'train step ({name}), batch as argument']
      print(f'  {name} step making its own batch: {med[key]:,.0f} images/s '
            f'({med[key] / plain:.2f} x the step fed a ready batch)')

if __name__ == '__main__':
  main()
