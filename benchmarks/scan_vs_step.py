"""The train step called per step vs inside `lax.scan` / `fori_loop` on CPU.

    python -m benchmarks.scan_vs_step                   # LeNet-5, ~1 min
    python -m benchmarks.scan_vs_step --model=resnet20 --rounds=3

Times K steps (`--steps_per_call`) over batches already on the device:
  step          K calls of the jitted step (as cnn/training/train.py does)
  scan          one call: `lax.scan` of the step over the K batches
  scan_unroll   the same with `unroll=True` (no loop left in the program)
  fori          one call: `lax.fori_loop` indexing the K batches
each for the model as committed (LeNet-5: banded convolutions, `_banded`
suffix) and for the naive network (`benchmarks.cpu_speedups.plain`: lax.conv,
no suffix), interleaved over rounds.
Also prints how the compiled loop body writes the convolutions: XLA CPU keeps
weight-gradient convolutions inside a while body in their raw layout
(e.g. `f01b_i01o->01bf`) instead of the canonical `b01f_01io->b01f` it
gives them at top level, which selects its slow generic convolution loop.
"""

from __future__ import annotations

import argparse
import functools
import re
import time

import jax
import numpy as np

from benchmarks import cpu_speedups
from benchmarks import train_throughput as tt
from cnn.training import host_memory, sharding, steps, train


def main(argv=None) -> None:
  # Before JAX first computes: CPU steps then reuse freed memory instead of
  # faulting it in again (cnn/training/host_memory.py).
  host_memory.keep_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='lenet5')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps_per_call', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args(argv)
  k, b = args.steps_per_call, args.batch_size
  shape = tt.input_shape(args.model, '32x32x3')
  config = tt.make_config(args.model, 'adamw', 'float32')
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  from cnn.training import optim
  lr_fn = optim.create_learning_rate_fn(config, 500, 10_000)
  rng = np.random.default_rng(0)
  images = jax.numpy.asarray(rng.normal(size=(k, b, *shape)), np.float32)
  labels = jax.numpy.asarray(rng.integers(0, 10, (k, b)), np.int32)

  def variants(banded: bool):
    step = functools.partial(
        steps.train_step, label_smoothing=config.loss.label_smoothing,
        aux_weight=config.loss.aux_weight, skip_nonfinite=False)
    if not banded:
      step = cpu_speedups.plain(step)
    jit_step = jax.jit(step, donate_argnums=(0, 1))

    def per_step(s, m, images, labels):
      for i in range(k):
        s, m = jit_step(s, m, {'image': images[i], 'label': labels[i]})
      return s, m

    def body(carry, batch):
      return step(*carry, {'image': batch[0], 'label': batch[1]}), None

    def scan(s, m, images, labels, unroll=False):
      return jax.lax.scan(body, (s, m), (images, labels), unroll=unroll)[0]

    def fori(s, m, images, labels):
      return jax.lax.fori_loop(0, k, lambda i, c: step(
          *c, {'image': images[i], 'label': labels[i]}), (s, m))

    return {'step': per_step,
            'scan': jax.jit(scan, donate_argnums=(0, 1)),
            'scan_unroll': jax.jit(functools.partial(scan, unroll=True),
                                   donate_argnums=(0, 1)),
            'fori': jax.jit(fori, donate_argnums=(0, 1))}

  runs = {}
  for banded in (False, True):
    for name, fn in variants(banded).items():
      state = train.create_train_state(config, model, shape, lr_fn, mesh)
      metrics = jax.device_put(steps.empty_train_metrics(),
                               sharding.replicated(mesh))
      state, metrics = fn(state, metrics, images, labels)
      jax.block_until_ready(metrics)
      runs[name + ('_banded' if banded else '')] = [fn, state, metrics, []]
  hlo = runs['scan'][0].lower(runs['scan'][1], runs['scan'][2], images,
                              labels).compile().as_text()
  for _ in range(args.rounds):
    for run in runs.values():
      fn, state, metrics, rates = run
      start = time.perf_counter()
      state, metrics = fn(state, metrics, images, labels)
      jax.block_until_ready(metrics)
      rates.append(k * b / (time.perf_counter() - start))
      run[1], run[2] = state, metrics
  base = np.median(runs['step'][3])
  print(f'{args.model}, batch {b}, {k} steps per call, {args.rounds} rounds')
  print('| variant | images/s (median) | / step | mean train loss |')
  print('|---|---|---|---|')
  for name, (_, _, metrics, rates) in runs.items():
    loss = float(metrics['loss_sum'] / metrics['loss_count'])
    print(f'| {name} | {np.median(rates):,.0f} | '
          f'{np.median(rates) / base:.2f} | {loss:.3f} |')
  labels_in_loop = sorted(set(re.findall(
      r'convolution\(.*dim_labels=(\S+?),', hlo)))
  print(f'convolution layouts in the scan program: {labels_in_loop}')


if __name__ == '__main__':
  main()
