"""The classifier-head study (issue #36, study 3): its sweep config's members
and their options, the head's parameter count, and the table and figure on a
hand-made study (no training; seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib import image as mpl_image

from cnn import plotting
from cnn.experiments import analysis, heads, sweep, sweep_results
from configs import default, heads_fmnist

SEEDS = (0, 1, 2)
VGG_NAMES = [f'vgg-{head}-dropout{d}' for head in ('flatten_fc', 'gap')
             for d in ('0', '0.5')]
GOOGLENET_NAMES = ['googlenet-noaux', 'googlenet-aux0.3']


def _members(arg: str | None = None):
  base = heads_fmnist.get_config(arg)
  members = sweep.members_of(heads_fmnist.get_sweep(arg),
                             heads_fmnist.member_name)
  return base, {m.name: sweep.member_config(base, m) for m in members}


def test_the_sweep_is_six_variants_times_three_seeds_seeds_outermost():
  _, configs = _members()
  names = list(configs)
  assert names == [f'{v}-seed{s}' for s in SEEDS
                   for v in (*VGG_NAMES, *GOOGLENET_NAMES)]


def test_the_base_recipe_is_the_briefs():
  base, _ = _members()
  assert base.input.dataset == 'fashion_mnist'
  assert base.input.train_subset == 5_000
  assert base.eval_every_epochs == 1.0 and base.eval_subset == 1_000
  assert base.eval_on_train
  assert base.loss.label_smoothing == 0.0


def test_vgg_members_differ_only_in_their_head_and_dropout():
  _, configs = _members()
  for name, config in configs.items():
    if not name.startswith('vgg'):
      continue
    assert config.model_name == 'vgg11_bn_small'
    assert tuple(config.model.stage_sizes) == (1, 1, 2)
    assert tuple(config.model.widths) == (64, 128, 256)
    assert config.model.width == 0.25 and config.model.batch_norm
    assert config.input.image_size == 32 and config.input.batch_size == 128
    assert config.loss.aux_weight == 0.0
    if '-flatten_fc-' in name:
      assert config.model.pool_to == heads_fmnist.FINAL_MAP
      assert tuple(config.model.fc) == (256, 256)
    else:
      assert config.model.pool_to is None and tuple(config.model.fc) == ()
    dropout = 0.5 if '-dropout0.5-' in name else 0.0
    assert config.model.dropout == dropout and config.head_dropout == dropout


def test_googlenet_members_differ_only_in_their_auxiliary_heads():
  _, configs = _members()
  for name, config in configs.items():
    if not name.startswith('googlenet'):
      continue
    assert config.model_name == 'googlenet_small'
    assert config.model.width == heads_fmnist.GOOGLENET_WIDTH
    assert config.input.image_size == 0  # Fashion-MNIST's own 28x28.
    assert config.input.batch_size == 64 and config.num_epochs == 2.0
    assert config.input.train_subset == 5_000
    aux = '-aux0.3-' in name
    assert config.model.aux_heads == aux
    assert config.loss.aux_weight == (0.3 if aux else 0.0)


def test_runlocal_keeps_every_variant_for_seed_0_shrunk():
  base, configs = _members('runlocal')
  assert list(configs) == [f'{v}-seed0'
                           for v in (*VGG_NAMES, *GOOGLENET_NAMES)]
  assert base.input.train_subset == 512
  for config in configs.values():
    assert config.input.batch_size == 32 and config.num_epochs == 2.0


def test_full_is_the_accelerator_size_and_other_words_are_refused():
  base, configs = _members('full')
  assert base.input.train_subset == 0 and base.num_epochs == 30.0
  assert len(configs) == 18
  googlenet = configs['googlenet-aux0.3-seed2']
  assert googlenet.model.width == 0.5 and googlenet.num_epochs == 30.0
  assert googlenet.input.batch_size == 128
  assert googlenet.input.image_size == 0
  with pytest.raises(default.ConfigArgError, match="valid: 'full', "):
    heads_fmnist.get_sweep('ful')


def test_head_parameters_split_the_head_from_the_trunk():
  _, configs = _members()
  sizes = {}
  for name in ('vgg-flatten_fc-dropout0-seed0', 'vgg-gap-dropout0-seed0'):
    config = configs[name]
    sizes[name] = heads.head_parameters(
        config.model_name, config.model.to_dict(), (32, 32, 1), 10)
  flat, gap = sizes.values()
  # flatten 4x4x64 -> 256 -> 256 -> 10, and 64 -> 10.
  assert flat['head'] == (1024 * 256 + 256) + (256 * 256 + 256) + 2570
  assert gap['head'] == 64 * 10 + 10
  assert flat['total'] - flat['head'] == gap['total'] - gap['head']
  assert flat['aux'] == gap['aux'] == 0


def test_googlenet_aux_heads_are_counted_apart():
  _, configs = _members()
  sizes = [heads.head_parameters(
      'googlenet_small', configs[f'{v}-seed0'].model.to_dict(), (28, 28, 1),
      10) for v in GOOGLENET_NAMES]
  without, with_aux = sizes
  assert without['aux'] == 0 and with_aux['aux'] > 0
  assert with_aux['total'] - with_aux['aux'] == without['total']
  assert without['head'] == with_aux['head'] == 128 * 10 + 10


def test_variant_labels_name_the_head():
  labels = [heads.variant_label(o) for o in heads_fmnist.variants()]
  assert labels == [
      'flatten → FC 256 → FC 256 → classifier, dropout 0',
      'flatten → FC 256 → FC 256 → classifier, dropout 0.5',
      'global average pooling → classifier, dropout 0',
      'global average pooling → classifier, dropout 0.5',
      'GoogLeNet-small, no auxiliary heads',
      'GoogLeNet-small, auxiliary heads (loss weight 0.3)']


# --- the table and the figure, on a hand-made study -------------------------

HEAD_PARAMS = {'flatten_fc': dict(total=391_338, head=330_762, aux=0),
               'gap': dict(total=61_226, head=650, aux=0),
               'noaux': dict(total=96_258, head=1_290, aux=0),
               'aux': dict(total=166_774, head=1_290, aux=70_516)}


def _kind(overrides: dict) -> str:
  kind = heads.family(overrides)
  if kind == heads.GOOGLENET_FAMILY:
    return 'aux' if overrides['model.aux_heads'] else 'noaux'
  return kind


def heads_study(evaluations: int = 8) -> tuple[analysis.Study, dict]:
  """The config's 18 members with made-up results: test error 10 % + 1 %
  per variant + 0.5 % per seed, training error 4 % lower; curves decaying
  to them. Returns (study, head_params by group)."""
  rows, groups, curves, group_of, overrides = [], {}, {}, {}, {}
  members = sweep.members_of(heads_fmnist.get_sweep(),
                             heads_fmnist.member_name)
  variants = [sweep_results.group_name(o) for o in heads_fmnist.variants()]
  for m in members:
    group = sweep_results.group_name(m.overrides)
    i, seed = variants.index(group), m.overrides['seed']
    test = 0.10 + 0.01 * i + 0.005 * seed
    params = HEAD_PARAMS[_kind(m.overrides)]['total']
    rows.append(dict(member=m.name, status='completed',
                     model_name=m.overrides['model_name'], params=params,
                     final_train_error=test - 0.04, final_test_error=test))
    groups.setdefault(group, dict(group=group, n=3, params=params,
                                  train_error_kind='eval_mode'))
    steps = 40 * np.arange(1, evaluations + 1)
    decay = 80 * np.exp(-steps / 80)
    curves[m.name] = dict(step=steps,
                          train_error=100 * (test - 0.04) + decay,
                          test_error=100 * test + decay)
    group_of[m.name], overrides[m.name] = group, m.overrides
  head_params = {g: HEAD_PARAMS[_kind(heads_fmnist.variants()[
      variants.index(g)])] for g in variants}
  return (analysis.Study('fake', rows, list(groups.values()), curves,
                         group_of, overrides), head_params)


def test_heads_table_gives_mean_std_gap_and_head_parameters():
  study, head_params = heads_study()
  lines = heads.heads_table(study, head_params).splitlines()
  assert len(lines) == 2 + 6
  assert lines[0].startswith('| variant | parameters | head parameters |')
  # Seeds add 0, 0.5, 1 points: mean + 0.5, std (ddof=1) 0.5.
  assert lines[2] == ('| flatten → FC 256 → FC 256 → classifier, dropout 0 '
                      '| 391,338 | 330,762 | 6.50 ± 0.50 | 10.50 ± 0.50 | '
                      '4.00 ± 0.00 | 3/3 |')
  assert '| 166,774 | 1,290 + 70,516 aux | 11.50 ± 0.50 | 15.50 ± 0.50 |' in (
      lines[7])


def test_heads_table_counts_only_completed_seeds():
  study, head_params = heads_study()
  study.rows[0]['status'] = 'failed'
  line = heads.heads_table(study, head_params).splitlines()[2]
  assert line.endswith('| 10.75 ± 0.35 | 4.00 ± 0.00 | 2/3 |')


def test_study_head_parameters_read_the_members_configs(tmp_path):
  _, configs = _members()
  name = 'vgg-gap-dropout0.5-seed0'
  (tmp_path / name).mkdir()
  (tmp_path / name / 'config.json').write_text(
      configs[name].to_json_best_effort())
  study, _ = heads_study()
  study.path = str(tmp_path)
  sizes = heads.study_head_parameters(study)
  assert sizes == {study.group_of[name]: dict(total=61_226, head=650, aux=0)}


def test_heads_figure_meets_the_standard(tmp_path):
  study, head_params = heads_study()
  path = tmp_path / 'heads.png'
  fig = heads.heads_figure(study, str(path), head_params)
  assert mpl_image.imread(path).shape[1] >= 1200
  assert plotting.overlapping_text(fig) == []
  assert plotting.text_outside(fig) == []
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      f'heads.{ext}' for ext in ('json', 'png', *plotting.VECTOR_FORMATS))
  data = json.loads((tmp_path / 'heads.json').read_text())
  point = data['variants']['GoogLeNet-small, auxiliary heads (loss weight '
                           '0.3)']
  assert point['final_test_error']['mean'] == pytest.approx(15.5)
  # 95 % t-interval of [15, 15.5, 16]: t(0.975, 2) * 0.5 / sqrt(3).
  assert point['final_test_error']['half95'] == pytest.approx(
      4.302652729911275 * 0.5 / np.sqrt(3))
  assert point['aux_params'] == 70_516 and point['params'] == 166_774
  assert set(data['curves']) == {
      heads.variant_label(o) for o in heads_fmnist.variants()}
  texts = [t.get_text() for t, _ in plotting.text_boxes(fig)]
  assert 'band: ± 1 std over n = 3 seeds' in texts
  assert any('166,774 parameters, 1,290 in the head, 70,516 in the aux heads'
             in t for t in texts)
