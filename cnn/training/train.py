"""Training and evaluation as one library call: `train_and_evaluate(config,
workdir)`.

The loop is plain Python around two compiled functions: a `jax.jit` train
step (data-parallel over a `Mesh`, buffers donated) and a `jax.jit` eval
step. Everything that changes lives in a `TrainState`; the data order and the
dropout randomness are functions of (seed, step), so a run resumed from a
checkpoint continues exactly where it stopped. It can be called many times in
one process (the sweeps do): runs that differ only in their seed share one
`Program` (model, optimizer and compiled steps), so the second seed compiles
nothing, and re-running it on a workdir resumes.

Reading order: `train_and_evaluate` -> `_set_up` (data, program, state,
checkpoints) -> `_train_loop` -> `_evaluation_record`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import input_pipeline
from cnn.common import errors
from cnn.kernels import forms
from cnn.models import base, registry
from cnn.training import checkpoint as checkpoint_lib
from cnn.training import metrics as metrics_lib
from cnn.training import optim, packed, recipe, sharding, steps
from cnn.transfer import cached_features, regimes
from cnn.transfer import pretrained as transfer_pretrained

# Test sets up to this size (float32 bytes) stay on the devices between evals.
_EVAL_CACHE_BYTES = 1 << 30
# Compute dtypes a run may use (`config.dtype`).
DTYPES = ('float32', 'bfloat16')


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training produced a NaN/Inf loss or gradient (at update `step`)."""

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


@dataclasses.dataclass
class RunResult:
  """What `train_and_evaluate` returns.

  status: 'completed' or 'preempted' (stopped by SIGTERM/SIGINT; rerun to
    continue; `main.py` exits with status 3).
  step: the last step trained (and checkpointed); for a run stopped before
    training, the step it would have started from (-1 when that was not
    known yet).
  metrics: the last evaluation record (also the last line of metrics.jsonl).
  """

  status: str
  step: int
  metrics: dict[str, Any]


# ----------------------------------------------------------- model and state


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


def _state_initializer(model, tx, image_shape: tuple[int, int, int], mesh
                       ) -> Callable[[jax.Array], steps.TrainState]:
  """A jitted `PRNG key -> TrainState`, created directly replicated."""

  def init(key):
    init_key, dropout_key = jax.random.split(key)
    variables = model.init(
        {'params': init_key, 'dropout': init_key},
        jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables['params']
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params), rng=dropout_key,
        apply_fn=model.apply, tx=tx)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))


def _init_shapes(model, image_shape: tuple[int, int, int]) -> dict:
  """The variables' shapes ({'params', 'batch_stats'?}), nothing computed."""
  return jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0),
                          'dropout': jax.random.PRNGKey(0)},
                         jnp.zeros((1, *image_shape), jnp.float32),
                         train=False))


def _param_labels(config: ml_collections.ConfigDict, shapes: dict,
                  groups: list[str]):
  """Each parameter's rule of `config.transfer` (`regimes.param_labels`) for
  the variables `shapes` with backbone `groups` in forward order; a rule
  list that leaves a parameter uncovered fails here."""
  return regimes.param_labels(
      shapes['params'], regimes.regime_rules(config.transfer, groups))


def create_train_state(config: ml_collections.ConfigDict, model,
                       image_shape: tuple[int, int, int], learning_rate_fn,
                       mesh) -> steps.TrainState:
  """Initialises parameters directly with replicated sharding."""
  tx = optim.create_optimizer(config, learning_rate_fn, _param_labels(
      config, _init_shapes(model, image_shape),
      base.backbone_groups(model, image_shape)))
  init = _state_initializer(model, tx, image_shape, mesh)
  return init(jax.random.PRNGKey(config.seed))


def _uses_init_from(config: ml_collections.ConfigDict) -> bool:
  return bool(config.init_from) and config.transfer.regime != 'scratch'


