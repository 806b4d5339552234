"""Tests of the residual and modern families: ResNet (ImageNet and CIFAR, with
plain twins), DenseNet, MobileNetV2, EfficientNet and ViT.

ImageNet-size nets are only traced (`jax.eval_shape`); real forward and
backward passes run on 32x32 inputs with batch 2.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import summary
from cnn.common import errors
from cnn.models import mobilenet, registry

IMAGENET = [
    'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
    'plain18', 'plain34', 'plain50', 'plain101', 'plain152',
    'resnet50_v1', 'resnet101_v1', 'resnet152_v1',
    'densenet121', 'mobilenet_v2', 'vit_b16',
] + [f'efficientnet_b{i}' for i in range(8)]
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
SMALL = ([f'resnet{d}' for d in CIFAR_DEPTHS]
         + [f'plain{d}' for d in CIFAR_DEPTHS]
         + ['densenet_small', 'densenet_bc100', 'mobilenet_v2_small',
            'vit_tiny'])
ALL = IMAGENET + SMALL
# Small-image variants for a real forward + backward pass, with fewer blocks
# where XLA's compile time on CPU would dominate the test run (the full
# registered nets are traced in test_init_out_dict_groups_and_param_count).
TRAINABLE = {
    'resnet20': {},
    'plain20': {},
    'densenet_small': dict(stage_sizes=(1, 2)),
    # Rows 1-3 of the small layout: no expansion, then blocks with shortcuts.
    'mobilenet_v2_small': dict(
        block_settings=((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 2, 2))),
    'vit_tiny': dict(stage_sizes=(1, 1)),
}

# XLA's RngBitGenerator: initialisers compile much faster than with threefry.
KEY = jax.random.key(0, impl='unsafe_rbg')


def count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def abstract_init(model, shape, batch=1):
  """Shapes of (logits, out) and variables without computing anything."""
  x = jnp.zeros((batch,) + tuple(shape), jnp.float32)
  return jax.eval_shape(
      lambda: model.init_with_output({'params': KEY}, x, train=False))


@functools.cache
def natural(name: str):
  """`abstract_init` of a registered model at its natural input, cached."""
  return abstract_init(registry.create_model(name),
                       registry.get_spec(name).input_shape)


def paths(tree) -> list[str]:
  return ['/'.join(str(getattr(k, 'key', k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def cifar_resnet_params(n: int, shortcut: str = 'A', classes: int = 10,
                        residual: bool = True) -> int:
  """Parameters of the 6n+2 CIFAR ResNet, counted from the paper's layout."""
  conv_bn = lambda k, cin, cout: k * k * cin * cout + 2 * cout  # No conv bias.
  total = conv_bn(3, 3, 16)  # Stem.
  cin = 16
  for cout in (16, 32, 64):
    for j in range(n):
      total += conv_bn(3, cin, cout) + conv_bn(3, cout, cout)
      if residual and shortcut == 'B' and j == 0 and cin != cout:
        total += conv_bn(1, cin, cout)  # Projection + its batch norm.
      cin = cout
  return total + 64 * classes + classes  # Head.


def test_every_name_of_these_families_is_tested():
  families = {f'cnn.models.{m}' for m in
              ('resnet', 'densenet', 'mobilenet', 'efficientnet', 'vit')}
  names = {n for n in registry.list_models()
           if registry.get_spec(n).backbone_cls.__module__ in families}
  assert names == set(ALL)


@pytest.mark.parametrize('name', ALL)
def test_init_out_dict_groups_and_param_count(name):
  spec = registry.get_spec(name)
  (logits, out), variables = natural(name)
  assert logits.shape == (1, spec.num_classes)
  assert logits.dtype == jnp.float32
  assert 'stem' in out and 'stage1' in out
  assert {'pre_logits', 'logits'} <= set(out)
  stages = sorted(int(k[5:]) for k in out if re.fullmatch(r'stage\d+', k))
  assert stages == list(range(1, len(stages) + 1))
  # Parameter groups: the prefix of each top-level backbone key.
  groups = {k.split('_')[0] for k in variables['params']['backbone']}
  assert groups == {'stem'} | {f'stage{i}' for i in stages}
  n = count(variables['params'])
  if spec.reference_params is not None:
    assert n == spec.reference_params
  if name in ('resnet50', 'densenet121', 'mobilenet_v2', 'efficientnet_b0'):
    assert 'batch_stats' in variables
  # Every registered input size is at least the declared minimum.
  assert min(spec.input_shape[:2]) >= spec.min_input_size


