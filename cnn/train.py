"""Training and evaluation as one library call: `train_and_evaluate(config,
workdir)`.

The loop is plain Python around two compiled functions: a `jax.jit` train
step (data-parallel over a `Mesh`, buffers donated) and a `jax.jit` eval
step. Everything that changes lives in a `TrainState`; the data order and the
dropout randomness are functions of (seed, step), so a run resumed from a
checkpoint continues exactly where it stopped. It can be called many times in
one process (the studies do), and re-running it on a workdir resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import input_pipeline
from cnn import checkpoint as checkpoint_lib
from cnn import metrics as metrics_lib
from cnn import errors, optim, sharding, steps
from cnn.models import registry

# Fields that decide what a checkpoint holds: a workdir whose checkpoint
# differs in these is another experiment and is never overwritten.
IDENTITY_FIELDS = ('model_name', 'model', 'dtype', 'input.dataset',
                   'input.image_size', 'optimizer.name', 'schedule.name')


# Test sets up to this size (float32 bytes) stay on the devices between evals.
_EVAL_CACHE_BYTES = 1 << 30


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training produced a NaN/Inf loss or gradient."""


@dataclasses.dataclass
class RunResult:
  """What `train_and_evaluate` returns.

  status: 'completed' or 'preempted'.
  step: the last step trained (and checkpointed).
  metrics: the last evaluation record (also the last line of metrics.jsonl).
  """

  status: str
  step: int
  metrics: dict[str, Any]


def _field(config: ml_collections.ConfigDict, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return config


# Backbone options that change how the network is computed, not what it is:
# a run may resume with them changed.
IMPLEMENTATION_OPTIONS = ('remat', 'conv_impl')


def experiment_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  identity = {f: _field(config, f) for f in IDENTITY_FIELDS}
  identity['model'] = {k: v for k, v in identity['model'].items()
                       if k not in IMPLEMENTATION_OPTIONS}
  # Through JSON, as it is stored in the checkpoint (tuples become lists).
  return json.loads(json.dumps(identity))


def _model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  kwargs = dict(config.model.to_dict(), num_classes=num_classes,
                dtype=config.dtype)
  if config.head_dropout >= 0:
    kwargs['head_dropout'] = config.head_dropout
  return kwargs


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The registry model of `config` (rematerialisation, where a family has
  it, is the backbone option `config.model.remat`)."""
  return registry.create_model(config.model_name,
                               **_model_kwargs(config, num_classes))


def create_train_state(config: ml_collections.ConfigDict, model,
                       image_shape: tuple[int, int, int], learning_rate_fn,
                       mesh) -> steps.TrainState:
  """Initialises parameters directly with replicated sharding."""
  tx = optim.create_optimizer(config, learning_rate_fn)
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))

  def init():
    variables = model.init(
        {'params': init_key, 'dropout': init_key},
        jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables['params']
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params), rng=dropout_key,
        apply_fn=model.apply, tx=tx)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def _check_meta(config: ml_collections.ConfigDict, workdir: str):
  expected = experiment_identity(config)

  def check(meta: dict[str, Any]) -> None:
    found = meta.get('identity', {})
    diffs = {k: (found.get(k), v) for k, v in expected.items()
             if found.get(k) != v}
    if diffs:
      lines = '; '.join(f'{k}: checkpoint has {a!r}, config asks {b!r}'
                        for k, (a, b) in diffs.items())
      raise checkpoint_lib.CheckpointMismatchError(
          f'{workdir} holds checkpoints of a different experiment ({lines}). '
          'Nothing was changed. Use a new --workdir, or delete '
          f'{os.path.join(workdir, "checkpoints")} to start this one afresh.')
  return check


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once.
    self.signal_name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint, then stopping.',
                    self.signal_name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _any_process(flag: bool) -> bool:
  """Whether `flag` is set in any process; all processes must call it."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(
      np.asarray(flag, np.int32))))


def _fetch(tree) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(tree).items()}


def _mean(sums: dict[str, float], key: str, count_key: str = 'count') -> float:
  return sums[key] / sums[count_key] if sums[count_key] else float('nan')


