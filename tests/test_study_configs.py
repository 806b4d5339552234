"""The study configs match their protocols field by field, the
kernel-layout forms have the sizes the lecture states, and every config file
has a `:runlocal` that builds (and, for the zoo and one sweep, trains)."""

from __future__ import annotations

import csv
import importlib
import json
import os
import re

import pytest

from cnn import summary
from cnn.common import errors
from cnn.experiments import sweep
from cnn.training import metrics, optim
from configs import (
  default,
  depth_study,
  depth_study_fmnist,
  receptive_field,
  receptive_field_fmnist,
)
from tests import helpers

CONFIG_FILES = sorted(f for f in os.listdir(os.path.join(helpers.REPO,
                                                         'configs'))
                      if f.endswith('.py') and not f.startswith('_'))
# The subprocesses compile with XLA's cheap passes: compiling, not running,
# is most of a runlocal member's time on a CPU.
FAST_COMPILE = {'XLA_FLAGS': '--xla_backend_optimization_level=0 '
                             '--xla_llvm_disable_expensive_passes=true'}


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


# --- runlocal: every config file, shrunk to seconds. ---------------------


@pytest.mark.parametrize('file', CONFIG_FILES)
def test_every_config_file_builds_its_runlocal(file, monkeypatch, tmp_path):
  module = importlib.import_module(f'configs.{file[:-3]}')
  assert re.search(rf'--config=configs/{file}:(\w+,)?runlocal',
                   module.__doc__), 'the docstring shows the runlocal command'
  full, tiny = module.get_config(), module.get_config('runlocal')
  assert tiny.model_name == full.model_name
  assert tiny.input.dataset in (full.input.dataset, '')  # imagenet: a folder
  assert 0 < tiny.input.train_subset <= 512 and tiny.input.batch_size <= 32
  assert tiny.input.test_subset == 1000 and not tiny.progress_bar
  if full.num_train_steps > 0:
    assert tiny.num_train_steps == default.RUNLOCAL_STEPS
    assert all(s <= default.RUNLOCAL_STEPS
               for s in tiny.schedule.decay_steps)
  else:
    assert tiny.num_epochs <= 2
  if isinstance(full.model.get('width'), float):
    assert tiny.model.width <= 0.25
  arg = 'resnet20,runlcoal' if file == 'zoo.py' else 'runlcoal'
  with pytest.raises(default.ConfigArgError, match="valid: .*'runlocal'"):
    module.get_config(arg)
  if not hasattr(module, 'get_sweep'):
    return
  if getattr(module, 'READS_RUNS', False):  # members made of other runs.
    monkeypatch.chdir(tmp_path)  # where those runs are not.
    with pytest.raises(errors.UserError, match='run the grid first'):
      module.get_sweep()
    return
  stage = getattr(module, 'FIRST_STAGE', None)
  name_fn = getattr(module, 'member_name', sweep.member_name)
  members = sweep.members_of(
      module.get_sweep(f'{stage},runlocal' if stage else 'runlocal'), name_fn)
  all_names = {m.name for m in sweep.members_of(module.get_sweep(stage),
                                                name_fn)}
  # A few of the full sweep's members, with the full sweep's names.
  assert 2 <= len(members) <= 16 and len(members) < len(all_names)
  assert {m.name for m in members} <= all_names
  configs = [sweep.member_config(tiny, m) for m in members]
  assert {c.seed for c in configs} == {0}


def test_runlocal_of_transfer_configs_starts_from_the_runlocal_source():
  from configs import (  # pylint: disable=g-import-not-at-top
    transfer_fmnist,
    transfer_fmnist_resnet,
    transfer_source,
    transfer_source_resnet,
    transfer_yosinski_resnet,
  )
  for target, source in ((transfer_fmnist, transfer_source),
                         (transfer_fmnist_resnet, transfer_source_resnet),
                         (transfer_yosinski_resnet, transfer_source_resnet)):
    tiny = target.get_config('runlocal')
    assert tiny.init_from.startswith('/tmp/runlocal/')
    assert f'--workdir={tiny.init_from}' in source.__doc__
    # The source's runlocal network is the one the target restores into.
    assert tiny.model.to_dict() == source.get_config('runlocal').model.to_dict()


def test_main_passes_the_config_arg_to_get_sweep(tmp_path):
  """main.py hands ARG of --config=FILE:ARG to get_sweep as to get_config;
  a user's get_sweep() without a parameter still works."""
  from cnn.experiments import sweep_launch  # pylint: disable=g-import-not-at-top
  full = sweep_launch.members_of(depth_study_fmnist, None)
  tiny = sweep_launch.members_of(depth_study_fmnist, 'runlocal')
  assert len(tiny) == 4 < len(full)
  assert {m.name for m in tiny} <= {m.name for m in full}

  class UserSweep:
    @staticmethod
    def get_sweep():
      return [dict(seed=0), dict(seed=1)]

  assert [m.name for m in sweep_launch.members_of(UserSweep, 'runlocal')] == [
      'seed0', 'seed1']


def test_zoo_takes_a_model_name_and_runlocal():
  from configs import zoo  # pylint: disable=g-import-not-at-top
  tiny = zoo.get_config('vgg11_small,runlocal')
  assert tiny.model_name == 'vgg11_small' and tiny.input.train_subset == 512
  assert zoo.get_config('runlocal').model_name == 'resnet20'
  with pytest.raises(default.ConfigArgError, match="'resnet32'"):
    zoo.get_config('resnet20,resnet32')
  with pytest.raises(default.ConfigArgError, match="Unknown model 'resnt20'"):
    zoo.get_config('resnt20,runlocal')


def test_zoo_runlocal_trains_end_to_end(tmp_path):
  # The flag error of a misspelt variant is one line, not a traceback.
  bad = helpers.run_main(['--config=configs/zoo.py:resnet20,runlcoal',
                          '--mode=summary'], timeout=120)
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert re.search(r"^error: Unknown argument 'runlcoal' .*'runlocal'",
                   bad.stderr, re.MULTILINE), bad.stderr[-2000:]

  workdir = tmp_path / 'resnet20'
  done = helpers.run_main(['--config=configs/zoo.py:resnet20,runlocal',
                           f'--workdir={workdir}'], env=FAST_COMPILE,
                          timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model_name'] == 'resnet20' and config['model']['width'] == 0.25
  last = metrics.read_metrics(str(workdir))[-1]  # the last evaluation
  assert last['step'] == default.RUNLOCAL_STEPS and last['test_count'] == 1000


def test_a_runlocal_sweep_trains_end_to_end(tmp_path):
  """receptive_field_fmnist.py:runlocal (the cheapest study: four small
  networks) through main.py: its runlocal members, laid out as the full
  sweep's, and results.csv."""
  workdir = tmp_path / 'receptive_field_fmnist'
  done = helpers.run_main(
      ['--config=configs/receptive_field_fmnist.py:runlocal',
       f'--workdir={workdir}', '--mode=train'], env=FAST_COMPILE, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  names = [m.name for m in sweep.members_of(
      receptive_field_fmnist.get_sweep('runlocal'),
      receptive_field_fmnist.member_name)]
  assert names == [f'{m}-seed0' for m in receptive_field.MODELS]
  plan = json.loads((workdir / sweep.PLAN_FILE).read_text())
  assert [m['name'] for m in plan['members']] == names
  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['member'] for r in rows] == names
  assert {r['status'] for r in rows} == {'completed'}
  for name in names:
    assert (workdir / name / 'metrics.jsonl').stat().st_size
    assert (workdir / name / sweep.RESULT_FILE).exists()
