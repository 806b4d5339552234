"""Optimizers and learning-rate schedules built from `config.optimizer` and
`config.schedule` (optax).

Schedules are functions of the global step. `reduce_on_plateau` (the seeds'
AlexNet recipe: divide the learning rate by 10 when accuracy stops improving)
is not a function of the step alone: it is an optax transformation whose
scale lives in the optimizer state and is fed the training loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cnn.common import errors
from cnn.transfer import regimes

SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'onecycle', 'step',
             'reduce_on_plateau')
OPTIMIZERS = ('sgd', 'adam', 'adamw')


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int,
                            total_steps: int) -> optax.Schedule:
  """Learning rate as a function of the global step (before plateau scaling).

  Args:
    config: the experiment config (uses `optimizer.learning_rate` and the
      `schedule` section).
    steps_per_epoch: optimizer steps in one epoch.
    total_steps: optimizer steps in the whole run.
  """
  sched = config.schedule
  base_lr = config.optimizer.learning_rate
  warmup_steps = (sched.warmup_steps if sched.warmup_steps >= 0 else
                  int(sched.warmup_epochs * steps_per_epoch))
  name = sched.name
  if name in ('constant', 'reduce_on_plateau'):
    main = optax.constant_schedule(base_lr)
  elif name in ('cosine', 'warmup_cosine'):
    main = optax.cosine_decay_schedule(
        base_lr, max(1, total_steps - warmup_steps), alpha=sched.final_fraction)
  elif name == 'onecycle':
    # One-cycle includes its own warm-up (pct_start of the run).
    return optax.cosine_onecycle_schedule(
        total_steps, base_lr, pct_start=sched.onecycle_pct_start,
        div_factor=sched.onecycle_div_factor,
        final_div_factor=sched.onecycle_final_div_factor)
  elif name == 'step':
    # Boundaries in steps (He et al.: 32k, 48k) or else in epochs.
    at = (tuple(sched.decay_steps) if sched.decay_steps else
          tuple(int(e * steps_per_epoch) for e in sched.decay_epochs))
    boundaries = {s - warmup_steps: sched.decay_factor for s in at}
    main = optax.piecewise_constant_schedule(base_lr, boundaries)
  else:
    raise errors.UserError(
        f'Unknown schedule {name!r}; valid names: {list(SCHEDULES)}.')
  if warmup_steps <= 0:
    return main
  if sched.warmup_kind == 'linear':
    warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
  elif sched.warmup_kind == 'constant':
    # He et al.'s ResNet-110: 0.01 (a tenth of 0.1) for the first ~400
    # iterations, until the training error is below 80 %.
    warmup = optax.constant_schedule(base_lr * sched.warmup_factor)
  else:
    raise errors.UserError(
        f"schedule.warmup_kind must be 'linear' or 'constant', got "
        f'{sched.warmup_kind!r}.')
  return optax.join_schedules([warmup, main], [warmup_steps])


def _decay_mask(params):
  # Decay kernels only: biases and batch-norm scale/shift stay free, as in
  # the usual ResNet/AdamW recipes.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule, labels=None
                     ) -> optax.GradientTransformationExtraArgs:
  """The optax chain: clip -> optimizer (+ weight decay) -> plateau scaling,
  per parameter group as `config.transfer` says (frozen groups get no
  update; `cnn.transfer.regimes`).

  `update` accepts `value=loss` (used by reduce-on-plateau, ignored by the
  rest).

  Args:
    config: the experiment config.
    learning_rate_fn: step -> learning rate.
    labels: a pytree like the parameters of `regimes.param_labels` (the
      rule each parameter falls under); None builds the single-group chain.
  """
  make = lambda: _base_optimizer(config, learning_rate_fn)
  if labels is None:
    return make()
  return regimes.optimizer(make, labels)


def _base_optimizer(config: ml_collections.ConfigDict,
                    learning_rate_fn: optax.Schedule
                    ) -> optax.GradientTransformationExtraArgs:
  opt = config.optimizer
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.name == 'sgd':
    if opt.weight_decay > 0:
      parts.append(optax.add_decayed_weights(opt.weight_decay, _decay_mask))
    parts.append(optax.sgd(learning_rate_fn, momentum=opt.momentum or None,
                           nesterov=opt.nesterov))
  elif opt.name == 'adam':
    if opt.weight_decay > 0:  # L2 through the gradient, unlike AdamW.
      parts.append(optax.add_decayed_weights(opt.weight_decay, _decay_mask))
    parts.append(optax.adam(learning_rate_fn, b1=opt.b1, b2=opt.b2))
  elif opt.name == 'adamw':
    parts.append(optax.adamw(learning_rate_fn, b1=opt.b1, b2=opt.b2,
                             weight_decay=opt.weight_decay, mask=_decay_mask))
  else:
    raise errors.UserError(
        f'Unknown optimizer {opt.name!r}; valid names: {list(OPTIMIZERS)}.')
  if config.schedule.name == 'reduce_on_plateau':
    sched = config.schedule
    parts.append(optax.contrib.reduce_on_plateau(
        factor=sched.plateau_factor, patience=sched.plateau_patience,
        accumulation_size=sched.plateau_accumulation_steps,
        cooldown=sched.plateau_cooldown))
  return optax.chain(*parts)


def plateau_scale(opt_state) -> jax.Array:
  """Current reduce-on-plateau multiplier (1.0 without that schedule)."""
  for leaf_state in jax.tree.leaves(
      opt_state,
      is_leaf=lambda s: hasattr(s, 'scale') and hasattr(s, 'plateau_count')):
    if hasattr(leaf_state, 'plateau_count'):
      return leaf_state.scale
  return jnp.ones((), jnp.float32)