@pytest.mark.parametrize('name', [
    'resnet50', 'plain18', 'resnet20', 'densenet121', 'densenet_small',
    'mobilenet_v2', 'mobilenet_v2_small', 'efficientnet_b0', 'vit_b16',
    'vit_tiny'])
def test_min_input_size_and_num_classes_override(name):
  spec = registry.get_spec(name)
  model = registry.create_model(name, num_classes=7)
  size = spec.min_input_size
  registry.check_input_shape(name, (size, size, 3))
  (logits, out), _ = abstract_init(model, (size, size, 3), batch=2)
  assert logits.shape == (2, 7)
  last = max(k for k in out if k.startswith('stage'))
  assert all(d > 0 for d in out[last].shape)


def test_too_small_input_is_rejected():
  registry.check_input_shape('resnet50', (224, 224, 3))
  with pytest.raises(ValueError, match='too small'):
    registry.check_input_shape('resnet50', (16, 16, 3))


@pytest.mark.parametrize('name', IMAGENET + ['resnet20', 'densenet_small'])
def test_activation_override_builds(name):
  spec = registry.get_spec(name)
  model = registry.create_model(name, activation='gelu')
  assert model.backbone.activation == 'gelu'
  with pytest.raises(ValueError, match='no option'):
    registry.create_model(name, not_an_option=1)
  if spec.input_shape[0] <= 32:
    abstract_init(model, spec.input_shape)


def test_activation_override_changes_the_function():
  x = jax.random.normal(KEY, (2, 32, 32, 3))
  relu = registry.create_model('resnet20', stage_sizes=(1,))
  gelu = registry.create_model('resnet20', stage_sizes=(1,), activation='gelu')
  variables = jax.jit(relu.init)(KEY, x)
  a, b = jax.jit(lambda v: (relu.apply(v, x)[0], gelu.apply(v, x)[0]))(
      variables)
  assert not np.allclose(a, b)


# ResNet specifics.


def test_imagenet_param_counts_by_depth():
  expected = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032,
              101: 44_549_160, 152: 60_192_808}
  for depth, ref in expected.items():
    assert registry.get_spec(f'resnet{depth}').reference_params == ref


