"""Tests for cnn.summary: the lectures' size tables, reproduced.

Numbers quoted from the lectures are copied in here (the project never reads
the lecture files). Where a lecture number is not reproducible as printed, the
test pins what is exact and the comment says which convention or slip
explains the difference.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cnn import summary
from cnn.models import googlenet, registry


@functools.lru_cache(maxsize=None)
def _summary(name: str, input_shape: tuple[int, int, int] | None = None,
             **kwargs) -> summary.Summary:
  # One trace per (model, input) for the whole file.
  return summary.summarize(name, input_shape, **kwargs)


def _kib(row: summary.LayerRow) -> int:
  return round(row.activation_bytes / 1024)


def _k(n: int) -> int:
  return round(n / 1000)


def _m(n: int) -> int:
  return round(n / 1e6)


# --- LeNet-5 (lectures 000/001: the size table; 003: 61,706 weights). ------

# (layer, units, connections, weights without bias, weights with bias).
LENET_TABLE = (
    ('c1_conv', 4_704, 117_600, 150, 156),
    ('s2', 1_176, 4_704, 0, 0),
    ('c3_conv', 1_600, 240_000, 2_400, 2_416),
    ('s4', 400, 1_600, 0, 0),
    ('f5', 120, 48_000, 48_000, 48_120),
    ('f6', 84, 10_080, 10_080, 10_164),
    ('head', 10, 840, 840, 850),  # The lecture's "output" layer.
)


@pytest.mark.parametrize('layer,units,connections,weights,with_bias',
                         LENET_TABLE)
def test_lenet_table_row(layer, units, connections, weights, with_bias):
  row = _summary('lenet5').layer(layer)
  assert (row.units, row.connections, row.params_without_bias, row.params) == (
      units, connections, weights, with_bias)


def test_lenet_totals():
  s = _summary('lenet5')
  t = s.totals
  assert t['params'] == 61_706 == 156 + 2_416 + 48_120 + 10_164 + 850
  assert t['params_without_bias'] == 61_470
  assert t['connections'] == 422_824  # Sum of the lecture's column.
  assert t['macs'] == 422_824 - 4_704 - 1_600  # Pooling is no multiply-add.
  assert t['flops'] == 2 * t['macs'] + 4_704 + 1_600
  assert t['units'] == 8_094
  # The lectures' LeNet-vs-AlexNet table says 8,084 units for LeNet (1998):
  # the hidden layers C1..F6, without the 10 output units.
  assert t['units'] - s.layer('head').units == 8_084
  # Its "60,000 parameters / 344,000 connections" are the 1998 paper's
  # (sparse C3 connection table, trainable pooling coefficients), a different
  # network from the fully connected C3 of the lecture's table: not pinned.
  assert t['activation_bytes'] == 8_094 * 4
  # Flax's own parameter tree, independently of the summary.
  model = registry.create_model('lenet5')
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == t[
      'params']


def test_lenet_receptive_field_by_hand():
  s = _summary('lenet5')
  # C1 5x5/1: r = 1 + (5 - 1) * 1 = 5, j = 1.  S2 2x2/2: r = 5 + 1 * 1 = 6,
  # j = 2.  C3 5x5/1: r = 6 + 4 * 2 = 14 (pixels of the padded 32x32 input),
  # j = 2.  S4 2x2/2: r = 14 + 1 * 2 = 16, j = 4.
  expected = {'c1_conv': (5, 1), 's2': (6, 2), 'c3_conv': (14, 2),
              's4': (16, 4)}
  for layer, (rf, jump) in expected.items():
    row = s.layer(layer)
    assert (row.rf, row.jump) == ((rf, rf), (jump, jump)), layer
  # F5 sees all 5x5 positions of S4: 16 + 4 * 4 = 32, the whole input.
  assert s.layer('f5').rf == (32, 32)


def test_bfloat16_halves_activation_memory():
  f32 = _summary('lenet5').totals
  bf16 = summary.summarize('lenet5', dtype='bfloat16').totals
  assert bf16['activation_bytes'] * 2 == f32['activation_bytes']
  assert bf16['params'] == f32['params']
  assert bf16['param_bytes'] == f32['param_bytes']  # Parameters stay f32.


# --- Every registered model: parameters agree with Flax and the reference. --

# Width/depth-scaled copies of a configuration already covered by a smaller
# sibling (densenet_small, efficientnet_b0/b1, resnet20, plain18/34/50) whose
# trace takes seconds: run with `-m slow`.
_SLOW = {'densenet_bc100', 'efficientnet_b2', 'efficientnet_b3',
         'efficientnet_b4', 'efficientnet_b5', 'efficientnet_b6',
         'efficientnet_b7',
         'resnet110', 'plain110', 'plain101', 'plain152'}


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n
    for n in registry.list_models()])
def test_every_model_params_match_flax_tree(name):
  # `summarize` raises if its rows do not add up to Flax's parameter tree or
  # if a conv/dense row's formula disagrees with the traced primitives.
  s = _summary(name)
  spec = registry.get_spec(name)
  if spec.reference_params is not None:
    assert s.totals['params'] == spec.reference_params
  assert s.totals['params'] == sum(r.params for r in s.rows)
  assert s.totals['macs'] > 0 and s.totals['units'] > 0
  assert not s.warnings
  for row in s.rows:
    if row.type in ('Conv', 'Dense'):
      assert row.macs > 0 and row.units > 0 and row.rf is not None, row


def test_train_only_modules_are_reported_unused_in_eval():
  # GoogLeNet creates its auxiliary heads at init but runs them in training
  # only: evaluation counts their parameters (torchvision's 13,004,888) in
  # 'unused' rows and none of their cost.
  s = _summary('googlenet')
  unused = {r.name: r.params for r in s.rows if r.type == 'unused'}
  assert set(unused) == {'backbone/aux1', 'backbone/aux2'}
  assert s.totals['params'] - sum(unused.values()) == 6_624_904
  assert not s.find('backbone/aux*/*')


class _AuxNet(nn.Module):
  """Dense 8 -> head, plus a training-only auxiliary Dense."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    y = nn.Dense(8, name='body')(x)
    if train or self.is_initializing():
      y = y + nn.Dense(8, name='aux')(x).sum()
    return nn.Dense(3, name='head')(y)


