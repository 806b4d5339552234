"""Size accounting: how big is a model and where does its cost go?

`summarize(name_or_module, input_shape)` traces one forward pass abstractly
(`jax.make_jaxpr`, no real compute) while `flax.linen.intercept_methods` sees
every module call (`cnn/summary/trace.py`), and returns a `Summary`: one row
per layer with its output shape and the lecture's three measures of size,
plus totals.

Conventions (per image, batch 1):

* units: output units of a layer, H * W * C of its output (the activations a
  trainer stores for backprop). Counted for conv, dense, pooling, global
  pooling and attention-matmul layers; batch norm (folded into the conv at
  inference) and Flatten (a view) add none.
* weights (`params`): trainable parameters with biases, as in Flax's own
  parameter tree (batch norm: scale and bias; running statistics are not
  parameters). `params_without_bias` drops the leaves named `bias` (the
  lecture's "150 weights" for LeNet's C1; batch norm keeps its scale).
* connections: the lecture's word for multiply-adds, without biases. Conv:
  units_out * K_h * K_w * C_in / groups; dense: in * out; pooling: units_out *
  window size (LeNet S2: 1,176 * 4 = 4,704); global average pooling: its input
  units. Batch norm has none.
* macs: multiply-accumulates of conv, dense and matmul (attention) layers
  only: connections without pooling. He et al.'s ResNet "FLOPs" (1.8G for
  ResNet-18) and Johnson's AlexNet/VGG table "flop" columns are macs (his pool
  rows are our pooling connections).
* flops: 2 * macs (one multiply and one add) + one operation per pooling
  connection. Biases, batch norm, activations and residual additions are not
  counted (they are elementwise: O(units), not O(units * fan-in)).
* activation memory: units * bytes of the output dtype (4 for float32, 2 for
  bfloat16), forward pass only.
* receptive field (rf) and jump, per spatial axis in input pixels, for the
  output of each layer: r_out = r_in + (k_eff - 1) * j_in and j_out = j_in * s
  for a conv or pool with kernel k, dilation d (k_eff = (k - 1) * d + 1) and
  stride s; the image has r = j = 1. Global pooling and Flatten (of a 4-D map)
  act as a window over the whole map; attention (or any matmul of two
  activations) sees every token, so r becomes at least the image size.
  Residual and inception branches: the receptive field is tracked per tensor
  of the traced program (a data-flow pass over the jaxpr, ops outside layers
  take the maximum over their inputs), so an addition or concatenation gets
  the largest receptive field among its inputs: the size of the region that
  can influence an output unit, not its effective (Gaussian-like) extent.

Independent cross-checks (a mismatch raises): the rows' parameters add up to
Flax's parameter tree, and each conv/dense row's macs equal the multiply-adds
of the `conv_general_dilated`/`dot_general` primitives traced inside it
(matmuls outside any layer become `matmul` rows, so einsum attention is
counted too). `xla_flops` gives XLA's own count for comparison: XLA's CPU cost
analysis counts 2 flops per multiply-add but skips the taps of a conv that
fall on zero padding (our `macs_nonpad`), and adds one flop per element of
bias additions, batch norm, activations, residual additions and (window - 1)
per pooled output.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.extend  # noqa: F401  (jax.extend.core.Literal)
import jax.numpy as jnp
import numpy as np

from cnn import layers
from cnn.kernels import forms
from cnn.models import registry
from cnn.summary import trace

_NORMS = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@dataclasses.dataclass
class LayerRow:
  """Size of one layer call (shapes exclude the batch axis).

  Attributes:
    name: module path, e.g. 'backbone/stage1_block1/conv1' ('/matmul' rows:
      matmuls traced outside any layer, named after the enclosing module).
    type: 'Conv', 'Dense', 'LocallyConnected', 'Pool', 'GlobalAvgPool',
      'Flatten', 'BatchNorm', 'Attention', 'matmul', another norm's class
      name, or the class name of a module that only holds parameters;
      'unused' for parameters of modules not called in this mode
      (GoogLeNet's auxiliary heads in evaluation).
    input_shape: [H, W, C] (or [features]) of the layer's first input.
    output_shape: [H, W, C] (or [features]) of its output.
    kernel: conv kernel / pooling window (height, width), in pixels.
    strides: (height, width) step, in pixels.
    padding: padding as given to the layer ('SAME', 'VALID' or pairs).
    dilation: conv kernel dilation.
    groups: conv feature groups (C_in for depthwise convs).
    pool: 'max' or 'avg' for pooling rows.
    units: output units counted (see the module docstring).
    params: parameters with biases (0 for repeated calls of shared layers).
    params_without_bias: parameters without `bias` leaves.
    macs: multiply-accumulates.
    macs_nonpad: macs without the conv taps that read zero padding.
    connections: the lecture's connections (macs, or pooling reads).
    flops: 2 * macs + pooling connections.
    activation_bytes: units * bytes per element of the output.
    rf: receptive field of one output unit, (height, width) in input pixels.
    jump: distance between neighbouring output units, in input pixels.
  """

  name: str
  type: str
  input_shape: tuple[int, ...] = ()
  output_shape: tuple[int, ...] = ()
  kernel: tuple[int, ...] | None = None
  strides: tuple[int, ...] | None = None
  padding: Any = None
  dilation: tuple[int, ...] | None = None
  groups: int | None = None
  pool: str | None = None
  units: int = 0
  params: int = 0
  params_without_bias: int = 0
  macs: int = 0
  macs_nonpad: int = 0
  connections: int = 0
  flops: int = 0
  activation_bytes: int = 0
  rf: tuple[int, ...] | None = None
  jump: tuple[int, ...] | None = None

  @property
  def group(self) -> str:
    """Parameter group: the top-level backbone key up to its first '_'."""
    parts = self.name.split('/')
    if parts[0] == 'backbone' and len(parts) > 1:
      parts = parts[1:]
    return parts[0].split('_')[0] or 'model'


TOTAL_KEYS = ('units', 'params', 'params_without_bias', 'macs', 'macs_nonpad',
              'connections', 'flops', 'activation_bytes')


def _add_totals(rows: Sequence[LayerRow]) -> dict[str, int]:
  return {k: int(sum(getattr(r, k) for r in rows)) for k in TOTAL_KEYS}


@dataclasses.dataclass
class Summary:
  """Rows (one per layer call, in execution order) and totals.

  `totals` has `params`, `params_without_bias`, `param_bytes`, `units`,
  `activation_bytes`, `macs`, `macs_nonpad`, `connections`, `flops`, and the
  macs split by layer type (`macs_conv`; `macs_dense` for Dense and
  DenseGeneral; `macs_other`: attention and other matmuls), `layers`.
  """

  model: str
  input_shape: tuple[int, int, int]
  num_classes: int | None
  dtype: str
  train: bool
  rows: list[LayerRow]
  totals: dict[str, int]
  warnings: list[str] = dataclasses.field(default_factory=list)
  # `train_step_memory(...)` of the same model, when asked for (it compiles).
  train_memory: dict[str, int] | None = None

  def layer(self, name: str) -> LayerRow:
    """The row called `name`, or whose name ends with '/' + `name`."""
    found = [r for r in self.rows
             if r.name == name or r.name.endswith('/' + name)]
    if len(found) != 1:
      raise KeyError(f'{len(found)} layers match {name!r}; layers: '
                     f'{[r.name for r in self.rows]}')
    return found[0]

  def find(self, pattern: str) -> list[LayerRow]:
    """Rows whose name matches a glob pattern, e.g. '*stage2_block1/conv1'."""
    return [r for r in self.rows if fnmatch.fnmatch(r.name, pattern)]

  def groups(self) -> dict[str, dict[str, int]]:
    """Totals per parameter group (stem, stage1, ..., head), in order."""
    out: dict[str, list[LayerRow]] = {}
    for r in self.rows:
      out.setdefault(r.group, []).append(r)
    return {g: _add_totals(rs) for g, rs in out.items()}

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: model, input_shape, layers, totals, groups, warnings."""
    def clean(v):
      if isinstance(v, tuple):
        return [clean(x) for x in v]
      return v
    return {
        'model': self.model,
        'input_shape': list(self.input_shape),
        'num_classes': self.num_classes,
        'dtype': self.dtype,
        'train': self.train,
        'layers': [{k: clean(v) for k, v in dataclasses.asdict(r).items()}
                   for r in self.rows],
        'totals': dict(self.totals),
        'groups': self.groups(),
        'warnings': list(self.warnings),
        'conventions': CONVENTIONS,
        **({'train_step_memory': dict(self.train_memory)}
           if self.train_memory else {}),
    }

  def to_json(self, indent: int | None = 1) -> str:
    """JSON text; with `indent`, one line per layer."""
    data = self.to_dict()
    if indent is None:
      return json.dumps(data)
    rows = data.pop('layers')
    head = json.dumps(data, indent=indent)
    pad = ' ' * indent
    lines = ',\n'.join(f'{pad * 2}{json.dumps(r)}' for r in rows)
    return f'{head[:-2]},\n{pad}"layers": [\n{lines}\n{pad}]\n}}'


CONVENTIONS = {
    'units': 'output units H*W*C per image (conv, dense, pool, matmul layers)',
    'params': 'trainable parameters with biases (BN: scale + bias)',
    'connections': 'multiply-adds without bias (conv, dense, matmul) + '
                   'pooling reads (units_out * window)',
    'macs': 'multiply-accumulates of conv, dense and matmul layers',
    'flops': '2 * macs + pooling reads',
    'activation_bytes': 'units * bytes of the output dtype, forward only',
    'train_flops': '3 * flops: forward + input gradients + weight gradients '
                   '(each about one forward); optimizer update not counted',
    'rf': 'receptive field of an output unit in input pixels (h, w)',
}


# ----------------------------------------------------------------------------
# Rows.


def _row_type(m: nn.Module) -> str | None:
  """Row type of a module with a known cost formula, else None."""
  for cls, label in ((nn.Conv, 'Conv'), (nn.Dense, 'Dense'),
                     (layers.LocallyConnected, 'LocallyConnected'),
                     (layers.Pool, 'Pool'),
                     (layers.GlobalAvgPool, 'GlobalAvgPool'),
                     (layers.Flatten, 'Flatten'),
                     (nn.MultiHeadDotProductAttention, 'Attention')):
    if isinstance(m, cls):
      return label
  if isinstance(m, _NORMS):
    return type(m).__name__
  return None


def _padding(p) -> Any:
  if isinstance(p, str):
    return p.upper()
  if isinstance(p, int):
    return p
  return tuple(tuple(x) if isinstance(x, (tuple, list)) else x for x in p)


def _make_row(call: trace.Call, flow: trace.Flow,
              first_use: bool) -> LayerRow:
  m = call.module
  kind = _row_type(m) or type(m).__name__
  itemsize = np.dtype(call.out_dtype).itemsize if call.out_dtype else 4
  out_units = int(np.prod(call.out_shape[1:]))
  params = {k: int(np.prod(s)) for k, s in call.own_params.items()}
  row = LayerRow(
      name='/'.join(call.path) or 'model', type=kind,
      input_shape=tuple(call.in_shape[1:]),
      output_shape=tuple(call.out_shape[1:]))
  if first_use:
    row.params = sum(params.values())
    row.params_without_bias = sum(v for k, v in params.items() if k != 'bias')
  traced = flow.macs.get(call.idx, [0, 0, 0])
  row.macs, row.macs_nonpad = traced[0], traced[1]
  if isinstance(m, nn.Conv):
    kshape = call.own_params['kernel']
    row.kernel = tuple(kshape[:-2])
    n = len(row.kernel)
    row.strides = trace.tup(m.strides, n)
    row.dilation = trace.tup(m.kernel_dilation, n)
    row.padding = _padding(m.padding)
    row.groups = m.feature_group_count
    formula = out_units * int(np.prod(kshape[:-1]))
    _check_formula(row, formula)
  elif isinstance(m, nn.Dense):
    formula = out_units * call.own_params['kernel'][0]
    _check_formula(row, formula)
  elif isinstance(m, layers.LocallyConnected):
    # A filter per position: a convolution's connections, H'W' x the
    # weights of one filter bank.
    row.kernel = tuple(m.kernel_size)
    row.strides = tuple(m.strides)
    row.padding = _padding(m.padding)
    formula = out_units * int(np.prod(m.kernel_size)) * call.in_shape[-1]
    _check_formula(row, formula)
  elif isinstance(m, layers.Pool):
    row.kernel = tuple(m.window)
    row.strides = tuple(m.strides) if m.strides else row.kernel
    row.padding = _padding(m.padding)
    row.pool = m.kind
    row.connections = out_units * int(np.prod(row.kernel))
    if m.kind == 'blur':  # every stride-1 max, then blur_size² reads each.
      max_hw = [n - k + 1 for n, k in zip(call.in_shape[1:3], row.kernel,
                                                 strict=True)]
      row.connections = (int(np.prod(max_hw)) * call.in_shape[-1]
                         * int(np.prod(row.kernel))
                         + out_units * m.blur_size ** 2)
  elif isinstance(m, layers.GlobalAvgPool):
    row.kernel = tuple(call.in_shape[1:3])
    row.pool = 'avg'
    row.connections = int(np.prod(call.in_shape[1:]))
  if row.macs or kind in ('Conv', 'Dense', 'LocallyConnected', 'Pool',
                          'GlobalAvgPool'):
    row.units = out_units
  if kind == 'Attention':
    row.units = traced[2]
  row.connections += row.macs
  row.flops = 2 * row.macs + (row.connections - row.macs)
  row.activation_bytes = row.units * itemsize
  if call.idx in flow.rf_in and (row.units or kind == 'Flatten'
                                  or isinstance(m, _NORMS)):
    row.rf, row.jump = flow.transform(call.idx, flow.rf_in[call.idx])
  return row


def _check_formula(row: LayerRow, formula: int) -> None:
  if formula != row.macs:
    raise RuntimeError(
        f'Layer {row.name}: the lecture formula gives {formula:,} multiply-'
        f'adds but the traced primitives do {row.macs:,}.')


def _param_leaves(tree) -> dict[tuple[str, ...], int]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[tuple(str(getattr(k, 'key', k)) for k in path)] = int(
        np.prod(leaf.shape))
  return out


def _param_rows(call: trace.Call) -> list[LayerRow]:
  """One row per parameter of a module that only holds parameters.

  Such parameters are used by plain jnp code (ViT's class token and position
  embedding); one row each, so each lands in its own group
  (`stem_cls_token` -> stem).
  """
  rows = []
  for key, shape in call.own_params.items():
    size = int(np.prod(shape))
    rows.append(LayerRow(
        name='/'.join(call.path + (key,)), type='param',
        output_shape=tuple(shape), params=size,
        params_without_bias=0 if key == 'bias' else size))
  return rows


def _matmul_row(call: trace.Call | None, owner: int | None,
                flow: trace.Flow) -> LayerRow:
  """The row of the matmuls traced in `call` outside any layer.

  Einsum attention or a jnp.dot in a block; `call` is the innermost module
  call they were traced in (None: outside every module).
  """
  macs, nonpad, units = flow.macs[owner]
  in_shape, out_shape = flow.matmul_shapes[owner]
  itemsize = np.dtype(call.out_dtype).itemsize if call and call.out_dtype \
      else 4
  row = LayerRow(
      name=('/'.join(call.path) if call and call.path else 'model')
      + '/matmul',
      type='matmul', input_shape=tuple(in_shape[1:]),
      output_shape=tuple(out_shape[1:]), units=units, macs=macs,
      macs_nonpad=nonpad, connections=macs, flops=2 * macs,
      activation_bytes=units * itemsize)
  if owner is not None and owner in flow.rf_in:
    row.rf, row.jump = trace.global_rf(flow.rf_in[owner], flow.image_hw)
  return row


def _rows(calls: list[trace.Call], flow: trace.Flow, row_calls: set[int],
          first_use: dict[int, bool]) -> list[LayerRow]:
  """Layer, parameter and matmul rows, in execution order."""
  keyed = []
  for i in sorted(row_calls):
    call = calls[i]
    if _row_type(call.module) is None and i not in flow.macs:
      if first_use[i]:
        keyed.extend(((call.start, 0), r) for r in _param_rows(call))
      continue
    keyed.append(((call.end, 0), _make_row(call, flow, first_use[i])))
  for owner in flow.macs:
    if owner in row_calls:
      continue
    call = calls[owner] if owner is not None else None
    keyed.append(((call.end if call else math.inf, 1),
                  _matmul_row(call, owner, flow)))
  return [r for _, r in sorted(keyed, key=lambda kr: kr[0])]


def _unused_rows(tree: dict[tuple[str, ...], int], calls: list[trace.Call],
                 row_calls: set[int], first_use: dict[int, bool],
                 called: set[tuple[str, ...]]) -> list[LayerRow]:
  """Rows for modules never called in this mode; checks every parameter.

  Args:
    tree: {parameter path: size} of Flax's parameter tree.
    calls: the traced module calls.
    row_calls: indices of the calls that have rows.
    first_use: for each row call, whether it is its module's first call
      (where its parameters are counted).
    called: paths of every module entered, by any method.

  Returns:
    One 'unused' row per outermost uncalled module (e.g. GoogLeNet's
    auxiliary heads in evaluation), holding its parameters.

  Raises:
    RuntimeError: a parameter of a called module has no row, or a row
      counts a parameter that is not in the tree.
  """
  covered = {}
  for call in calls:
    if call.idx in row_calls and first_use[call.idx]:
      for key, shape in call.own_params.items():
        covered[call.path + (key,)] = int(np.prod(shape))
  unused: dict[tuple[str, ...], list[int]] = {}
  for path, size in tree.items():
    if path in covered:
      continue
    owner = path[:-1]
    if owner in called:
      raise RuntimeError(
          f'Parameter {"/".join(path)} ({size:,}) belongs to a layer the '
          'summary did not count.')
    # Reported under its outermost uncalled module.
    top = next(owner[:i] for i in range(1, len(owner) + 1)
               if owner[:i] not in called)
    acc = unused.setdefault(top, [0, 0])
    acc[0] += size
    acc[1] += 0 if path[-1] == 'bias' else size
  if set(covered) - set(tree):
    raise RuntimeError(f'Counted parameters missing from the tree: '
                       f'{sorted(set(covered) - set(tree))}')
  return [LayerRow(name='/'.join(path), type='unused', params=size,
                   params_without_bias=no_bias)
          for path, (size, no_bias) in unused.items()]


def _totals(rows: list[LayerRow], params: Any) -> dict[str, int]:
  """`Summary.totals`; raises RuntimeError unless the rows hold `params`."""
  tree_size = sum(_param_leaves(params).values())
  totals = _add_totals(rows)
  if totals['params'] != tree_size:
    raise RuntimeError(
        f'Rows count {totals["params"]:,} parameters, the Flax tree has '
        f'{tree_size:,}.')
  totals['param_bytes'] = int(sum(
      leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params)))
  totals['macs_conv'] = int(sum(r.macs for r in rows if r.type == 'Conv'))
  totals['macs_dense'] = int(sum(
      r.macs for r in rows if r.type in ('Dense', 'DenseGeneral')))
  totals['macs_other'] = totals['macs'] - totals['macs_conv'] - totals[
      'macs_dense']
  totals['layers'] = sum(1 for r in rows if r.type != 'unused')
  # Backward = input gradients + weight gradients, each the forward's
  # multiply-adds again (the first layer's input gradient is not needed,
  # so this slightly overcounts).
  totals['train_flops'] = 3 * totals['flops']
  return totals


