"""Tests of the classic families: MLP, AlexNet, VGG and GoogLeNet.

ImageNet-size nets are only traced (`jax.eval_shape`: shapes and parameter
counts without compute); real forward and backward passes run on the
small-image variants with 32x32 (or 28x28) inputs and batch 2. Per-layer
numbers are pinned to the lecture tables.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn.models import create_model, get_spec, list_models
from cnn.models.alexnet import AdaptiveAvgPool
from cnn.models.googlenet import InceptionModule

IMAGENET = ['alexnet', 'vgg11', 'vgg11_bn', 'vgg13', 'vgg13_bn', 'vgg16',
            'vgg16_bn', 'vgg19', 'vgg19_bn', 'googlenet']
SMALL = ['mlp', 'alexnet_small', 'vgg11_small', 'vgg11_bn_small',
         'vgg16_small', 'vgg16_bn_small', 'googlenet_small']
NAMES = IMAGENET + SMALL
GROUPS = {'stem', 'classifier', 'aux1', 'aux2'} | {f'stage{i}'
                                                   for i in range(1, 8)}


def n_params(variables) -> int:
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def trace(model, shape, batch: int = 2, **kwargs):
  """((logits, out), variables) as shapes, without computing anything."""
  x = jnp.zeros((batch, *shape), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  return jax.eval_shape(lambda: model.init_with_output(rngs, x, **kwargs))


def layer_table(model, shape) -> dict[str, tuple[tuple[int, ...], int]]:
  """Per module path: (output shape per image, multiply-adds per image).

  Multiply-adds of a conv are H_out * W_out * K * K * C_in / groups * C_out,
  of a Dense layer C_in * C_out (0 for modules without weights). Collected by
  intercepting module calls while tracing `init` for one image.
  """
  table = {}

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name == '__call__' and hasattr(y, 'shape'):
      macs = 0
      if isinstance(m, nn.Conv):
        macs = (math.prod(y.shape[1:-1]) * math.prod(m.kernel_size)
                * args[0].shape[-1] // m.feature_group_count * y.shape[-1])
      elif isinstance(m, nn.Dense):
        macs = args[0].shape[-1] * y.shape[-1]
      table['/'.join(m.path)] = (tuple(y.shape[1:]), macs)
    return y

  with nn.intercept_methods(interceptor):
    trace(model, shape, batch=1)
  return table


# --------------------------------------------------------------------------
# Every registered name.


def test_all_names_registered():
  assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize('name', NAMES)
def test_init_outputs_params_and_groups(name):
  spec = get_spec(name)
  (logits, out), variables = trace(create_model(name), spec.input_shape)
  assert logits.shape == (2, spec.num_classes)
  assert logits.dtype == jnp.float32
  assert {'stem', 'stage1', 'pre_logits', 'logits'} <= set(out)
  assert out['pre_logits'].ndim == 2
  if spec.reference_params is not None:
    assert n_params(variables) == spec.reference_params
  groups = {k.split('_')[0] for k in variables['params']['backbone']}
  assert groups <= GROUPS, groups
  assert 'stage1' in groups
  assert 'aux_logits' not in out  # init traces evaluation mode


@pytest.mark.parametrize('name', NAMES)
def test_num_classes_and_activation_override(name):
  spec = get_spec(name)
  model = create_model(name, num_classes=7, activation='gelu')
  assert model.backbone.activation == 'gelu'
  (logits, out), _ = trace(model, spec.input_shape, train=True)
  assert logits.shape == (2, 7)
  for aux in out.get('aux_logits', []):
    assert aux.shape == (2, 7)


@pytest.mark.parametrize('name', ['mlp', 'alexnet', 'alexnet_small', 'vgg11',
                                  'vgg16_bn_small', 'googlenet',
                                  'googlenet_small'])
def test_min_input_size(name):
  spec = get_spec(name)
  model = create_model(name)
  c = spec.input_shape[-1]
  size = spec.min_input_size
  trace(model, (size, size, c))
  if size > 1:
    with pytest.raises(ValueError, match='too small'):
      trace(model, (size - 1, size - 1, c))


# A shorter GoogLeNet (4 of the 9 inception modules, still with both aux
# heads and all three stages): compiling the full net's gradients in both
# modes takes about a minute on a loaded 2-core machine; it runs in the slow
# test.
SHORT_STAGES = {'stages': ((('3a', (64, 96, 128, 16, 32, 32)),),
                           (('4a', (192, 96, 208, 16, 48, 64)),
                            ('4d', (112, 144, 288, 32, 64, 64))),
                           (('5b', (384, 192, 384, 48, 128, 128)),))}
FAST = {'googlenet_small': SHORT_STAGES}
# Cheaper XLA compilation (a third less CPU time here) for code run once.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


def random_variables(model, x):
  """Variables of `model` for input `x`, filled by numpy (no jitted init).

  Tracing `init` checks the same code as running it; filling the shapes here
  avoids compiling the random number generators, the slowest part of `init`
  on CPU. Kernels get N(0, 1 / fan_in); BN scale and variance 1; biases,
  means 0.
  """
  shapes = jax.eval_shape(model.init, {'params': jax.random.key(0),
                                       'dropout': jax.random.key(1)}, x)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name in ('bias', 'mean'):
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = math.prod(leaf.shape[:-1])
    return jnp.asarray(rng.normal(0, fan_in**-0.5, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def check_forward_backward(name, **overrides):
  spec = get_spec(name)
  model = create_model(name, **overrides)
  x = jax.random.normal(jax.random.key(1), (2, *spec.input_shape))
  variables = random_variables(model, x)

  def loss_fn(params, train: bool):
    v = dict(variables, params=params)
    if train:
      (logits, out), _ = model.apply(
          v, x, train=True, mutable=['batch_stats'],
          rngs={'dropout': jax.random.key(2)})
    else:
      logits, out = model.apply(v, x)
    # The trainer's weighting of the auxiliary heads.
    loss = logits.mean() + 0.3 * sum(a.mean() for a in out.get(
        'aux_logits', []))
    return loss, (logits, out)

  grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True), static_argnums=1)
  results = {}
  for train in (True, False):
    compiled = grad_fn.lower(variables['params'], train).compile(FAST_COMPILE)
    g, (logits, out) = compiled(variables['params'])
    assert logits.shape == (2, spec.num_classes)
    assert bool(jnp.all(jnp.isfinite(logits)))
    leaves = jax.tree.leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    assert ('aux_logits' in out) == (train and name.startswith('googlenet'))
    results[train] = g
  # Every parameter has a gradient in training mode; the aux heads' is zero in
  # evaluation mode, where they are not run.
  for train, g in results.items():
    for path, a in jax.tree_util.tree_leaves_with_path(g):
      keys = [p.key for p in path]
      if keys[-1] == 'bias' and 'conv' in keys[-2]:
        continue  # A conv bias before batch norm cancels out in training.
      expected = train or not keys[1].startswith('aux')
      assert bool(jnp.any(a != 0)) == expected, (train, keys)


# vgg11_bn_small and vgg16_small only combine the code paths of these two.
@pytest.mark.parametrize('name', ['mlp', 'alexnet_small', 'vgg11_small',
                                  'vgg16_bn_small', 'googlenet_small'])
def test_small_forward_backward(name):
  check_forward_backward(name, **FAST.get(name, {}))


@pytest.mark.slow
def test_googlenet_small_full_forward_backward():
  check_forward_backward('googlenet_small')


@pytest.mark.parametrize('name', ['mlp', 'alexnet_small', 'vgg11_bn_small',
                                  'googlenet_small'])
def test_activation_changes_outputs(name):
  spec = get_spec(name)
  x = jax.random.normal(jax.random.key(1), (2, *spec.input_shape))
  overrides = FAST.get(name, {})
  variables = random_variables(create_model(name, **overrides), x)

  def outputs(model):  # Compiled cheaply: GoogLeNet's ops one by one take 5 s.
    return jax.jit(model.apply).lower(variables, x).compile(FAST_COMPILE)(
        variables, x)[1]

  relu = outputs(create_model(name, **overrides))
  tanh = outputs(create_model(name, activation='tanh', **overrides))
  assert not np.allclose(relu['stage1'], tanh['stage1'], rtol=1e-2, atol=0)


def test_bfloat16_compute_float32_params_and_logits():
  model = create_model('googlenet_small', dtype='bfloat16')
  (logits, out), variables = trace(model, (32, 32, 3), train=True)
  assert {a.dtype for a in jax.tree.leaves(variables['params'])} == {
      jnp.dtype(jnp.float32)}
  assert out['stage2'].dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32
  assert [a.dtype for a in out['aux_logits']] == [jnp.float32] * 2


# --------------------------------------------------------------------------
# MLP: fully connected vs convolutional layer sizes (lecture 5, CSC421).


def test_mlp_fully_connected_sizes():
  # 784*512 + 512 + 512*256 + 256 + 256*10 + 10.
  _, variables = trace(create_model('mlp'), (28, 28, 1))
  assert n_params(variables) == 535_818
  # 200x200 RGB image into 1,000 hidden units: 120 million weights.
  _, variables = trace(create_model('mlp', hidden=(1000,)), (200, 200, 3))
  assert variables['params']['backbone']['stage1_dense']['kernel'].size == (
      120_000_000)
  # 200x200 image, 40K hidden units: "~2B parameters" (1.6B weights).
  _, variables = trace(create_model('mlp', hidden=(40_000,)), (200, 200, 1),
                       batch=1)
  assert round(n_params(variables) / 1e9, 1) == 1.6
  # A W x H x J -> W x H x I layer: W^2 H^2 I J weights fully connected,
  # K^2 I J as a K x K convolution.
  w = h = 10
  i, j, k = 8, 3, 3
  _, variables = trace(create_model('mlp', hidden=(w * h * i,)), (w, h, j))
  dense = variables['params']['backbone']['stage1_dense']['kernel'].size
  conv = jax.eval_shape(nn.Conv(i, (k, k)).init, jax.random.key(0),
                        jnp.zeros((1, w, h, j)))['params']['kernel'].size
  assert (dense, conv) == (w**2 * h**2 * i * j, k**2 * i * j) == (240_000, 216)


# --------------------------------------------------------------------------
# AlexNet: the lecture's per-layer table.

# name: (output shape, memory KB (float32), weights k (no biases), MFLOP).
ALEXNET_TABLE = {
    'stem_conv1': ((56, 56, 64), 784, 23, 73),
    'stem_pool1': ((27, 27, 64), 182, 0, 0),
    'stage1_conv2': ((27, 27, 192), 547, 307, 224),
    'stage1_pool2': ((13, 13, 192), 127, 0, 0),
    'stage2_conv3': ((13, 13, 384), 254, 664, 112),
    # The lecture's table prints 145 MFLOP for conv4; its own numbers give
    # 13 * 13 * 256 * 3 * 3 * 384 = 149.5M multiply-adds.
    'stage3_conv4': ((13, 13, 256), 169, 885, 150),
    'stage4_conv5': ((13, 13, 256), 169, 590, 100),
    'stage4_pool5': ((6, 6, 256), 36, 0, 0),
    'classifier_flatten': ((9216,), 36, 0, 0),
    'classifier_fc6': ((4096,), 16, 37_749, 38),
    'classifier_fc7': ((4096,), 16, 16_777, 17),
    'head': ((1000,), 4, 4_096, 4),
}


def test_alexnet_lecture_table():
  model = create_model('alexnet')
  table = layer_table(model, (227, 227, 3))
  _, variables = trace(model, (227, 227, 3), batch=1)
  params = dict(variables['params']['backbone'], head=variables['params'][
      'head'])
  for name, (shape, memory_kb, weights_k, mflop) in ALEXNET_TABLE.items():
    path = name if name == 'head' else f'backbone/{name}'
    got_shape, macs = table[path]
    assert got_shape == shape, name
    assert round(math.prod(shape) * 4 / 1024) == memory_kb, name
    weights = params[name]['kernel'].size if name in params else 0
    assert round(weights / 1000) == weights_k, name
    assert round(macs / 1e6) == mflop, name
  # "AlexNet total: 0.7 GFLOP", "61M" parameters.
  assert round(sum(m for _, m in table.values()) / 1e9, 1) == 0.7
  assert n_params(variables) == 61_100_840


def test_alexnet_at_224_and_adaptive_pool():
  table = layer_table(create_model('alexnet'), (224, 224, 3))
  assert table['backbone/stem_conv1'][0] == (55, 55, 64)
  assert table['backbone/stage4_pool5'][0] == (6, 6, 256)
  # At 224 and 227 the adaptive pool is a no-op (no Pool module is called).
  assert 'backbone/classifier_avgpool/pool' not in table
  # Larger inputs: 13x13 after pool5 -> windows of 3, stride 2.
  table = layer_table(create_model('alexnet'), (448, 448, 3))
  assert table['backbone/stage4_pool5'][0] == (13, 13, 256)
  assert table['backbone/classifier_avgpool'][0] == (6, 6, 256)


def _torch_adaptive_avg_pool(x: np.ndarray, size: int) -> np.ndarray:
  """PyTorch's adaptive average pooling of [batch, H, W, C], in numpy."""
  def bins(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
  return np.stack([
      np.stack([x[:, a:b, c:d].mean(axis=(1, 2)) for c, d in bins(x.shape[2])],
               axis=1) for a, b in bins(x.shape[1])], axis=1)


@pytest.mark.parametrize('in_size', [1, 2, 3, 6, 7, 12, 13, 18])
def test_adaptive_avg_pool_matches_pytorch_rule(in_size):
  x = np.random.default_rng(0).normal(size=(2, in_size, in_size, 3))
  y = AdaptiveAvgPool(6).apply({}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y, _torch_adaptive_avg_pool(x, 6), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('in_size', [4, 5, 9, 14])
def test_adaptive_avg_pool_unequal_windows_fail_clearly(in_size):
  with pytest.raises(ValueError, match='unequal windows'):
    AdaptiveAvgPool(6).apply({}, jnp.zeros((1, in_size, in_size, 1)))


# --------------------------------------------------------------------------
# VGG.

# The lecture's VGG-16 list: conv weights (biases not counted) per stage.
VGG16_CONV_WEIGHTS = [
    [1_728, 36_864],
    [73_728, 147_456],
    [294_912, 589_824, 589_824],
    [1_179_648, 2_359_296, 2_359_296],
    [2_359_296, 2_359_296, 2_359_296],
]


def test_vgg16_lecture_sizes():
  model = create_model('vgg16')
  (_, out), variables = trace(model, (224, 224, 3), batch=1)
  params = variables['params']['backbone']
  for s, weights in enumerate(VGG16_CONV_WEIGHTS, start=1):
    got = [params[f'stage{s}_conv{i}']['kernel'].size
           for i in range(1, len(weights) + 1)]
    assert got == weights
    assert f'stage{s}_conv{len(weights) + 1}' not in params
  assert [out[f'stage{s}'].shape[1:] for s in range(1, 6)] == [
      (112, 112, 64), (56, 56, 128), (28, 28, 256), (14, 14, 512),
      (7, 7, 512)]
  assert out['stem'].shape[1:] == (224, 224, 64)
  fc = [params['classifier_fc6']['kernel'].size,
        params['classifier_fc7']['kernel'].size,
        variables['params']['head']['kernel'].size]
  assert fc == [102_760_448, 16_777_216, 4_096_000]
  assert n_params(variables) == 138_357_544  # "TOTAL params: 138M"


def test_vgg_bn_adds_only_scale_and_shift():
  _, plain = trace(create_model('vgg11'), (32, 32, 3))
  _, bn = trace(create_model('vgg11_bn'), (32, 32, 3))
  assert n_params(bn) - n_params(plain) == 2 * (64 + 128 + 2 * 256 + 4 * 512)
  assert 'batch_stats' in bn and 'batch_stats' not in plain


# --------------------------------------------------------------------------
# GoogLeNet.


def test_googlenet_params_with_and_without_aux_heads():
  _, with_aux = trace(create_model('googlenet'), (224, 224, 3))
  _, without = trace(create_model('googlenet', aux_heads=False), (224, 224, 3))
  assert n_params(with_aux) == 13_004_888
  assert n_params(without) == 6_624_904
  assert {'aux1', 'aux2'} <= set(with_aux['params']['backbone'])
  assert not {'aux1', 'aux2'} & set(without['params']['backbone'])
  # The paper's 5x5 kernels instead of torchvision's 3x3.
  _, paper = trace(create_model('googlenet', aux_heads=False, large_kernel=5),
                   (224, 224, 3))
  assert n_params(paper) - n_params(without) == 380_928


def test_googlenet_aux_logits_only_in_training():
  model = create_model('googlenet')
  x = jnp.zeros((2, 224, 224, 3))
  (_, out_eval), variables = trace(model, (224, 224, 3))
  assert 'aux_logits' not in out_eval
  (_, out_train), _ = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, mutable=['batch_stats'],
                            rngs={'dropout': jax.random.key(1)}), variables)
  assert [(a.shape, a.dtype) for a in out_train['aux_logits']] == [
      ((2, 1000), jnp.float32)] * 2
  # Evaluation-mode apply ignores the aux parameters it was given.
  _, out_eval = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert 'aux_logits' not in out_eval
  # Without aux heads there are none in training mode either.
  model = create_model('googlenet', aux_heads=False)
  (_, out_train), _ = trace(model, (224, 224, 3), train=True)
  assert 'aux_logits' not in out_train