def test_train_mode_counts_training_branches():
  ev = summary.summarize(_AuxNet(), (2, 2, 1))
  tr = summary.summarize(_AuxNet(), (2, 2, 1), train=True)
  assert ev.layer('aux').type == 'unused' and ev.layer('aux').params == 40
  assert tr.layer('aux').type == 'Dense' and tr.layer('aux').macs == 32
  assert ev.totals['params'] == tr.totals['params'] == 40 + 40 + 27
  assert tr.totals['macs'] - ev.totals['macs'] == 32


# --- AlexNet: the lecture's per-layer table (input 227x227x3). -------------

# (layer, memory KB, params k (weights only), "flop" M). The table's "flop"
# column is multiply-adds for convs/FCs and window reads for pools, i.e. our
# `connections`; "memory" is output units x 4 bytes in KiB.
ALEXNET_TABLE = (
    ('stem_conv1', 784, 23, 73),
    ('stem_pool1', 182, 0, 0),
    ('stage1_conv2', 547, 307, 224),
    ('stage1_pool2', 127, 0, 0),
    ('stage2_conv3', 254, 664, 112),
    # The lecture prints 145 for conv4: 13*13*256 * 3*3*384 = 149,520,384.
    ('stage3_conv4', 169, 885, 150),
    ('stage4_conv5', 169, 590, 100),
    ('stage4_pool5', 36, 0, 0),
    ('classifier_fc6', 16, 37_749, 38),
    ('classifier_fc7', 16, 16_777, 17),
    ('head', 4, 4_096, 4),  # fc8.
)


@pytest.mark.parametrize('layer,kib,kparams,mflop', ALEXNET_TABLE)
def test_alexnet_table_row(layer, kib, kparams, mflop):
  row = _summary('alexnet', (227, 227, 3)).layer(layer)
  assert (_kib(row), _k(row.params_without_bias), _m(row.connections)) == (
      kib, kparams, mflop)


