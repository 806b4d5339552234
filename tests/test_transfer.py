"""Transfer learning: init_from, regimes (freezing, per-group learning
rates), class subsets, and a tiny end-to-end transfer run."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import input_pipeline
from cnn.common import errors
from cnn.models import base
from cnn.training import checkpoint, train
from cnn.training import metrics as metrics_lib
from cnn.transfer import pretrained, regimes
from configs import transfer_source, transfer_source_resnet
from input_pipeline import InputConfigError
from input_pipeline.sources import class_subset
from tests.helpers import assert_trees_equal, tiny_config

SOURCE_CLASSES = (0, 1, 2, 3, 4)
LENET_GROUPS = ['c1', 'c3', 'f5', 'f6']


@pytest.fixture(scope='module')
def source_workdir(tmp_path_factory):
  """LeNet-5 trained a few steps on Fashion-MNIST classes 0-4."""
  workdir = str(tmp_path_factory.mktemp('source'))
  train.train_and_evaluate(tiny_config(**{
      'input.classes': SOURCE_CLASSES, 'input.train_subset': 256,
      'input.test_subset': 200}, num_epochs=1.0), workdir)
  return workdir


def _target(source_workdir, **overrides):
  fields = {'input.classes': (5, 6, 7), 'input.per_class': 20,
            'input.test_subset': 200, 'init_from': source_workdir,
            'num_train_steps': 4, 'eval_every_epochs': 100.0}
  fields.update(overrides)
  return tiny_config(**fields)


# ------------------------------------------------------------ class subsets


def test_class_subset_relabels_in_order_and_keeps_first_per_class():
  labels = np.array([3, 1, 3, 2, 1, 3, 0], np.int32)
  images = np.arange(7)[:, None, None, None]
  x, y = class_subset.select(images, labels, (3, 1), per_class=2)
  np.testing.assert_array_equal(x[:, 0, 0, 0], [0, 1, 2, 4])
  np.testing.assert_array_equal(y, [0, 1, 0, 1])
  with pytest.raises(InputConfigError, match='distinct class ids'):
    class_subset.check((3, 3), 0, 10)


def test_test_subset_counts_examples_of_the_chosen_classes():
  # Classes first, then the first N of what they keep (was: 50 of the
  # split, of which only a fifth were of these classes).
  batches = list(input_pipeline.create_eval_batches(
      tiny_config(**{'input.dataset': 'digits', 'input.image_size': 28,
                     'input.classes': (0, 1), 'input.test_subset': 50}
                  ).input, batch_size=64))
  assert sum(int(b['mask'].sum()) for b in batches) == 50


# ------------------------------------------------------------------ regimes


def _toy_params():
  return {'backbone': {'stem_conv': {'kernel': jnp.ones((3, 3, 1, 2))},
                       'stage1_conv': {'kernel': jnp.ones((3, 3, 2, 2)),
                                       'bias': jnp.ones((2,))},
                       'stage10_conv': {'kernel': jnp.ones((2, 2))}},
          'head': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones((3,))}}


def test_learning_rate_multipliers_match_a_hand_scaled_optax_run():
  params = _toy_params()
  rules = [('head/.*', 1.0), (regimes.group_regex('stage1'), 0.1),
           ('.*', None)]
  labels = regimes.param_labels(params, rules)
  assert labels['backbone']['stage10_conv']['kernel'] == 'frozen'
  make = lambda lr=0.01: optax.sgd(lr, momentum=0.9)
  tx = regimes.optimizer(make, labels)
  full, slow = make(0.01), make(0.001)  # the hand-scaled references.
  state, full_state, slow_state = (tx.init(params), full.init(params),
                                   slow.init(params))
  for i in range(3):
    grads = jax.tree.map(
        lambda p, i=i: jax.random.normal(jax.random.PRNGKey(i), p.shape),
        params)
    updates, state = tx.update(grads, state, params)
    want_full, full_state = full.update(grads, full_state, params)
    want_slow, slow_state = slow.update(grads, slow_state, params)
    for group in ('kernel', 'bias'):
      np.testing.assert_allclose(updates['head'][group],
                                 want_full['head'][group], rtol=1e-6)
      np.testing.assert_allclose(
          updates['backbone']['stage1_conv'][group],
          want_slow['backbone']['stage1_conv'][group], rtol=1e-5)
    for frozen in ('stem_conv', 'stage10_conv'):
      assert not np.any(updates['backbone'][frozen]['kernel'])
  # Frozen groups hold no optimiser state (momentum) at all.
  sizes = sum(x.size for x in jax.tree.leaves(state))
  trained = sum(x.size for x in jax.tree.leaves(
      [params['head'], params['backbone']['stage1_conv']]))
  assert sizes == trained


def test_rules_must_cover_every_parameter_and_match_something():
  params = _toy_params()
  with pytest.raises(errors.UserError, match='matched by no rule'):
    regimes.param_labels(params, [('head/.*', 1.0)])
  with pytest.raises(errors.UserError, match='match no parameter'):
    regimes.param_labels(params, [('nothing/.*', 1.0), ('.*', 1.0)])


def test_fine_tune_trains_the_last_groups_at_the_lower_rate():
  config = tiny_config(**{'transfer.regime': 'fine_tune',
                          'transfer.fine_tune_groups': 1})
  params = _toy_params()
  rules = regimes.regime_rules(config.transfer, ['stem', 'stage1', 'stage10'])
  labels = regimes.param_labels(params, rules)
  assert labels['head']['bias'] == 'lr_x1'
  assert labels['backbone']['stage10_conv']['kernel'] == 'lr_x0.1'
  assert labels['backbone']['stage1_conv']['kernel'] == 'frozen'


def test_freeze_first_freezes_without_lowering_the_rate():
  # The lectures' "fix the first layers, train the rest": freezing alone,
  # every trained group at the configured rate (fine_tune also lowers it).
  config = tiny_config(**{'transfer.regime': 'freeze_first',
                          'transfer.freeze_groups': 1})
  rules = regimes.regime_rules(config.transfer, ['stem', 'stage1', 'stage10'])
  labels = regimes.param_labels(_toy_params(), rules)
  assert labels['head']['bias'] == 'lr_x1'
  assert labels['backbone']['stem_conv']['kernel'] == 'frozen'
  assert labels['backbone']['stage1_conv']['kernel'] == 'lr_x1'
  assert labels['backbone']['stage10_conv']['kernel'] == 'lr_x1'
  for k in (0, 3):  # none frozen is `full`, all is `feature_extraction`.
    config.transfer.freeze_groups = k
    with pytest.raises(errors.UserError, match='choose 1..2'):
      regimes.regime_rules(config.transfer, ['stem', 'stage1', 'stage10'])
  # The default fine_tune is what the README's table says: the last two
  # groups at 0.1x, the ones before them frozen.
  default = tiny_config(**{'transfer.regime': 'fine_tune'})
  labels = regimes.param_labels(_toy_params(), regimes.regime_rules(
      default.transfer, ['stem', 'stage1', 'stage10']))
  assert labels['backbone']['stem_conv']['kernel'] == 'frozen'
  assert labels['backbone']['stage1_conv']['kernel'] == 'lr_x0.1'


@pytest.mark.parametrize('source, groups', [
    (transfer_source, LENET_GROUPS),
    (transfer_source_resnet, ['stem', 'stage1', 'stage2', 'stage3'])])
def test_backbone_groups_come_in_the_order_the_network_applies_them(
    source, groups):
  # Parameter trees sort their keys ('stage1' < 'stem'); the order is the
  # forward pass's.
  model = train.create_model(source.get_config(), 5)
  assert base.backbone_groups(model, (28, 28, 1)) == groups


def test_fine_tuning_every_group_needs_no_catch_all_rule():
  # Yosinski's n = 0: nothing frozen, so no ('.*', None) that matches nothing.
  config = tiny_config(**{'transfer.regime': 'fine_tune',
                          'transfer.fine_tune_groups': 3})
  rules = regimes.regime_rules(config.transfer, ['stem', 'stage1', 'stage10'])
  labels = regimes.param_labels(_toy_params(), rules)
  assert 'frozen' not in jax.tree.leaves(labels)


# ------------------------------------------------------------ loading


def test_merge_names_unmatched_and_misshapen_names():
  fresh = {'params': {'a': np.zeros(2), 'b': np.zeros(3)}, 'batch_stats': {}}
  with pytest.raises(errors.UserError, match=r"\['params/b'\].*\['params/c'\]"):
    pretrained.merge({'params': {'a': np.ones(2), 'c': np.ones(3)},
                      'batch_stats': {}}, fresh, [])
  with pytest.raises(errors.UserError, match='params/b has shape'):
    pretrained.merge({'params': {'a': np.ones(2), 'b': np.ones(4)},
                      'batch_stats': {}}, fresh, [])
  merged = pretrained.merge({'params': {'a': np.ones(2)}, 'batch_stats': {}},
                            fresh, ['params/b'])
  np.testing.assert_array_equal(merged['params']['a'], 1.0)


# No augmentation: what cached features need (the uncached run is the same).
FEATURE_EXTRACTION = {'transfer.regime': 'feature_extraction',
                      'input.augment.flip_lr': False}


@pytest.fixture(scope='module')
def feature_extraction_runs(source_workdir, tmp_path_factory):
  """{cached: workdir} of two feature-extraction runs, the backbone running
  every step (False) or once (True)."""
  runs = {}
  for cached in (False, True):
    runs[cached] = str(tmp_path_factory.mktemp(f'fe_cached_{cached}'))
    train.train_and_evaluate(_target(source_workdir, **FEATURE_EXTRACTION, **{
        'transfer.cache_features': cached}), runs[cached])
  return runs


def test_feature_extraction_keeps_backbone_and_its_statistics(
    source_workdir, feature_extraction_runs):
  _, source = checkpoint.load_arrays(source_workdir)
  _, target = checkpoint.load_arrays(feature_extraction_runs[False])
  assert int(target['step']) == 4
  # The frozen backbone and its batch-norm statistics: bit-identical.
  for key in ('params', 'batch_stats'):
    assert_trees_equal(source[key]['backbone'], target[key]['backbone'])
  # A new 3-way head (the source's had 5 outputs), trained.
  assert target['params']['head']['kernel'].shape[1] == 3


def test_cached_features_train_the_head_as_the_whole_network_does(
    feature_extraction_runs):
  # Same rows in the same order, the backbone's output computed once: the
  # same head (to float rounding: the features come from another program),
  # the same metrics, the same checkpoint layout.
  (step_a, a), (step_b, b) = (checkpoint.load_arrays(feature_extraction_runs[c])
                              for c in (False, True))
  assert step_a == step_b == 4
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params'])):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert_trees_equal(a['batch_stats'], b['batch_stats'])
  assert not np.allclose(b['params']['head']['bias'], 0.0)  # it trained.
  (ma,), (mb,) = (metrics_lib.read_metrics(feature_extraction_runs[c])
                  for c in (False, True))
  assert ma['test_accuracy'] == mb['test_accuracy']
  np.testing.assert_allclose(ma['train_loss'], mb['train_loss'], rtol=1e-5)


@pytest.mark.parametrize('overrides, message', [
    ({'transfer.regime': 'full'}, "regime='feature_extraction'"),
    ({'transfer.rules': (('.*', None),)}, 'no config.transfer.rules'),
    ({'transfer.freeze_batch_stats': False}, 'freeze_batch_stats=True'),
    ({'input.augment.flip_lr': True}, 'turn augmentation off'),
    ({'input.pipeline': 'tfdata'}, "pipeline='device'"),
])
def test_cached_features_refuse_what_they_cannot_do(source_workdir, tmp_path,
                                                     overrides, message):
  fields = dict(FEATURE_EXTRACTION, **{'transfer.cache_features': True})
  fields.update(overrides)
  workdir = tmp_path / 'never'
  with pytest.raises(errors.UserError, match=message):
    train.train_and_evaluate(_target(source_workdir, **fields), str(workdir))
  assert not workdir.exists()


def test_frozen_batch_norms_run_in_eval_mode_inside_a_training_pass():
  import flax.linen as nn

  from cnn import layers
  from cnn.kernels import forms

  class TwoNorms(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      norm = layers.batch_norm(jnp.float32, train)
      return norm(name='kept')(x), norm(name='trained')(x)

  x = jax.random.normal(jax.random.PRNGKey(0), (8, 3)) * 3.0 + 1.0
  variables = TwoNorms().init(jax.random.PRNGKey(1), x, train=False)
  stats = {'mean': jnp.array([0.5, -1.0, 2.0]), 'var': jnp.array([4., 1., .25])}
  variables = {'params': variables['params'],
               'batch_stats': {'kept': stats, 'trained': stats}}
  frozen = regimes.frozen_norms(
      variables['batch_stats'],
      {'kept': {'scale': 'frozen', 'bias': 'frozen'},
       'trained': {'scale': 'lr_x1', 'bias': 'lr_x1'}})
  assert frozen == {('kept',)}
  with forms.batch_norms_in_eval_mode(frozen):
    (kept, trained), updates = jax.jit(lambda v: TwoNorms().apply(
        v, x, train=True, mutable=['batch_stats']))(variables)
  # The frozen norm: (x - running mean) / sqrt(running var + eps), stats kept.
  expected = (x - stats['mean']) / np.sqrt(stats['var'] + 1e-5)
  np.testing.assert_allclose(kept, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(updates['batch_stats']['kept']['mean'],
                                stats['mean'])
  # The trained one: batch statistics, running averages moved.
  np.testing.assert_allclose(trained.mean(0), 0.0, atol=1e-5)
  assert not np.allclose(updates['batch_stats']['trained']['mean'],
                         stats['mean'])


def test_full_regime_starts_from_the_source_and_trains_everything(
    source_workdir):
  # The training loop's use of init_from is the feature-extraction run's
  # check above; here: the start and the rules of 'full' and 'scratch'.
  _, source = checkpoint.load_arrays(source_workdir)
  config = _target(source_workdir, **{'transfer.regime': 'full'})
  fresh = jax.device_get(train.create_model(config, 3).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
  start = pretrained.load_pretrained(config, fresh, LENET_GROUPS)
  for key in ('params', 'batch_stats'):
    assert_trees_equal(source[key]['backbone'], start[key]['backbone'])
  np.testing.assert_array_equal(start['params']['head']['kernel'],
                                fresh['params']['head']['kernel'])
  for regime in ('full', 'scratch'):
    config = _target(source_workdir, **{'transfer.regime': regime})
    labels = regimes.param_labels(
        fresh['params'], regimes.regime_rules(config.transfer, LENET_GROUPS))
    assert set(jax.tree.leaves(labels)) == {'lr_x1'}, regime
  assert train._uses_init_from(_target(source_workdir))
  assert not train._uses_init_from(
      _target(source_workdir, **{'transfer.regime': 'scratch'}))


def test_copy_groups_loads_only_the_first_groups(source_workdir):
  config = _target(source_workdir, **{'transfer.copy_groups': 1})
  fresh = jax.device_get(train.create_model(config, 3).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
  _, source = checkpoint.load_arrays(source_workdir)
  start = pretrained.load_pretrained(config, fresh, LENET_GROUPS)
  backbone = lambda t: t['params']['backbone']
  np.testing.assert_array_equal(backbone(start)['c1_conv']['kernel'],
                                backbone(source)['c1_conv']['kernel'])
  np.testing.assert_array_equal(backbone(start)['c3_conv']['kernel'],
                                backbone(fresh)['c3_conv']['kernel'])


def test_transfer_says_what_it_did_and_refuses_a_random_frozen_layer(
    source_workdir):
  def start(**fields):
    config = _target(source_workdir, **fields)
    fresh = jax.device_get(train.create_model(config, 3).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
    labels = regimes.param_labels(
        fresh['params'], regimes.regime_rules(config.transfer, LENET_GROUPS))
    return config, fresh, labels

  config, fresh, labels = start(**{'transfer.regime': 'feature_extraction'})
  reasons = [(pretrained.HEAD_REGEX, 'new head: 5 -> 3 classes')]
  rows = pretrained.transfer_table(fresh, reasons, labels)
  by_module = {r['module']: r for r in rows}
  assert by_module['head'] == dict(
      module='head', params=84 * 3 + 3, training='lr_x1',
      origin='re-initialised: new head: 5 -> 3 classes')
  assert by_module['backbone/c1_conv'] == dict(
      module='backbone/c1_conv', params=5 * 5 * 6, training='frozen',
      origin='loaded')
  assert 'backbone/c1_conv' in pretrained.format_table(rows)
  pretrained.load_pretrained(config, fresh, LENET_GROUPS, labels=labels)
  # A re-initialised first conv under feature_extraction would stay random.
  config, fresh, labels = start(**{
      'transfer.regime': 'feature_extraction',
      'init_dont_load': ('(params|batch_stats)/backbone/c1_.*',)})
  with pytest.raises(errors.UserError,
                     match=r"\['backbone/c1_bn', 'backbone/c1_conv'\] are "
                           're-initialised and frozen'):
    pretrained.load_pretrained(config, fresh, LENET_GROUPS, labels=labels)


@pytest.mark.parametrize('init_from, message', [
    ('/nonexistent/run', 'does not exist'),
    ('WORKDIR/config.json', 'must be a PyTorch state_dict'),
    # A state_dict file for LeNet-5, which has no torchvision twin.
    ('TMP/weights.npz', "for model 'lenet5': choose one of"),
])
def test_bad_init_from_fails_before_writing(source_workdir, tmp_path,
                                            init_from, message):
  np.savez(tmp_path / 'weights.npz', **{'conv1.weight': np.zeros((6, 1, 5, 5))})
  init_from = init_from.replace('WORKDIR', source_workdir).replace(
      'TMP', str(tmp_path))
  workdir = tmp_path / 'never'
  with pytest.raises(errors.UserError, match=message):
    train.train_and_evaluate(_target(init_from), str(workdir))
  assert not workdir.exists()


def test_init_from_another_architecture_is_refused(source_workdir, tmp_path):
  config = _target(source_workdir, model_name='mlp')
  with config.unlocked():
    import ml_collections

    from cnn.models import registry
    config.model = ml_collections.ConfigDict(registry.backbone_options('mlp'))
  with pytest.raises(errors.UserError, match="holds a 'lenet5' network"):
    train.train_and_evaluate(config, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


def test_validation_split_is_balanced_disjoint_and_resampled_by_seed():
  labels = np.repeat(np.arange(3), 20)
  train_idx, val_idx = class_subset.split_indices(labels, per_class=5,
                                                  validation=4)
  # Split order: the first 5 of each class train, the next 4 validate.
  np.testing.assert_array_equal(train_idx[:5], np.arange(5))
  np.testing.assert_array_equal(val_idx[:4], np.arange(5, 9))
  draws = [class_subset.split_indices(labels, per_class=5, validation=4,
                                      seed=s) for s in (0, 1)]
  for t, v in draws:
    assert not set(t) & set(v)
    assert list(np.bincount(labels[t])) == [5, 5, 5]
    assert list(np.bincount(labels[v])) == [4, 4, 4]
  assert set(draws[0][0]) != set(draws[1][0])  # seeds resample.
  # A fraction of each class; the rest trains.
  t, v = class_subset.split_indices(labels, validation=0.2, seed=3)
  assert list(np.bincount(labels[v])) == [4, 4, 4] and len(t) == 48
  with pytest.raises(InputConfigError, match='too few'):
    class_subset.split_indices(labels, per_class=18, validation=4)


def test_validation_split_through_the_pipeline_and_trainer(tmp_path):
  fields = {'input.dataset': 'digits', 'input.image_size': 28,
            'input.train_subset': 0, 'input.per_class': 10,
            'input.validation_per_class': 5, 'input.sample_seed': 0,
            'num_train_steps': 4, 'eval_every_epochs': 100.0}
  config = tiny_config(**fields)
  count = lambda split: sum(int(b['mask'].sum()) for b in
                            input_pipeline.create_eval_batches(
                                config.input, split=split, batch_size=64))
  assert (count('train'), count('validation')) == (100, 50)
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result.metrics['validation_count'] == 50
  assert 0.0 <= result.metrics['validation_accuracy'] <= 1.0
  with pytest.raises(InputConfigError, match='one of'):
    input_pipeline.create_eval_batches(tiny_config(**{
        **fields, 'input.validation_fraction': 0.2}).input,
        split='validation')
