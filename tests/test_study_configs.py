"""The study configs match their protocols field by field, and the
kernel-layout forms have the sizes the lecture states."""

from __future__ import annotations

import pytest

from cnn import summary
from cnn.experiments import sweep
from cnn.training import optim
from configs import (
  depth_study,
  depth_study_fmnist,
  receptive_field,
  receptive_field_fmnist,
)


def _members(module):
  base = module.get_config()
  members = sweep.members_of(module.get_sweep(), module.member_name)
  return base, {m.name: sweep.member_config(base, m) for m in members}


def test_depth_study_is_he_et_al_cifar10_protocol():
  """arXiv:1512.03385, section 4.2, field by field."""
  base, configs = _members(depth_study)
  assert base.input.dataset == 'cifar10'
  assert base.input.batch_size == 128
  assert base.input.augment.crop_padding == 4  # pad 4, random 32x32 crop
  assert base.input.augment.flip_lr
  assert base.optimizer.name == 'sgd' and not base.optimizer.nesterov
  assert base.optimizer.learning_rate == 0.1
  assert base.optimizer.momentum == 0.9
  assert base.optimizer.weight_decay == 1e-4
  assert base.loss.label_smoothing == 0.0
  assert base.num_train_steps == 64_000
  assert base.schedule.name == 'step'
  assert tuple(base.schedule.decay_steps) == (32_000, 48_000)
  assert base.schedule.decay_factor == 0.1
  names = {f'{kind}{d}-seed{s}' for d in (20, 32, 44, 56, 110)
           for kind in ('plain', 'resnet') for s in (0, 1, 2)}
  assert set(configs) == names
  for name, config in configs.items():
    depth = int(name.split('-')[0].lstrip('plainresnet'))
    n = (depth - 2) // 6
    assert tuple(config.model.stage_sizes) == (n, n, n)
    assert config.model.num_filters == 16 and config.model.stem == 'cifar'
    assert config.model.shortcut == 'A'
    assert config.model.residual == name.startswith('resnet')
    assert config.model.width == 1.0
    lr = optim.create_learning_rate_fn(config, 390, 64_000)
    expected = {0: 0.1, 31_999: 0.1, 32_000: 0.01, 48_000: 0.001}
    if depth == 110:  # 0.01 for the first 400 iterations, then 0.1.
      expected.update({0: 0.01, 399: 0.01, 400: 0.1})
    for step, value in expected.items():
      assert float(lr(step)) == pytest.approx(value), (name, step)


def test_reduced_depth_study_keeps_the_recipe():
  base, configs = _members(depth_study_fmnist)
  assert base.input.dataset == 'fashion_mnist'
  assert base.eval_on_train
  assert base.optimizer.learning_rate == 0.1
  assert base.optimizer.weight_decay == 1e-4
  steps = base.num_train_steps
  assert tuple(base.schedule.decay_steps) == (steps // 2, steps * 3 // 4)
  assert len(configs) >= 2 * 3 * 3  # plain/residual x >= 3 depths x 3 seeds
  assert {c.seed for c in configs.values()} == {0, 1, 2}
  for config in configs.values():
    assert config.model.width == 0.25


def _kernel_stack_sizes(model_name):
  s = summary.summarize(model_name, (28, 28, 1), 10)
  stage_convs = [r for r in s.rows if r.type == 'Conv' and 'stage' in r.name]
  last = stage_convs[-1]
  return (sum(r.params_without_bias for r in stage_convs), last.rf,
          s.totals['params'])


def test_kernel_layouts_have_18_to_25_weights_and_equal_fields():
  stack, stack_rf, _ = _kernel_stack_sizes('kstack_3x3x2')
  five, five_rf, _ = _kernel_stack_sizes('kstack_5x5')
  three, three_rf, _ = _kernel_stack_sizes('kstack_3x3')
  assert stack * 25 == five * 18  # 2 * 9 C^2 : 25 C^2, exactly.
  assert stack_rf == five_rf
  assert three_rf[0] < five_rf[0]
  # Hand count for 3 stages at C = 20: 2 * 9 * 20 * 20 per stage.
  assert stack == 3 * 18 * 20 * 20
  # Stem 3x3: 3; stage 1 adds 4 -> 7; its pool 1 -> 8 (jump 2); stage 2
  # adds 4 * 2 -> 16; pool 2 -> 18 (jump 4); stage 3 adds 4 * 4 -> 34.
  assert five_rf == (34, 34)
  matched, _, _ = _kernel_stack_sizes('kstack_5x5_matched')
  assert matched == 3 * 25 * 17 * 17  # width 17: 0.35 % above the stack.
  assert abs(matched / stack - 1) < 0.01


def test_receptive_field_configs_sweep_the_four_forms():
  for module in (receptive_field, receptive_field_fmnist):
    _, configs = _members(module)
    forms = {c.model.kernel_layout for c in configs.values()}
    assert forms == {'5x5', '3x3-3x3', '3x3'}
    assert len(configs) == 4 * 3
  assert receptive_field.get_config().input.dataset == 'cifar10'
  assert receptive_field_fmnist.get_config().input.dataset == 'fashion_mnist'
