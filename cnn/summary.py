"""Size accounting: how big is a model and where does its cost go?

`summarize(name_or_module, input_shape)` traces one forward pass abstractly
(`jax.make_jaxpr`, no real compute) while `flax.linen.intercept_methods` sees
every module call, and returns a `Summary`: one row per layer with its output
shape and the lecture's three measures of size, plus totals.

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
import inspect
import json
import math
import re
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from cnn import layers
from cnn.models import registry

_MARK = '__cnnsum'
_MARK_RE = re.compile(_MARK + r'(\d+)')
# Primitives whose sub-jaxpr runs exactly once per call (inlined by the
# data-flow pass); other higher-order primitives (scan, cond, while) are
# treated as opaque elementwise ops and reported in `Summary.warnings`.
_INLINE = frozenset({'jit', 'pjit', 'closed_call', 'core_call', 'remat',
                     'remat2', 'checkpoint', 'custom_jvp_call',
                     'custom_vjp_call', 'custom_vjp_call_jaxpr'})
_NORMS = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

RF = tuple[tuple[int, ...], tuple[int, ...]]  # (receptive field, jump)


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
# Tracing.


@dataclasses.dataclass
class _Call:
  """One module `__call__` seen by the interceptor."""

  idx: int
  module: nn.Module
  path: tuple[str, ...]
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...] = ()
  out_dtype: Any = None
  own_params: dict[str, tuple[int, ...]] = dataclasses.field(
      default_factory=dict)
  start: int = 0  # Event counters (calls starting or ending), for row order.
  end: int = 0


def _shape_dtype(x) -> tuple[tuple[int, ...], Any]:
  leaves = jax.tree.leaves(x)
  if not leaves or not hasattr(leaves[0], 'shape'):
    return (), None
  return tuple(leaves[0].shape), leaves[0].dtype


class _Recorder:
  """Intercepts module calls: records them and marks their traced ops.

  Each call runs inside `jax.named_scope('__cnnsum<idx>')`, so every jaxpr
  equation carries the stack of module calls it was traced in.
  """

  def __init__(self):
    self.calls: list[_Call] = []
    self.paths: set[tuple[str, ...]] = set()  # Modules entered by any method.
    self._events = 0
    self._active: list[nn.Module] = []

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    self.paths.add(tuple(module.path))
    # A subclass calling super().__call__ (layers.Conv) is one layer call.
    if context.method_name != '__call__' or (
        self._active and self._active[-1] is module):
      return next_fun(*args, **kwargs)
    shape, _ = _shape_dtype(args[0] if args else next(iter(kwargs.values()),
                                                      None))
    call = _Call(len(self.calls), module, tuple(module.path), shape,
                 start=self._events)
    self._events += 1
    self.calls.append(call)
    self._active.append(module)
    try:
      with jax.named_scope(f'{_MARK}{call.idx}'):
        out = next_fun(*args, **kwargs)
    finally:
      self._active.pop()
    call.out_shape, call.out_dtype = _shape_dtype(out)
    params = module.variables.get('params', {}) if module.scope else {}
    for key, value in params.items():
      if not isinstance(value, dict) and not hasattr(value, 'items'):
        leaves = jax.tree.leaves(value)
        call.own_params[key] = tuple(leaves[0].shape) if leaves else ()
    call.end = self._events
    self._events += 1
    return out


def _accepts_train(module: nn.Module) -> bool:
  try:
    return 'train' in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


def _trace(module: nn.Module, input_shape: Sequence[int], train: bool):
  """Returns (variables shape tree, recorder, closed jaxpr of the forward)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  kwargs = {'train': train} if _accepts_train(module) else {}
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda x: module.init(rngs, x, **kwargs), x)
  recorder = _Recorder()

  def forward(x, variables):
    with nn.intercept_methods(recorder):
      if train:
        return module.apply(variables, x, rngs={'dropout': jax.random.key(1)},
                            mutable=[c for c in variables if c != 'params'],
                            **kwargs)
      return module.apply(variables, x, **kwargs)

  # Count convolutions as convolutions, whatever faster form the CPU uses.
  with layers.reference_convolutions():
    closed = jax.make_jaxpr(forward)(x, variables)
  return variables, recorder, closed


# ----------------------------------------------------------------------------
# Receptive fields and matmul accounting: a data-flow pass over the jaxpr.


def _tup(v, n: int, default: int = 1) -> tuple[int, ...]:
  if v is None:
    return (default,) * n
  if isinstance(v, int):
    return (v,) * n
  v = tuple(v)
  return v if len(v) == n else (v + (default,) * n)[:n]


