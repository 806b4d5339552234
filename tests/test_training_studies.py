"""The batch-norm, activation and gradient-flow studies (issue #35, studies
2-4): their sweep configs field by field, and every figure and table of
`cnn.experiments.training_studies` on tiny hand-made sweep directories (no
training; seconds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib import image as mpl_image

from cnn import layers, plotting
from cnn.common import errors
from cnn.experiments import analysis, sweep
from cnn.experiments import training_studies as ts
from cnn.training import optim
from configs import (
  activations_fmnist,
  batchnorm_fmnist,
  default,
  gradient_flow_fmnist,
)

SEEDS = (0, 1, 2)
T975_2 = 4.302652729911275  # t(0.975, 2 degrees of freedom)


def _members(module, arg=None):
  base = module.get_config(arg)
  members = sweep.members_of(module.get_sweep(arg), module.member_name)
  return base, {m.name: sweep.member_config(base, m) for m in members}


# ------------------------------------------------------------------ configs


def test_batchnorm_sweep_is_the_ioffe_szegedy_ablation():
  base, configs = _members(batchnorm_fmnist)
  assert base.model_name == 'vgg11_small'
  assert base.model.width == pytest.approx(0.5 * batchnorm_fmnist.WIDTH)
  assert base.input.image_size == 32  # five 2x2 pools need 32 pixels.
  assert base.input.validation_per_class > 0  # the base lr's split.
  assert base.optimizer.name == 'sgd'
  assert base.eval_subset == 1000 and base.eval_on_train
  assert base.eval_every_epochs <= 1
  lr = batchnorm_fmnist.BASE_LR
  assert base.optimizer.learning_rate == lr
  assert len(configs) == 18
  variants = {}
  for name, c in configs.items():
    key = (c.model.batch_norm, round(c.optimizer.learning_rate / lr, 6),
           c.model.activation)
    variants.setdefault(key, set()).add(c.seed)
    assert c.model.width == base.model.width and c.model_name == 'vgg11_small'
    assert name == (f"{'bn' if c.model.batch_norm else 'nobn'}-"
                    f'{c.model.activation}-'
                    f'lr{c.optimizer.learning_rate:g}-seed{c.seed}')
  assert variants == {k: set(SEEDS) for k in (
      (False, 1, 'relu'), (True, 1, 'relu'), (True, 5, 'relu'),
      (True, 30, 'relu'), (False, 5, 'relu'), (True, 1, 'sigmoid'))}
  no_bn_5x = configs[f'nobn-relu-lr{5 * lr:g}-seed0']
  assert no_bn_5x.optimizer.learning_rate == pytest.approx(5 * lr)
  assert not no_bn_5x.model.batch_norm
  # With BN the member is exactly the registry's vgg11_bn_small at the
  # study's width.
  from cnn.models import registry  # pylint: disable=g-import-not-at-top
  bn = configs[f'bn-relu-lr{lr:g}-seed1'].model.to_dict()
  assert bn == dict(registry.backbone_options('vgg11_bn_small'),
                    width=base.model.width)


def test_batchnorm_lr_grid_is_chosen_on_validation_without_bn():
  base, configs = _members(batchnorm_fmnist, 'lr_grid')
  assert base.input.validation_per_class > 0
  assert sorted(c.optimizer.learning_rate for c in configs.values()) == (
      sorted(batchnorm_fmnist.LR_GRID))
  assert batchnorm_fmnist.BASE_LR in batchnorm_fmnist.LR_GRID
  for c in configs.values():
    assert c.seed == 0 and not c.model.batch_norm
    assert c.model.activation == 'relu'
  tiny = sweep.members_of(batchnorm_fmnist.get_sweep('lr_grid,runlocal'),
                          batchnorm_fmnist.member_name)
  assert batchnorm_fmnist.get_config('lr_grid,runlocal').input.train_subset \
      == 512 and len(tiny) == len(batchnorm_fmnist.LR_GRID)
  with pytest.raises(default.ConfigArgError, match="'lr_grid', 'runlocal'"):
    batchnorm_fmnist.get_config('lr_gird')


def test_activations_sweep_has_eight_activations_and_no_batch_norm():
  base, configs = _members(activations_fmnist)
  assert base.model_name == 'lenet5'
  assert base.log_zero_fraction and base.log_grad_norms
  assert base.eval_subset == 1000 and base.eval_on_train
  assert base.input.test_subset == 0  # zero fractions over the whole set.
  assert len(configs) == 8 * 3
  by_activation = {}
  for name, c in configs.items():
    assert c.model.batch_norm is False, name  # SELU's recipe, and all alike.
    assert c.model.activation in layers.ACTIVATIONS
    assert name == f'{c.model.activation}-seed{c.seed}'
    by_activation.setdefault(c.model.activation, set()).add(c.seed)
  assert by_activation == {a: set(SEEDS) for a in (
      'relu', 'leaky_relu', 'elu', 'selu', 'gelu', 'tanh', 'sigmoid',
      'identity')}
  # SELU gets LeCun-normal kernels (its self-normalisation needs them).
  assert layers.kernel_init_for('selu', None) is not None


def test_gradient_flow_sweep_is_plain56_vs_resnet56_relu_vs_sigmoid():
  base, configs = _members(gradient_flow_fmnist)
  assert base.log_grad_norms and base.eval_every_epochs == 0.5
  assert base.eval_subset == 1000
  assert len(configs) == 2 * 2 * 3
  seen = set()
  for name, c in configs.items():
    assert c.model.width == 0.25 and c.model.stem == 'cifar'
    assert tuple(c.model.stage_sizes) == (9, 9, 9)  # 6 * 9 + 2 = 56 layers.
    assert c.model.residual == c.model_name.startswith('resnet')
    assert c.model.shortcut == 'A'
    assert name == f'{c.model_name}-{c.model.activation}-seed{c.seed}'
    seen.add((c.model_name, c.model.activation, c.seed))
    # One learning rate throughout (0.1, He et al. before their first
    # decay): evaluations compare like with like.
    steps = c.num_train_steps
    lr = optim.create_learning_rate_fn(c, steps // gradient_flow_fmnist
                                       .EPOCHS, steps)
    assert [float(lr(s)) for s in (0, steps // 2, steps - 1)] == (
        pytest.approx([0.1] * 3))
  assert seen == {(m, a, s) for m in ('plain56', 'resnet56')
                  for a in ('relu', 'sigmoid') for s in SEEDS}


@pytest.mark.parametrize('module', [batchnorm_fmnist, activations_fmnist,
                                    gradient_flow_fmnist])
def test_runlocal_keeps_the_full_sweeps_names(module):
  tiny = sweep.members_of(module.get_sweep('runlocal'), module.member_name)
  full = {m.name for m in sweep.members_of(module.get_sweep(),
                                           module.member_name)}
  assert {m.name for m in tiny} <= full and len(tiny) < len(full)
  config = module.get_config('runlocal')
  assert config.input.train_subset == 512
  for m in tiny:
    assert sweep.member_config(config, m).seed == 0


# ------------------------------------------------- hand-made sweep dirs


def _study(tmp_path, members: dict[str, dict], rows: dict[str, dict],
           evaluations: dict[str, list[dict]]) -> analysis.Study:
  """A Study as `analysis.load` builds it, over `tmp_path`: `members`
  name -> overrides, `rows` name -> row fields beyond the defaults,
  `evaluations` name -> the metrics.jsonl records written to disk (and
  the curves drawn from them)."""
  table, curves = [], {}
  for name, overrides in members.items():
    table.append({'member': name, 'status': 'completed', 'model_name':
                  overrides.get('model_name', 'lenet5'),
                  'final_train_error': 0.1, 'final_test_error': 0.2,
                  'diverged_at_step': '', **rows.get(name, {})})
    records = evaluations.get(name, [])
    (tmp_path / name).mkdir(parents=True)
    with open(tmp_path / name / 'metrics.jsonl', 'w') as f:
      for r in records:
        f.write(json.dumps(r) + '\n')
    curves[name] = dict(
        step=np.array([r['step'] for r in records]),
        train_error=100 * np.array([1 - r['train_eval_accuracy']
                                    for r in records]),
        test_error=100 * np.array([1 - r['test_accuracy'] for r in records]))
  group_of = {n: sweep.member_name({k: v for k, v in o.items()
                                    if k != 'seed'})
              for n, o in members.items()}
  return analysis.Study(str(tmp_path), table, [], curves, group_of,
                        members)


def _record(step, accuracy, **extra):
  return dict(step=step, epoch=step / 40, test_accuracy=accuracy,
              train_eval_accuracy=min(1.0, accuracy + 0.05), test_count=1000,
              **extra)


BN_LR = 0.02
BN_VARIANTS = ((False, 1, 'relu'), (True, 1, 'relu'), (True, 5, 'relu'),
               (True, 30, 'relu'), (False, 5, 'relu'), (True, 1, 'sigmoid'))


def bn_study(tmp_path) -> analysis.Study:
  """The six variants x 3 seeds; BN learns faster; no BN at 5x diverges
  for seeds 0 and 1 (seed 0 before its first evaluation)."""
  members, rows, evaluations = {}, {}, {}
  for i, (bn, mult, act) in enumerate(BN_VARIANTS):
    for seed in SEEDS:
      overrides = {'seed': seed, **batchnorm_fmnist.variant(bn, mult, act)}
      overrides['optimizer.learning_rate'] = round(BN_LR * mult, 10)
      name = batchnorm_fmnist.member_name(overrides)
      members[name] = overrides
      speed = (2.0 if bn else 1.0) * (1 + 0.1 * seed)
      evaluations[name] = [_record(40 * k, min(0.92, 0.1 + 0.1 * k * speed))
                           for k in range(1, 11)]
      rows[name] = dict(model_name='vgg11_small',
                        final_test_error=0.08 + 0.01 * i + 0.01 * seed,
                        final_train_error=0.04 + 0.01 * i + 0.01 * seed)
      if not bn and mult == 5 and seed < 2:
        evaluations[name] = evaluations[name][:3 * seed]
        rows[name].update(status='diverged', final_test_error='',
                          diverged_at_step=30 + 100 * seed,
                          final_train_error='')
  return _study(tmp_path, members, rows, evaluations)


ACTS = ('relu', 'leaky_relu', 'elu', 'selu', 'gelu', 'tanh', 'sigmoid',
        'identity')
LENET_MODULES = ('backbone/c1_conv', 'backbone/c3_conv', 'backbone/f5',
                 'backbone/f6', 'head')
LENET_STAGES = ('stem', 'stage1', 'stage2', 'stage3', 'stage4', 'stage5',
                'pre_logits', 'logits')


def activation_study(tmp_path) -> analysis.Study:
  members, rows, evaluations = {}, {}, {}
  for i, act in enumerate(ACTS):
    for seed in SEEDS:
      name = f'{act}-seed{seed}'
      members[name] = {'seed': seed, 'model.activation': act}
      rows[name] = dict(final_test_error=0.10 + 0.01 * i + 0.01 * seed,
                        final_train_error=0.08 + 0.01 * i)
      records = []
      for k in range(1, 6):
        grads = {f'grad_norm/{m}': (1 + j) * 10.0 ** (-i / 2) * (1 + seed)
                 for j, m in enumerate(LENET_MODULES)}
        records.append(_record(100 * k, 0.5 + 0.08 * k - 0.01 * i,
                               **grads))
      sparse = 0.5 if 'relu' in act else 0.0
      # As the trainer writes them: by name, not in forward order.
      records[-1].update({f'test_zero_fraction/{s}': sparse + 0.1 * seed
                          for s in sorted(LENET_STAGES)})
      evaluations[name] = records
  return _study(tmp_path, members, rows, evaluations)


def resnet_modules(depth: int = 56) -> list[str]:
  n = (depth - 2) // 6
  out = ['backbone/stem_conv', 'backbone/stem_bn']
  for s in (1, 2, 3):
    for b in range(1, n + 1):
      out += [f'backbone/stage{s}_block{b}/{m}'
              for m in ('conv1', 'bn1', 'conv2', 'bn2')]
  return out + ['head']


def flow_study(tmp_path, evaluations_per_run: int = 8) -> analysis.Study:
  """plain-56/ResNet-56 x ReLU/sigmoid x 3 seeds; a conv layer's norm is
  decay ** (55 - index) (vanishing towards the input), with seeds scaling
  it by 1, 2, 4 (geometric mean 2, factor 2)."""
  modules = resnet_modules()
  decays = {('plain56', 'relu'): 0.95, ('plain56', 'sigmoid'): 0.7,
            ('resnet56', 'relu'): 1.0, ('resnet56', 'sigmoid'): 0.9}
  members, rows, evaluations = {}, {}, {}
  for seed in SEEDS:
    for (model, act), decay in decays.items():
      name = f'{model}-{act}-seed{seed}'
      members[name] = {'seed': seed, 'model_name': model,
                       'model.activation': act}
      rows[name] = dict(model_name=model, final_test_error=0.1 + (
          0.1 if act == 'sigmoid' else 0) + (0.05 if model == 'plain56'
                                             else 0) + 0.01 * seed)
      records = []
      for k in range(1, evaluations_per_run + 1):
        conv_index, grads = 0, {}
        for m in modules:
          if ts.is_conv(m):
            conv_index += 1
            grads[f'grad_norm/{m}'] = 2 ** seed * decay ** (55 - conv_index)
          else:
            grads[f'grad_norm/{m}'] = 0.5
        records.append(_record(20 * k, 0.3 + 0.05 * k, **grads))
      evaluations[name] = records
  return _study(tmp_path, members, rows, evaluations)


def _meets_the_standard(fig, path, panels):
  width = mpl_image.imread(path).shape[1]
  assert width >= (1200 if panels > 1 else 800), width
  assert plotting.overlapping_text(fig) == []
  assert plotting.text_outside(fig) == []
  stem = str(path)[:-4]
  for ext in ('json', *plotting.VECTOR_FORMATS):
    with open(f'{stem}.{ext}', 'rb') as f:
      assert f.read()
  with open(f'{stem}.json') as f:
    return json.load(f)


# --------------------------------------------------------------- batch norm


def test_difference_interval_by_hand():
  # a: mean 2, var 1 (n 3); b: all 0 -> Welch dof = 2, se = sqrt(1/3).
  d = ts.difference_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
  assert d['difference'] == 2.0 and (d['n_a'], d['n_b']) == (3, 3)
  assert d['half95'] == pytest.approx(T975_2 / math.sqrt(3))
  assert d['low'] == pytest.approx(2 - T975_2 / math.sqrt(3))
  # Equal spreads, equal n: dof = 4 (the pooled t-test's).
  d = ts.difference_interval([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
  assert d['difference'] == -1.0
  assert d['half95'] == pytest.approx(2.7764451051977987 * math.sqrt(2 / 3))
  assert math.isnan(ts.difference_interval([1.0], [2.0, 3.0])['half95'])
  assert ts.difference_interval([1.0, 1.0], [0.0, 0.0])['half95'] == 0.0


def test_batchnorm_variants_name_the_multiplier(tmp_path):
  study = bn_study(tmp_path)
  assert ts.base_learning_rate(study) == BN_LR
  variants = ts.batchnorm_variants(study)
  assert list(variants) == ['no BN, 1× lr', 'BN, 1× lr', 'BN, 5× lr',
                            'BN, 30× lr', 'no BN, 5× lr',
                            'BN, sigmoid, 1× lr']
  assert all(len(v) == 3 for v in variants.values())
  # Another base: the multipliers follow.
  assert 'BN, 3× lr' in ts.batchnorm_variants(study, base_lr=BN_LR * 10)


def test_steps_to_accuracy_is_the_first_evaluation_at_the_threshold(
    tmp_path):
  study = bn_study(tmp_path)
  steps = ts.steps_to_accuracy(study, 0.5)
  # No BN, seed 0: accuracy 0.1 + 0.1 k reaches 0.5 at k = 4 (step 160);
  # BN seed 0: 0.1 + 0.2 k at k = 2 (step 80).
  assert steps['nobn-relu-lr0.02-seed0'] == 160
  assert steps['bn-relu-lr0.02-seed0'] == 80
  # Diverged before reaching it (seed 1 had 3 evaluations: up to 0.43).
  assert steps['nobn-relu-lr0.1-seed1'] is None
  assert steps['nobn-relu-lr0.1-seed0'] is None  # no evaluation at all.
  assert ts.steps_to_accuracy(study, 0.99)['bn-relu-lr0.02-seed0'] is None
  with pytest.raises(errors.UserError, match='fraction'):
    ts.steps_to_accuracy(study, 85)
  table = ts.steps_table(study, 0.5)
  assert '| no BN, 5× lr | 160 ± 0 | 1 / 3 | 2 |' in table
  # Seeds reach it at k = 4, 4, 4 without BN (speed 1, 1.1, 1.2).
  assert '| no BN, 1× lr | 160 ± 0 | 3 / 3 | 0 |' in table


def test_batchnorm_table_compares_with_the_network_without_bn(tmp_path):
  table = ts.batchnorm_table(bn_study(tmp_path))
  # No BN 1x: 8, 9, 10 %; BN 1x: 9, 10, 11 %: +1 point, equal spreads.
  assert '| no BN, 1× lr | 3 / 3 | 0 | 9.00 ± 1.00 (3) |' in table
  assert '| no BN, 5× lr | 1 / 3 | 2 | 14.00 ± 0.00 (1) |' in table
  half = 2.7764451051977987 * math.sqrt(2 / 3)
  assert (f'| BN, 1× lr − no BN, 1× lr | 10.00 ± 1.00 (3) | 9.00 ± 1.00 (3) '
          f'| +1.00 | [{1 - half:+.2f}, {1 + half:+.2f}] |') in table
  assert 'BN, sigmoid, 1× lr − no BN, 1× lr' in table


def test_batchnorm_curves_meet_the_standard_and_count_divergence(tmp_path):
  study = bn_study(tmp_path)
  path = tmp_path / 'figures' / 'bn.png'
  fig = ts.batchnorm_curves(study, str(path), threshold=0.8)
  data = _meets_the_standard(fig, path, 1)
  texts = [t.get_text() for t, _ in plotting.text_boxes(fig)]
  assert 'no BN, 5× lr: 2/3 diverged' in texts
  assert {'BN, 30× lr', '80 % test accuracy', 'diverged member',
          'band: ± 1 std over n = 1–3 seeds'} <= set(texts)
  entry = data['variants']['no BN, 5× lr']
  assert entry['n'] == 1 and entry['n_diverged'] == 2
  assert entry['diverged']['nobn-relu-lr0.1-seed0']['diverged_at_step'] == 30
  assert len(entry['diverged']['nobn-relu-lr0.1-seed1']['step']) == 3
  bn = data['variants']['BN, 1× lr']
  assert bn['n'] == 3 and len(bn['step']) == 10
  # Seeds' accuracies at step 40: 0.3, 0.32, 0.34 -> errors 70, 68, 66.
  assert bn['test_error_mean'][0] == pytest.approx(68)
  assert bn['test_error_std'][0] == pytest.approx(2)


# -------------------------------------------------------------- activations


def test_activations_figure_meets_the_standard(tmp_path):
  study = activation_study(tmp_path)
  path = tmp_path / 'act.png'
  fig = ts.activations_figure(study, str(path))
  data = _meets_the_standard(fig, path, 4)
  texts = {t.get_text() for t, _ in plotting.text_boxes(fig)}
  assert {'ReLU', 'leaky ReLU', 'SELU', 'identity (linear)', 'c1_conv',
          'head', 'stem', 'pre_logits'} <= texts
  assert 'logits' not in texts  # the classifier's output is no stage.
  # Zero fractions over seeds: 0.5, 0.6, 0.7 -> 60 ± 10 %.
  relu = data['zero_fraction']['ReLU']['stage2']
  assert relu['mean'] == pytest.approx(60) and relu['std'] == pytest.approx(
      10)
  assert data['zero_fraction']['tanh']['stem']['mean'] == pytest.approx(10)
  assert list(data['zero_fraction']['ReLU']) == [  # forward order.
      'stem', 'stage1', 'stage2', 'stage3', 'stage4', 'stage5', 'pre_logits']
  ticks = [t.get_text() for t in fig.axes[2].get_xticklabels()]
  assert ticks == list(data['zero_fraction']['ReLU'])
  # Gradient norms: seeds x1, x2, x3 -> geometric mean 6 ** (1/3).
  head = data['grad_norm']['ReLU']['head']
  assert head['mean'] == pytest.approx(5 * 6 ** (1 / 3))
  assert data['grad_norm']['ReLU']['step'] == 500
  final = data['final']['sigmoid']
  assert final['mean'] == pytest.approx(100 * (0.10 + 0.06 + 0.01))
  assert final['half95'] == pytest.approx(T975_2 / math.sqrt(3))


def test_activations_table_compares_with_relu(tmp_path):
  table = ts.activations_table(activation_study(tmp_path))
  assert '| ReLU | 3 / 3 | 0 | 11.00 ± 1.00 (3) | 8.00 ± 0.00 (3) | 60.0 |' \
      in table
  assert '| tanh | 3 / 3 | 0 |' in table and '| 10.0 |' in table
  assert '| sigmoid − ReLU | 17.00 ± 1.00 (3) | 11.00 ± 1.00 (3) | +6.00 |' \
      in table
  assert table.count('− ReLU') == 7


# ------------------------------------------------------------ gradient flow


def test_conv_layers_are_the_main_path_convolutions():
  convs = [m for m in resnet_modules() if ts.is_conv(m)]
  assert len(convs) == 55 and convs[0] == 'backbone/stem_conv'
  assert ts.is_conv('backbone/c1_conv') and not ts.is_conv('backbone/f5')
  assert not ts.is_conv('backbone/stage2_block1/proj_conv')
  assert not ts.is_conv('backbone/stage1_block1/bn1')


def test_gradient_flow_figure_meets_the_standard(tmp_path):
  study = flow_study(tmp_path)
  path = tmp_path / 'flow.png'
  fig = ts.gradient_flow_figure(study, str(path))
  data = _meets_the_standard(fig, path, 4)
  texts = {t.get_text() for t, _ in plotting.text_boxes(fig)}
  assert {'plain-56, ReLU', 'ResNet-56, sigmoid', 'step 20 (epoch 0.5)',
          'step 100 (epoch 2.5)', 'step 160 (epoch 4)'} <= texts
  panel = data['panels']['plain-56, sigmoid']
  assert list(panel) == ['step 20 (epoch 0.5)', 'step 100 (epoch 2.5)',
                         'step 160 (epoch 4)']
  last = panel['step 160 (epoch 4)']
  assert last['n'] == 3 and len(last['modules']) == 55
  # Seeds x1, x2, x4: geometric mean x2, geometric std factor 2.
  assert last['mean'][-1] == pytest.approx(2.0)
  assert last['mean'][0] == pytest.approx(2 * 0.7 ** 54)
  assert last['factor'][0] == pytest.approx(2.0)


def test_gradient_flow_table_gives_the_first_to_last_ratio(tmp_path):
  table = ts.gradient_flow_table(flow_study(tmp_path))
  # plain-56 with sigmoid: first / last = 0.7 ** 54 for every seed.
  assert f'| {0.7 ** 54:.3g} (3) |' in table
  assert '| ResNet-56, ReLU | 3 / 3 | 0 |' in table and '| 1 (3) |' in table
  assert ('| ResNet-56, ReLU − plain-56, ReLU | 11.00 ± 1.00 (3) | '
          '16.00 ± 1.00 (3) | -5.00 |') in table
  assert 'plain-56, sigmoid − plain-56, ReLU' in table


def test_figures_say_when_nothing_was_logged(tmp_path):
  """A study trained without log_grad_norms / log_zero_fraction still
  draws, saying so."""
  study = _study(tmp_path, {'relu-seed0': {'seed': 0, 'model.activation':
                                           'relu'}}, {},
                 {'relu-seed0': [_record(10, 0.5), _record(20, 0.6)]})
  fig = ts.activations_figure(study, None)
  texts = [t.get_text() for t, _ in plotting.text_boxes(fig)]
  assert texts.count('not logged') == 2
  fig = ts.gradient_flow_figure(study, None)
  assert 'no gradient norms logged' in [t.get_text() for t, _ in
                                        plotting.text_boxes(fig)]