def test_alexnet_totals():
  s = _summary('alexnet', (227, 227, 3))
  assert s.layer('stem_conv1').output_shape == (56, 56, 64)
  assert s.totals['params'] == 61_100_840  # "61M".
  assert s.totals['connections'] == 717_562_112  # "0.7 GFLOP".
  assert round(s.totals['connections'] / 1e9, 1) == 0.7
  # "AlexNet total: 1.9 MB" in the memory chart: the five conv outputs.
  conv_bytes = sum(r.activation_bytes for r in s.rows if r.type == 'Conv')
  assert round(conv_bytes / 2**20, 1) == 1.9
  # torchvision's natural 224x224 input: conv1 gives 55x55, the rest agree.
  s224 = _summary('alexnet')
  assert s224.layer('stem_conv1').output_shape == (55, 55, 64)
  assert s224.layer('stem_pool1').output_shape == (27, 27, 64)
  assert round(s224.totals['macs'] / 1e9, 1) == 0.7
  # Receptive field of pool5: 195 pixels (a well-known value).
  assert s.layer('stem_conv1').rf == (11, 11)
  assert s.layer('stage4_pool5').rf == (195, 195)


# --- VGG-16. ---------------------------------------------------------------

# The CS231n listing: output units and weights "not counting biases".
VGG16_LISTING = (
    ('stage1_conv1', 224 * 224 * 64, 1_728),
    ('stage1_conv2', 224 * 224 * 64, 36_864),
    ('stage1_pool', 112 * 112 * 64, 0),
    ('stage2_conv1', 112 * 112 * 128, 73_728),
    ('stage2_conv2', 112 * 112 * 128, 147_456),
    ('stage2_pool', 56 * 56 * 128, 0),
    ('stage3_conv1', 56 * 56 * 256, 294_912),
    ('stage3_conv2', 56 * 56 * 256, 589_824),
    ('stage3_conv3', 56 * 56 * 256, 589_824),
    ('stage3_pool', 28 * 28 * 256, 0),
    ('stage4_conv1', 28 * 28 * 512, 1_179_648),
    ('stage4_conv2', 28 * 28 * 512, 2_359_296),
    ('stage4_conv3', 28 * 28 * 512, 2_359_296),
    ('stage4_pool', 14 * 14 * 512, 0),
    ('stage5_conv1', 14 * 14 * 512, 2_359_296),
    ('stage5_conv2', 14 * 14 * 512, 2_359_296),
    ('stage5_conv3', 14 * 14 * 512, 2_359_296),
    ('stage5_pool', 7 * 7 * 512, 0),
    ('classifier_fc6', 4_096, 102_760_448),
    ('classifier_fc7', 4_096, 16_777_216),
    ('head', 1_000, 4_096_000),
)


def test_vgg16_listing():
  s = _summary('vgg16')
  for layer, units, weights in VGG16_LISTING:
    row = s.layer(layer)
    assert (row.units, row.params_without_bias) == (units, weights), layer
  # Johnson's table: fc6 102,760K params / 103 MFLOP, fc7 16,777K / 17,
  # fc8 4,096K / 4; "flatten 98 KB" is pool5's 7x7x512 output.
  for layer, kparams, mflop in (('classifier_fc6', 102_760, 103),
                                ('classifier_fc7', 16_777, 17),
                                ('head', 4_096, 4)):
    row = s.layer(layer)
    assert (_k(row.params_without_bias), _m(row.connections)) == (kparams,
                                                                   mflop)
  assert _kib(s.layer('stage5_pool')) == 98


