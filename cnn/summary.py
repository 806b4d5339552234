"""Size accounting: how big is a model and where does its cost go?

`summarize(name_or_module, input_shape)` traces one forward pass abstractly
(`jax.make_jaxpr`, no real compute) while `flax.linen.intercept_methods` sees
every module call (`cnn/summary_trace.py`), and returns a `Summary`: one row
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

import argparse
import dataclasses
import fnmatch
import json
import math
import re
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn import layers, summary_trace
from cnn.models import registry

_NORMS = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)



@dataclasses.dataclass
class LayerRow:
  """Size of one layer call (shapes exclude the batch axis).

  Attributes:
    name: module path, e.g. 'backbone/stage1_block1/conv1' ('/matmul' rows:
      matmuls traced outside any layer, named after the enclosing module).
    type: 'Conv', 'Dense', 'Pool', 'GlobalAvgPool', 'Flatten', 'BatchNorm',
      'Attention', 'matmul', another norm's class name, or the class name of a
      module that only holds parameters; 'unused' for parameters of modules
      not called in this mode (GoogLeNet's auxiliary heads in evaluation).
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

  def table(self) -> str:
    """A readable per-layer table with totals and per-group subtotals."""
    return _format_table(self)

  def __str__(self) -> str:
    return self.table()


CONVENTIONS = {
    'units': 'output units H*W*C per image (conv, dense, pool, matmul layers)',
    'params': 'trainable parameters with biases (BN: scale + bias)',
    'connections': 'multiply-adds without bias (conv, dense, matmul) + '
                   'pooling reads (units_out * window)',
    'macs': 'multiply-accumulates of conv, dense and matmul layers',
    'flops': '2 * macs + pooling reads',
    'activation_bytes': 'units * bytes of the output dtype, forward only',
    'rf': 'receptive field of an output unit in input pixels (h, w)',
}


# ----------------------------------------------------------------------------
# Rows.


def _row_type(m: nn.Module) -> str | None:
  """Row type of a module with a known cost formula, else None."""
  for cls, label in ((nn.Conv, 'Conv'), (nn.Dense, 'Dense'),
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


def _make_row(call: summary_trace.Call, flow: summary_trace.Flow,
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
    row.strides = summary_trace.tup(m.strides, n)
    row.dilation = summary_trace.tup(m.kernel_dilation, n)
    row.padding = _padding(m.padding)
    row.groups = m.feature_group_count
    formula = out_units * int(np.prod(kshape[:-1]))
    _check_formula(row, formula)
  elif isinstance(m, nn.Dense):
    formula = out_units * call.own_params['kernel'][0]
    _check_formula(row, formula)
  elif isinstance(m, layers.Pool):
    row.kernel = tuple(m.window)
    row.strides = tuple(m.strides) if m.strides else row.kernel
    row.padding = _padding(m.padding)
    row.pool = m.kind
    row.connections = out_units * int(np.prod(row.kernel))
  elif isinstance(m, layers.GlobalAvgPool):
    row.kernel = tuple(call.in_shape[1:3])
    row.pool = 'avg'
    row.connections = int(np.prod(call.in_shape[1:]))
  if row.macs or kind in ('Conv', 'Dense', 'Pool', 'GlobalAvgPool'):
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
  variables, recorder, closed = summary_trace.trace(module, input_shape,
                                                    train)
  calls = recorder.calls

  seen: set[tuple[str, ...]] = set()
  row_calls, first_use = set(), {}
  for call in calls:
    if _row_type(call.module) or call.own_params:
      row_calls.add(call.idx)
      first_use[call.idx] = call.path not in seen
      seen.add(call.path)
  flow = summary_trace.Flow(calls, row_calls, tuple(input_shape[:-1]))
  flow.run(closed.jaxpr, closed.jaxpr.invars[0])

  keyed = []
  for i in sorted(row_calls):
    call = calls[i]
    if _row_type(call.module) is None and i not in flow.macs:
      # A module that only holds parameters used by plain jnp code (ViT's
      # class token and position embedding): one row per parameter, so each
      # lands in its own group (`stem_cls_token` -> stem).
      if first_use[i]:
        for key, shape in call.own_params.items():
          size = int(np.prod(shape))
          keyed.append(((call.start, 0), LayerRow(
              name='/'.join(call.path + (key,)), type='param',
              output_shape=tuple(shape), params=size,
              params_without_bias=0 if key == 'bias' else size)))
      continue
    keyed.append(((call.end, 0), _make_row(call, flow, first_use[i])))
  for owner, (macs, nonpad, units) in flow.macs.items():
    if owner in row_calls:
      continue
    # Matmuls outside any layer (einsum attention, jnp.dot in a block).
    call = calls[owner] if owner is not None else None
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
      row.rf, row.jump = summary_trace.global_rf(flow.rf_in[owner],
                                                 flow.image_hw)
    keyed.append(((call.end if call else math.inf, 1), row))
  rows = [r for _, r in sorted(keyed, key=lambda kr: kr[0])]

  # Cross-check against Flax's parameter tree.
  tree = _param_leaves(variables.get('params', {}))
  covered = {}
  for call in calls:
    if call.idx in row_calls and first_use[call.idx]:
      for key, shape in call.own_params.items():
        covered[call.path + (key,)] = int(np.prod(shape))
  called = recorder.paths
  unused: dict[tuple[str, ...], list[int]] = {}
  for path, size in tree.items():
    if path in covered:
      continue
    owner = path[:-1]
    if owner in called:
      raise RuntimeError(
          f'Parameter {"/".join(path)} ({size:,}) belongs to a layer the '
          'summary did not count.')
    # A module never called in this mode (e.g. auxiliary heads in eval):
    # report it under its outermost uncalled module.
    top = next(owner[:i] for i in range(1, len(owner) + 1)
               if owner[:i] not in called)
    acc = unused.setdefault(top, [0, 0])
    acc[0] += size
    acc[1] += 0 if path[-1] == 'bias' else size
  for path, (size, no_bias) in unused.items():
    rows.append(LayerRow(name='/'.join(path), type='unused', params=size,
                         params_without_bias=no_bias))
  if set(covered) - set(tree):
    raise RuntimeError(f'Counted parameters missing from the tree: '
                       f'{sorted(set(covered) - set(tree))}')
  totals = _add_totals(rows)
  if totals['params'] != sum(tree.values()):
    raise RuntimeError(
        f'Rows count {totals["params"]:,} parameters, the Flax tree has '
        f'{sum(tree.values()):,}.')
  totals['param_bytes'] = int(sum(
      leaf.size * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(variables.get('params', {}))))
  totals['macs_conv'] = int(sum(r.macs for r in rows if r.type == 'Conv'))
  totals['macs_dense'] = int(sum(
      r.macs for r in rows if r.type in ('Dense', 'DenseGeneral')))
  totals['macs_other'] = totals['macs'] - totals['macs_conv'] - totals[
      'macs_dense']
  totals['layers'] = sum(1 for r in rows if r.type != 'unused')
  dtype = getattr(module, 'dtype', None) if not isinstance(model, str) \
      else dtype
  return Summary(model=name, input_shape=tuple(input_shape),
                 num_classes=num_classes,
                 dtype=str(jnp.dtype(layers.as_dtype(dtype or 'float32'))),
                 train=train,
                 rows=rows, totals=totals, warnings=sorted(set(flow.warnings)))


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
  kwargs = {'train': False} if summary_trace.accepts_train(module) else {}
  variables = jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, **kwargs), x)
  apply = jax.jit(lambda v, x: module.apply(v, x, **kwargs))
  with layers.reference_convolutions():  # the network, not its CPU forms.
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


# ----------------------------------------------------------------------------
# Printing.


def _si(n: float) -> str:
  for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
    if abs(n) >= div:
      return f'{n / div:.2f}{suffix}'
  return f'{n:g}'


def _bytes(n: float) -> str:
  for div, suffix in ((2**30, 'GiB'), (2**20, 'MiB'), (2**10, 'KiB')):
    if n >= div:
      return f'{n / div:.1f} {suffix}'
  return f'{int(n)} B'


def _describe(r: LayerRow) -> str:
  dims = lambda t: 'x'.join(str(v) for v in t)
  if r.type == 'Conv':
    text = f'conv {dims(r.kernel)}/{dims(sorted(set(r.strides)))}'
    if r.groups and r.groups > 1:
      text += f' g{r.groups}'
    if r.dilation and set(r.dilation) != {1}:
      text += f' d{dims(r.dilation)}'
    return text
  if r.type == 'Pool':
    return f'{r.pool}pool {dims(r.kernel)}/{dims(sorted(set(r.strides)))}'
  if r.type == 'GlobalAvgPool':
    return 'global avgpool'
  return {'Dense': 'dense', 'BatchNorm': 'batchnorm', 'Flatten': 'flatten',
          'Attention': 'attention', 'matmul': 'matmul'}.get(r.type, r.type)


def _rf_text(v: tuple[int, ...] | None) -> str:
  if not v:
    return '-'
  return str(v[0]) if len(set(v)) == 1 else 'x'.join(map(str, v))


def _format_table(s: Summary) -> str:
  head = ('layer', 'type', 'output', 'units', 'weights', 'connections',
          'memory', 'FLOPs', 'RF', 'jump')
  lines = []
  for r in s.rows:
    name = r.name[len('backbone/'):] if r.name.startswith('backbone/') else \
        r.name
    lines.append((
        name, _describe(r), 'x'.join(map(str, r.output_shape)) or '-',
        f'{r.units:,}' if r.units else '-',
        f'{r.params:,}' if r.params else '-',
        f'{r.connections:,}' if r.connections else '-',
        _bytes(r.activation_bytes) if r.activation_bytes else '-',
        _si(r.flops) if r.flops else '-', _rf_text(r.rf), _rf_text(r.jump)))
  t = s.totals
  total = ('total', '', '', f'{t["units"]:,}', f'{t["params"]:,}',
           f'{t["connections"]:,}', _bytes(t['activation_bytes']),
           _si(t['flops']), '', '')
  widths = [max(len(row[i]) for row in [head, total, *lines])
            for i in range(len(head))]

  def fmt(row):
    return '  '.join(c.ljust(w) if i < 3 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))
                     ).rstrip()

  rule = '-' * len(fmt(head))
  h, w, c = s.input_shape
  out = [f'{s.model}: input {h}x{w}x{c}, {s.num_classes} classes, {s.dtype}, '
         f'{"train" if s.train else "eval"} mode, per image',
         rule, fmt(head), rule, *map(fmt, lines), rule, fmt(total), rule]
  out.append(
      f'params {t["params"]:,} ({t["params_without_bias"]:,} without biases, '
      f'{_bytes(t["param_bytes"])}); multiply-adds {t["macs"]:,} '
      f'({_si(t["macs"])}: conv {_si(t["macs_conv"])}, dense '
      f'{_si(t["macs_dense"])}, other {_si(t["macs_other"])}); '
      f'FLOPs = 2 x MACs + pooling = {_si(t["flops"])}; activations '
      f'{t["units"]:,} units = {_bytes(t["activation_bytes"])}.')
  groups = s.groups()
  if len(groups) > 1:
    width = max(len(g) for g in groups)
    flops = max(t['flops'], 1)
    out.append('by group:')
    for g, v in groups.items():
      out.append(
          f'  {g.ljust(width)}  {_si(v["params"]):>8s} params  '
          f'{_si(v["flops"]):>8s} FLOPs ({100 * v["flops"] / flops:5.1f}%)  '
          f'{_bytes(v["activation_bytes"]):>10s} activations')
  out.append('connections = multiply-adds without bias (+ pooling reads); '
             'weights include biases; memory = output units x dtype bytes; '
             'RF/jump in input pixels.')
  out.extend(f'warning: {w}' for w in s.warnings)
  return '\n'.join(out)


