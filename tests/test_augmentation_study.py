"""The augmentation study (issue #36, study 1): its augmentations are the
pipeline's, its sweep config, and its table and figure on a hand-made
study. No training (seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib import image as mpl_image

from cnn import plotting
from cnn.experiments import analysis, augmentation, sweep
from configs import augmentation_fmnist
from input_pipeline.augment import jax_ops


def test_every_augmentation_is_the_pipelines_and_changes_images():
  every = set(jax_ops.default_augment_config())
  assert set(augmentation.AUGMENTATIONS['all'][0]) == every
  for name, (fields, _) in augmentation.AUGMENTATIONS.items():
    resolved = jax_ops.resolve_config(fields)  # valid names and ranges.
    assert jax_ops.is_identity(resolved) == (name == 'none'), name
    if name not in ('none', 'all'):
      assert len(fields) == 1, name  # each alone.


@pytest.mark.parametrize('name', list(augmentation.AUGMENTATIONS))
def test_a_members_augmentation_is_read_back_from_its_overrides(name):
  overrides = {'seed': 1, **augmentation.overrides_of(name)}
  assert augmentation.augmentation_of(overrides) == name
  # As sweep.json stores them: tuples become lists.
  assert augmentation.augmentation_of(
      json.loads(json.dumps(overrides))) == name
  assert augmentation.augmentation_of(
      {'input.augment.crop_padding': 3}) == ''


def test_augmentation_config_parts_sizes_and_epochs():
  base = augmentation_fmnist.get_config()
  assert jax_ops.is_identity(base.input.augment.to_dict())
  assert base.eval_on_train and base.input.test_subset == 0
  members = sweep.members_of(augmentation_fmnist.get_sweep(),
                             augmentation_fmnist.member_name)
  assert len(members) == (10 + 6) * 3
  configs = {m.name: sweep.member_config(base, m) for m in members}
  names = {f'{a}-n2000-seed{s}' for a in augmentation.AUGMENTATIONS
           for s in (0, 1, 2)}
  names |= {f'{a}-n{n}-seed{s}' for a in ('none', 'all')
            for n in (1000, 5000, 20000) for s in (0, 1, 2)}
  assert set(configs) == names
  for name, config in configs.items():
    size = int(name.split('-n')[1].split('-')[0])
    assert config.input.train_subset == size
    assert config.num_epochs == augmentation_fmnist.EPOCHS[size]
    settings = augmentation.AUGMENTATIONS[name.split('-n')[0]][0]
    for field, value in settings.items():
      assert config.input.augment[field] == value, (name, field)
  tiny = augmentation_fmnist.get_config('runlocal')
  runlocal = sweep.members_of(augmentation_fmnist.get_sweep('runlocal'),
                              augmentation_fmnist.member_name)
  assert [m.name for m in runlocal] == [
      'none-n2000-seed0', 'crop-n2000-seed0', 'all-n2000-seed0']
  for m in runlocal:  # shrunk by runlocal: no size or epochs of their own.
    config = sweep.member_config(tiny, m)
    assert config.input.train_subset == 512 and config.num_epochs == 2


def _study() -> analysis.Study:
  """none / crop / flip_ud / all at 2,000 images and none / all at 1,000
  and 20,000, 3 seeds. Training error 2 % (none) or 6 % (augmented), test
  error 20 % - 2 % per augmentation step, + 1 point per seed; more data
  lowers the test error."""
  rows, overrides = [], {}
  cells = [(a, 2000) for a in ('none', 'crop', 'flip_ud', 'all')]
  cells += [(a, n) for a in ('none', 'all') for n in (1000, 20000)]
  for i, (name, size) in enumerate(cells):
    for seed in (0, 1, 2):
      member = augmentation_fmnist.member_name(
          {**augmentation.overrides_of(name), 'seed': seed,
           **({'input.train_subset': size} if size != 2000 else {})})
      train = 0.02 if name == 'none' else 0.06
      test = 0.2 - 0.02 * (i % 4) - 0.04 * np.log10(size / 2000) + 0.01 * seed
      rows.append({'member': member, 'status': 'completed',
                   'model_name': 'lenet5', 'input.train_subset': size,
                   'final_train_error': train, 'final_test_error': test})
      overrides[member] = {**augmentation.overrides_of(name), 'seed': seed}
  return analysis.Study('fake', rows, [], {}, {r['member']: '' for r in rows},
                        overrides)


def test_augmentation_table_by_hand():
  table = augmentation.augmentation_table(_study())
  lines = table.splitlines()
  assert lines[0].startswith('| augmentation | training images |')
  # none at 2,000: train 2, test 20 / 21 / 22 (mean 21, std 1), gap 19.
  assert '| none | 2,000 | 2.00 ± 0.00 (3) | 21.00 ± 1.00 (3) | ' \
         '19.00 ± 1.00 (3) |' in lines
  # all at 2,000 (i = 3): test 14 / 15 / 16, train 6, gap 9.
  assert '| all of them together | 2,000 | 6.00 ± 0.00 (3) | ' \
         '15.00 ± 1.00 (3) | 9.00 ± 1.00 (3) |' in lines
  order = [line.split(' | ')[0][2:] for line in lines[2:]]
  assert order[:4] == ['none'] * 3 + ['random crop (±2 px)']
  assert len(lines) == 2 + 8


def test_augmentation_figure_meets_the_standard(tmp_path):
  path = tmp_path / 'augmentation.png'
  fig = augmentation.augmentation_figure(_study(), str(path))
  assert mpl_image.imread(path).shape[1] >= 1200  # two panels.
  assert plotting.overlapping_text(fig) == []
  assert plotting.text_outside(fig) == []
  data = json.loads((tmp_path / 'augmentation.json').read_text())
  # The left panel is at 2,000 images, where most augmentations ran.
  assert list(data['gap']) == ['none', 'crop', 'flip_ud', 'all']
  gap = data['gap']['crop']  # test 18 / 19 / 20 - train 6.
  assert gap['mean'] == pytest.approx(13.0)
  assert gap['half95'] == pytest.approx(4.302652729911275 / np.sqrt(3))
  test = data['vs_size']['all']['test']
  assert list(test) == ['1000', '2000', '20000']
  assert test['2000']['mean'] == pytest.approx(15.0)
  texts = {t.get_text() for t, _ in plotting.text_boxes(fig)}
  assert {'up-down flip', 'augmentation: none', 'test error'} <= texts
