"""Correctness of the speed work: compilation counts, buffer donation,
bfloat16 training, and the CPU forms of `cnn.kernels.forms` against reference
ops.

Fast (well under a minute on 2 CPU cores): tiny LeNet-5 runs only.
"""

from __future__ import annotations

import collections
import functools
import logging
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from benchmarks import cpu_speedups
from cnn.common import errors
from cnn.kernels import forms, onednn
from cnn.models import registry
from cnn.training import optim, sharding, steps, train
from tests.helpers import assert_conv_matches_lax, tiny_config

DN = ('NHWC', 'HWIO', 'NHWC')


class _CompileLog(logging.Handler):
  """Counts `jax_log_compiles` messages by the compiled function's name."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.counts = collections.Counter()

  def emit(self, record):
    match = re.match(r'Compiling (\S+) ', record.getMessage())
    if match:
      self.counts[match.group(1)] += 1


@pytest.fixture
def compile_log():
  handler = _CompileLog()
  logger = logging.getLogger('jax')
  logger.addHandler(handler)
  previous = jax.config.jax_log_compiles
  jax.config.update('jax_log_compiles', True)
  try:
    yield handler.counts
  finally:
    jax.config.update('jax_log_compiles', previous)
    logger.removeHandler(handler)


def _tiny_state(dtype: str = 'float32', **overrides):
  config = tiny_config(dtype=dtype, **overrides)
  mesh = sharding.create_mesh()
  model = train.create_model(config, num_classes=10)
  lr_fn = optim.create_learning_rate_fn(config, 16, 64)
  state = train.create_train_state(config, model, (28, 28, 1), lr_fn, mesh)
  return config, state


def _jitted_step(config, fn=steps.train_step, **jit_kwargs):
  return jax.jit(functools.partial(
      fn, label_smoothing=config.loss.label_smoothing,
      aux_weight=config.loss.aux_weight, skip_nonfinite=False),
                 donate_argnums=(0, 1), **jit_kwargs)


def _batches(n: int, batch_size: int = 32, seed: int = 0):
  """Learnable random batches: the label is set by the mean brightness."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    labels = rng.integers(0, 10, batch_size).astype(np.int32)
    images = rng.normal(size=(batch_size, 28, 28, 1)).astype(np.float32)
    images += labels[:, None, None, None] * 0.3
    out.append({'image': jnp.asarray(images), 'label': jnp.asarray(labels)})
  return out


# --- Compilation


def test_trainer_compiles_each_step_function_once(tmp_path, compile_log):
  # 1,000 test examples in batches of 384: the last eval batch is partial
  # (padded and masked), and must not trigger a second compilation.
  config = tiny_config(num_epochs=2.0)
  # An earlier test may have run this config: its Program (and compiled
  # steps) would be reused, and nothing compiled here.
  train.clear_programs()
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result.status == 'completed'
  step_names = [n for n in compile_log if 'step' in n]
  assert step_names, f'no step compilation was logged: {dict(compile_log)}'
  twice = {n: c for n, c in compile_log.items() if 'step' in n and c > 1}
  assert not twice, f'recompiled: {twice} (all: {dict(compile_log)})'


def test_jitted_step_cache_stays_at_one_entry():
  # Inputs placed as the trainer places them (replicated metrics, batches
  # sharded on the mesh), so that the step's outputs, fed back, have the
  # same shardings as the first call's inputs.
  config, state = _tiny_state()
  mesh = sharding.create_mesh()
  step = _jitted_step(config)
  metrics = jax.device_put(steps.empty_train_metrics(),
                           sharding.replicated(mesh))
  for batch in _batches(4):
    batch = sharding.put_global_batch(jax.device_get(batch), mesh)
    state, metrics = step(state, metrics, batch)
  assert step._cache_size() == 1


# --- Donation


def test_donated_state_and_metrics_are_deleted_and_not_reused():
  config, state = _tiny_state()
  step = _jitted_step(config)
  metrics = steps.empty_train_metrics()
  leaves = jax.tree.leaves((state, metrics))
  # Separate buffers: a donating jit refuses one buffer passed twice.
  assert len({id(x) for x in leaves}) == len(leaves)
  new_state, new_metrics = step(state, metrics, _batches(1)[0])
  jax.block_until_ready(new_metrics)
  assert all(x.is_deleted() for x in leaves)
  assert not any(x.is_deleted() for x in jax.tree.leaves(
      (new_state, new_metrics)))
  with pytest.raises(RuntimeError, match='deleted|donated'):
    np.asarray(state.params['head']['kernel'])
  # The outputs are usable as the next step's (donated) inputs.
  state2, _ = step(new_state, new_metrics, _batches(1)[0])
  assert int(state2.step) == 2


# --- bfloat16


