"""Pure training and evaluation steps (compiled with `jax.jit` by train.py).

Metrics are accumulated on the device in a small dict of sums, so the host
reads them only at log intervals (no host sync per step).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Batch = dict[str, Array]
Metrics = dict[str, Array]

# Step index stored in `first_nonfinite_step` while no bad step was seen.
NO_STEP = 2**31 - 1

# `config.log_grad_norms`: the metric sums hold one 'grad_norm/<module path>'
# sum per module and the count of steps summed.
GRAD_NORM_PREFIX = 'grad_norm/'
GRAD_NORM_COUNT = 'grad_norm_count'

# `config.log_zero_fraction`: the evaluation sums hold, per entry of the
# model's `out` dict, the count of exactly-zero values and of all values.
ZERO_COUNT_PREFIX = 'zeros/'
VALUE_COUNT_PREFIX = 'values/'


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training; a pytree (checkpointable).

  Attributes:
    step: optimizer steps taken so far (int32 scalar).
    params: model parameters (float32).
    batch_stats: batch-norm running statistics ({} for models without).
    opt_state: optax state.
    rng: base PRNG key (uint32[2]); dropout at step s uses fold_in(rng, s).
    apply_fn, tx: static (not saved).
  """

  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: Array
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformationExtraArgs = flax.struct.field(
      pytree_node=False)

  def variables(self, params=None) -> dict:
    variables = {'params': self.params if params is None else params}
    if self.batch_stats:
      variables['batch_stats'] = self.batch_stats
    return variables