def print_summary(model_name: str, input_shape: Sequence[int] | None = None,
                  num_classes: int | None = None, dtype: Any = 'float32',
                  as_json: bool = False, file=None, **overrides) -> Summary:
  """Prints the table (or JSON) of `summarize(...)` and returns the Summary."""
  s = summarize(model_name, input_shape, num_classes, dtype, **overrides)
  print(s.to_json() if as_json else s.table(), file=file or sys.stdout)
  return s


def print_summary_for_config(config, as_json: bool = False,
                             file=None) -> Summary:
  """`main.py --mode=summary`: the model of a training config, as trained.

  The model is `config.model_name` with the backbone options `config.model`
  and compute dtype `config.dtype`. Input shape and classes are those of
  `config.input.dataset` where it is a local data set (answered without
  reading any file); for other (tfds) names, whose metadata would need the
  data, the model's natural input and classes. `config.input.image_size` > 0
  resizes the input as the trainer does.
  """
  name = config.model_name
  spec = registry.get_spec(name)
  shape, classes = tuple(spec.input_shape), spec.num_classes
  size = int(config.input.get('image_size', 0) or 0)
  try:
    from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
    if config.input.dataset in datasets.local_names():
      info = datasets.get_dataset_info(config.input.dataset)
      shape, classes = tuple(info.image_shape), info.num_classes
  except ImportError:  # The model library used without the data pipeline.
    pass
  if size > 0:
    shape = (size, size, shape[2])
  overrides = config.model.to_dict() if 'model' in config else {}
  s = summarize(name, shape, classes, config.get('dtype', 'float32'),
                **overrides)
  print(s.to_json() if as_json else s.table(), file=file or sys.stdout)
  return s