def test_vgg16_totals_and_the_lecture_conventions():
  s = _summary('vgg16')
  t = s.totals
  assert t['params'] == 138_357_544  # "138M parameters".
  # Multiply-adds: 15.47G, the usual "VGG-16: 15.5 GFLOPs" (flops meaning
  # multiply-adds); convs 15.35G, the three FCs 0.12G. 2 x MACs = 30.9G.
  assert t['macs'] == 15_470_264_320
  assert t['macs_conv'] == 15_346_630_656
  assert t['macs_dense'] == 123_633_664
  assert round(t['macs'] / 1e9, 1) == 15.5
  # Johnson's "VGG-16 total: 13.6 GFLOP" and his 224->28 comparison (7,485
  # MFLOP, 1.1M params, 42.9 MB) and memory chart (48.6 MB) all reproduce
  # exactly with ONE conv of stage 3 left out of his table (conv3_3, 1.85G
  # multiply-adds): an omission in the slide, not a convention.
  conv3_3 = s.layer('stage3_conv3')
  assert round((t['macs'] - conv3_3.macs) / 1e9, 1) == 13.6
  first = [s.layer(n) for n in ('stage1_conv1', 'stage1_conv2',
                                'stage2_conv1', 'stage2_conv2',
                                'stage3_conv1', 'stage3_conv2')]
  assert _m(sum(r.macs for r in first)) == 7_485
  assert round(sum(r.params_without_bias for r in first) / 1e6, 1) == 1.1
  assert round(sum(r.activation_bytes for r in first) / 2**20, 1) == 42.9
  convs = [r for r in s.rows if r.type == 'Conv' and r is not conv3_3]
  assert round(sum(r.activation_bytes for r in convs) / 2**20, 1) == 48.6
  # "TOTAL memory: 24M * 4 bytes ~= 96MB / image" does not follow from the
  # listing itself, whose entries add up to 15.2M units with the input:
  assert t['units'] + 224 * 224 * 3 == 15_237_608
  # Receptive field of the last conv stage: 212 pixels (well-known value);
  # two stacked 3x3 convs see 1 + L * (K - 1) = 5 pixels.
  assert s.layer('stage1_conv2').rf == (5, 5)
  assert s.layer('stage5_pool').rf == (212, 212)


# --- GoogLeNet. ------------------------------------------------------------

GOOGLENET_STEM = (
    # (layer, memory KB, params K, "flop" M) from the lecture's stem table.
    ('stem_conv1/conv', 3_136, 9, 118),
    ('stem_pool1', 784, 0, 2),
    ('stem_conv2/conv', 784, 4, 13),
    ('stem_conv3/conv', 2_352, 111, 347),
    ('stem_pool2', 588, 0, 1),
)


def test_googlenet_stem_and_head():
  s = _summary('googlenet')
  rows = [s.layer(name) for name, *_ in GOOGLENET_STEM]
  for row, (name, kib, kparams, mflop) in zip(rows, GOOGLENET_STEM,
                                              strict=True):
    assert (_kib(row), _k(row.params_without_bias), _m(row.connections)) == (
        kib, kparams, mflop), name
  assert rows[-1].output_shape == (28, 28, 192)
  # "Total from 224 to 28: memory 7.5 MB, params 124K, MFLOP 418": the rows
  # add up to 481 MFLOP (118 + 2 + 13 + 347 + 1); 418 is a digit swap.
  assert round(sum(r.activation_bytes for r in rows) / 2**20, 1) == 7.5
  assert sum(r.params_without_bias for r in rows) == 124_096
  assert _m(sum(r.connections for r in rows)) == 481
  # Global average pooling 7x7x1024 -> 1024: 4 KB, 0 MFLOP; fc 1,025K
  # params (with biases here), 1 MFLOP.
  gap = s.layer('stage3_avgpool')
  assert (gap.kernel, _kib(gap), _m(gap.connections)) == ((7, 7), 4, 0)
  assert (_k(s.layer('head').params), _m(s.layer('head').macs)) == (1_025, 1)


