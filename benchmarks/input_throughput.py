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

  streaming        (`--streaming`) `StreamingSource.iterator()` over a
                   generated folder of JPEGs (`folder:`): read, JPEG decode,
                   Inception crop + flip, batch, normalise; run in a child
                   process per folder size, which reports images/s and its
                   peak resident memory (VmHWM), against ResNet-20 (and with
                   `--resnet50`, ResNet-50) training on the same image size:

    python -m benchmarks.input_throughput --streaming \
        --stream_images=1000,2000 --image_size=64

and the LeNet-5 training throughput (`jax`, the step as committed, and
`jax_plain`, the naive network, of `benchmarks.train_throughput`), measured
interleaved with the pipelines. The target is pipeline >= 3 x training
throughput, so that the input never limits training. The host pipeline
competes with training for the same two cores; its number here is measured
alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

import input_pipeline  # noqa: E402
from benchmarks import train_throughput as tt  # noqa: E402
from cnn.training import host_memory, steps  # noqa: E402
from configs import default  # noqa: E402


def input_config(args) -> dict:
  augment = input_pipeline.default_augment_config()
  augment.update(flip_lr=True, crop_padding=args.crop_padding)
  return dict(default.get_config().input.to_dict(), dataset='fashion_mnist',
              pipeline='device', batch_size=args.batch_size,
              eval_batch_size=1000, augment=augment)


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
  from cnn.training import optim, sharding, train
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


def write_jpeg_folder(root: str, num_images: int, side: int = 256,
                      num_classes: int = 10) -> str:
  """`num_images` random-texture JPEGs of side x side in `root`/{train,test}
  (test: one per class), for `folder:` streaming."""
  from PIL import Image
  rng = np.random.default_rng(0)
  # A few distinct textures reused: decoding cost does not depend on content
  # much, generating thousands of random images would dominate set-up.
  textures = [Image.fromarray(rng.integers(0, 256, (side // 8, side // 8, 3),
                                           dtype=np.uint8)).resize(
                                               (side, side))
              for _ in range(16)]
  for split, count in (('train', num_images), ('test', num_classes)):
    for i in range(count):
      cls = f'class{i % num_classes:02d}'
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      textures[i % len(textures)].save(
          os.path.join(root, split, cls, f'{i:06d}.jpg'), quality=90)
  return root


def peak_rss_mib() -> float:
  """This process's resident-memory high-water mark (VmHWM), MiB."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def stream_child(root: str, image_size: int, batch_size: int,
                 steps: int) -> None:
  """Child process: streams one epoch-length of batches, prints JSON."""
  inp = dict(dataset=f'folder:{root}', data_dir=None, manual_dir=None,
             download=False, pipeline='tfdata', batch_size=batch_size,
             eval_batch_size=batch_size, train_subset=0, test_subset=0,
             image_size=image_size,
             augment=input_pipeline.default_augment_config(),
             streaming='always', stream_threshold_bytes=2**30,
             preprocess='imagenet', shuffle_buffer=1000, stats_sample=100,
             classes=(), per_class=0, skip_bad_images=False,
             validation_per_class=0, validation_fraction=0.0, sample_seed=-1)
  source = input_pipeline.create_train_source(inp, seed=0,
                                              global_batch_size=batch_size)
  iterator = source.iterator(0)
  next(iterator)  # warm-up: the pipeline's threads and first files.
  rss_before = peak_rss_mib()
  start = time.perf_counter()
  n = min(steps, source.steps_per_epoch * 3)
  for _ in range(n):
    next(iterator)
  rate = n * batch_size / (time.perf_counter() - start)
  print(json.dumps(dict(images_per_s=rate, peak_rss_mib=peak_rss_mib(),
                        rss_after_warmup_mib=rss_before, batches=n)))


def streaming_benchmark(args) -> None:
  sizes = [int(x) for x in args.stream_images.split(',')]
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for count in sizes:
      root = os.path.join(tmp, f'n{count}')
      t0 = time.perf_counter()
      write_jpeg_folder(root, count, args.stream_side)
      print(f'{count} JPEGs of {args.stream_side}x{args.stream_side} written '
            f'in {time.perf_counter() - t0:.1f} s')
      out = subprocess.run(
          [sys.executable, '-m', 'benchmarks.input_throughput',
           '--_stream_child', root, '--image_size', str(args.image_size),
           '--batch_size', str(args.batch_size), '--steps', str(args.steps)],
          capture_output=True, text=True, check=True,
          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
      results[count] = json.loads(out.stdout.strip().splitlines()[-1])
  shape = (args.image_size, args.image_size, 3)
  train = {}
  for model in ('resnet20', 'resnet50') if args.resnet50 else ('resnet20',):
    config = tt.make_config(model, 'sgd', 'float32')
    runner = tt.jax_runner('jax', config, shape, args.batch_size)
    runner.run(1)
    start = time.perf_counter()
    runner.run(args.train_steps)
    train[model] = (args.train_steps * args.batch_size /
                    (time.perf_counter() - start))
  print(f'\nstreaming folder: JPEG {args.stream_side}px -> Inception crop '
        f'{args.image_size}px + flip, batch {args.batch_size}, load '
        f'{os.getloadavg()[0]:.1f}')
  print('| train JPEGs | images/s | peak RSS (MiB) | RSS after 1st batch |')
  print('|---|---|---|---|')
  for count, r in results.items():
    print(f'| {count:,} | {r["images_per_s"]:,.0f} | {r["peak_rss_mib"]:,.0f}'
          f' | {r["rss_after_warmup_mib"]:,.0f} |')
  for model, rate in train.items():
    best = max(r['images_per_s'] for r in results.values())
    print(f'{model} training at {shape}: {rate:,.1f} images/s '
          f'(streaming = {best / rate:.1f} x)')


def main(argv=None) -> None:
  # Before JAX first computes: CPU steps then reuse freed memory instead of
  # faulting it in again (cnn/training/host_memory.py).
  host_memory.keep_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pipelines', default='device,tfdata')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--crop_padding', type=int, default=2)
  parser.add_argument('--steps', type=int, default=40,
                      help='batches per round and variant')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--streaming', action='store_true',
                      help='benchmark the streaming folder source only')
  parser.add_argument('--stream_images', default='1000,2000',
                      help='folder sizes (train JPEGs), comma-separated')
  parser.add_argument('--stream_side', type=int, default=256)
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--train_steps', type=int, default=5)
  parser.add_argument('--resnet50', action='store_true')
  parser.add_argument('--_stream_child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  child_root = getattr(args, '_stream_child')
  if child_root:
    stream_child(child_root, args.image_size, args.batch_size, args.steps)
    return
  if args.streaming:
    streaming_benchmark(args)
    return
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