def list_descriptions() -> str:
  """One line per registered model: name, input, classes, description."""
  lines = []
  for name in registry.list_models():
    spec = registry.get_spec(name)
    shape = 'x'.join(map(str, spec.input_shape))
    lines.append(f'{name:20s} {shape:>11s} {spec.num_classes:>5d}  '
                 f'{spec.description}')
  return '\n'.join(lines)


def _parse_shape(text: str) -> tuple[int, int, int]:
  parts = [int(p) for p in re.split(r'[,x ]+', text.strip()) if p]
  if len(parts) != 3:
    raise argparse.ArgumentTypeError(
        f'--input_shape must be H,W,C (e.g. 224,224,3), got {text!r}.')
  return tuple(parts)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m cnn.summary',
      description='Per-layer units, weights, connections, memory, FLOPs and '
                  'receptive fields of a registered model (no compute).')
  parser.add_argument('--model', help='registry name, e.g. lenet5, resnet50')
  parser.add_argument('--input_shape', type=_parse_shape,
                      help='H,W,C (default: the model\'s natural input)')
  parser.add_argument('--num_classes', type=int, default=None)
  parser.add_argument('--dtype', default='float32',
                      help='compute dtype: float32 or bfloat16')
  parser.add_argument('--train', action='store_true',
                      help='count the training forward pass (aux heads)')
  parser.add_argument('--json', action='store_true', help='print JSON')
  parser.add_argument('--list', action='store_true',
                      help='list registered models and exit')
  args = parser.parse_args(argv)
  if args.list:
    print(list_descriptions())
    return 0
  if not args.model:
    parser.error('--model is required (or --list).')
  try:
    s = summarize(args.model, args.input_shape, args.num_classes, args.dtype,
                  train=args.train)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(s.to_json() if args.json else s.table())
  return 0


if __name__ == '__main__':
  sys.exit(main())