def _grow(rf: RF, kernel, strides, dilation=None) -> RF:
  r, j = rf
  n = len(r)
  kernel, strides = _tup(kernel, n), _tup(strides, n)
  dilation = _tup(dilation, n)
  r = tuple(ri + (k - 1) * d * ji
            for ri, ji, k, d in zip(r, j, kernel, dilation))
  return r, tuple(ji * s for ji, s in zip(j, strides))


def _max_rf(values: Sequence[RF]) -> RF:
  # The largest receptive field among the inputs of an op. Jumps agree for
  # inputs on the same grid; a broadcast 1x1 map (a squeeze-excite gate, whose
  # "jump" is a whole map) must not coarsen the grid, hence the minimum.
  return (tuple(max(v) for v in zip(*(r for r, _ in values))),
          tuple(min(v) for v in zip(*(j for _, j in values))))


def _global(rf: RF, image_hw: tuple[int, ...]) -> RF:
  return tuple(max(r, s) for r, s in zip(rf[0], image_hw)), rf[1]


def _conv_window(eqn) -> tuple[tuple[int, ...], tuple[int, ...],
                               tuple[int, ...]]:
  """(kernel, strides, rhs dilation) of a conv_general_dilated equation."""
  dn = eqn.params['dimension_numbers']
  rhs = eqn.invars[1].aval.shape
  kernel = tuple(rhs[d] for d in dn.rhs_spec[2:])
  return kernel, tuple(eqn.params['window_strides']), tuple(
      eqn.params['rhs_dilation'])


def _matmul_macs(eqn) -> tuple[int, int]:
  """(macs, macs_nonpad) of a dot_general or conv_general_dilated equation."""
  out = int(np.prod(eqn.outvars[0].aval.shape))
  if eqn.primitive.name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    macs = out * int(np.prod([lhs[d] for d in lhs_contract]))
    return macs, macs
  dn = eqn.params['dimension_numbers']
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  out_shape = eqn.outvars[0].aval.shape
  per_output = int(np.prod(rhs)) // rhs[dn.rhs_spec[0]]
  macs = out * per_output
  # Taps that land on real input pixels (XLA's cost analysis skips the rest).
  valid = 1
  for i, (ld, rd, s, (lo, _)) in enumerate(zip(
      eqn.params['lhs_dilation'], eqn.params['rhs_dilation'],
      eqn.params['window_strides'], eqn.params['padding'])):
    size = lhs[dn.lhs_spec[2 + i]]
    k = rhs[dn.rhs_spec[2 + i]]
    span = (size - 1) * ld
    valid *= sum(1 for o in range(out_shape[dn.out_spec[2 + i]])
                 for t in range(k)
                 if 0 <= o * s - lo + t * rd <= span
                 and (o * s - lo + t * rd) % ld == 0)
  batch = lhs[dn.lhs_spec[0]]
  cout = rhs[dn.rhs_spec[0]]
  cin_per_group = rhs[dn.rhs_spec[1]]
  return macs, batch * cout * cin_per_group * valid