# ----------------------------------------------------------------------------
# Public API.


def summarize(model: str | nn.Module,
              input_shape: Sequence[int] | None = None,
              num_classes: int | None = None,
              dtype: Any = 'float32', *, train: bool = False,
              **overrides) -> Summary:
  """Per-layer sizes of a model for one image, without running it.

  Args:
    model: a registry name (built with `registry.create_model`) or a Flax
      module taking images [batch, H, W, C] (and optionally `train=`).
    input_shape: (H, W, C); defaults to the registry spec's natural input.
    num_classes: head size; defaults to the spec's.
    dtype: compute dtype ('float32', 'bfloat16'); sets the bytes per unit.
    train: trace the training forward pass (dropout on, batch statistics,
      auxiliary heads) instead of evaluation.
    **overrides: backbone options for `create_model` (e.g. `residual=False`).

  Returns:
    A `Summary`. Raises ValueError for an input too small for a registered
    model and RuntimeError when the accounting disagrees with Flax's
    parameter tree or with the traced primitives.
  """
  if isinstance(model, str):
    spec = registry.get_spec(model)
    input_shape = tuple(input_shape or spec.input_shape)
    registry.check_input_shape(model, input_shape)
    num_classes = num_classes or spec.num_classes
    name = model
    module = registry.create_model(model, num_classes=num_classes,
                                   dtype=dtype, **overrides)
  else:
    if input_shape is None:
      raise ValueError('input_shape (H, W, C) is required for a module.')
    module, name = model, type(model).__name__
    input_shape = tuple(input_shape)
    dtype = getattr(module, 'dtype', None)
  variables, recorder, closed = trace.trace(module, input_shape, train)
  calls = recorder.calls

  # Calls that get a row; a module called twice (shared weights) counts its
  # parameters at its first call only.
  seen: set[tuple[str, ...]] = set()
  row_calls, first_use = set(), {}
  for call in calls:
    if _row_type(call.module) or call.own_params:
      row_calls.add(call.idx)
      first_use[call.idx] = call.path not in seen
      seen.add(call.path)
  flow = trace.Flow(calls, row_calls, tuple(input_shape[:-1]))
  flow.run(closed.jaxpr, closed.jaxpr.invars[0])

  params = variables.get('params', {})
  rows = _rows(calls, flow, row_calls, first_use)
  # Cross-check against Flax's parameter tree.
  rows += _unused_rows(_param_leaves(params), calls, row_calls, first_use,
                       recorder.paths)
  return Summary(model=name, input_shape=tuple(input_shape),
                 num_classes=num_classes,
                 dtype=str(jnp.dtype(layers.as_dtype(dtype or 'float32'))),
                 train=train, rows=rows, totals=_totals(rows, params),
                 warnings=sorted(set(flow.warnings)))