def test_googlenet_shapes_and_lecture_stem():
  model = create_model('googlenet')
  table = layer_table(model, (224, 224, 3))
  (_, out), variables = trace(model, (224, 224, 3), batch=1)
  assert out['stem'].shape[1:] == (28, 28, 192)
  assert out['stage1'].shape[1:] == (28, 28, 480)
  assert out['stage2'].shape[1:] == (14, 14, 832)
  assert out['stage3'].shape[1:] == (7, 7, 1024)
  assert out['pre_logits'].shape[1:] == (1024,)
  # Lecture table "GoogLeNet: Aggressive Stem":
  # (output shape, memory KB, conv weights k, MFLOP).
  stem = {
      'stem_conv1': ((112, 112, 64), 3136, 9, 118),
      'stem_pool1': ((56, 56, 64), 784, 0, 0),
      'stem_conv2': ((56, 56, 64), 784, 4, 13),
      'stem_conv3': ((56, 56, 192), 2352, 111, 347),
      'stem_pool2': ((28, 28, 192), 588, 0, 0),
  }
  params = variables['params']['backbone']
  total_weights = total_kb = 0
  for name, (shape, memory_kb, weights_k, mflop) in stem.items():
    got_shape, _ = table[f'backbone/{name}']
    assert got_shape == shape, name
    assert math.prod(shape) * 4 / 1024 == memory_kb, name
    weights = params[name]['conv']['kernel'].size if name in params else 0
    macs = table.get(f'backbone/{name}/conv', (None, 0))[1]
    assert round(weights / 1000) == weights_k, name
    assert round(macs / 1e6) == mflop, name
    total_weights += weights
    total_kb += memory_kb
  # "Total from 224 to 28: Memory 7.5 MB, Params 124K". (Its "MFLOP: 418"
  # does not add up: 118 + 13 + 347 = 478.)
  assert round(total_kb / 1024, 1) == 7.5
  assert round(total_weights / 1000) == 124
  # Global average pooling head: 7x7x1024 -> 1024 -> fc 1000 (1,025k).
  assert table['backbone/stage3_avgpool'][0] == (1024,)
  head = variables['params']['head']
  assert head['kernel'].size + head['bias'].size == 1_025_000