def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0
                  ) -> Array:
  """Per-example cross-entropy. logits [B, K] float32, labels [B] int -> [B]."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def empty_train_metrics(grad_norm_modules: Sequence[str] = ()) -> Metrics:
  """Zeroed on-device sums for `train_step`.

  Args:
    grad_norm_modules: module paths ('backbone/c1_conv', as `module_grad_norms`
      names them) whose gradient norms `train_step` should also sum
      (`config.log_grad_norms`); empty (the default) adds nothing, and the
      step then computes no norm at all.
  """
  # Separate arrays (not one shared zero): the step donates each buffer.
  zero = lambda: jnp.zeros((), jnp.float32)
  metrics = dict(loss_sum=zero(), loss_count=zero(), correct_sum=zero(),
                 count=zero(), nonfinite_count=jnp.zeros((), jnp.int32),
                 first_nonfinite_step=jnp.full((), NO_STEP, jnp.int32))
  if grad_norm_modules:
    metrics[GRAD_NORM_COUNT] = zero()
    metrics.update({GRAD_NORM_PREFIX + m: zero() for m in grad_norm_modules})
  return metrics


def empty_eval_metrics() -> Metrics:
  zero = lambda: jnp.zeros((), jnp.float32)
  return dict(loss_sum=zero(), correct_sum=zero(), count=zero(),
              top5_sum=zero(), top5_count=zero())


def module_grad_norms(grads: Any) -> dict[str, Array]:
  """{module path: L2 norm of the gradient of all its parameters}.

  A module is a parameter's path without its last key, joined by '/':
  ('backbone', 'stage1_block1', 'conv1', 'kernel') belongs to
  'backbone/stage1_block1/conv1', whose norm covers its kernel (and bias,
  if any): sqrt(sum of squares over the module's leaves), float32 scalars.
  """
  squares = {}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    module = param_module(path)
    squares[module] = squares.get(module, 0.0) + jnp.sum(
        jnp.square(g.astype(jnp.float32)))
  return {m: jnp.sqrt(s) for m, s in squares.items()}


def param_module(path: Sequence[Any]) -> str:
  """The module of a parameter's key path (`tree_leaves_with_path`):
  every key but the last, joined by '/' ('backbone/c1_conv')."""
  return '/'.join(str(getattr(k, 'key', k)) for k in path[:-1])


def train_step(state: TrainState, metrics: Metrics, batch: Batch, *,
               label_smoothing: float, aux_weight: float,
               skip_nonfinite: bool) -> tuple[TrainState, Metrics]:
  """One optimizer step on a global batch.

  Args:
    state: the current `TrainState` (replicated over the mesh).
    metrics: running sums from `empty_train_metrics`; where they hold
      'grad_norm/<module>' sums, the step adds each module's gradient norm
      (`module_grad_norms`, the loss's raw gradient before clipping, weight
      decay or freezing) on finite steps, and counts them in
      `grad_norm_count` (decided when the step is traced).
    batch: {'image': float [B, H, W, C], 'label': int32 [B]}, sharded on the
      batch axis; or {'features': float [B, F], 'label'}: the backbone's
      cached pre-logits (`cnn.transfer.cached_features`), the head trains.
    label_smoothing: label smoothing of the cross-entropy.
    aux_weight: weight of auxiliary-classifier losses (GoogLeNet), if any.
    skip_nonfinite: on a non-finite loss or gradient keep the old parameters
      (the step still advances, so the data order is unchanged); otherwise
      apply the update and let the host stop the run at the next log.

  Returns:
    The new state and the updated metric sums.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    if 'features' in batch:  # the frozen backbone's cached outputs: head only.
      logits, updates = state.apply_fn(
          state.variables(params), batch['features'], train=True,
          rngs={'dropout': dropout_rng}, mutable=['batch_stats'],
          method='classify')
      out = {}
    else:
      (logits, out), updates = state.apply_fn(
          state.variables(params), batch['image'], train=True,
          rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    for aux_logits in out.get('aux_logits', ()):
      loss += aux_weight * cross_entropy(
          aux_logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates.get('batch_stats', {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                       value=loss)
  params = optax.apply_updates(state.params, updates)

  finite = jnp.isfinite(loss) & jnp.all(jnp.array(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    batch_stats = keep(batch_stats, state.batch_stats)

  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  count = jnp.asarray(batch['label'].shape[0], jnp.float32)
  correct = (logits.argmax(-1) == batch['label']).sum()
  metrics_in = metrics
  metrics = dict(
      loss_sum=metrics['loss_sum'] + jnp.where(finite, loss * count, 0.0),
      loss_count=metrics['loss_count'] + jnp.where(finite, count, 0.0),
      correct_sum=metrics['correct_sum'] + correct,
      count=metrics['count'] + count,
      nonfinite_count=metrics['nonfinite_count'] + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where(
          finite, metrics['first_nonfinite_step'],
          jnp.minimum(metrics['first_nonfinite_step'], state.step)),
  )
  logged = [k for k in metrics_in if k.startswith(GRAD_NORM_PREFIX)]
  if logged:  # static: only runs with `log_grad_norms` compute the norms.
    norms = module_grad_norms(grads)
    for key in logged:
      norm = norms[key[len(GRAD_NORM_PREFIX):]]
      metrics[key] = metrics_in[key] + jnp.where(finite, norm, 0.0)
    metrics[GRAD_NORM_COUNT] = metrics_in[GRAD_NORM_COUNT] + finite.astype(
        jnp.float32)
  return new_state, metrics


def eval_step(state: TrainState, metrics: Metrics, batch: Batch,
              ) -> Metrics:
  """Adds one padded batch to the evaluation sums.

  batch: {'image' [B, H, W, C], 'label' int32 [B], 'mask' [B]}; rows with
  mask 0 are padding and do not count.
  """
  logits, _ = state.apply_fn(state.variables(), batch['image'], train=False)
  return add_eval_counts(metrics, logits, batch['label'], batch['mask'])


def eval_step_with_zero_counts(state: TrainState, metrics: Metrics,
                               batch: Batch) -> Metrics:
  """`eval_step`, and for each array of the model's `out` dict but the
  logits (stem, stage1, ..., pre_logits: [B, ...]) the sums
  'zeros/<name>' (values exactly 0) and 'values/<name>' (all values) over
  the unpadded rows. The first call's `metrics` lacks those keys; they
  start at 0."""
  logits, out = state.apply_fn(state.variables(), batch['image'], train=False)
  sums = add_eval_counts({k: metrics[k] for k in empty_eval_metrics()},
                         logits, batch['label'], batch['mask'])
  mask = batch['mask'].astype(jnp.float32)
  for name, x in out.items():
    if name == 'logits' or not isinstance(x, jax.Array) or x.ndim < 2:
      continue
    zeros = (x == 0).reshape(x.shape[0], -1).sum(-1).astype(jnp.float32)
    per_row = float(x[0].size)
    for prefix, value in ((ZERO_COUNT_PREFIX, (zeros * mask).sum()),
                          (VALUE_COUNT_PREFIX, per_row * mask.sum())):
      sums[prefix + name] = metrics.get(prefix + name, 0.0) + value
  return sums


def top5_correct(logits: Array, labels: Array) -> Array:
  """1.0 where the label is among the 5 largest logits. [B, K], [B] -> [B].

  Counted as "fewer than 5 classes score strictly higher than the label",
  so ties are resolved in the label's favour, as argmax's first-index rule
  does for top-1 when the label comes first.
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  higher = (logits > label_logit).sum(-1)
  return (higher < 5).astype(jnp.float32)


def add_eval_counts(metrics: Metrics, logits: Array, labels: Array,
                    mask: Array) -> Metrics:
  """Adds loss, top-1 and (K > 5 classes) top-5 sums of a padded batch.

  logits float [B, K], labels int32 [B], mask [B] (0 = padding row).
  `top5_count` counts the rows top-5 was measured on: 0 when K <= 5, where
  top-5 accuracy would be 1 by definition and is not reported.
  """
  mask = mask.astype(jnp.float32)
  loss = cross_entropy(logits, labels)
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  out = dict(loss_sum=metrics['loss_sum'] + (loss * mask).sum(),
             correct_sum=metrics['correct_sum'] + (correct * mask).sum(),
             count=metrics['count'] + mask.sum(),
             top5_sum=metrics['top5_sum'], top5_count=metrics['top5_count'])
  if logits.shape[-1] > 5:  # static: decided when the step is traced.
    out['top5_sum'] = out['top5_sum'] + (
        top5_correct(logits, labels) * mask).sum()
    out['top5_count'] = out['top5_count'] + mask.sum()
  return out