def output_receptive_fields(model: str | nn.Module,
                            input_shape: Sequence[int] | None = None,
                            *, train: bool = False) -> Any:
  """Theoretical receptive field and jump of every output of a model.

  The same data-flow pass as `summarize` (per traced tensor: r += (k - 1) *
  d * j, j *= s through every conv and pool; the largest field of the inputs
  of an add or concatenation), read at the model's outputs instead of at its
  layers. For a `Classifier` the result is `(logits_rf, {stage: rf})` like
  its `(logits, out)`, so `[1]['stage2']` is the field of a stage2 unit.

  Args:
    model: a registry name or a Flax module taking images [batch, H, W, C].
    input_shape: (H, W, C); defaults to the registry spec's input.
    train: trace the training forward pass.

  Returns:
    A pytree shaped like the model's output whose leaves are
    `((rf_h, rf_w), (jump_h, jump_w))` in input pixels, or None for outputs
    that do not depend on the image.
  """
  if isinstance(model, str):
    input_shape = tuple(input_shape or registry.get_spec(model).input_shape)
    model = registry.create_model(model)
  if input_shape is None:
    raise ValueError('input_shape (H, W, C) is required for a module.')
  _, recorder, closed = trace.trace(model, tuple(input_shape), train)
  row_calls = {c.idx for c in recorder.calls
               if _row_type(c.module) or c.own_params}
  flow = trace.Flow(recorder.calls, row_calls, tuple(input_shape[:-1]))
  flow.run(closed.jaxpr, closed.jaxpr.invars[0])
  literal = jax.extend.core.Literal
  fields = [None if isinstance(v, literal) else flow.rf.get(v)
            for v in closed.jaxpr.outvars]
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  kwargs = {'train': train} if trace.accepts_train(model) else {}
  variables = jax.eval_shape(
      lambda x: model.init({'params': jax.random.key(0),
                            'dropout': jax.random.key(1)}, x, **kwargs), x)
  shapes = jax.eval_shape(
      lambda v, x: _apply(model, v, x, train, kwargs), variables, x)
  treedef = jax.tree_util.tree_structure(shapes)
  return jax.tree_util.tree_unflatten(
      treedef, [_plain_rf(f) for f in fields])