def test_inception_module_naive_vs_bottleneck():
  # The lecture's example on a 28x28x256 input: 1x1 128, 3x3 192, 5x5 96
  # (and a 3x3 pool), naive vs with 64-filter 1x1 bottlenecks.
  naive = summary.summarize(
      googlenet.InceptionModule(128, 1, 192, 1, 96, 1, bottleneck=False),
      (28, 28, 256))
  assert naive.totals['macs_conv'] == (
      28 * 28 * 128 * 1 * 1 * 256 + 28 * 28 * 192 * 3 * 3 * 256 +
      28 * 28 * 96 * 5 * 5 * 256) == 854_196_224  # "854M ops".
  assert naive.find('*branch4_pool')[0].output_shape == (28, 28, 256)
  reduced = summary.summarize(
      googlenet.InceptionModule(128, 64, 192, 64, 96, 64), (28, 28, 256))
  # The six terms the slide lists add up to 271M; its "358M" equals the sum
  # with the 3x3 conv reading 128 channels instead of 64 (28*28*192*3*3*128
  # = 173.4M instead of 86.7M), an arithmetic slip.
  listed = (3 * 28 * 28 * 64 * 256 + 28 * 28 * 128 * 256 +
            28 * 28 * 192 * 3 * 3 * 64 + 28 * 28 * 96 * 5 * 5 * 64)
  assert reduced.totals['macs_conv'] == listed == 271_351_808
  assert _m(listed - 28 * 28 * 192 * 9 * 64 + 28 * 28 * 192 * 9 * 128) == 358
  # Output depth: naive 128 + 192 + 96 + 256 = 672, bottleneck 480.
  shape = lambda s: jax.eval_shape(
      lambda x: s.init_with_output(jax.random.key(0), x)[0],
      jax.ShapeDtypeStruct((1, 28, 28, 256), jnp.float32)).shape
  assert shape(googlenet.InceptionModule(128, 1, 192, 1, 96, 1,
                                         bottleneck=False))[-1] == 672
  assert shape(googlenet.InceptionModule(128, 64, 192, 64, 96, 64))[-1] == 480


def test_inception_receptive_fields_per_branch():
  s = _summary('googlenet')
  # Stem: 7x7/2 -> 7 (j 2); pool 3x3/2 -> 11 (j 4); 1x1; 3x3 -> 19; pool
  # 3x3/2 -> 27 (j 8). Inception 3a: the 3x3 branches see 27 + 2 * 8 = 43.
  assert s.layer('stem_pool2').rf == (27, 27)
  assert s.layer('stage1_3a/branch2/conv').rf == (43, 43)
  assert s.layer('stage1_3a/branch4_pool').rf == (43, 43)
  # 3b's 1x1 convs read the concatenation: the largest branch of 3a (43),
  # not the running maximum over everything traced so far.
  assert s.layer('stage1_3b/branch1/conv').rf == (43, 43)
  assert s.layer('stage1_3b/branch2/conv').rf == (59, 59)


# --- ResNets. --------------------------------------------------------------

# The lecture's table (He et al. 2016, table 1): "FLOPs" = multiply-adds.
RESNET_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# Our exact multiply-adds (torchvision layout, incl. the FC head).
RESNET_MACS = {18: 1_814_073_344, 34: 3_663_761_408, 50: 4_089_184_256,
               101: 7_801_405_440, 152: 11_513_626_624}