def _train_losses(dtype: str, num_steps: int = 30) -> list[float]:
  config, state = _tiny_state(dtype=dtype, **{'optimizer.learning_rate': 3e-3,
                                              'schedule.name': 'constant'})
  step = _jitted_step(config)
  losses = []
  batches = _batches(4)
  for i in range(num_steps):
    metrics = steps.empty_train_metrics()
    state, metrics = step(state, metrics, batches[i % len(batches)])
    losses.append(float(metrics['loss_sum'] / metrics['loss_count']))
  return losses


def test_bfloat16_training_learns():
  losses = _train_losses('bfloat16')
  assert all(np.isfinite(losses))
  first, last = np.mean(losses[:4]), np.mean(losses[-4:])
  assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize('model', ['lenet5', 'resnet8'])
def test_cpu_forms_give_the_plain_gradients(model):
  # The models' CPU forms (LeNet-5: banded convolutions; ResNets: materialised
  # convolution inputs) only re-formulate the computation: the same loss and
  # gradients, up to float rounding, as the naive network traced inside
  # `forms.reference_convolutions()` (`cpu_speedups.plain`). (Training curves
  # are not compared: max-pool and ReLU turn rounding-level differences into
  # visibly different runs in a few steps, whichever formulation is right.)
  if model == 'lenet5':
    config, state = _tiny_state()
  else:  # A CIFAR ResNet with one block per stage, on Fashion-MNIST shapes.
    config, state = _tiny_state(
        model_name='resnet20', model=ml_collections.ConfigDict(
            dict(stage_sizes=(1, 1, 1))))
  batch = _batches(1)[0]

  def loss(params):
    (logits, _), _ = state.apply_fn(
        state.variables(params), batch['image'], train=True,
        rngs={'dropout': jax.random.PRNGKey(0)}, mutable=['batch_stats'])
    return steps.cross_entropy(logits, batch['label'], 0.1).mean()

  grad_fn = jax.value_and_grad(loss)
  fast_hlo = jax.jit(grad_fn).lower(state.params).as_text()
  plain_hlo = jax.jit(cpu_speedups.plain(grad_fn)).lower(
      state.params).as_text()
  assert fast_hlo != plain_hlo  # The two variants do differ on this CPU.
  fast = jax.jit(grad_fn)(state.params)
  plain = jax.jit(cpu_speedups.plain(grad_fn))(state.params)
  np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(plain[1]),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(want).max()))


# --- cnn.kernels.forms against reference ops


@pytest.mark.parametrize('x_shape, k_shape, strides, padding', [
    ((3, 32, 32, 1), (5, 5, 1, 6), (1, 1), 'VALID'),   # LeNet-5 C1
    ((3, 14, 14, 6), (5, 5, 6, 16), (1, 1), 'VALID'),  # LeNet-5 C3
    ((2, 16, 16, 4), (3, 3, 4, 8), (2, 2), ((1, 1), (1, 1))),
    ((2, 9, 11, 2), (3, 2, 2, 5), (2, 3), 'SAME'),
    ((2, 7, 8, 3), (1, 1, 3, 4), (1, 1), 2),
])
def test_banded_conv_matches_lax_conv_and_its_gradients(x_shape, k_shape,
                                                        strides, padding):
  pads = forms.explicit_padding(padding, k_shape[:2], strides, x_shape[1:3])
  assert_conv_matches_lax(
      lambda x, k: forms.banded_conv(x, k, strides, padding), x_shape,
      k_shape, strides, pads)


def test_banded_conv_in_bfloat16_is_close():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 14, 14, 6)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(5, 5, 6, 16)) * 0.1, jnp.bfloat16)
  got = forms.banded_conv(x, k)
  want = jax.lax.conv_general_dilated(x.astype(jnp.float32),
                                      k.astype(jnp.float32), (1, 1), 'VALID',
                                      dimension_numbers=DN)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0.05,
                             atol=0.1)


@pytest.mark.parametrize('impl, strides, padding', [
    ('xla', 1, 'VALID'), ('banded', 1, 'VALID'),
    pytest.param('onednn', 1, 'VALID', marks=pytest.mark.skipif(
        not onednn.available(), reason='oneDNN kernel not built')),
    pytest.param('onednn', 2, 'SAME', marks=pytest.mark.skipif(
        not onednn.available(), reason='oneDNN kernel not built')),
])
def test_conv_module_is_a_drop_in_for_nn_conv(impl, strides, padding):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 14, 14, 6)),
                  jnp.float32)
  ours = forms.Conv(16, (5, 5), strides, padding=padding)
  theirs = nn.Conv(16, (5, 5), strides, padding=padding)
  variables = theirs.init(jax.random.PRNGKey(0), x)
  with forms.use_conv_impl(impl):
    assert ours.choose_impl(14, 6) == impl
    assert (jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) ==
            jax.tree.map(jnp.shape, variables))
    got = ours.apply(variables, x)
  np.testing.assert_allclose(got, theirs.apply(variables, x), rtol=1e-5,
                             atol=1e-4)