def _apply(module: nn.Module, variables, x, train: bool, kwargs) -> Any:
  """The module's output; in training mode with its collections mutable."""
  if not train:
    return module.apply(variables, x, **kwargs)
  mutable = [c for c in variables if c != 'params']
  out = module.apply(variables, x, rngs={'dropout': jax.random.key(1)},
                     mutable=mutable or False, **kwargs)
  return out[0] if mutable else out


def _plain_rf(f):
  if f is None:
    return None
  return tuple(int(v) for v in f[0]), tuple(int(v) for v in f[1])


def train_step_memory(model: str | nn.Module,
                      input_shape: Sequence[int] | None = None,
                      num_classes: int | None = None, batch_size: int = 1,
                      dtype: Any = 'float32', **overrides) -> dict[str, int]:
  """XLA's memory of a compiled training step (loss value and gradients).

  Compiles (does not run) `jax.jit(jax.value_and_grad(loss))` of the
  training forward pass (batch statistics, dropout) with a softmax
  cross-entropy at `batch_size`, on the default backend, and reads its
  `memory_analysis()`. The optimizer update is not included (it adds about
  one to three parameter-sized buffers, which the parameter bytes show).

  Returns:
    {'batch_size', 'argument_bytes', 'output_bytes', 'temp_bytes',
    'generated_code_bytes', 'total_bytes'} where temp_bytes holds the
    activations kept for the backward pass and the gradients' scratch.
  """
  if isinstance(model, str):
    spec = registry.get_spec(model)
    input_shape = tuple(input_shape or spec.input_shape)
    registry.check_input_shape(model, input_shape)
    module = registry.create_model(model, num_classes=num_classes
                                   or spec.num_classes, dtype=dtype,
                                   **overrides)
  else:
    module = model
  x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)
  kwargs = {'train': True} if trace.accepts_train(module) else {}
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda x: module.init(rngs, x, **kwargs), x)
  params = variables['params']
  others = {k: v for k, v in variables.items() if k != 'params'}

  def loss(params, others, x):
    logits = _apply(module, {'params': params, **others}, x, bool(kwargs),
                    kwargs)
    if isinstance(logits, tuple):  # A Classifier's (logits, out).
      logits = logits[0]
    return -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[:, 0])

  step = jax.jit(jax.value_and_grad(loss))
  with forms.reference_convolutions():
    memory = step.lower(params, others, x).compile().memory_analysis()
  out = {'batch_size': int(batch_size)}
  for key in ('argument', 'output', 'temp', 'generated_code'):
    out[f'{key}_bytes'] = int(getattr(memory, f'{key}_size_in_bytes', 0))
  out['total_bytes'] = (out['argument_bytes'] + out['output_bytes']
                        + out['temp_bytes'])
  return out


