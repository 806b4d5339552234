"""Bad inputs give a clear error, not a traceback, and lose nothing.

Every case runs `main.py` in a subprocess, as a user would, against a workdir
that already holds checkpoints of the tiny default run: the command must
fail (non-zero exit) with a message that names the problem and the fix,
print no traceback, and leave every file of the workdir as it was.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from cnn.training import train
from input_pipeline.sources import idx
from tests import helpers
from tests.helpers import file_digests, run_main, tiny_config

# The trained workdir's run: runlocal for one epoch.
ONE_EPOCH = {'num_epochs': 1.0}
EIGHT_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory) -> str:
  """A workdir with checkpoints (8, 16) of `tiny_config(num_epochs=1)`."""
  workdir = str(tmp_path_factory.mktemp('bad_inputs') / 'run')
  train.train_and_evaluate(tiny_config(**ONE_EPOCH), workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints'))
  return workdir


@pytest.fixture
def fails_cleanly(trained_workdir):
  """Runs main.py on `trained_workdir` with extra flags; checks the failure.

  Returns the error text (stderr) for the case-specific assertions.
  """
  before = file_digests(trained_workdir)

  def run(*extra: str, config: str = helpers.TINY_CONFIG,
          env: dict[str, str] | None = None) -> str:
    # Another config file is shrunk as runlocal shrinks the default one.
    shrink = {} if config == helpers.TINY_CONFIG else helpers.runlocal_fields()
    fields = dict(shrink, **ONE_EPOCH)
    flags = [f'--config.{k}={v}' for k, v in fields.items()]
    result = run_main([f'--config={config}', f'--workdir={trained_workdir}',
                       *flags, *extra], env=env)
    err = result.stderr
    assert result.returncode != 0, err[-3000:]
    assert 'Traceback' not in err, err[-5000:]
    # One `error:` line, not echoed by an absl E line; no TPU probe noise.
    errors = re.findall(r'^error: \S', err, re.MULTILINE)
    assert len(errors) == 1, err[-3000:]
    assert not re.search(r'^E\d{4} ', err, re.MULTILINE), err[-3000:]
    assert 'Unable to initialize backend' not in err
    assert file_digests(trained_workdir) == before, 'the workdir changed'
    return err

  return run


def test_unknown_config_field(fails_cleanly):
  err = fails_cleanly('--config.optimizer.learnin_rate=1')
  assert 'Unknown config field config.optimizer.learnin_rate' in err
  assert 'Did you mean config.optimizer.learning_rate?' in err


def test_config_value_of_the_wrong_type(fails_cleanly):
  err = fails_cleanly('--config.input.batch_size=abc')
  assert '--config.input.batch_size=abc' in err
  assert 'abc' in err


def test_unknown_model_lists_the_valid_names(fails_cleanly):
  err = fails_cleanly('--config.model_name=resnet999')
  assert "Unknown model 'resnet999'" in err
  assert 'resnet20' in err and 'lenet5' in err


def test_unknown_dataset_lists_local_names_and_how_to_get_others(
    fails_cleanly):
  err = fails_cleanly('--config.input.dataset=fashion_mnistt')
  assert "Unknown data set 'fashion_mnistt'" in err
  assert 'digits, fashion_mnist' in err  # the offline names
  assert 'tfds build' in err and 'download=True' in err


@pytest.mark.parametrize('data_dir', ['/nonexistent', 'EMPTY'])
def test_missing_data_names_the_package_and_the_variable(
    fails_cleanly, tmp_path, data_dir):
  if data_dir == 'EMPTY':
    data_dir = str(tmp_path)
  err = fails_cleanly(f'--config.input.data_dir={data_dir}')
  assert data_dir in err
  assert 'dataset-fashion-mnist' in err and 'FASHION_MNIST_DIR' in err


def _idx_dir(directory) -> str:
  """Four small valid Fashion-MNIST-like IDX files."""
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 600), ('t10k', 100)):
    idx.write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte'),
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    idx.write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte'),
                  rng.integers(0, 10, (n,), dtype=np.uint8))
  return str(directory)


def test_idx_file_with_a_bad_magic_number(fails_cleanly, tmp_path):
  data_dir = _idx_dir(tmp_path)
  path = os.path.join(data_dir, 'train-images-idx3-ubyte')
  with open(path, 'r+b') as f:
    f.write(b'\x00\x00\x08\x99')
  err = fails_cleanly(f'--config.input.data_dir={data_dir}')
  assert path in err and 'magic number 0x00000899' in err


def test_truncated_idx_file(fails_cleanly, tmp_path):
  data_dir = _idx_dir(tmp_path)
  path = os.path.join(data_dir, 't10k-labels-idx1-ubyte')
  with open(path, 'r+b') as f:
    f.truncate(50)
  err = fails_cleanly(f'--config.input.data_dir={data_dir}')
  assert path in err and 'truncated' in err


def test_input_too_small_for_lenet5(fails_cleanly):
  err = fails_cleanly('--config.input.dataset=digits')  # 8x8 images.
  assert "Input 8x8 is too small for model 'lenet5'" in err
  assert 'at least 16x16' in err
  # The fix that works, not another name for the same model.
  assert 'with --config.input.image_size=28.' in err
  assert 'variant' not in err


@pytest.mark.parametrize('dtype', ['banana', 'float16'])
def test_dtype_other_than_the_documented_ones(fails_cleanly, dtype):
  err = fails_cleanly(f'--config.dtype={dtype}')
  assert (f"config.dtype must be one of ('float32', 'bfloat16'), got "
          f"'{dtype}'") in err


def test_input_too_small_for_a_small_image_model(fails_cleanly):
  err = fails_cleanly('--config.input.image_size=16',
                      config='configs/zoo.py:vgg11_small')
  assert "too small for model 'vgg11_small'" in err
  assert 'at least 32x32' in err


def test_batch_not_divisible_by_the_device_count(fails_cleanly):
  err = fails_cleanly('--config.input.batch_size=100', env=EIGHT_DEVICES)
  assert 'does not divide evenly over 8 devices' in err
  assert '--config.input.batch_size=96' in err


def test_workdir_of_another_experiment_is_refused(fails_cleanly,
                                                   trained_workdir):
  err = fails_cleanly('--config.model.activation=tanh')
  assert 'holds a different experiment' in err
  assert "model.activation: 'relu' -> 'tanh'" in err
  assert 'Nothing was changed' in err and 'new --workdir' in err
  assert trained_workdir in err


def test_config_file_that_does_not_exist(fails_cleanly):
  err = fails_cleanly(config='configs/no_such_config.py')
  assert "'configs/no_such_config.py' does not exist" in err
  assert 'default.py' in err
