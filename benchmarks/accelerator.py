"""Accelerator training throughput and MFU, with scaling over devices.

    python -m benchmarks.accelerator                 # on a GPU/TPU machine
    python -m benchmarks.accelerator --smoke         # tiny sizes, any CPU
    python -m benchmarks.accelerator --models=resnet50 --per_device_batch=256

For each model (CIFAR ResNet-20/56 on 32x32x3, ResNet-50 on 224x224x3, random
data) and each device count n = 1, 2, 4, ... up to all local devices: the
train step of `cnn.training.steps` (SGD with momentum 0.9, the usual ResNet
optimiser), compute dtype `--dtype` (bfloat16 by default; parameters float32),
jitted over a 1-D mesh of the first n devices with the global batch
(`--per_device_batch` x n) split over them and the state replicated. Reports:

  images/s     after `--warmup` steps, over `--steps` steps
  TFLOP/s      3 x forward FLOPs per step / step time; the forward FLOPs are
               XLA's cost analysis of the compiled forward pass (a convolution
               counts 2 FLOPs per multiply-add), x3 for forward + backward
  MFU          TFLOP/s / (n x the device's dense peak for the dtype, table
               `PEAK_FLOPS`; '-' for devices not in the table, e.g. CPUs)
  scaling      images/s / (n x images/s on one device)

Imports neither TensorFlow nor ml_collections (accelerator images lack them).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnn.models import registry
from cnn.training import host_memory, steps

# Dense peak FLOP/s by device kind substring (lower case) and dtype: vendor
# data sheets, without sparsity.
PEAK_FLOPS = {
    'h200': {'bfloat16': 989e12, 'float32': 67e12},
    'h100 pcie': {'bfloat16': 756e12, 'float32': 51e12},
    'h100': {'bfloat16': 989e12, 'float32': 67e12},  # SXM
    'a100': {'bfloat16': 312e12, 'float32': 19.5e12},
    'l4': {'bfloat16': 121e12, 'float32': 30e12},
    'tpu v4': {'bfloat16': 275e12},
    'tpu v5 lite': {'bfloat16': 197e12},
    'tpu v5e': {'bfloat16': 197e12},
    'tpu v5p': {'bfloat16': 459e12},
    'tpu v6': {'bfloat16': 918e12},
}

MODELS = {  # name -> (input shape, num_classes)
    'resnet20': ((32, 32, 3), 10),
    'resnet56': ((32, 32, 3), 10),
    'resnet50': ((224, 224, 3), 1000),
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device for `dtype`, or None if unknown."""
  kind = device.device_kind.lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # 'h100 pcie' first.
    if key in kind:
      return PEAK_FLOPS[key].get(dtype)
  return None


def forward_flops(model, variables, shape, batch: int) -> float:
  """XLA's FLOP count of one forward pass (training mode) on `batch` images."""
  def forward(variables, x):
    return model.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.PRNGKey(0)})[0]
  x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
  compiled = jax.jit(forward).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def make_state(model, shape, mesh: Mesh, learning_rate: float = 0.1):
  tx = optax.sgd(learning_rate, momentum=0.9)

  def init():
    variables = model.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, *shape), jnp.float32), train=False)
    params = variables['params']
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params), rng=jax.random.PRNGKey(1),
        apply_fn=model.apply, tx=tx)

  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def bench_one(name: str, n_devices: int, per_device_batch: int, dtype: str,
              num_steps: int, warmup: int, shape=None) -> dict:
  """Throughput of `name` on the first `n_devices` devices."""
  default_shape, num_classes = MODELS[name]
  shape = shape or default_shape
  devices = np.asarray(jax.devices()[:n_devices])
  mesh = Mesh(devices, ('data',))
  model = registry.create_model(name, num_classes=num_classes, dtype=dtype)
  state = make_state(model, shape, mesh)
  batch_size = per_device_batch * n_devices
  rng = np.random.default_rng(0)
  batch_sharding = NamedSharding(mesh, P('data'))
  batch = {
      'image': jax.device_put(
          rng.normal(size=(batch_size, *shape)).astype(np.float32),
          batch_sharding),
      'label': jax.device_put(
          rng.integers(0, num_classes, batch_size).astype(np.int32),
          batch_sharding)}
  metrics = jax.device_put(steps.empty_train_metrics(),
                           NamedSharding(mesh, P()))
  step = jax.jit(functools.partial(steps.train_step, label_smoothing=0.0,
                                   aux_weight=0.0, skip_nonfinite=False),
                 donate_argnums=(0, 1))
  t0 = time.perf_counter()
  state, metrics = step(state, metrics, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = step(state, metrics, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = step(state, metrics, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / num_steps
  fwd = forward_flops(model, state.variables(), shape, batch_size)
  flops_per_s = 3 * fwd / step_s
  peak = peak_flops(devices[0], dtype)
  return dict(model=name, devices=n_devices, batch=batch_size,
              images_per_s=batch_size / step_s, step_ms=step_s * 1e3,
              tflops=flops_per_s / 1e12,
              mfu=flops_per_s / (peak * n_devices) if peak else None,
              compile_s=compile_s, loss=float(metrics['loss_sum'] /
                                              metrics['loss_count']))


def device_counts(total: int) -> list[int]:
  counts, n = [], 1
  while n < total:
    counts.append(n)
    n *= 2
  return counts + [total]


def main(argv=None) -> None:
  # Before JAX first computes: CPU steps then reuse freed memory instead of
  # faulting it in again (cnn/training/host_memory.py).
  host_memory.keep_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='resnet20,resnet56,resnet50')
  parser.add_argument('--dtype', default='bfloat16',
                      choices=('bfloat16', 'float32'))
  parser.add_argument('--per_device_batch', type=int, default=0,
                      help='0: 512 for CIFAR nets, 128 for resnet50')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--max_devices', type=int, default=0)
  parser.add_argument('--smoke', action='store_true',
                      help='tiny sizes: a CPU check that everything runs')
  args = parser.parse_args(argv)
  total = len(jax.devices())
  if args.max_devices:
    total = min(total, args.max_devices)
  dev = jax.devices()[0]
  print(f'{total} x {dev.device_kind} ({jax.default_backend()}), jax '
        f'{jax.__version__}, {args.dtype}, peak/device '
        f'{peak_flops(dev, args.dtype) or "unknown"}')
  print('| model | devices | global batch | images/s | ms/step | TFLOP/s | '
        'MFU | scaling | compile s |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name in args.models.split(','):
    if name not in MODELS:
      raise SystemExit(f'Unknown model {name!r}; choose from {list(MODELS)}.')
    per_device = args.per_device_batch or (128 if name == 'resnet50' else 512)
    shape, num_steps, warmup = None, args.steps, args.warmup
    if args.smoke:
      per_device, num_steps, warmup = 2, 2, 1
      shape = (64, 64, 3) if name == 'resnet50' else None
    one = None
    for n in device_counts(total):
      r = bench_one(name, n, per_device, args.dtype, num_steps, warmup, shape)
      one = one or r['images_per_s']
      mfu = f'{r["mfu"]:.1%}' if r['mfu'] is not None else '-'
      print(f'| {name} | {n} | {r["batch"]} | {r["images_per_s"]:,.0f} | '
            f'{r["step_ms"]:.1f} | {r["tflops"]:.2f} | {mfu} | '
            f'{r["images_per_s"] / (n * one):.2f} | {r["compile_s"]:.1f} |',
            flush=True)


if __name__ == '__main__':
  main()
