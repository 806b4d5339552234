"""The experiment runner: sweep helpers, member configs, running, resuming,
failures, aggregation, the CLI and the submitit path."""

from __future__ import annotations

import csv
import json
import os

import jax
import pytest

from cnn.common import errors
from cnn.experiments import sweep, sweep_results
from tests.helpers import preempt_main, run_main, tiny_config

# A sweep config file as a user writes one: two seeds of the tiny LeNet-5.
TINY_SWEEP = '''
from cnn.experiments import sweep
from configs import default


def get_config():
  config = default.get_config('runlocal')
  config.input.train_subset = 256
  config.input.test_subset = 256
  config.num_epochs = {epochs}
  config.eval_on_train = True
  return config


def get_sweep():
  return sweep.product(sweep.fixed('model.activation', 'relu'),
                       sweep.axis('seed', {seeds}))
'''


def _sweep_file(tmp_path, epochs=1.0, seeds=(0, 1)):
  path = tmp_path / 'tiny_sweep.py'
  path.write_text(TINY_SWEEP.format(epochs=epochs, seeds=list(seeds)))
  return str(path)


def _tiny_base(**overrides):
  return tiny_config(**{'input.train_subset': 256, 'input.test_subset': 256,
                        'num_epochs': 1.0, 'eval_on_train': True,
                        **overrides})


# ------------------------------------------------------------------ helpers


def test_product_zip_chain_fixed():
  grid = sweep.product(sweep.axis('model_name', ['plain20', 'resnet20']),
                       sweep.axis('seed', range(2)))
  assert grid == [dict(model_name='plain20', seed=0),
                  dict(model_name='plain20', seed=1),
                  dict(model_name='resnet20', seed=0),
                  dict(model_name='resnet20', seed=1)]
  assert sweep.zipit(sweep.axis('a', [1, 2]), sweep.axis('b', [3, 4])) == [
      dict(a=1, b=3), dict(a=2, b=4)]
  assert sweep.chainit(sweep.fixed('a', 1), sweep.axis('b', [2])) == [
      dict(a=1), dict(b=2)]
  with pytest.raises(sweep.SweepError, match='equal length'):
    sweep.zipit(sweep.axis('a', [1, 2]), sweep.axis('b', [3]))
  with pytest.raises(sweep.SweepError, match="set 'a'"):
    sweep.product(sweep.fixed('a', 1), sweep.fixed('a', 2))


def test_member_names_are_readable_and_independent_of_position():
  assert sweep.member_name(dict(model_name='plain56', seed=1)) == (
      'plain56-seed1')
  assert sweep.member_name({'model.width': 0.5, 'seed': 0}) == (
      'width0.5-seed0')
  first = sweep.members_of(sweep.axis('seed', [0, 1]))
  grown = sweep.members_of(sweep.axis('seed', [2, 0, 1]))
  assert {m.name: m.overrides for m in first}.items() <= {
      m.name: m.overrides for m in grown}.items()
  with pytest.raises(sweep.SweepError, match="both named 'seed0'"):
    sweep.members_of([dict(seed=0), dict(seed=0)])


def test_member_config_checks_fields_and_types():
  base = _tiny_base()
  with pytest.raises(sweep.SweepError, match=r"'bad'.*config\.optimizer\.lr"):
    sweep.member_config(base, sweep.Member('bad', {'optimizer.lr': 1.0}))
  with pytest.raises(sweep.SweepError, match=r"'typed'.*wrong type"):
    sweep.member_config(base, sweep.Member('typed', {'num_epochs': 'many'}))
  assert isinstance(sweep.SweepError('x'), errors.UserError)


def test_model_name_override_takes_that_models_options():
  base = tiny_config(model_name='resnet20', **{'input.image_size': 0})
  base.unlock()
  from cnn.models import registry
  base.model = registry.backbone_options('resnet20')
  base.model.width = 0.5
  config = sweep.member_config(base, sweep.Member('p', dict(
      model_name='plain56')))
  assert config.model.residual is False
  assert tuple(config.model.stage_sizes) == (9, 9, 9)
  assert config.model.width == 0.5  # the base's own change is kept.


# ---------------------------------------------------------------- running


def _count_compiles():
  count = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      count[0] += 1
  jax.monitoring.register_event_duration_secs_listener(listener)
  return count, listener


