"""The one way a train step gets its input (`TrainSource.step_inputs` +
`step_batch_fn`), whichever pipeline serves it."""

from __future__ import annotations

import functools

import jax
import numpy as np

import input_pipeline as ip
from cnn.training import sharding
from configs import default


def _config(pipeline):
  return dict(default.get_config().input.to_dict(), dataset='digits',
              pipeline=pipeline, batch_size=64, eval_batch_size=100,
              augment=dict(ip.default_augment_config(), flip_lr=False))


@functools.partial(jax.jit, static_argnames='batch_fn')
def _batch_in_step(inputs, step, batch_fn):
  return batch_fn(inputs, step)


def test_both_pipelines_feed_a_jitted_step_the_same_batches():
  mesh = sharding.create_mesh()
  batches = {}
  for pipeline in ('device', 'tfdata'):
    source = ip.create_train_source(_config(pipeline), seed=3, mesh=mesh)
    inputs = source.step_inputs(5)
    batches[pipeline] = [
        jax.device_get(_batch_in_step(next(inputs), step,
                                      batch_fn=source.step_batch_fn))
        for step in (5, 6)]
    # The host form gives the same batches (the trainer never uses it).
    host = source.iterator(5)
    for got in batches[pipeline]:
      want = next(host)
      for k in ('image', 'label'):
        np.testing.assert_array_equal(got[k], want[k])
  for a, b in zip(batches['device'], batches['tfdata'], strict=True):
    for k in ('image', 'label'):
      np.testing.assert_array_equal(a[k], b[k])


def test_equal_sources_share_one_batch_function():
  """Two seeds: equal (hashable) batch functions, so jitted steps that take
  them as a static argument compile once."""
  a = ip.create_train_source(_config('device'), seed=0)
  b = ip.create_train_source(_config('device'), seed=1)
  assert a.step_batch_fn == b.step_batch_fn
  assert hash(a.step_batch_fn) == hash(b.step_batch_fn)
