"""Packed members against one at a time: member-epochs per hour, same run.

    python -m benchmarks.packed_sweep                       # the studies' nets
    python -m benchmarks.packed_sweep --members=3 --models=resnet20 --steps=30
    python -m benchmarks.packed_sweep --smoke               # seconds, any CPU

For each model at the studies' size (Fashion-MNIST 28x28x1, batch 128,
width 0.25 for the CIFAR plain/ResNets; LeNet-5 as the lectures have it) and
each convolution implementation (`--conv_impls`), K members (`--members`,
different seeds) are trained two ways on the same random batches:

  one at a time   K train states, each stepped by the program's jitted step,
                  one after the other (what `--pack=1` does);
  packed          one jit(vmap(step)) over the K stacked states
                  (`cnn.training.packed`, what `--pack=K` does).

Reports member-steps/s, member-epochs per hour (`--epoch_images` training
images an epoch: 5,000 in the reduced studies) and packed / one-at-a-time.
The step is `cnn.training.steps.train_step` with SGD + momentum, as the
depth study trains. Imports neither TensorFlow nor ml_collections, so it
runs on the accelerator images as it does here.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn.kernels import forms
from cnn.models import registry
from cnn.training import host_memory, packed, steps

# name -> backbone overrides at the studies' size.
MODELS = {
    'lenet5': {},
    'plain20': {'width': 0.25},
    'resnet20': {'width': 0.25},
    'resnet56': {'width': 0.25},
}
SHAPE, NUM_CLASSES = (28, 28, 1), 10


# One optimizer for every member: stacked states must share their static
# fields (as the states of one trainer program do).
_TX = optax.sgd(0.1, momentum=0.9)


def _state(model, seed: int) -> steps.TrainState:
  tx = _TX
  variables = model.init(jax.random.PRNGKey(seed),
                         jnp.zeros((1, *SHAPE), jnp.float32), train=False)
  return steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(variables['params']),
      rng=jax.random.PRNGKey(seed + 1000), apply_fn=model.apply, tx=tx)


def _batches(members: int, batch: int, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{'image': jnp.asarray(rng.normal(size=(batch, *SHAPE)),
                                jnp.float32),
           'label': jnp.asarray(rng.integers(0, NUM_CLASSES, batch),
                                jnp.int32)} for _ in range(members)]


def _timed(fn, warmup: int, num_steps: int) -> float:
  """Seconds per call of `fn()` (which returns something to wait on)."""
  jax.block_until_ready(fn())  # compile
  for _ in range(warmup):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(num_steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / num_steps


def bench(name: str, members: int, batch: int, conv_impl: str,
          num_steps: int, warmup: int) -> dict:
  """Member-steps/s of `name` one at a time and packed."""
  model = registry.create_model(name, num_classes=NUM_CLASSES,
                                **MODELS[name])
  step_fn = functools.partial(steps.train_step, label_smoothing=0.0,
                              aux_weight=0.0, skip_nonfinite=False)
  batches = _batches(members, batch)
  with forms.use_conv_impl(conv_impl):
    single = jax.jit(step_fn, donate_argnums=(0, 1))
    states = [_state(model, s) for s in range(members)]
    metrics = [steps.empty_train_metrics() for _ in range(members)]

    def one_at_a_time():
      for i in range(members):
        states[i], metrics[i] = single(states[i], metrics[i], batches[i])
      return metrics

    alone_s = _timed(one_at_a_time, warmup, num_steps)

    stacked = {'state': packed.stack([_state(model, s)
                                      for s in range(members)]),
               'metrics': packed.stack([steps.empty_train_metrics()
                                        for _ in range(members)])}
    inputs = packed.stack(batches)
    step = packed.packed_step(step_fn, 0)

    def together():
      stacked['state'], stacked['metrics'] = step(
          stacked['state'], stacked['metrics'], inputs)
      return stacked['metrics']

    packed_s = _timed(together, warmup, num_steps)
  return dict(model=name, conv_impl=conv_impl, members=members,
              alone_steps_per_s=members / alone_s,
              packed_steps_per_s=members / packed_s,
              ratio=alone_s / packed_s)


def main(argv=None) -> None:
  host_memory.keep_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--members', type=int, default=3)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--conv_impls', default='auto,xla',
                      help="comma list of cnn.kernels.forms implementations "
                           "('auto' is oneDNN on this CPU where built)")
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--epoch_images', type=int, default=5_000)
  parser.add_argument('--smoke', action='store_true',
                      help='tiny sizes: a check that everything runs')
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch, args.steps, args.warmup = 8, 2, 1
  dev = jax.devices()[0]
  print(f'{dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}; '
        f'{args.members} members, batch {args.batch}, epoch = '
        f'{args.epoch_images:,} images')
  print('| model | conv | one at a time: member-epochs/h | packed: '
        'member-epochs/h | packed / one at a time |')
  print('|---|---|---|---|---|')
  per_epoch = args.epoch_images / args.batch
  for name in args.models.split(','):
    if name not in MODELS:
      raise SystemExit(f'Unknown model {name!r}; choose from {list(MODELS)}.')
    for impl in args.conv_impls.split(','):
      r = bench(name, args.members, args.batch, impl, args.steps, args.warmup)
      hour = lambda steps_per_s: steps_per_s * 3600 / per_epoch
      print(f'| {name} | {impl} | {hour(r["alone_steps_per_s"]):,.0f} | '
            f'{hour(r["packed_steps_per_s"]):,.0f} | {r["ratio"]:.2f} |',
            flush=True)


if __name__ == '__main__':
  main()