def test_run_local_second_seed_compiles_nothing(tmp_path):
  base = _tiny_base()
  members = sweep.members_of(sweep.axis('seed', [0, 1]))
  sweep.write_plan(str(tmp_path), base, 'tiny', members)
  count, listener = _count_compiles()
  try:
    assert sweep.run_member(sweep.member_config(base, members[0]),
                            members[0], str(tmp_path)) == 'completed'
    first = count[0]
    assert sweep.run_member(sweep.member_config(base, members[1]),
                            members[1], str(tmp_path)) == 'completed'
    assert first > 0 and count[0] == first, 'the second seed compiled'
  finally:
    jax._src.monitoring.unregister_event_duration_listener(listener)
  results = [sweep.read_result(str(tmp_path / m.name)) for m in members]
  assert [r['status'] for r in results] == ['completed'] * 2
  assert results[0]['git_commit'] and results[0]['devices']
  # Different seeds, different runs.
  assert (results[0]['final_metrics']['test_loss']
          != results[1]['final_metrics']['test_loss'])
  # A completed member is skipped on a rerun.
  outcome = sweep.run_local(base, members, str(tmp_path))
  assert outcome.skipped == ['seed0', 'seed1'] and outcome.exit_code == 0


def test_failed_member_is_recorded_and_the_sweep_goes_on(tmp_path):
  base = _tiny_base()
  members = sweep.members_of([dict(model_name='alexnet'), dict(seed=3)])
  sweep.write_plan(str(tmp_path), base, 'tiny', members)
  outcome = sweep.run_local(base, members, str(tmp_path))
  assert list(outcome.failed) == ['alexnet']
  assert 'alexnet' in outcome.failed['alexnet']  # the input-size message
  assert outcome.completed == ['seed3'] and outcome.exit_code == 1
  line = sweep.summary_line(outcome, members, str(tmp_path))
  assert 'failed: alexnet' in line and 'still missing' in line
  data = sweep_results.write(str(tmp_path))
  assert list(data['failed']) == ['alexnet']


def test_a_diverging_member_is_a_result_not_a_failure(tmp_path):
  # The batch-norm study's "no BN at 5x the learning rate" may blow up:
  # that is what it measures. Recorded as 'diverged', counted, not retried.
  base = _tiny_base(num_train_steps=4)
  members = sweep.members_of([{'optimizer.learning_rate': 1e30}])
  sweep.write_plan(str(tmp_path), base, 'tiny', members)
  outcome = sweep.run_local(base, members, str(tmp_path))
  (name,) = outcome.diverged
  assert outcome.exit_code == 0 and not outcome.failed
  result = sweep.read_result(str(tmp_path / name))
  assert result['status'] == 'diverged' and result['diverged_at_step'] >= 0
  assert 'diverged' in sweep.summary_line(outcome, members, str(tmp_path))
  data = sweep_results.write(str(tmp_path))
  (row,) = data['rows']
  assert row['status'] == 'diverged' and data['diverged'] == [name]
  assert data['groups'][0]['n_diverged'] == 1 and not data['missing']
  assert sweep.run_local(base, members, str(tmp_path)).skipped == [name]


def test_a_member_another_process_runs_is_left_to_it(tmp_path):
  # Two processes on one sweep (a second launch by mistake) once trained
  # the same member twice into one directory; now the second leaves it.
  base = _tiny_base()
  members = sweep.members_of(sweep.axis('seed', [0, 1]))
  sweep.write_plan(str(tmp_path), base, 'tiny', members)
  with sweep._member_lock(str(tmp_path), 'seed0') as held:  # the "other".
    assert held
    outcome = sweep.run_local(base, members, str(tmp_path))
  assert outcome.busy == ['seed0'] and outcome.completed == ['seed1']
  assert not (tmp_path / 'seed0').exists()
  assert 'left to the process running them' in sweep.summary_line(
      outcome, members, str(tmp_path))
  # Released: the next run takes it.
  assert sweep.run_local(base, members, str(tmp_path)).completed == ['seed0']


def test_half_written_result_does_not_count(tmp_path):
  base = _tiny_base()
  members = sweep.members_of(sweep.axis('seed', [0]))
  sweep.write_plan(str(tmp_path), base, 'tiny', members)
  member_dir = tmp_path / 'seed0'
  member_dir.mkdir()
  # What a kill during `write_json_atomically` can leave behind.
  (member_dir / 'result.json.tmp123').write_text('{"status": "compl')
  assert sweep.unfinished(members, str(tmp_path)) == members
  assert sweep.run_local(base, members, str(tmp_path)).completed == ['seed0']