def xla_cost_analysis(model: str | nn.Module,
                      input_shape: Sequence[int] | None = None,
                      num_classes: int | None = None,
                      dtype: Any = 'float32') -> dict[str, float]:
  """XLA's cost analysis of the compiled evaluation forward pass, batch 1.

  Compiles (for the default backend) but does not run the model. Keys include
  'flops', 'bytes accessed' and 'transcendentals'.
  """
  if isinstance(model, str):
    spec = registry.get_spec(model)
    input_shape = tuple(input_shape or spec.input_shape)
    registry.check_input_shape(model, input_shape)
    module = registry.create_model(model, num_classes=num_classes,
                                   dtype=dtype)
  else:
    module = model
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  kwargs = {'train': False} if trace.accepts_train(module) else {}
  variables = jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, **kwargs), x)
  apply = jax.jit(lambda v, x: module.apply(v, x, **kwargs))
  with forms.reference_convolutions():  # the network, not its CPU forms.
    cost = apply.lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per device.
    cost = cost[0]
  return {k: float(v) for k, v in cost.items()}


def xla_flops(model: str | nn.Module,
              input_shape: Sequence[int] | None = None,
              num_classes: int | None = None, dtype: Any = 'float32') -> float:
  """XLA's flop count of one evaluation forward pass (batch 1).

  On CPU, XLA counts 2 flops per multiply-add of a conv/dot but only for conv
  taps that read real (not zero-padded) input, i.e. 2 * `macs_nonpad`, plus
  one flop per element for bias additions, batch norm, activations and
  residual additions, (window - 1) per output of a max/avg pool, and folds
  explicit `jnp.pad` into the next conv's padding. Compare it with
  `Summary.totals['flops']` within a tolerance, not exactly.
  """
  return xla_cost_analysis(model, input_shape, num_classes, dtype)['flops']