def test_cifar_resnet_param_counts_by_hand():
  for depth in CIFAR_DEPTHS:
    n = (depth - 2) // 6
    spec = registry.get_spec(f'resnet{depth}')
    assert spec.reference_params == cifar_resnet_params(n)
    assert registry.get_spec(f'plain{depth}').reference_params == (
        cifar_resnet_params(n, residual=False))
  assert cifar_resnet_params(3) == 269_722
  # The paper's rounded counts (Table 6).
  rounded = [round(cifar_resnet_params((d - 2) // 6) / 1e6, 2)
             for d in CIFAR_DEPTHS]
  assert rounded == [0.27, 0.46, 0.66, 0.85, 1.73]


@pytest.mark.parametrize('depth', [20, 56])
def test_plain_twin_has_option_a_params(depth):
  _, res = natural(f'resnet{depth}')
  _, plain = natural(f'plain{depth}')
  assert (jax.tree.map(lambda a: a.shape, res['params'])
          == jax.tree.map(lambda a: a.shape, plain['params']))
  n = (depth - 2) // 6
  assert count(plain['params']) == count(res['params']) == (
      cifar_resnet_params(n))


def test_shortcut_options_parameters():
  _, a = natural('resnet20')
  assert not [p for p in paths(a['params']) if 'proj' in p]
  _, b = abstract_init(registry.create_model('resnet20', shortcut='B'),
                       (32, 32, 3))
  proj = sorted({p.split('/')[1] for p in paths(b['params']) if 'proj' in p})
  assert proj == ['stage2_block1', 'stage3_block1']
  assert count(b['params']) == cifar_resnet_params(3, 'B') == 272_474
  _, c = abstract_init(registry.create_model('resnet20', shortcut='C'),
                       (32, 32, 3))
  assert count(c['params']) > count(b['params'])
  # The plain twin of an option-B ImageNet net lacks exactly the projections.
  _, r18 = natural('resnet18')
  _, p18 = natural('plain18')
  projections = sum(64 * 2**i * 64 * 2**(i + 1) + 2 * 64 * 2**(i + 1)
                    for i in range(3))
  assert count(r18['params']) - count(p18['params']) == projections == 173_824
  assert not [p for p in paths(p18['params']) if 'proj' in p]


def test_residual_differs_from_plain_with_same_params():
  x = jax.random.normal(KEY, (2, 32, 32, 3))
  res = registry.create_model('resnet20', stage_sizes=(2, 2))
  plain = registry.create_model('plain20', stage_sizes=(2, 2))
  variables = jax.jit(res.init)(KEY, x)
  a, b = jax.jit(lambda v: (res.apply(v, x)[1], plain.apply(v, x)[1]))(
      variables)
  # Same stem, different stages: the shortcuts are what differs.
  np.testing.assert_allclose(a['stem'], b['stem'])
  assert not np.allclose(a['stage1'], b['stage1'])
  assert not np.allclose(a['logits'], b['logits'])


def test_zero_init_residual():
  model = registry.create_model('resnet20', zero_init_residual=True,
                                stage_sizes=(1,), num_filters=4)
  variables = jax.jit(model.init)(KEY, jnp.ones((1, 8, 8, 3)))
  backbone = variables['params']['backbone']
  assert not np.any(backbone['stage1_block1']['bn2']['scale'])
  assert np.all(backbone['stage1_block1']['bn1']['scale'] == 1)
  with pytest.raises(ValueError, match='residual'):
    bad = registry.create_model('plain20', zero_init_residual=True)
    abstract_init(bad, (32, 32, 3))


# He et al.'s table 1 ("FLOPs" = multiply-adds, G) and our exact counts of
# the v1 layout (incl. the FC head); v1.5 (`resnetN`) does 231,211,008 more.
RESNET_V1_MACS = {50: (3.8, 3_857_973_248), 101: (7.6, 7_570_194_432),
                  152: (11.3, 11_282_415_616)}


@pytest.mark.parametrize('depth', sorted(RESNET_V1_MACS))
def test_resnet_v1_has_the_papers_multiply_adds_and_v1_5s_parameters(depth):
  paper, exact = RESNET_V1_MACS[depth]
  v1 = summary.summarize(f'resnet{depth}_v1')
  v1_5 = summary.summarize(f'resnet{depth}')
  assert v1.totals['macs'] == exact
  assert abs(exact / 1e9 - paper) <= 0.1
  # Only the three strided 1x1 convs differ: 3/4 of their work is gone.
  assert v1_5.totals['macs'] - exact == 3 * (
      3 * 56 * 56 * 256 * 128 // 4) == 231_211_008
  assert v1.layer('stage2_block1/conv1').output_shape == (28, 28, 128)
  assert v1_5.layer('stage2_block1/conv1').output_shape == (56, 56, 128)
  _, a = natural(f'resnet{depth}_v1')
  _, b = natural(f'resnet{depth}')
  assert (jax.tree.map(lambda x: x.shape, a)
          == jax.tree.map(lambda x: x.shape, b))


def test_stride_on_is_checked():
  with pytest.raises(errors.UserError, match='stride_on'):
    abstract_init(registry.create_model('resnet50', stride_on='2x2'),
                  (32, 32, 3))


@pytest.mark.parametrize('width', [0.25, 0.5, 1.0])
def test_width_keeps_every_plain_twin_parameter_equal(width):
  # `width` scales the stem as well as the stages, so the option-A residual
  # nets stay buildable and keep their twins' parameters at every width.
  for depth in CIFAR_DEPTHS:
    _, res = abstract_init(registry.create_model(
        f'resnet{depth}', width=width), (32, 32, 3))
    _, plain = abstract_init(registry.create_model(
        f'plain{depth}', width=width), (32, 32, 3))
    assert (jax.tree.map(lambda a: a.shape, res['params'])
            == jax.tree.map(lambda a: a.shape, plain['params'])), depth
    stem = res['params']['backbone']['stem_conv']['kernel'].shape
    assert stem[-1] == round(16 * width)
    if width == 1.0:
      assert count(res['params']) == cifar_resnet_params((depth - 2) // 6)
  # ImageNet (option B): the plain twin lacks exactly the projections.
  _, r18 = abstract_init(registry.create_model('resnet18', width=width),
                         (32, 32, 3))
  _, p18 = abstract_init(registry.create_model('plain18', width=width),
                         (32, 32, 3))
  proj = sum(a.size for path, a in
             jax.tree_util.tree_flatten_with_path(r18['params'])[0]
             if 'proj' in jax.tree_util.keystr(path))
  assert proj > 0 and count(r18['params']) - proj == count(p18['params'])
  stem = r18['params']['backbone']['stem_conv']['kernel'].shape
  assert stem[-1] == round(64 * width)
  if width == 1.0:
    assert count(r18['params']) == 11_689_512


def test_half_width_resnet56_runs():
  # Used to fail: "Shortcut option A cannot reduce channels (16 -> 8)".
  model = registry.create_model('resnet56', width=0.5)
  x = jax.random.normal(KEY, (2, 28, 28, 1))
  variables = jax.jit(model.init)(KEY, x)
  (logits, out) = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  assert out['stem'].shape == (2, 28, 28, 8)
  assert out['stage3'].shape == (2, 7, 7, 32)


def test_remat_gives_same_gradients():
  x = jax.random.normal(KEY, (2, 8, 8, 3))
  kw = dict(stage_sizes=(1, 1), num_filters=4)
  base = registry.create_model('resnet20', **kw)
  remat = registry.create_model('resnet20', remat=True, **kw)
  variables = jax.jit(base.init)(KEY, x)

  def grad(model):
    def loss(params):
      logits, _ = model.apply(dict(variables, params=params), x, train=True,
                              mutable=['batch_stats'])[0]
      return logits.mean()
    return jax.grad(loss)(variables['params'])

  grads = jax.jit(lambda: (grad(base), grad(remat)))()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               *grads)


@pytest.mark.parametrize('name', ['densenet_small', 'mobilenet_v2_small',
                                  'efficientnet_b0', 'vit_tiny'])
def test_remat_traces_forward_and_backward(name):
  # Shortened nets (tracing cost); EfficientNet keeps stochastic depth.
  kwargs = TRAINABLE.get(name, dict(block_settings=(
      (1, 3, 1, 16, 1), (6, 3, 2, 24, 2)), stochastic_depth=0.2))
  model = registry.create_model(name, remat=True, **kwargs)
  (_, out), variables = abstract_init(model, (32, 32, 3), batch=2)
  x = jnp.zeros((2, 32, 32, 3))

  def grad(variables):
    def loss(params):
      (logits, _), _ = model.apply(
          dict(variables, params=params), x, train=True,
          rngs={'dropout': KEY}, mutable=['batch_stats'])
      return logits.mean()
    return jax.grad(loss)(variables['params'])

  grads = jax.eval_shape(grad, variables)
  assert (jax.tree.map(lambda a: a.shape, grads)
          == jax.tree.map(lambda a: a.shape, variables['params']))


def test_bfloat16_compute_keeps_float32_params():
  model = registry.create_model('resnet20', dtype='bfloat16')
  (logits, out), variables = abstract_init(model, (32, 32, 3))
  assert out['stage3'].dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(variables['params'])} == {
      jnp.dtype(jnp.float32)}


# Other families.


def test_densenet_shapes():
  (_, out), variables = natural('densenet121')
  # 64 + 6*32 = 256 -> 128 + 12*32 = 512 -> 256 + 24*32 = 1024 -> 512 + 16*32.
  assert [out[f'stage{i}'].shape[1:] for i in range(1, 5)] == [
      (56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 1024)]
  assert out['pre_logits'].shape == (1, 1024)
  (_, out), variables = natural('densenet_bc100')
  assert round(count(variables['params']) / 1e6, 1) == 0.8  # Paper: 0.8M.


def test_mobilenet_depthwise_and_linear_bottleneck():
  (_, out), variables = natural('mobilenet_v2')
  block = variables['params']['backbone']['stage2_block1']
  assert block['dw_conv']['kernel'].shape == (3, 3, 1, 96)  # 16 * 6 channels.
  assert 'expand_conv' not in variables['params']['backbone']['stage1_block1']
  assert out['stage8'].shape == (1, 7, 7, 1280)
  assert registry.get_spec('mobilenet_v2').head_dropout == 0.2
  (_, out), _ = natural('mobilenet_v2_small')
  assert out['stage8'].shape == (1, 4, 4, 1280)
  assert mobilenet.make_divisible(32 * 0.35) == 16


def test_mbconv_stochastic_depth_drops_whole_examples():
  block = mobilenet.InvertedResidual(
      8, 1, 4, conv=functools.partial(nn.Conv, use_bias=False),
      norm=functools.partial(nn.BatchNorm, use_running_average=True),
      act=nn.silu, se_ratio=0.25, drop_path=0.5, deterministic=False)
  x = jax.random.normal(KEY, (16, 4, 4, 8))
  variables = jax.jit(block.init)({'params': KEY, 'dropout': KEY}, x)
  assert 'se' in variables['params']
  y = jax.jit(lambda v: block.apply(v, x, rngs={'dropout': KEY}))(variables)
  dropped = np.all(np.isclose(y, x), axis=(1, 2, 3))
  assert 0 < dropped.sum() < 16


def test_vit_tokens():
  (_, out), variables = natural('vit_b16')
  assert out['stem'].shape == (1, 14, 14, 768)
  assert out['stage4'].shape == (1, 197, 768)
  assert variables['params']['backbone']['stem_pos_embedding'].shape == (
      1, 197, 768)
  with pytest.raises(ValueError, match='divisible'):
    abstract_init(registry.create_model('vit_b16'), (200, 200, 3))


# Real computation on small inputs.


@pytest.mark.parametrize('name', sorted(TRAINABLE))
def test_forward_backward(name):
  spec = registry.get_spec(name)
  model = registry.create_model(name, **TRAINABLE[name])
  x = jax.random.normal(KEY, (2,) + spec.input_shape)
  variables = jax.jit(lambda x: model.init({'params': KEY}, x))(x)

  @jax.jit
  def losses(params):
    def train_loss(params):
      (logits, _), state = model.apply(
          dict(variables, params=params), x, train=True,
          rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
      return logits.mean(), state

    def eval_loss(params):
      logits, _ = model.apply(dict(variables, params=params), x)
      return logits.mean()

    (train, state), g_train = jax.value_and_grad(train_loss, has_aux=True)(
        params)
    evaluation, g_eval = jax.value_and_grad(eval_loss)(params)
    return train, state, g_train, evaluation, g_eval

  train, state, g_train, evaluation, g_eval = losses(variables['params'])
  assert np.isfinite(train) and np.isfinite(evaluation)
  for g in (g_train, g_eval):
    leaves = jax.tree.leaves(g)
    assert all(np.all(np.isfinite(a)) for a in leaves)
    assert any(np.any(a != 0) for a in leaves)
  if 'batch_stats' in variables:
    # Training updates the running statistics.
    before = jax.tree.leaves(variables['batch_stats'])
    after = jax.tree.leaves(state['batch_stats'])
    assert any(not np.allclose(a, b)
               for a, b in zip(before, after, strict=True))
