"""Training throughput of our JAX step against its PyTorch twin, interleaved.

    python -m benchmarks.train_throughput                      # about 5 min
    python -m benchmarks.train_throughput --models=lenet5 --rounds=15
    python -m benchmarks.train_throughput --models=resnet20,plain20 \
        --resnet_input=28x28x1 --optimizer=sgd --torch_compile

Variants, each warmed up (untimed rounds until it stops faulting in fresh
memory) and then timed for `--steps` steps per round, round-robin, so that
all of them see the same machine load (this machine's 2 cores are shared:
read the ratios, which are medians over rounds, not the absolute numbers).
Each variant runs in its own worker process, driven in lock-step with this
one: PyTorch's OpenMP runtime in a JAX process
slows JAX, and two JAX programs of different sizes in one process fragment
the heap that `cnn/training/host_memory.py` keeps, so one variant's steps would fault
in memory the other freed (FINDINGS.md). The table's page faults per step
show whether a variant still does. `--in_process` runs everything here
instead:

  jax        `cnn.training.steps.train_step` jitted exactly as `cnn/training/train.py` does
             (`donate_argnums=(0, 1)`, the batch passed as an argument),
             with the optimizer and schedule of `configs/default.py`; the
             models as committed, i.e. with the forms of
             `benchmarks/FINDINGS.md` (oneDNN or banded convolutions,
             stored ResNet activations, batch norm as one multiply-add).
  jax_plain  the same step traced inside `forms.reference_convolutions()`
             (`benchmarks.cpu_speedups.plain`): the naive network, lax.conv
             everywhere, no materialisation, flax's batch norm (the "before"
             of the ablation).
  torch      the PyTorch twin (`benchmarks/torch_models.py`), NCHW, 2 threads:
             zero_grad, forward, label-smoothed cross-entropy, backward,
             the same optimizer (decay on kernels only) and one-cycle
             schedule, metrics summed on the device without a host sync.
  torch_cl   the same in channels_last memory format.
  torch_compile  `torch.compile` of the twin (with --torch_compile; its
             compile time is printed).

Inputs are random images of the model's input shape: LeNet-5 28x28x1 (padded
to 32 inside the model, as in training); ResNets `--resnet_input` (default
32x32x3, CIFAR's; the Fashion-MNIST experiments use 28x28x1).

The JAX variants use every JAX device (the trainer's mesh). With
XLA_FLAGS=--xla_force_host_platform_device_count=2 the batch is split over two
host devices (faster here, but the trainer can deadlock in that mode: see
FINDINGS.md before using it for training).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Callable

import numpy as np

# Before jax is imported: keep TensorFlow (imported by nothing here) and
# accelerators out of a CPU benchmark.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# Before jax and torch are imported (their threads start with the process's
# malloc arenas): see cnn/training/host_memory.py. In every worker process too.
from cnn.training import host_memory  # noqa: E402

host_memory.keep_freed_memory()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from benchmarks import cpu_speedups, torch_models  # noqa: E402
from cnn.training import optim, sharding, steps, train  # noqa: E402
from configs import default as default_config  # noqa: E402

# Steps per round for each model (about one second of work per variant: in
# shorter rounds the threads' wake-up after the pause weighs on the result).
DEFAULT_STEPS = {'lenet5': 150, 'resnet20': 8, 'plain20': 8, 'resnet56': 3,
                 'plain56': 3}
NUM_DISTINCT_BATCHES = 4
# Warm-up ends with a round below this many page faults per step (PyTorch's
# steady rounds: up to ~2,000; a JAX heap still growing: 40,000-200,000).
WARM_FAULTS_PER_STEP = 5_000
MAX_WARMUP_ROUNDS = 8


@dataclasses.dataclass
class Timing:
  """One timed call: wall and process CPU seconds, minor page faults."""
  wall: float
  cpu: float
  faults: int


@dataclasses.dataclass
class Runner:
  """One variant: `run(n)` does n training steps and waits for them.

  `run` may return its own `Timing` (a runner in another process does);
  otherwise the caller times it.
  """

  name: str
  run: Callable[[int], Timing | None]
  setup_s: float  # compile (JAX, torch.compile) or set-up time.
  images_per_s: list[float] = dataclasses.field(default_factory=list)
  cpu_per_wall: list[float] = dataclasses.field(default_factory=list)
  faults_per_step: list[float] = dataclasses.field(default_factory=list)
  compiled_text: Callable[[], str] | None = None  # JAX: the optimised HLO.


def make_config(model_name: str, optimizer: str, dtype: str
                ) -> ml_collections.ConfigDict:
  """configs/default.py with the model, optimizer and dtype swapped."""
  config = default_config.get_config()
  config.model_name = model_name
  if model_name != 'lenet5':
    config.model = ml_collections.ConfigDict()
  config.dtype = dtype
  if optimizer == 'sgd':
    config.optimizer.name = 'sgd'
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 1e-4
  return config


def input_shape(model_name: str, resnet_input: str) -> tuple[int, int, int]:
  if model_name.startswith('lenet'):
    return (28, 28, 1)
  h, w, c = (int(v) for v in resnet_input.lower().split('x'))
  return (h, w, c)


def jax_runner(name: str, config: ml_collections.ConfigDict,
               shape: tuple[int, int, int], batch_size: int,
               naive: bool = False) -> Runner:
  """The train step of cnn/training/train.py (naive: without the models' CPU forms)."""
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  total_steps = 10_000
  lr_fn = optim.create_learning_rate_fn(config, 500, total_steps)
  state = train.create_train_state(config, model, shape, lr_fn, mesh)
  step_fn = functools.partial(
      steps.train_step, label_smoothing=config.loss.label_smoothing,
      aux_weight=config.loss.aux_weight, skip_nonfinite=False)
  if naive:
    step_fn = cpu_speedups.plain(step_fn)
  jitted = jax.jit(step_fn, donate_argnums=(0, 1))
  rng = np.random.default_rng(0)
  batches = [
      sharding.put_global_batch(dict(
          image=rng.normal(size=(batch_size, *shape)).astype(np.float32),
          label=rng.integers(0, 10, batch_size).astype(np.int32)), mesh)
      for _ in range(NUM_DISTINCT_BATCHES)]
  # Placed as the trainer places them, so that the second call reuses the
  # first call's executable.
  metrics = jax.device_put(steps.empty_train_metrics(),
                           sharding.replicated(mesh))
  carry = {'state': state, 'metrics': metrics, 'i': 0}

  def run(n: int) -> None:
    state, metrics, i = carry['state'], carry['metrics'], carry['i']
    for _ in range(n):
      state, metrics = jitted(state, metrics,
                              batches[i % NUM_DISTINCT_BATCHES])
      i += 1
    jax.block_until_ready(metrics)
    carry.update(state=state, metrics=metrics, i=i)

  def compiled_text() -> str:
    return jitted.lower(carry['state'], carry['metrics'],
                        batches[0]).compile().as_text()

  start = time.perf_counter()
  run(1)  # compile + first step
  return Runner(name, run, time.perf_counter() - start,
                compiled_text=compiled_text)


def torch_runner(name: str, config: ml_collections.ConfigDict,
                 shape: tuple[int, int, int], batch_size: int, *,
                 channels_last: bool = False, compile_model: bool = False
                 ) -> Runner:
  """The PyTorch twin trained with the same recipe, without host syncs."""
  h, w, c = shape
  model = torch_models.create(config.model_name, c, 10, input_size=h)
  memory_format = (torch.channels_last if channels_last
                   else torch.contiguous_format)
  model = model.to(memory_format=memory_format).train()
  opt_cfg = config.optimizer
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  groups = [dict(params=decay, weight_decay=opt_cfg.weight_decay),
            dict(params=no_decay, weight_decay=0.0)]
  if opt_cfg.name == 'sgd':
    opt = torch.optim.SGD(groups, lr=opt_cfg.learning_rate,
                          momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov)
  else:
    opt = torch.optim.AdamW(groups, lr=opt_cfg.learning_rate,
                            betas=(opt_cfg.b1, opt_cfg.b2), eps=1e-8)
  sched = torch.optim.lr_scheduler.OneCycleLR(
      opt, max_lr=opt_cfg.learning_rate, total_steps=10**6,
      pct_start=config.schedule.onecycle_pct_start,
      div_factor=config.schedule.onecycle_div_factor,
      final_div_factor=config.schedule.onecycle_final_div_factor)
  forward = torch.compile(model) if compile_model else model
  gen = torch.Generator().manual_seed(0)
  batches = [(torch.randn(batch_size, c, h, w, generator=gen).contiguous(
      memory_format=memory_format),
              torch.randint(0, 10, (batch_size,), generator=gen))
             for _ in range(NUM_DISTINCT_BATCHES)]
  smoothing = config.loss.label_smoothing
  autocast = config.dtype == 'bfloat16'
  sums = {'loss': torch.zeros(()), 'correct': torch.zeros((), dtype=torch.long)}
  counter = {'i': 0}

  def one_step(x, y):
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
      logits = forward(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():  # on-device sums, as the JAX step's metrics.
      sums['loss'] += loss.detach()
      sums['correct'] += (logits.argmax(-1) == y).sum()

  def run(n: int) -> None:
    for _ in range(n):
      one_step(*batches[counter['i'] % NUM_DISTINCT_BATCHES])
      counter['i'] += 1

  start = time.perf_counter()
  run(2)  # warm-up (and compilation for torch.compile)
  return Runner(name, run, time.perf_counter() - start)


def timed(run: Callable[[int], Timing | None], n: int) -> Timing:
  """Wall and CPU seconds and page faults (this process) of run(n).

  A runner in a worker process times itself there and returns its Timing.
  """
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  cpu0, t0 = time.process_time(), time.perf_counter()
  own = run(n)
  wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
  return own or Timing(wall, cpu, faults)


def measure(runners: list[Runner], steps_per_round: int, rounds: int,
            batch_size: int, pause_s: float = 0.0) -> None:
  """Round-robin timing; fills `images_per_s`, `cpu_per_wall` and
  `faults_per_step`.

  Untimed rounds warm every variant up first, until a round faults fewer
  than `WARM_FAULTS_PER_STEP` pages per step (at most `MAX_WARMUP_ROUNDS`): a
  JAX step's heap reaches its size only over the first steps after
  compilation, faulting in fresh pages meanwhile (FINDINGS.md section 9). `pause_s` of idle time before each timed run
  lets the previous runner's effects on the machine die down: its threads
  spinning before they sleep, and more on this VM (with the NCHW PyTorch
  worker in the rotation, a JAX round soon after it ran slower, though the
  worker's threads used no CPU by then; FINDINGS.md section 12).
  """
  for r in runners:
    for _ in range(MAX_WARMUP_ROUNDS):
      if timed(r.run, steps_per_round).faults < (
          WARM_FAULTS_PER_STEP * steps_per_round):
        break
  for _ in range(rounds):
    for r in runners:
      time.sleep(pause_s)
      t = timed(r.run, steps_per_round)
      r.images_per_s.append(steps_per_round * batch_size / t.wall)
      r.cpu_per_wall.append(t.cpu / t.wall)
      r.faults_per_step.append(t.faults / steps_per_round)


class WorkerProcess:
  """One variant's runners in a worker process, driven over pipes.

  Rounds still alternate between the processes, so every variant sees the
  same machine load, but no variant shares a heap or a thread pool with
  another (see the module docstring).
  """

  def __init__(self, threads: int):
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.train_throughput',
         '--worker', f'--threads={threads}'],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def call(self, **request) -> dict:
    self.proc.stdin.write(json.dumps(request) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError('A benchmark worker process died.')
    return json.loads(line)

  def runner(self, name: str, model_name: str, optimizer: str, dtype: str,
             shape, batch_size: int) -> Runner:
    key = f'{model_name}/{name}'
    reply = self.call(cmd='setup', key=key, name=name, model=model_name,
                      optimizer=optimizer, dtype=dtype, shape=list(shape),
                      batch_size=batch_size)

    def run(n: int) -> Timing:
      return Timing(**self.call(cmd='run', key=key, n=n))

    return Runner(name, run, reply['setup_s'])

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def local_runner(name: str, config: ml_collections.ConfigDict, shape,
                 batch_size: int) -> Runner:
  """The runner of variant `name` in this process."""
  if name in ('jax', 'jax_plain'):
    return jax_runner(name, config, shape, batch_size,
                      naive=name == 'jax_plain')
  if name in ('torch', 'torch_cl', 'torch_compile'):
    return torch_runner(name, config, shape, batch_size,
                        channels_last=name == 'torch_cl',
                        compile_model=name == 'torch_compile')
  raise SystemExit(f'Unknown variant {name!r}.')


def worker() -> None:
  """Serves WorkerProcess requests (one JSON object per line) on stdin."""
  runners = {}
  for line in sys.stdin:
    req = json.loads(line)
    if req['cmd'] == 'setup':
      config = make_config(req['model'], req['optimizer'], req['dtype'])
      runners[req['key']] = local_runner(
          req['name'], config, tuple(req['shape']), req['batch_size'])
      reply = {'setup_s': runners[req['key']].setup_s}
    else:
      reply = dataclasses.asdict(timed(runners[req['key']].run, req['n']))
    sys.stdout.write(json.dumps(reply) + '\n')
    sys.stdout.flush()


def report(model_name: str, shape, runners: list[Runner]) -> dict[str, float]:
  """Prints one model's table; returns {variant: median images/s}."""
  med = {r.name: float(np.median(r.images_per_s)) for r in runners}
  torch_names = [n for n in med if n.startswith('torch')]
  best_torch = max((med[n] for n in torch_names), default=float('nan'))
  print(f'\n{model_name}, input {"x".join(map(str, shape))}')
  print('| variant | images/s (median) | min - max | CPU/wall | page faults '
        '/ step | set-up s | / best PyTorch |')
  print('|---|---|---|---|---|---|---|')
  for r in runners:
    print(f'| {r.name} | {med[r.name]:,.0f} | {min(r.images_per_s):,.0f} - '
          f'{max(r.images_per_s):,.0f} | {np.median(r.cpu_per_wall):.2f} | '
          f'{np.median(r.faults_per_step):,.0f} (max '
          f'{max(r.faults_per_step):,.0f}) | {r.setup_s:.1f} | '
          f'{med[r.name] / best_torch:.2f} |')
  return med


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='lenet5,resnet20,resnet56')
  parser.add_argument('--variants',
                      default='jax,jax_plain,torch,torch_cl',
                      help='comma list of jax, jax_plain, torch, torch_cl')
  parser.add_argument('--torch_compile', action='store_true',
                      help='add the torch.compile variant (slow to compile)')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=0,
                      help='steps per round (0: per-model default)')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--dtype', default='float32',
                      choices=('float32', 'bfloat16'))
  parser.add_argument('--optimizer', default='adamw', choices=('adamw', 'sgd'))
  parser.add_argument('--resnet_input', default='32x32x3',
                      help='HxWxC of ResNet inputs (28x28x1: Fashion-MNIST)')
  parser.add_argument('--threads', type=int, default=2,
                      help='torch.set_num_threads')
  parser.add_argument('--pause', type=float, default=1.0,
                      help='idle seconds before each timed run')
  parser.add_argument('--in_process', action='store_true',
                      help='run every variant in this process (they then '
                      'slow each other down)')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  if args.worker:
    worker()
    return
  variants = args.variants.split(',')
  if args.torch_compile:
    variants.append('torch_compile')
  load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
  print(f'{platform.node()} {os.cpu_count()} CPUs, load {load}, '
        f'jax {jax.__version__} ({jax.device_count()} '
        f'{jax.default_backend()} devices), '
        f'torch {torch.__version__} ({args.threads} threads), batch '
        f'{args.batch_size}, {args.dtype}, {args.optimizer}, '
        f'{args.rounds} rounds')
  summary = []
  for name in args.models.split(','):
    shape = input_shape(name, args.resnet_input)
    config = make_config(name, args.optimizer, args.dtype)
    # Fresh processes per model too: a heap shaped by the previous model's
    # programs would make this one's first rounds fault.
    workers = ({} if args.in_process else
               {v: WorkerProcess(args.threads) for v in variants})
    runners = [
        workers[v].runner(v, name, args.optimizer, args.dtype, shape,
                          args.batch_size) if workers
        else local_runner(v, config, shape, args.batch_size)
        for v in variants]
    steps_per_round = args.steps or DEFAULT_STEPS.get(name, 2)
    measure(runners, steps_per_round, args.rounds, args.batch_size,
            args.pause)
    for w in workers.values():
      w.close()
    med = report(name, shape, runners)
    summary.append((name, med))
    sys.stdout.flush()
  load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
  print(f'\nJAX / best PyTorch (medians; load now {load}):')
  for name, med in summary:
    best = max((v for k, v in med.items() if k.startswith('torch')),
               default=float('nan'))
    parts = [f'{k} {med[k] / best:.2f}x' for k in med if k.startswith('jax')]
    print(f'  {name}: ' + ', '.join(parts))


if __name__ == '__main__':
  main()