def test_conv_auto_picks_banded_only_for_small_convolutions(monkeypatch):
  # Without the oneDNN kernel (not built, or another platform).
  monkeypatch.setattr(onednn, 'available', lambda: False)
  monkeypatch.setattr(onednn, 'supports', lambda dtype: False)
  assert forms.Conv(6, (5, 5), padding='VALID').choose_impl(32, 1) == 'banded'
  assert forms.Conv(16, (5, 5), padding='VALID').choose_impl(14, 6) == 'banded'
  # CIFAR ResNet 3x3 convolutions: the band would be 11x the work.
  assert forms.Conv(16, (3, 3), padding=1).choose_impl(32, 16) == 'xla'
  assert forms.Conv(32, (3, 3), strides=2, padding=1).choose_impl(
      32, 16) == 'xla'


def test_the_switch_comes_from_the_environment_and_the_context(monkeypatch):
  conv = forms.Conv(6, (5, 5), padding='VALID')
  monkeypatch.delenv(forms.ENV_VAR, raising=False)
  assert forms.conv_impl() == 'auto'
  monkeypatch.setenv(forms.ENV_VAR, 'banded')
  assert forms.conv_impl() == 'banded'
  assert conv.choose_impl(32, 1) == 'banded'
  with forms.use_conv_impl('xla'):  # the context beats the environment
    assert conv.choose_impl(32, 1) == 'xla'
    with forms.use_conv_impl('banded'):
      assert forms.conv_impl() == 'banded'
    assert forms.conv_impl() == 'xla'
  with forms.use_conv_impl('banded'), forms.reference_convolutions():
    assert conv.choose_impl(32, 1) == 'xla'  # the plain network, always
  monkeypatch.setenv(forms.ENV_VAR, 'cudnn')
  with pytest.raises(errors.UserError, match=(
      "'cudnn' .*CNN_CONV_IMPL.*valid: 'auto', 'xla', 'banded', 'onednn'")):
    forms.conv_impl()
  with pytest.raises(errors.UserError, match="valid: 'auto', 'xla'"):
    with forms.use_conv_impl('XLA'):
      pass


def test_the_switch_changes_a_model_without_changing_its_function():
  # The same variables, and up to rounding the same outputs, whichever
  # implementation a model is traced with.
  model = registry.create_model('lenet5')
  x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 28, 28, 1)),
                  jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  outputs = {}
  for impl in ('xla', 'banded'):
    with forms.use_conv_impl(impl):
      shapes = jax.tree.map(jnp.shape, jax.eval_shape(
          model.init, jax.random.PRNGKey(0), x))
      assert shapes == jax.tree.map(jnp.shape, variables)
      apply = jax.jit(lambda v, x: model.apply(v, x)[0])
      outputs[impl] = apply(variables, x)
      hlo = apply.lower(variables, x).as_text()
    assert ('stablehlo.convolution' in hlo) == (impl == 'xla')
  np.testing.assert_allclose(outputs['banded'], outputs['xla'], rtol=1e-4,
                             atol=1e-5)


def test_materialize_is_an_identity_that_survives_compilation():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 6, 6, 3)),
                  jnp.float32)
  f = lambda x: jnp.sum(jnp.sin(forms.materialize(jnp.maximum(x, 0))) ** 2)
  g = lambda x: jnp.sum(jnp.sin(jnp.maximum(x, 0)) ** 2)
  np.testing.assert_array_equal(forms.materialize(x), x)
  np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), rtol=1e-6)
  nan_first = x.at[0, 0, 0, 0].set(jnp.nan)  # the other branch: same values
  np.testing.assert_array_equal(forms.materialize(nan_first), nan_first)
  if jax.default_backend() == 'cpu':
    # XLA must keep the conditional, or the workaround silently stops working.
    hlo = jax.jit(jax.grad(f)).lower(x).compile().as_text()
    assert 'conditional(' in hlo


def test_banded_lenet_step_has_no_convolution_in_a_scan_loop():
  # XLA CPU leaves weight-gradient convolutions inside loop bodies in a slow
  # generic form (FINDINGS.md); the banded form has none to leave.
  x = jnp.ones((2, 32, 32, 1))
  k = jnp.ones((5, 5, 1, 6))

  def loop(k):
    def body(k, _):
      g = jax.grad(lambda k: jnp.sum(forms.banded_conv(x, k) ** 2))(k)
      return k - 1e-3 * g, None
    return jax.lax.scan(body, k, None, length=3)[0]

  hlo = jax.jit(loop).lower(k).compile().as_text()
  assert ' convolution(' not in hlo