def _start_from(state: steps.TrainState, variables: dict, mesh
                ) -> steps.TrainState:
  """`state` with pretrained variables and a fresh optimizer state for them."""
  put = lambda tree: jax.device_put(tree, sharding.replicated(mesh))
  params = put(variables['params'])
  opt_state = jax.jit(state.tx.init,
                      out_shardings=sharding.replicated(mesh))(params)
  return state.replace(params=params,
                       batch_stats=put(variables['batch_stats']),
                       opt_state=opt_state)


# ------------------------------------------------------------------- program


@dataclasses.dataclass(frozen=True)
class Program:
  """What runs that differ only in their seed share in one process.

  Attributes:
    model: the flax module.
    groups: its backbone parameter groups in forward order.
    learning_rate_fn: step -> learning rate (before any plateau scale).
    init: PRNG key -> replicated `TrainState`.
    train_step: (state, metrics, step input) -> (state, metrics); the
      source's `step_batch_fn` turns the step input into the batch inside.
    eval_step: (state, sums, padded batch) -> sums.
    learning_rate: jitted `learning_rate_fn` (one compile, not one per op).
    grad_norm_modules: with `config.log_grad_norms`, the module paths whose
      gradient norms the step sums (`_grad_norm_modules`); else empty.
    final_eval_step: the last evaluation's step: `eval_step`, or with
      `config.log_zero_fraction` one that also counts zero activations.
  """

  model: Any
  groups: list[str]
  learning_rate_fn: Callable
  init: Callable
  train_step: Callable
  eval_step: Callable
  learning_rate: Callable
  grad_norm_modules: tuple[str, ...] = ()
  final_eval_step: Callable | None = None


_PROGRAMS: dict[tuple, Program] = {}
_MAX_PROGRAMS = 32


def clear_programs() -> None:
  """Forgets every cached `Program` (the next run compiles afresh)."""
  _PROGRAMS.clear()


def _step_with_batch_fn(state, metrics, inputs, *, batch_fn,
                        eval_mode_norms: frozenset = frozenset(),
                        **step_options):
  # Frozen groups' batch norms use and keep their loaded running statistics.
  with forms.batch_norms_in_eval_mode(eval_mode_norms):
    return steps.train_step(
        state, metrics, batch_fn(inputs, state.step), **step_options)


def get_program(config: ml_collections.ConfigDict, num_classes: int,
                image_shape: tuple[int, int, int], steps_per_epoch: int,
                total_steps: int, batch_fn: Callable, mesh) -> Program:
  """The `Program` of `config`, built once per process for every seed.

  Keyed by everything that decides the compiled computations: the config
  without its seed, the data shapes, the schedule length, the source's batch
  function (hashable) and the mesh.
  """
  config_key = {k: v for k, v in json.loads(config.to_json_best_effort())
                .items() if k != 'seed'}
  key = (json.dumps(config_key, sort_keys=True), num_classes,
         tuple(image_shape), steps_per_epoch, total_steps, batch_fn, mesh)
  if key in _PROGRAMS:
    return _PROGRAMS[key]
  model = create_model(config, num_classes)
  learning_rate_fn = optim.create_learning_rate_fn(
      config, steps_per_epoch, total_steps)
  shapes = _init_shapes(model, image_shape)
  groups = base.backbone_groups(model, image_shape)
  labels = _param_labels(config, shapes, groups)
  tx = optim.create_optimizer(config, learning_rate_fn, labels)
  eval_mode_norms = frozenset()
  if config.transfer.freeze_batch_stats:
    eval_mode_norms = regimes.frozen_norms(shapes.get('batch_stats', {}),
                                           labels)
  train_step = functools.partial(
      _step_with_batch_fn, batch_fn=batch_fn, eval_mode_norms=eval_mode_norms,
      label_smoothing=config.loss.label_smoothing,
      aux_weight=config.loss.aux_weight,
      skip_nonfinite=config.on_nonfinite == 'skip')
  eval_step = jax.jit(steps.eval_step, donate_argnums=(1,))
  program = Program(
      model=model, groups=groups, learning_rate_fn=learning_rate_fn,
      init=_state_initializer(model, tx, image_shape, mesh),
      train_step=jax.jit(train_step, donate_argnums=(0, 1)),
      eval_step=eval_step,
      # Not donated: its first call adds the zero-count keys to the sums.
      final_eval_step=(jax.jit(steps.eval_step_with_zero_counts)
                       if config.log_zero_fraction else eval_step),
      learning_rate=jax.jit(learning_rate_fn),
      grad_norm_modules=(_grad_norm_modules(model, image_shape, shapes)
                         if config.log_grad_norms else ()))
  if len(_PROGRAMS) >= _MAX_PROGRAMS:
    _PROGRAMS.pop(next(iter(_PROGRAMS)))
  _PROGRAMS[key] = program
  return program