def _resnet_v1_macs(s: summary.Summary) -> int:
  """Multiply-adds of the paper's v1 layout, from the v1.5 rows.

  Our bottleneck blocks put the stride on the 3x3 conv (torchvision's "v1.5");
  the paper (v1) puts it on the first 1x1 conv, which then produces a map of
  a quarter of the size: the same parameters, 3/4 fewer multiply-adds in the
  first 1x1 conv of stages 2-4 (3 x 77M = 231M for every bottleneck depth).
  Basic blocks have no 1x1 conv there: v1 = v1.5.
  """
  firsts = s.find('*stage[234]_block1/conv1')
  if s.layer('stage1_block1/conv1').kernel == (3, 3):  # Basic blocks.
    return s.totals['macs']
  return s.totals['macs'] - sum(3 * r.macs // 4 for r in firsts)


@pytest.mark.parametrize('depth', sorted(RESNET_GFLOPS))
def test_resnet_multiply_adds(depth):
  s = _summary(f'resnet{depth}')
  assert s.totals['macs'] == RESNET_MACS[depth]
  assert abs(_resnet_v1_macs(s) / 1e9 - RESNET_GFLOPS[depth]) <= 0.1
  # The lecture's stem table: conv 7x7/2 3136 KB / 9K / 118 MFLOP, max-pool
  # 784 KB / 0 / 2.
  for layer, kib, kparams, mflop in (('stem_conv', 3_136, 9, 118),
                                     ('stem_pool', 784, 0, 2)):
    row = s.layer(layer)
    assert (_kib(row), _k(row.params_without_bias), _m(row.connections)) == (
        kib, kparams, mflop)


def test_resnet50_v1_vs_v1_5():
  s = _summary('resnet50')
  # v1.5 (ours, torchvision): 4.09G = the "4.1 GFLOPs" quoted for torchvision;
  # the paper's v1: 3.86G, its "3.8".
  assert round(s.totals['macs'] / 1e9, 1) == 4.1
  assert _resnet_v1_macs(s) == 3_857_973_248
  # Each of the three strided 1x1 convs does 56*56*256*128 (stage 2; the
  # same in stages 3, 4) multiply-adds in v1.5 and a quarter of it in v1.
  assert s.totals['macs'] - _resnet_v1_macs(s) == 3 * (
      3 * 56 * 56 * 256 * 128 // 4) == 231_211_008


def test_resnet18_by_hand():
  s = _summary('resnet18')
  conv3 = lambda hw, cin, cout, k=3: hw * hw * cout * k * k * cin
  stem = conv3(112, 3, 64, 7)
  stage1 = 4 * conv3(56, 64, 64)
  later = 0
  for hw, c in ((28, 128), (14, 256), (7, 512)):
    later += (conv3(hw, c // 2, c) + 3 * conv3(hw, c, c) +
              conv3(hw, c // 2, c, 1))  # Strided conv, 3 convs, projection.
  assert s.totals['macs_conv'] == stem + stage1 + later
  assert s.totals['macs_dense'] == 512 * 1000
  assert s.totals['params'] == 11_689_512


def test_resnet_receptive_fields_through_shortcuts():
  s = _summary('resnet18')
  # Stem 7 (j 2) -> pool 11 (j 4); block 1: 19, 27; the sum with the
  # shortcut (11) keeps 27, so block 2 grows from 27: 35, 43.
  assert s.layer('stage1_block1/conv2').rf == (27, 27)
  assert s.layer('stage1_block2/conv1').rf == (35, 35)
  assert s.layer('stage1_block2/conv2').rf == (43, 43)
  assert s.layer('stage2_block1/conv1').jump == (8, 8)
  # The widely quoted receptive field of (torchvision) ResNet-50: 427.
  assert _summary('resnet50').find('*stage4_block3/conv3')[0].rf == (427, 427)


def test_remat_does_not_change_the_accounting():
  # nn.remat wraps each block in a `checkpoint` primitive: the data-flow pass
  # inlines it.
  plain = _summary('resnet20')
  remat = summary.summarize('resnet20', remat=True)
  assert [(r.name, r.macs, r.units, r.params, r.rf) for r in plain.rows] == [
      (r.name, r.macs, r.units, r.params, r.rf) for r in remat.rows]


# --- Attention and odd modules. --------------------------------------------


def test_vit_attention_matmuls_and_global_receptive_field():
  s = _summary('vit_tiny')
  spec = registry.get_spec('vit_tiny')
  att = s.find('*stage1_block1/attention')[0]
  tokens = (spec.input_shape[0] // 4) ** 2 + 1  # 4x4 patches + class token.
  d = s.layer('stem_patch_embed').output_shape[-1]
  assert att.type == 'Attention'
  assert att.macs == 2 * tokens * tokens * d  # Q K^T and A V.
  assert s.layer('stem_patch_embed').rf == (4, 4)
  assert att.rf == spec.input_shape[:2]
  assert {r.name for r in s.rows if r.type == 'param'} == {
      'backbone/stem_cls_token', 'backbone/stem_pos_embedding'}


class _EinsumAttention(nn.Module):
  """Attention written with jnp.einsum: [B, H, W, C] -> [B, H*W, C]."""

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    t = x.reshape(b, h * w, c)
    q = nn.Dense(8, name='q')(t)
    k = nn.Dense(8, name='k')(t)
    a = jax.nn.softmax(jnp.einsum('bqd,bkd->bqk', q, k))
    return jnp.einsum('bqk,bkc->bqc', a, t)


def test_einsum_matmuls_outside_layers_are_counted():
  s = summary.summarize(_EinsumAttention(), (4, 4, 3))
  row = s.layer('model/matmul')
  assert row.type == 'matmul'
  assert row.macs == 16 * 16 * 8 + 16 * 3 * 16
  assert row.rf == (4, 4)  # Every token sees the whole image.
  assert s.layer('q').macs == 16 * 3 * 8
  assert s.totals['macs'] == row.macs + 2 * 16 * 3 * 8


class _Shared(nn.Module):

  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(4, name='shared')
    return dense(dense(x.reshape(x.shape[0], -1)))


def test_shared_layer_counts_params_once_and_cost_per_call():
  s = summary.summarize(_Shared(), (2, 2, 1))
  rows = s.find('shared')
  assert [r.params for r in rows] == [20, 0]
  assert s.totals['params'] == 20 and s.totals['macs'] == 2 * 16


# --- XLA's own count. ------------------------------------------------------


@pytest.mark.parametrize('name', ['lenet5', 'resnet20', 'alexnet'])
def test_xla_cost_analysis_agrees(name):
  s = _summary(name)
  xla = summary.xla_flops(name)
  # XLA: 2 flops per multiply-add on real (unpadded) input, plus elementwise
  # ops (bias, batch norm, ReLU, additions, pooling); see `xla_flops`.
  assert 1.0 <= xla / (2 * s.totals['macs_nonpad']) <= 1.06
  assert abs(xla / s.totals['flops'] - 1) <= 0.1


# --- Command line. ---------------------------------------------------------


def _run_main(*argv: str) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = summary.main(list(argv))
  return code, out.getvalue(), err.getvalue()


def test_cli_table_json_and_list():
  code, text, _ = _run_main('--model=lenet5')
  assert code == 0
  assert 'c1_conv' in text and '117,600' in text and '61,706' in text
  code, text, _ = _run_main('--model=lenet5', '--input_shape=32,32,1',
                            '--num_classes=7', '--json')
  data = json.loads(text)
  assert code == 0 and data['model'] == 'lenet5'
  assert data['input_shape'] == [32, 32, 1]
  assert data['totals']['params'] == 61_706 - 850 + 84 * 7 + 7
  assert {'params', 'flops', 'units', 'connections', 'activation_bytes',
          'macs'} <= set(data['totals'])
  assert data['layers'][0]['name'] == 'backbone/c1_conv'
  assert data['layers'][0]['rf'] == [5, 5]
  code, text, _ = _run_main('--list')
  assert code == 0
  assert registry.get_spec('lenet5').description in text


def test_cli_too_small_input_and_unknown_model():
  code, _, err = _run_main('--model=resnet18', '--input_shape=16,16,3')
  assert code == 2 and 'too small' in err and '32x32' in err
  code, _, err = _run_main('--model=lenet6')
  assert code == 2 and 'lenet5' in err


def test_print_summary_and_module_entry_point():
  buf = io.StringIO()
  s = summary.print_summary('lenet5', None, None, 'float32', as_json=True,
                            file=buf)
  assert json.loads(buf.getvalue())['totals']['flops'] == s.totals['flops']
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, '-m', 'cnn.summary', '--model=lenet5'], cwd=root,
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr
  assert 's4' in result.stdout and '422,824' in result.stdout


@pytest.mark.parametrize('name', ['lenet5', 'resnet20'])
def test_cli_prints_the_table_of_main_summary_mode_for_the_zoo_config(name):
  """`python -m cnn.summary --model=NAME` and `main.py
  --config=configs/zoo.py:NAME --mode=summary` (which prints
  `print_summary_for_config` of that config) count the same network on the
  same input: the same rows, totals and header."""
  from configs import zoo  # pylint: disable=g-import-not-at-top
  for as_json in (False, True):
    code, cli_text, _ = _run_main(f'--model={name}', '--train_batch=0',
                                  *(['--json'] if as_json else []))
    assert code == 0
    buf = io.StringIO()
    summary.print_summary_for_config(zoo.get_config(name), as_json=as_json,
                                     file=buf)
    assert cli_text == buf.getvalue()
  # Fashion-MNIST's shape, named in the header (resnet20's natural input
  # is 32x32x3; --input_shape counts another and says so).
  assert cli_text and json.loads(cli_text)['input_shape'] == [28, 28, 1]
  _, text, _ = _run_main(f'--model={name}', '--train_batch=0')
  assert text.startswith(f'{name}: input 28x28x1 (fashion_mnist), 10 classes')
  _, text, _ = _run_main(f'--model={name}', '--train_batch=0',
                         '--input_shape=32,32,3')
  assert text.startswith(f'{name}: input 32x32x3 (--input_shape), 10 classes')


def test_print_summary_for_config():
  ml_collections = pytest.importorskip('ml_collections')
  config = ml_collections.ConfigDict(dict(
      model_name='lenet5', model=dict(batch_norm=True), dtype='bfloat16',
      input=dict(dataset='fashion_mnist', image_size=0)))
  buf = io.StringIO()
  s = summary.print_summary_for_config(config, file=buf)
  # Batch norm replaces the two conv biases (22) by 2 x (6 + 16) scale/shift.
  assert s.totals['params'] == 61_706 - 22 + 44
  assert s.input_shape == (28, 28, 1) and s.dtype == 'bfloat16'
  assert 'c1_bn' in buf.getvalue()
  config.input.image_size = 36
  s = summary.print_summary_for_config(config, as_json=True, file=buf)
  assert s.input_shape == (36, 36, 1)


# --- 1x1 convolutions and depthwise-separable blocks. ----------------------


class _Pointwise(nn.Module):
  """A 1x1 conv 3 -> 8 channels, then the head."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.Conv(8, (1, 1), name='pointwise')(x)
    return nn.Dense(2, name='head')(x.reshape(x.shape[0], -1))


def test_pointwise_conv_costs_c_times_c_prime_per_position():
  row = summary.summarize(_Pointwise(), (5, 4, 3)).layer('pointwise')
  assert row.output_shape == (5, 4, 8)
  assert row.macs == 5 * 4 * 3 * 8  # H W C C': 24 multiply-adds a position.
  assert row.params == 3 * 8 + 8


def test_mobilenet_v2_separable_blocks_by_hand():
  from cnn import fundamentals
  from cnn.summary import separable
  costs = separable.block_costs(_summary('mobilenet_v2'))
  assert len(costs) == 17  # 1 + 2 + 3 + 4 + 3 + 3 + 1 inverted residuals.
  first = costs[1]
  # stage2_block1 at 224x224: expand 16 -> 96 at 112x112, depthwise 3x3/2 on
  # 96 channels to 56x56, project 96 -> 24. Standard 3x3 conv 96 -> 24:
  # 56 * 56 * 9 * 96 * 24 = 65,028,096; separable 56 * 56 * (9 * 96 + 96 * 24)
  # = 9,934,848; ratio 1/24 + 1/9.
  assert first.block == 'backbone/stage2_block1'
  assert (first.kernel_size, first.in_channels, first.out_channels,
          first.positions) == (3, 96, 24, 56 * 56)
  assert (first.standard, first.separable) == (65_028_096, 9_934_848)
  assert first.ratio == pytest.approx(1 / 24 + 1 / 9)
  last = costs[-1]  # stage7_block1: 960 -> 320 channels at 7x7.
  assert (last.in_channels, last.out_channels, last.positions) == (
      960, 320, 49)
  assert last.ratio == pytest.approx(1 / 320 + 1 / 9)
  for c in costs:
    assert c.ratio == pytest.approx(
        fundamentals.separable_cost(3, c.in_channels, c.out_channels).ratio)
