"""Packed members: several runs of one program trained in one compiled step.

Members of a sweep that differ only in their seed (`PACKABLE_FIELDS`) build
the same `Program` (`cnn.training.train.get_program` leaves the seed out of
its key). Packed, their train states are stacked along a new leading axis
(K members) and one `jax.jit(jax.vmap(train_step))` advances all of them:
each keeps its own initialisation, batch order (the seed travels in the
step input), batch-norm statistics, optimiser state and dropout key. A
small network leaves most of a machine idle; K of them in one program
amortise the per-operation overhead (benchmarks/packed_sweep.py).

Step inputs are stacked leaf by leaf, except leaves that are the same for
every member (the device pipeline's data on device: each member's source
holds an equal copy), which are broadcast (`in_axes=None`), never copied K
times.

`cnn.training.train.train_and_evaluate_packed` runs the loop;
`cnn.experiments.sweep.pack_groups` chooses the members.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn.common import errors

# Config fields that packed members may differ in: nothing of the compiled
# program depends on them (the seed reaches the step as data).
PACKABLE_FIELDS = ('seed',)


class PackingError(errors.UserError):
  """These runs cannot share one packed step (the caller runs them one by
  one)."""


def packing_key(config: ml_collections.ConfigDict) -> str:
  """Equal for configs that may train packed: the config without
  `PACKABLE_FIELDS`, as canonical JSON."""
  data = json.loads(config.to_json_best_effort())
  for field in PACKABLE_FIELDS:
    data.pop(field, None)
  return json.dumps(data, sort_keys=True)


def stack(trees: Sequence[Any]) -> Any:
  """K pytrees of one structure -> one with a leading member axis [K, ...].

  Static fields of flax structs (a `TrainState`'s apply_fn and tx) are taken
  from the first tree; they are the same program's for every member.
  """
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, count: int) -> list[Any]:
  """The inverse of `stack`: member i's tree, for i < count."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(count)]


def _same(xs: Sequence[Any]) -> bool:
  first = xs[0]
  return all(x is first or (
      np.shape(x) == np.shape(first) and np.result_type(x) == np.result_type(
          first) and bool(jnp.array_equal(x, first))) for x in xs[1:])


def shared_leaves(trees: Sequence[Any]) -> Any:
  """A tree like `trees[0]` of in_axes: None where every member has the same
  leaf (the same object, or equal values: each member's copy of the data on
  device), which is broadcast, never stacked; else 0. Called once per packed
  run; equal values make broadcasting exact."""
  return jax.tree.map(lambda *xs: None if _same(xs) else 0, *trees)


def stack_inputs(trees: Sequence[Any], in_axes: Any) -> Any:
  """Member step inputs as one: stacked where `in_axes` is 0, the shared
  leaf where it is None."""
  flat_axes = jax.tree.leaves(in_axes, is_leaf=lambda x: x is None)
  leaves = [jax.tree.leaves(t) for t in trees]
  stacked = [xs[0] if axis is None else jnp.stack(xs)
             for axis, xs in zip(flat_axes, zip(*leaves), strict=True)]
  return jax.tree.unflatten(jax.tree.structure(trees[0]), stacked)


_PACKED_STEPS: dict[tuple, Callable] = {}


def packed_step(train_step: Callable, in_axes: Any) -> Callable:
  """jit(vmap(train_step)) over (stacked states, stacked metrics, inputs
  with `in_axes`), donating the states and metrics; built once per program
  and input layout.

  Args:
    train_step: the program's step (state, metrics, input) -> (state,
      metrics); a jitted one is fine (jit inside vmap).
    in_axes: `shared_leaves` of the members' inputs.
  """
  is_none = lambda x: x is None
  key = (train_step, jax.tree.structure(in_axes, is_leaf=is_none),
         tuple(jax.tree.leaves(in_axes, is_leaf=is_none)))
  if key not in _PACKED_STEPS:
    _PACKED_STEPS[key] = jax.jit(
        jax.vmap(train_step, in_axes=(0, 0, in_axes)), donate_argnums=(0, 1))
  return _PACKED_STEPS[key]