def _grad_norm_modules(model, image_shape: tuple[int, int, int],
                       shapes: dict) -> tuple[str, ...]:
  """Every module with parameters ('backbone/c1_conv', ..., 'head'), in the
  order the network applies them to an image (read off a shape-only trace
  of `model.init`, as `base.backbone_groups` does: parameter trees sort
  their keys). Modules never applied in eval mode (auxiliary heads) come
  last, sorted."""
  order = {}

  def record(next_fun, args, kwargs, context):
    order.setdefault('/'.join(context.module.path), None)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    _init_shapes(model, image_shape)
  owners = {steps.param_module(path) for path, _ in
            jax.tree_util.tree_leaves_with_path(shapes['params'])}
  return tuple([m for m in order if m in owners] +
               sorted(owners - set(order)))


# ---------------------------------------------------------------- evaluation


def _fetch(tree) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(tree).items()}


def _mean(sums: dict[str, float], key: str, count_key: str = 'count') -> float:
  return sums[key] / sums[count_key] if sums[count_key] else float('nan')


def _eval_batches(input_config, batch_size: int, mesh, split: str = 'test'):
  """A callable yielding a split as padded, masked, sharded batches.

  The test split (or its first `test_subset` examples), or for
  split='train' the first `train_subset` training examples, unaugmented.
  Small splits (the offline ones, CIFAR) are put on the devices once and
  reused by every evaluation; larger ones are streamed each time.
  """
  make = functools.partial(
      input_pipeline.create_eval_batches, input_config, split=split,
      batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  stream = lambda: (sharding.put_global_batch(b, mesh) for b in make())
  info = input_pipeline.get_input_info(input_config)
  subset = input_config.test_subset if split == 'test' else (
      input_config.train_subset)
  num = subset or (info.num_test if split == 'test' else info.num_train)
  if num * np.prod(info.image_shape) * 4 > _EVAL_CACHE_BYTES:
    return stream
  cached = list(stream())
  return lambda: iter(cached)


def evaluate(eval_fn, state, eval_batches, prefix: str = 'test'
             ) -> dict[str, float]:
  """Loss and accuracy over every example of `eval_batches()` exactly once,
  as `{prefix}_loss`, `{prefix}_accuracy`, `{prefix}_count`, and
  `{prefix}_top5_accuracy` for models with more than 5 classes."""
  metrics = jax.device_put(steps.empty_eval_metrics(),
                           jax.tree.leaves(state.step)[0].sharding)
  for batch in eval_batches():
    metrics = eval_fn(state, metrics, batch)
  sums = _fetch(metrics)
  record = {f'{prefix}_loss': _mean(sums, 'loss_sum'),
            f'{prefix}_accuracy': _mean(sums, 'correct_sum'),
            f'{prefix}_count': int(sums['count'])}
  if sums.get('top5_count'):
    record[f'{prefix}_top5_accuracy'] = _mean(sums, 'top5_sum',
                                              'top5_count')
  for key in sums:  # `steps.eval_step_with_zero_counts`' sums, if any.
    if key.startswith(steps.ZERO_COUNT_PREFIX):
      name = key[len(steps.ZERO_COUNT_PREFIX):]
      record[f'{prefix}_zero_fraction/{name}'] = _mean(
          sums, key, steps.VALUE_COUNT_PREFIX + name)
  return record


# -------------------------------------------------------------------- set-up


@dataclasses.dataclass
class _Run:
  """Everything one `train_and_evaluate` call works with."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  source: input_pipeline.TrainSource
  eval_sets: dict[str, Callable]  # metrics prefix -> batches
  eval_sets_between: dict[str, Callable]  # the same before the last eval.
  program: Program
  state: steps.TrainState
  total_steps: int
  eval_every: int
  checkpointer: checkpoint_lib.Checkpointer
  writer: metrics_lib.MetricWriter
  meta: dict[str, Any]
  start_time: float
  last_record: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def steps_per_epoch(self) -> int:
    return self.source.steps_per_epoch

  @property
  def start_step(self) -> int:
    return int(jax.device_get(self.state.step))


def _load_data(config: ml_collections.ConfigDict, mesh):
  """(train source, {prefix: eval batches}, the same for evaluations before
  the last (`config.eval_subset`), DatasetInfo); fails on bad
  names, sizes or files before anything in the workdir is written."""
  inp = config.input
  registry.get_spec(config.model_name)  # unknown names fail before data I/O.
  # In memory or streamed (input_pipeline.uses_streaming); a streamed data
  # set is never read in full here.
  info = input_pipeline.get_input_info(inp)
  registry.check_input_shape(config.model_name, info.image_shape)
  sharding.check_batch_size(inp.batch_size)
  source = input_pipeline.create_train_source(
      inp, seed=config.seed, global_batch_size=inp.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      mesh=mesh, data_axis=sharding.DATA_AXIS)
  devices = jax.device_count()
  eval_batch_size = -(-inp.eval_batch_size // devices) * devices

  def sets(input_config):
    out = {'test': _eval_batches(input_config, eval_batch_size, mesh)}
    if inp.validation_per_class or inp.validation_fraction:
      out['validation'] = _eval_batches(input_config, eval_batch_size, mesh,
                                        split='validation')
    if config.eval_on_train:
      out['train_eval'] = _eval_batches(input_config, eval_batch_size, mesh,
                                        split='train')
    return out

  eval_sets = sets(inp)
  # Dense curves at little cost: evaluations before the last on the first
  # `eval_subset` examples of each set; the last one on all of them.
  between = eval_sets
  if config.eval_subset > 0:
    first = ml_collections.ConfigDict(inp.to_dict())
    first.test_subset = min(config.eval_subset,
                            inp.test_subset or config.eval_subset)
    first.train_subset = min(config.eval_subset,
                             inp.train_subset or config.eval_subset)
    between = sets(first)
  return source, eval_sets, between, info


def _set_up(config: ml_collections.ConfigDict, workdir: str,
            stop: _StopRequest | None = None) -> _Run:
  """Data, program, state (restored from the workdir's latest checkpoint if
  it has one), metric writer and checkpointer. A `stop` signal ends it at
  once until the workdir is first written, then waits for the loop."""
  start_time = time.time()
  mesh = sharding.create_mesh()
  source, eval_sets, eval_sets_between, info = _load_data(config, mesh)
  spe = source.steps_per_epoch
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(round(config.num_epochs * spe)))
  batch_fn = source.step_batch_fn
  if config.transfer.cache_features:
    cached_features.check_config(config, source)
    batch_fn = cached_features.batch_fn(source)
  program = get_program(config, info.num_classes, info.image_shape, spe,
                        total_steps, batch_fn, mesh)
  state = program.init(jax.random.PRNGKey(config.seed))
  pretrained = None
  if _uses_init_from(config):  # checked even on resume: fails before writing.
    fresh = jax.device_get({'params': state.params,
                            'batch_stats': state.batch_stats})
    pretrained = transfer_pretrained.load_pretrained(
        config, fresh, program.groups,
        labels=_param_labels(config, fresh, program.groups))
  # Inputs are known good (their errors come first); a changed recipe is
  # refused before anything is written.
  recipe.check_rerun(config, workdir,
                     has_trained=checkpoint_lib.has_checkpoint(workdir))
  if stop is not None:
    stop.defer()  # from here on set-up writes the workdir.
  os.makedirs(workdir, exist_ok=True)

  checkpointer = checkpoint_lib.Checkpointer(workdir,
                                             keep=config.keep_checkpoints)
  restored, _ = checkpointer.restore_latest(
      state, check_meta=checkpoint_lib.identity_check(config, workdir))
  # After the identity check: a refused workdir gets no new event file.
  writer = metrics_lib.MetricWriter(workdir)
  if restored is not None:
    state = restored
    logging.info('Resumed from the checkpoint at step %d.', int(state.step))
  elif pretrained is not None:
    state = _start_from(state, pretrained, mesh)
    logging.info('Initialised from %s.', config.init_from)
  if config.transfer.cache_features:  # the frozen backbone, restored or not.
    source = cached_features.feature_source(
        program.model, {'params': state.params,
                        'batch_stats': state.batch_stats}, source)
  writer.truncate_after(int(jax.device_get(state.step)))
  if jax.process_index() == 0:
    recipe.record(config, workdir, int(jax.device_get(state.step)))
  return _Run(
      config=config, workdir=workdir, mesh=mesh, source=source,
      eval_sets=eval_sets, eval_sets_between=eval_sets_between,
      program=program, state=state, total_steps=total_steps,
      eval_every=max(1, int(round(config.eval_every_epochs * spe))),
      checkpointer=checkpointer, writer=writer,
      meta=dict(identity=checkpoint_lib.experiment_identity(config)),
      start_time=start_time)


# ---------------------------------------------------------------------- loop


class _StoppedInSetUp(BaseException):
  """A signal came during set-up, before the workdir was written. Not an
  Exception (as KeyboardInterrupt is not): no `except Exception` on its way
  (data loading, a sweep's member runner) may record it as a failure."""


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps.

  In a one-process run, until `defer()` (set-up about to write the workdir),
  the signal raises `_StoppedInSetUp` at once instead: nothing can be lost
  yet, and a preempted job need not wait for data loading or compilation.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    # Several processes must stop together: they agree in the loop.
    self._interrupt = jax.process_count() == 1

  def defer(self) -> None:
    """From now on a signal only sets the flag."""
    self._interrupt = False

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
    if self._interrupt:
      raise _StoppedInSetUp(self.signal_name)
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


class _Throughput:
  """Training images/s: counts steps after the first of this process (which
  compiles) and excludes evaluation and checkpoint time."""

  def __init__(self, step: int, batch_size: int):
    self.batch_size = batch_size
    self.compile_time_s: float | None = None
    self._steps, self._seconds = 0, 0.0
    self.resume(step)

  def resume(self, step: int) -> None:
    self._since, self._since_step = time.time(), step

  def first_step_done(self, state, step: int) -> None:
    jax.block_until_ready(state)
    self.compile_time_s = time.time() - self._since
    self.resume(step)

  def pause(self, step: int) -> float:
    """Ends an interval at `step`; returns its images/s."""
    seconds = time.time() - self._since
    self._steps += step - self._since_step
    self._seconds += seconds
    return (step - self._since_step) * self.batch_size / max(seconds, 1e-9)

  def examples_per_sec(self) -> float:
    """Since the last `reset` (the last evaluation)."""
    if not self._steps:
      return float('nan')
    return self._steps * self.batch_size / self._seconds

  def reset(self) -> None:
    self._steps, self._seconds = 0, 0.0


def _check_finite(run: _Run, sums: dict[str, float]) -> None:
  if not sums['nonfinite_count'] or run.config.on_nonfinite == 'skip':
    return
  bad = int(sums['first_nonfinite_step'])
  good = run.checkpointer.latest_step()
  where = (f'the last good checkpoint is step {good} in '
           f'{run.checkpointer.directory}' if good is not None else
           'no checkpoint had been saved yet')
  raise NonFiniteLossError(
      f'Non-finite loss or gradient at step {bad} (the update of step '
      f'{bad} produced NaN/Inf). The run stopped without saving; {where}. '
      'Lower --config.optimizer.learning_rate, add --config.optimizer.'
      'grad_clip_norm=1.0, or set --config.on_nonfinite=skip to skip '
      'such updates.', step=bad)


def _evaluation_record(run: _Run, state, step: int, sums: dict[str, float],
                       throughput: _Throughput) -> dict[str, Any]:
  """The metrics.jsonl line of an evaluation at `step`."""
  record = dict(
      step=step, epoch=step / run.steps_per_epoch,
      train_loss=_mean(sums, 'loss_sum', 'loss_count'),
      train_accuracy=_mean(sums, 'correct_sum'),
      learning_rate=float(run.program.learning_rate(step - 1)) * float(
          optim.plateau_scale(state.opt_state)),
      examples_per_sec=throughput.examples_per_sec(),
      compile_time_s=throughput.compile_time_s,
      nonfinite_steps=int(sums['nonfinite_count']))
  final = step == run.total_steps
  sets = run.eval_sets if final else run.eval_sets_between
  eval_step = run.program.final_eval_step if final else run.program.eval_step
  for prefix, batches in sets.items():
    record.update(evaluate(eval_step, state, batches, prefix))
  # `log_grad_norms`: each module's mean gradient norm over the (finite)
  # steps since the previous evaluation, in forward order.
  for module in run.program.grad_norm_modules:
    key = steps.GRAD_NORM_PREFIX + module
    record[key] = _mean(sums, key, steps.GRAD_NORM_COUNT)
  record['wall_time_s'] = time.time() - run.start_time
  return record


def _significant(record: dict[str, Any], digits: int = 4) -> dict[str, Any]:
  """Floats to `digits` significant digits for the console (a learning rate
  of 4e-5 stays 4e-05, not 0.0)."""
  return {k: float(f'{v:.{digits}g}') if isinstance(v, float) else v
          for k, v in record.items()}


def _training_log_record(run: _Run, state, step: int, sums: dict[str, float],
                         previous: dict[str, float],
                         images_per_sec: float) -> dict[str, Any]:
  """The metrics.jsonl line (`kind: "train"`) of a log step between
  evaluations: training loss and accuracy over the steps since the previous
  line (`sums` minus `previous`, running sums since the last evaluation)."""
  window = {k: v - previous.get(k, 0.0) for k, v in sums.items()}
  return dict(
      kind='train', step=step, epoch=step / run.steps_per_epoch,
      train_loss=_mean(window, 'loss_sum', 'loss_count'),
      train_accuracy=_mean(window, 'correct_sum'),
      learning_rate=float(run.program.learning_rate(step - 1)) * float(
          optim.plateau_scale(state.opt_state)),
      examples_per_sec=images_per_sec,
      wall_time_s=time.time() - run.start_time)


def _new_train_metrics(mesh, grad_norm_modules: Sequence[str] = ()):
  # Placed like the step's outputs, so the second call hits the same
  # compiled executable as the first.
  return jax.device_put(steps.empty_train_metrics(grad_norm_modules),
                        sharding.replicated(mesh))


class _Members:
  """The runs one loop trains: one, or several packed into one step.

  One run keeps its own state and metrics (the plain path, unchanged); K
  packed runs have them stacked along a leading member axis and advance in
  one `packed.packed_step` (cnn/training/packed.py). `states` and `sums`
  give each run its own view at log, evaluation and checkpoint steps.
  """

  def __init__(self, runs: Sequence[_Run], step: int):
    self.runs = list(runs)
    program = runs[0].program
    inputs = [r.source.step_inputs(step) for r in runs]
    if len(runs) == 1:
      self.state = runs[0].state
      self.inputs = inputs[0]
      self.step_fn = program.train_step
      return
    firsts = [next(i) for i in inputs]
    in_axes = packed.shared_leaves(firsts)
    self.state = packed.stack([r.state for r in runs])
    self.inputs = _stacked_inputs(firsts, inputs, in_axes)
    self.step_fn = packed.packed_step(program.train_step, in_axes)

  def new_metrics(self):
    metrics = _new_train_metrics(self.runs[0].mesh,
                                 self.runs[0].program.grad_norm_modules)
    if len(self.runs) == 1:
      return metrics
    return packed.stack([metrics] * len(self.runs))

  def states(self) -> list[Any]:
    if len(self.runs) == 1:
      return [self.state]
    return packed.unstack(self.state, len(self.runs))

  def sums(self, metrics) -> list[dict[str, float]]:
    """Each run's running sums (the only host sync of a step)."""
    if len(self.runs) == 1:
      return [_fetch(metrics)]
    host = jax.device_get(metrics)
    return [{k: float(v[i]) for k, v in host.items()}
            for i in range(len(self.runs))]


def _stacked_inputs(firsts, iterators, in_axes):
  """The packed step's inputs: members' step inputs stacked per step."""
  yield packed.stack_inputs(firsts, in_axes)
  while True:
    yield packed.stack_inputs([next(i) for i in iterators], in_axes)


def _train_loop(runs: Sequence[_Run], stop: _StopRequest, bar
                ) -> tuple[str, int]:
  """Trains `runs` (one, or several packed: same program, same start step)
  from their states to `total_steps`; returns (status, step)."""
  run0 = runs[0]
  config, step = run0.config, run0.start_step
  members = _Members(runs, step)
  state = members.state
  metrics = members.new_metrics()
  throughput = _Throughput(step, config.input.batch_size)
  # Saving is collective: the processes of a multi-process run must stop at
  # the same step, so they agree on a signal at boundaries all of them reach
  # (one process alone may have got it, or got it a step later).
  stop_any_step = jax.process_count() == 1
  if stop_any_step and stop.signal_name:  # came while set-up wrote files.
    return 'preempted', step
  # Each run's sums at its last training-log line since an evaluation.
  logged_sums = [{} for _ in runs]
  while step < run0.total_steps:
    state, metrics = members.step_fn(state, metrics, next(members.inputs))
    step += 1
    bar.update(1)
    if throughput.compile_time_s is None:
      throughput.first_step_done(state, step)
    is_eval = step % run0.eval_every == 0 or step == run0.total_steps
    is_ckpt = step % config.checkpoint_every_steps == 0
    is_log = step % config.log_every_steps == 0
    if not (is_eval or is_ckpt or is_log
            or (stop_any_step and stop.signal_name)):
      continue
    # Read once: a signal arriving later in this step must not skip the
    # save below and still end the run.
    stopping = _any_process(stop.signal_name is not None)
    members.state = state
    all_sums = members.sums(metrics)
    for run, sums in zip(runs, all_sums, strict=True):
      _check_finite(run, sums)
    images_per_sec = throughput.pause(step)
    bar.set_postfix(loss=f'{_mean(all_sums[0], "loss_sum", "loss_count"):.4f}',
                    img_s=f'{images_per_sec:.0f}')
    states = members.states()
    for i, (run, member_state, sums) in enumerate(
        zip(runs, states, all_sums, strict=True)):
      if is_eval:
        run.last_record = _evaluation_record(run, member_state, step, sums,
                                             throughput)
        run.writer.write(run.last_record)
        logging.info('%sstep %d epoch %.2f: %s',
                     f'{run.workdir}: ' if len(runs) > 1 else '', step,
                     run.last_record['epoch'],
                     json.dumps(_significant(run.last_record)))
        logged_sums[i] = {}
      elif is_log:
        run.writer.write(_training_log_record(
            run, member_state, step, sums, logged_sums[i], images_per_sec))
        logged_sums[i] = sums
      if is_eval or is_ckpt or stopping:
        run.checkpointer.save(member_state, run.meta)
    if is_eval:
      metrics = members.new_metrics()
      throughput.reset()
    throughput.resume(step)
    if stopping:
      return 'preempted', step
  return 'completed', step


def _check_dtype(config: ml_collections.ConfigDict) -> None:
  if config.dtype not in DTYPES:  # before the workdir is even compared.
    raise errors.UserError(
        f'config.dtype must be one of {DTYPES}, got {config.dtype!r}: set '
        '--config.dtype=float32 or --config.dtype=bfloat16.')


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> RunResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Writes `workdir/config.json`, `workdir/metrics.jsonl` (one record per
  evaluation, one per log step between), TensorBoard events and
  `workdir/checkpoints/`. Convolutions are computed as `config.conv_impl`
  says (`cnn.kernels.forms`).
  """
  return _train([config], [workdir])[0]


def train_and_evaluate_packed(configs: Sequence[ml_collections.ConfigDict],
                              workdirs: Sequence[str]) -> list[RunResult]:
  """Trains runs that differ only in `packed.PACKABLE_FIELDS` (their seeds)
  together, in one compiled step over their stacked states; each workdir
  gets exactly the files `train_and_evaluate(config, workdir)` writes.

  Raises:
    packed.PackingError: the runs cannot share a step (other fields differ,
      several processes, or their checkpoints are at different steps after
      a kill); nothing was trained, and each may run alone.
  """
  keys = {packed.packing_key(c) for c in configs}
  if len(keys) > 1:
    raise packed.PackingError(
        'packed runs may differ only in '
        f'{packed.PACKABLE_FIELDS}; these differ in more.')
  if jax.process_count() > 1:
    raise packed.PackingError('packed runs need a single process.')
  return _train(configs, workdirs)


def _train(configs: Sequence[ml_collections.ConfigDict],
           workdirs: Sequence[str]) -> list[RunResult]:
  """One run, or several packed (`train_and_evaluate_packed`)."""
  config = configs[0]
  _check_dtype(config)
  # SIGTERM/SIGINT from the start: during set-up too (`_StopRequest`).
  with forms.use_conv_impl(config.conv_impl), _StopRequest() as stop:
    runs = []
    try:
      for c, w in zip(configs, workdirs, strict=True):
        runs.append(_set_up(c, w, stop))
    except _StoppedInSetUp:
      runs = None
    if runs is not None:
      stop.defer()
      _check_packable(runs)
      start_step = runs[0].start_step
      bar = metrics_lib.progress_bar(runs[0].total_steps, start_step,
                                     config.progress_bar)
      try:
        status, step = _train_loop(runs, stop, bar)
      finally:
        bar.close()
        for run in runs:
          run.checkpointer.close()
          run.writer.close()
  if runs is None or (status == 'preempted' and step == start_step):
    logging.warning('Stopped by %s before training started; nothing was '
                    'lost. Run the same command again to continue.',
                    stop.signal_name)
    return [RunResult(status='preempted', step=-1 if runs is None else step,
                      metrics={}) for _ in configs]
  if status == 'preempted':
    logging.warning('Stopped by %s at step %d; the checkpoint is saved. Run '
                    'the same command again to resume.',
                    stop.signal_name or 'a signal to another process', step)
  return [RunResult(status=status, step=step, metrics=run.last_record or (
      metrics_lib.read_metrics(run.workdir) or [{}])[-1]) for run in runs]


def _check_packable(runs: Sequence[_Run]) -> None:
  """Packed runs share one program and one step count, and start together
  (members of a killed group may have saved at different steps)."""
  if len(runs) == 1:
    return
  first = runs[0]
  for run in runs[1:]:
    if run.program is not first.program or (
        run.total_steps, run.eval_every) != (first.total_steps,
                                             first.eval_every):
      _close(runs)
      raise packed.PackingError(
          f'{run.workdir} and {first.workdir} do not compile to one program.')
    if run.start_step != first.start_step:
      _close(runs)
      raise packed.PackingError(
          f'{run.workdir} resumes at step {run.start_step}, {first.workdir} '
          f'at {first.start_step}.')


def _close(runs: Sequence[_Run]) -> None:
  for run in runs:
    run.checkpointer.close()
    run.writer.close()