def test_plan_refuses_another_sweep_and_changed_members(tmp_path):
  base = _tiny_base()
  members = sweep.members_of(sweep.axis('seed', [0]))
  sweep.write_plan(str(tmp_path), base, 'tiny', members)
  with pytest.raises(sweep.SweepError, match="holds sweep 'tiny'"):
    sweep.write_plan(str(tmp_path), base, 'other', members)
  with pytest.raises(sweep.SweepError, match='another base experiment'):
    sweep.write_plan(str(tmp_path), _tiny_base(**{
        'model.activation': 'tanh'}), 'tiny', members)
  with pytest.raises(sweep.SweepError, match=r'num_epochs: 1\.0 -> 0\.5'):
    sweep.write_plan(str(tmp_path), _tiny_base(num_epochs=0.5), 'tiny',
                     members)
  # How convolutions are computed is not part of the sweep.
  sweep.write_plan(str(tmp_path), _tiny_base(conv_impl='xla'), 'tiny',
                   members)
  with pytest.raises(sweep.SweepError, match='was run with overrides'):
    sweep.write_plan(str(tmp_path), base, 'tiny',
                     [sweep.Member('seed0', dict(seed=5))])
  # Adding a member keeps the first one's entry.
  sweep.write_plan(str(tmp_path), base, 'tiny',
                   sweep.members_of(sweep.axis('seed', [1, 0])))
  with open(tmp_path / 'sweep.json') as f:
    assert [m['name'] for m in json.load(f)['members']] == ['seed0', 'seed1']
  # A longer run extends the sweep; opting in records another recipe.
  sweep.write_plan(str(tmp_path), _tiny_base(num_epochs=3.0), 'tiny',
                   members)
  sweep.write_plan(str(tmp_path), _tiny_base(**{
      'num_epochs': 3.0, 'optimizer.learning_rate': 0.5,
      'accept_recipe_change': True}), 'tiny', members)
  with open(tmp_path / 'sweep.json') as f:
    history = json.load(f)['history']
  assert history[-1]['changes']['optimizer.learning_rate'] == [0.003, 0.5]


# ------------------------------------------------------------- aggregation


def _fake_member(workdir, name, seed, train_acc, test_acc, status):
  base = _tiny_base(seed=seed)
  os.makedirs(workdir / name)
  (workdir / name / 'config.json').write_text(base.to_json_best_effort())
  with open(workdir / name / 'metrics.jsonl', 'w') as f:
    for epoch, (tr, te) in enumerate(zip(train_acc, test_acc, strict=True)):
      f.write(json.dumps(dict(epoch=epoch + 1.0, train_accuracy=0.0,
                              train_eval_accuracy=tr, test_accuracy=te,
                              examples_per_sec=100.0)) + '\n')
  if status:
    sweep.write_json_atomically(str(workdir / name / 'result.json'),
                                dict(status=status, wall_time_s=10.0))


def test_aggregation_of_hand_made_metrics(tmp_path):
  members = [sweep.Member(f'seed{s}', dict(seed=s)) for s in range(3)]
  sweep.write_plan(str(tmp_path), _tiny_base(), 'tiny', members)
  _fake_member(tmp_path, 'seed0', 0, [0.5, 0.9, 0.8], [0.4, 0.7, 0.6],
               'completed')
  _fake_member(tmp_path, 'seed1', 1, [0.6, 0.7], [0.5, 0.8], 'completed')
  data = sweep_results.write(str(tmp_path))
  rows = {r['member']: r for r in data['rows']}
  assert rows['seed0']['final_train_error'] == pytest.approx(0.2)
  assert rows['seed0']['best_train_error'] == pytest.approx(0.1)
  assert rows['seed0']['final_test_error'] == pytest.approx(0.4)
  assert rows['seed0']['best_test_error'] == pytest.approx(0.3)
  assert rows['seed0']['params'] == 61_728  # LeNet-5 with BN, no conv biases.
  assert rows['seed2']['status'] == 'missing'
  assert data['missing'] == ['seed2']
  (group,) = data['groups']
  assert group['n'] == 2 and group['n_planned'] == 3
  # Final train errors 0.2 and 0.3: mean 0.25, sample std 0.0707.
  assert group['final_train_error_mean'] == pytest.approx(0.25)
  assert group['final_train_error_std'] == pytest.approx(0.0707107, abs=1e-6)
  with open(tmp_path / 'results.csv') as f:
    assert [r['member'] for r in csv.DictReader(f)] == [
        'seed0', 'seed1', 'seed2']
  assert '25.00 ± 7.07' in sweep_results.format_groups(data['groups'])
  # A group none of whose members started yet (a stopped sweep) formats too.
  sweep.write_plan(str(tmp_path), _tiny_base(), 'tiny',
                   [sweep.Member('later', {'model.activation': 'tanh'})])
  text = sweep_results.format_groups(sweep_results.write(str(tmp_path))[
      'groups'])
  assert '| activationtanh | – |' in text