class _Flow:
  """Receptive fields per traced value and matmul macs per module call."""

  def __init__(self, calls: list[_Call], row_calls: set[int],
               image_hw: tuple[int, ...]):
    self.calls = calls
    self.row_calls = row_calls
    self.image_hw = image_hw
    self.rf: dict[Any, RF | None] = {}
    self.producer: dict[Any, frozenset[int]] = {}
    self.rf_in: dict[int, RF] = {}
    self.macs: dict[int | None, list[int]] = {}  # call -> [macs, nonpad, units]
    self.matmul_shapes: dict[int | None, tuple] = {}
    self.warnings: list[str] = []

  def transform(self, idx: int, rf: RF) -> RF:
    """Receptive field of module call `idx`'s outputs given its input's."""
    call = self.calls[idx]
    m = call.module
    if isinstance(m, nn.Conv):
      kernel = call.own_params.get('kernel', (1, 1, 1, 1))[:-2]
      return _grow(rf, kernel, m.strides, m.kernel_dilation)
    if isinstance(m, layers.Pool):
      window = tuple(m.window)
      return _grow(rf, window, tuple(m.strides) if m.strides else window)
    if isinstance(m, (layers.GlobalAvgPool, layers.Flatten)):
      if len(call.in_shape) == 4:
        hw = call.in_shape[1:3]
        return _grow(rf, hw, hw)
      return rf
    if isinstance(m, nn.MultiHeadDotProductAttention):
      return _global(rf, self.image_hw)
    return rf

  @staticmethod
  def is_transform(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv, layers.Pool, layers.GlobalAvgPool,
                          layers.Flatten, nn.MultiHeadDotProductAttention))

  def run(self, jaxpr, image_var) -> None:
    ones = (1,) * len(self.image_hw)
    self.rf[image_var] = (ones, ones)
    self._walk(jaxpr, ())

  def _walk(self, jaxpr, prefix: tuple[int, ...]) -> None:
    literal = jex.core.Literal
    for eqn in jaxpr.eqns:
      stack = prefix + tuple(
          int(m) for m in _MARK_RE.findall(str(eqn.source_info.name_stack)))
      name = eqn.primitive.name
      subs = list(jex.core.jaxprs_in_params(eqn.params))
      if subs:
        inner = subs[0]
        if (name in _INLINE and len(subs) == 1
            and len(inner.invars) == len(eqn.invars)
            and len(inner.outvars) == len(eqn.outvars)):
          for vo, vi in zip(eqn.invars, inner.invars):
            lit = isinstance(vo, literal)
            self.rf[vi] = None if lit else self.rf.get(vo)
            self.producer[vi] = frozenset() if lit else self.producer.get(
                vo, frozenset())
          for vc in inner.constvars:
            self.rf[vc] = None
          self._walk(inner, stack)
          for vo, vi in zip(eqn.outvars, inner.outvars):
            self.rf[vo] = (None if isinstance(vi, literal)
                           else self.rf.get(vi))
            self.producer[vo] = frozenset(stack)
          continue
        if any(e.primitive.name in ('dot_general', 'conv_general_dilated')
               for j in subs for e in j.eqns):
          self.warnings.append(
              f'Matmuls inside a {name!r} primitive are not counted.')
      ins = [(v, self.rf.get(v)) for v in eqn.invars
             if not isinstance(v, literal)]
      image_ins = [(v, r) for v, r in ins if r is not None]
      for m in set(stack):
        ext = [r for v, r in image_ins if m not in self.producer.get(v, ())]
        if ext:
          self.rf_in[m] = _max_rf(ext + ([self.rf_in[m]] if m in self.rf_in
                                         else []))
      if name in ('dot_general', 'conv_general_dilated'):
        owner = next((m for m in reversed(stack) if m in self.row_calls),
                     None)
        if owner is None:
          owner = stack[-1] if stack else None
          self.matmul_shapes.setdefault(
              owner, (eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape))
          self.matmul_shapes[owner] = (self.matmul_shapes[owner][0],
                                       eqn.outvars[0].aval.shape)
        acc = self.macs.setdefault(owner, [0, 0, 0])
        macs, nonpad = _matmul_macs(eqn)
        acc[0] += macs
        acc[1] += nonpad
        acc[2] += int(np.prod(eqn.outvars[0].aval.shape[1:]))
      out_rf = None
      if image_ins:
        owner = next((m for m in reversed(stack)
                      if self.is_transform(self.calls[m].module)), None)
        if owner is not None and owner in self.rf_in:
          out_rf = self.transform(owner, self.rf_in[owner])
        elif name == 'conv_general_dilated' and self.rf.get(eqn.invars[0]):
          kernel, strides, dilation = _conv_window(eqn)
          out_rf = _grow(self.rf[eqn.invars[0]], kernel, strides, dilation)
        elif name == 'dot_general' and len(image_ins) > 1:
          out_rf = _global(_max_rf([r for _, r in image_ins]), self.image_hw)
        else:
          out_rf = _max_rf([r for _, r in image_ins])
      for v in eqn.outvars:
        self.rf[v] = out_rf
        self.producer[v] = frozenset(stack)


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


def _make_row(call: _Call, flow: _Flow, first_use: bool) -> LayerRow:
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
    row.strides = _tup(m.strides, n)
    row.dilation = _tup(m.kernel_dilation, n)
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
  variables, recorder, closed = _trace(module, input_shape, train)
  calls = recorder.calls

  seen: set[tuple[str, ...]] = set()
  row_calls, first_use = set(), {}
  for call in calls:
    if _row_type(call.module) or call.own_params:
      row_calls.add(call.idx)
      first_use[call.idx] = call.path not in seen
      seen.add(call.path)
  flow = _Flow(calls, row_calls, tuple(input_shape[:-1]))
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
      row.rf, row.jump = _global(flow.rf_in[owner], flow.image_hw)
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
  kwargs = {'train': False} if _accepts_train(module) else {}
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
                     for i, (c, w) in enumerate(zip(row, widths))).rstrip()

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