def _eval_batches(input_config, batch_size: int, mesh):
  """A callable yielding the test set as padded, masked, sharded batches.

  Small test sets (the offline ones, CIFAR) are put on the devices once and
  reused by every evaluation; larger ones are streamed each time.
  """
  make = functools.partial(
      input_pipeline.create_eval_batches, input_config, batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  stream = lambda: (sharding.put_global_batch(b, mesh) for b in make())
  info = input_pipeline.get_dataset_info(
      input_config.dataset, data_dir=input_config.data_dir,
      manual_dir=input_config.manual_dir, download=input_config.download,
      image_size=input_config.image_size)
  num_test = input_config.test_subset or info.num_test
  if num_test * np.prod(info.image_shape) * 4 > _EVAL_CACHE_BYTES:
    return stream
  cached = list(stream())
  return lambda: iter(cached)


def evaluate(eval_fn, state, eval_batches) -> dict[str, float]:
  """Loss and accuracy over every test example exactly once."""
  metrics = jax.device_put(steps.empty_eval_metrics(),
                           jax.tree.leaves(state.step)[0].sharding)
  for batch in eval_batches():
    metrics = eval_fn(state, metrics, batch)
  sums = _fetch(metrics)
  return dict(test_loss=_mean(sums, 'loss_sum'),
              test_accuracy=_mean(sums, 'correct_sum'),
              test_count=int(sums['count']))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> RunResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Writes `workdir/config.json`, `workdir/metrics.jsonl` (one record per
  evaluation), TensorBoard events and `workdir/checkpoints/`.
  """
  start_time = time.time()
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.create_mesh()
  inp = config.input
  registry.get_spec(config.model_name)  # unknown names fail before data I/O.
  info = input_pipeline.get_dataset_info(
      inp.dataset, data_dir=inp.data_dir, manual_dir=inp.manual_dir,
      download=inp.download, image_size=inp.image_size)
  registry.check_input_shape(config.model_name, info.image_shape)
  sharding.check_batch_size(inp.batch_size)
  devices = jax.device_count()
  eval_batch_size = -(-inp.eval_batch_size // devices) * devices

  source = input_pipeline.create_train_source(
      inp, seed=config.seed, global_batch_size=inp.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      mesh=mesh, data_axis=sharding.DATA_AXIS)
  # Loaded before anything in the workdir is written, so that a missing or
  # corrupt test set fails without touching an existing run.
  eval_batches = _eval_batches(inp, eval_batch_size, mesh)
  steps_per_epoch = source.steps_per_epoch
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(round(config.num_epochs * steps_per_epoch)))
  eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))

  model = create_model(config, info.num_classes)
  learning_rate_fn = optim.create_learning_rate_fn(
      config, steps_per_epoch, total_steps)
  state = create_train_state(config, model, info.image_shape,
                             learning_rate_fn, mesh)

  checkpointer = checkpoint_lib.Checkpointer(workdir,
                                             keep=config.keep_checkpoints)
  meta = dict(identity=experiment_identity(config))
  restored, _ = checkpointer.restore_latest(
      state, check_meta=_check_meta(config, workdir))
  # After the identity check: a refused workdir gets no new event file.
  writer = metrics_lib.MetricWriter(workdir)
  if restored is not None:
    state = restored
    logging.info('Resumed from the checkpoint at step %d.', int(state.step))
  start_step = int(jax.device_get(state.step))
  writer.truncate_after(start_step)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  train_step = jax.jit(
      functools.partial(
          steps.train_step, label_smoothing=config.loss.label_smoothing,
          aux_weight=config.loss.aux_weight,
          skip_nonfinite=config.on_nonfinite == 'skip'),
      donate_argnums=(0, 1))
  if source.pipeline == 'device':
    # The batch is gathered and augmented inside the compiled step: no host
    # work per step at all.
    def device_step(state, metrics, data):
      batch = source.get_batch(data, config.seed, state.step)
      return train_step(state, metrics, batch)

    step_fn = jax.jit(device_step, donate_argnums=(0, 1))
    next_input = lambda: source.data
  else:
    step_fn = train_step
    batches = source.iterator(start_step)
    next_input = lambda: sharding.put_global_batch(next(batches), mesh)

  eval_fn = jax.jit(steps.eval_step, donate_argnums=(1,))

  replicated = sharding.replicated(mesh)
  # Start from arrays already placed like the step's outputs, so the second
  # call hits the same compiled executable as the first.
  new_train_metrics = lambda: jax.device_put(steps.empty_train_metrics(),
                                             replicated)
  metrics = new_train_metrics()
  lr_at = jax.jit(learning_rate_fn)  # one compile, not one per eager op.
  last_record: dict[str, Any] = {}
  # Throughput counts steps after the first of this process (which compiles)
  # and excludes evaluation and checkpoint time.
  interval_start, interval_step = time.time(), start_step
  timed_steps, train_time, compile_time_s = 0, 0.0, None
  step = start_step
  status = 'completed'
  bar = metrics_lib.progress_bar(total_steps, start_step, config.progress_bar)

  def check_finite(sums):
    if sums['nonfinite_count'] and config.on_nonfinite != 'skip':
      bad = int(sums['first_nonfinite_step'])
      good = checkpointer.latest_step()
      where = (f'the last good checkpoint is step {good} in '
               f'{checkpointer.directory}' if good is not None else
               'no checkpoint had been saved yet')
      raise NonFiniteLossError(
          f'Non-finite loss or gradient at step {bad} (the update of step '
          f'{bad} produced NaN/Inf). The run stopped without saving; {where}. '
          'Lower --config.optimizer.learning_rate, add --config.optimizer.'
          'grad_clip_norm=1.0, or set --config.on_nonfinite=skip to skip '
          'such updates.')

  # Saving is collective: the processes of a multi-process run must stop at
  # the same step, so they agree on a signal at boundaries all of them reach
  # (one process alone may have got it, or got it a step later).
  stop_any_step = jax.process_count() == 1
  with _StopRequest() as stop:
    try:
      while step < total_steps:
        state, metrics = step_fn(state, metrics, next_input())
        step += 1
        bar.update(1)
        if compile_time_s is None:
          jax.block_until_ready(state)
          compile_time_s = time.time() - interval_start
          interval_start, interval_step = time.time(), step
        is_eval = step % eval_every == 0 or step == total_steps
        is_log = step % config.log_every_steps == 0
        is_ckpt = step % config.checkpoint_every_steps == 0
        if not (is_eval or is_log or is_ckpt
                or (stop_any_step and stop.signal_name)):
          continue
        # Read once: a signal arriving later in this step must not skip the
        # save below and still end the run.
        stopping = _any_process(stop.signal_name is not None)
        # A host sync happens only here, at log/eval/checkpoint boundaries.
        sums = _fetch(metrics)
        check_finite(sums)
        now = time.time()
        train_time += now - interval_start
        timed_steps += step - interval_step
        throughput = (step - interval_step) * inp.batch_size / max(
            now - interval_start, 1e-9)
        bar.set_postfix(loss=f'{_mean(sums, "loss_sum", "loss_count"):.4f}',
                        img_s=f'{throughput:.0f}')
        if is_eval:
          record = dict(
              step=step, epoch=step / steps_per_epoch,
              train_loss=_mean(sums, 'loss_sum', 'loss_count'),
              train_accuracy=_mean(sums, 'correct_sum'),
              learning_rate=float(lr_at(step - 1)) * float(
                  optim.plateau_scale(state.opt_state)),
              examples_per_sec=(timed_steps * inp.batch_size / train_time
                                if timed_steps else float('nan')),
              compile_time_s=compile_time_s,
              nonfinite_steps=int(sums['nonfinite_count']))
          record.update(evaluate(eval_fn, state, eval_batches))
          record['wall_time_s'] = time.time() - start_time
          writer.write(record)
          last_record = record
          logging.info('step %d epoch %.2f: %s', step, record['epoch'],
                       json.dumps({k: round(v, 4) if isinstance(v, float)
                                   else v for k, v in record.items()}))
          metrics = new_train_metrics()
          timed_steps, train_time = 0, 0.0
        if is_eval or is_ckpt or stopping:
          checkpointer.save(state, meta)
        interval_start, interval_step = time.time(), step
        if stopping:
          status = 'preempted'
          break
    finally:
      bar.close()
      checkpointer.close()
      writer.close()
  if status == 'preempted':
    logging.warning('Stopped by %s at step %d; the checkpoint is saved. Run '
                    'the same command again to resume.',
                    stop.signal_name or 'a signal to another process', step)
  if not last_record:
    last_record = (metrics_lib.read_metrics(workdir) or [{}])[-1]
  return RunResult(status=status, step=step, metrics=last_record)