# --------------------------------------------------------------------- CLI


def _error_columns(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return [{k: r[k] for k in ('member', 'final_train_error',
                               'final_test_error', 'best_test_error')}
            for r in csv.DictReader(f)]


def test_killed_sweep_resumes_to_the_uninterrupted_results(tmp_path):
  config = _sweep_file(tmp_path, epochs=2.0)
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  done = run_main([f'--config={config}', f'--workdir={whole}'])
  assert done.returncode == 0, done.stderr
  assert '2 of 2 members completed' in done.stdout

  # Stop it inside the second member, after its first evaluation.
  stopped = preempt_main(
      [f'--config={config}', f'--workdir={split}'],
      os.path.join(split, 'activationrelu-seed1', 'metrics.jsonl'))
  assert stopped.returncode == 3, stopped.stderr
  out = stopped.stdout
  assert 'rerun the same command' in out
  assert sweep.read_result(os.path.join(split, 'activationrelu-seed1')
                           ) is None
  first_result = os.path.join(split, 'activationrelu-seed0', 'result.json')
  mtime = os.path.getmtime(first_result)

  rerun = run_main([f'--config={config}', f'--workdir={split}'])
  assert rerun.returncode == 0, rerun.stderr
  assert os.path.getmtime(first_result) == mtime  # not rerun
  assert _error_columns(split) == _error_columns(whole)
  # The resumed member's wall time counts both of its segments.
  with open(os.path.join(split, 'activationrelu-seed1',
                         sweep.SEGMENTS_FILE)) as f:
    segments = [json.loads(line)['seconds'] for line in f]
  assert len(segments) == 2
  resumed = sweep.read_result(os.path.join(split, 'activationrelu-seed1'))
  assert resumed['wall_time_s'] == pytest.approx(sum(segments))


def test_bad_sweep_fails_before_any_member_runs(tmp_path):
  config = tmp_path / 'bad_sweep.py'
  config.write_text(TINY_SWEEP.format(epochs=1.0, seeds=[0]).replace(
      "sweep.fixed('model.activation', 'relu')",
      "sweep.fixed('model.activaton', 'relu')"))
  workdir = tmp_path / 'w'
  result = run_main([f'--config={config}', f'--workdir={workdir}'])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error:')
  assert 'model.activaton' in result.stderr
  assert not workdir.exists()


def test_one_member_through_the_submitit_local_executor(tmp_path):
  config = _sweep_file(tmp_path, seeds=(4,))
  workdir = str(tmp_path / 'w')
  result = run_main([f'--config={config}', f'--workdir={workdir}',
                     '--launcher=submitit_local'])
  assert result.returncode == 0, result.stderr
  result = sweep.read_result(os.path.join(workdir, 'activationrelu-seed4'))
  assert result['status'] == 'completed'
  results = run_main([f'--config={config}', f'--workdir={workdir}',
                      '--mode=results'])
  assert results.returncode == 0, results.stderr
  with open(os.path.join(workdir, 'results.csv')) as f:
    (row,) = list(csv.DictReader(f))
  # The sweep's axes are columns; the training error says what it is.
  assert row['model.activation'] == 'relu' and row['seed'] == '4'
  assert row['train_error_kind'] == 'eval_mode'
  assert len(row['final_test_error'].split('.')[1]) <= 5
  # A member is probed (or inspected) by name; without one, the names.
  probe = run_main([f'--config={config}', f'--workdir={workdir}',
                    '--mode=probe', '--member=activationrelu-seed4',
                    '--probe_shots=5', '--probe_layers=pre_logits'])
  assert probe.returncode == 0, probe.stderr
  assert os.path.exists(os.path.join(workdir, 'activationrelu-seed4',
                                     'probe', 'probe.csv'))
  from cnn.common import config_utils  # pylint: disable=g-import-not-at-top
  from cnn.experiments import sweep_launch  # pylint: disable=g-import-not-at-top
  module = config_utils.load_config_module(config)
  with pytest.raises(errors.UserError,
                     match=r"--member=NAME, one of \['activationrelu-seed4'\]"):
    sweep_launch.member_run(module.get_config(), module, workdir=workdir,
                            member=None, mode='inspect')