def test_googlenet_small_shapes():
  (_, out), _ = trace(create_model('googlenet_small'), (32, 32, 3),
                      train=True)
  assert out['stage1'].shape[1:3] == (32, 32)
  assert out['stage3'].shape[1:3] == (8, 8)
  assert len(out['aux_logits']) == 2


def test_inception_module_op_counts_from_the_lecture():
  # The lecture's example: 28x28x256 input; 1x1 128, 3x3 192, 5x5 96 and,
  # with dimension reduction, 1x1 bottlenecks of 64 (and a 64 pool proj).
  def make(bottleneck):
    return InceptionModule(c1=128, c3_reduce=64, c3=192, c5_reduce=64, c5=96,
                           pool_proj=64, bottleneck=bottleneck)

  def count(module):
    table = layer_table(module, (28, 28, 256))
    macs = [m for _, m in table.values() if m]
    return sum(macs), len(macs), table[''][0][-1]

  naive, n_convs, depth = count(make(False))
  assert naive == 28 * 28 * 256 * (128 * 1 + 192 * 9 + 96 * 25)
  assert (round(naive / 1e6), n_convs) == (854, 3)  # "Total: 854M ops"
  # Pooling keeps the input depth: 128 + 192 + 96 + 256.
  assert depth == 672

  reduced, n_convs, depth = count(make(True))
  lecture_terms = [28 * 28 * 64 * 1 * 1 * 256, 28 * 28 * 64 * 1 * 1 * 256,
                   28 * 28 * 128 * 1 * 1 * 256, 28 * 28 * 192 * 3 * 3 * 64,
                   28 * 28 * 96 * 5 * 5 * 64, 28 * 28 * 64 * 1 * 1 * 256]
  assert reduced == sum(lecture_terms) == 271_351_808
  assert n_convs == 6 and depth == 128 + 192 + 96 + 64
  # The lecture's "Total: 358M ops" does not follow from its own six terms
  # (they sum to 271M): 358M is what one gets with the 3x3 term taken over 128
  # input channels instead of 64, an arithmetic slip on the slide.
  slip = sum(lecture_terms) - 28 * 28 * 192 * 9 * 64 + 28 * 28 * 192 * 9 * 128
  assert round(slip / 1e6) == 358
  # Either way the bottleneck saves most of the compute.
  assert reduced / naive < 0.35
