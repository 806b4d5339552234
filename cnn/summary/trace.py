"""The abstract trace behind `cnn.summary`: module calls and data flow.

`trace` runs one forward pass through `jax.make_jaxpr` (no real compute)
while `Recorder` intercepts every module call and marks the operations traced
inside it; `Flow` then walks the jaxpr once to follow the receptive field and
jump of every tensor (through residual and inception branches) and to count
the multiply-adds of the matmul/convolution primitives inside each call.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from cnn import layers
from cnn.kernels import forms

_MARK = '__cnnsum'
_MARK_RE = re.compile(_MARK + r'(\d+)')
# Primitives whose sub-jaxpr runs exactly once per call (inlined by the
# data-flow pass); other higher-order primitives (scan, cond, while) are
# treated as opaque elementwise ops and reported in `Summary.warnings`.
_INLINE = frozenset({'jit', 'pjit', 'closed_call', 'core_call', 'remat',
                     'remat2', 'checkpoint', 'custom_jvp_call',
                     'custom_vjp_call', 'custom_vjp_call_jaxpr'})

RF = tuple[tuple[int, ...], tuple[int, ...]]  # (receptive field, jump)


@dataclasses.dataclass
class Call:
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


def shape_dtype(x) -> tuple[tuple[int, ...], Any]:
  leaves = jax.tree.leaves(x)
  if not leaves or not hasattr(leaves[0], 'shape'):
    return (), None
  return tuple(leaves[0].shape), leaves[0].dtype


class Recorder:
  """Intercepts module calls: records them and marks their traced ops.

  Each call runs inside `jax.named_scope('__cnnsum<idx>')`, so every jaxpr
  equation carries the stack of module calls it was traced in.
  """

  def __init__(self):
    self.calls: list[Call] = []
    self.paths: set[tuple[str, ...]] = set()  # Modules entered by any method.
    self._events = 0
    self._active: list[nn.Module] = []

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    self.paths.add(tuple(module.path))
    # A subclass calling super().__call__ (forms.Conv) is one layer call.
    if context.method_name != '__call__' or (
        self._active and self._active[-1] is module):
      return next_fun(*args, **kwargs)
    shape, _ = shape_dtype(args[0] if args else next(iter(kwargs.values()),
                                                      None))
    call = Call(len(self.calls), module, tuple(module.path), shape,
                 start=self._events)
    self._events += 1
    self.calls.append(call)
    self._active.append(module)
    try:
      with jax.named_scope(f'{_MARK}{call.idx}'):
        out = next_fun(*args, **kwargs)
    finally:
      self._active.pop()
    call.out_shape, call.out_dtype = shape_dtype(out)
    params = module.variables.get('params', {}) if module.scope else {}
    for key, value in params.items():
      if not isinstance(value, dict) and not hasattr(value, 'items'):
        leaves = jax.tree.leaves(value)
        call.own_params[key] = tuple(leaves[0].shape) if leaves else ()
    call.end = self._events
    self._events += 1
    return out


def accepts_train(module: nn.Module) -> bool:
  try:
    return 'train' in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


def trace(module: nn.Module, input_shape: Sequence[int], train: bool):
  """Returns (variables shape tree, recorder, closed jaxpr of the forward)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  kwargs = {'train': train} if accepts_train(module) else {}
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda x: module.init(rngs, x, **kwargs), x)
  recorder = Recorder()

  def forward(x, variables):
    with nn.intercept_methods(recorder):
      if train:
        return module.apply(variables, x, rngs={'dropout': jax.random.key(1)},
                            mutable=[c for c in variables if c != 'params'],
                            **kwargs)
      return module.apply(variables, x, **kwargs)

  # Count convolutions as convolutions, whatever faster form the CPU uses.
  with forms.reference_convolutions():
    closed = jax.make_jaxpr(forward)(x, variables)
  return variables, recorder, closed


# ----------------------------------------------------------------------------
# Receptive fields and matmul accounting: a data-flow pass over the jaxpr.


def tup(v, n: int, default: int = 1) -> tuple[int, ...]:
  if v is None:
    return (default,) * n
  if isinstance(v, int):
    return (v,) * n
  v = tuple(v)
  return v if len(v) == n else (v + (default,) * n)[:n]


def grow(rf: RF, kernel, strides, dilation=None) -> RF:
  r, j = rf
  n = len(r)
  kernel, strides = tup(kernel, n), tup(strides, n)
  dilation = tup(dilation, n)
  r = tuple(ri + (k - 1) * d * ji
            for ri, ji, k, d in zip(r, j, kernel, dilation, strict=True))
  return r, tuple(ji * s for ji, s in zip(j, strides, strict=True))


def max_rf(values: Sequence[RF]) -> RF:
  # The largest receptive field among the inputs of an op. Jumps agree for
  # inputs on the same grid; a broadcast 1x1 map (a squeeze-excite gate, whose
  # "jump" is a whole map) must not coarsen the grid, hence the minimum.
  return (tuple(max(v) for v in zip(*(r for r, _ in values), strict=True)),
          tuple(min(v) for v in zip(*(j for _, j in values), strict=True)))


def global_rf(rf: RF, image_hw: tuple[int, ...]) -> RF:
  return tuple(max(r, s) for r, s in zip(rf[0], image_hw, strict=True)), rf[1]


def conv_window(eqn) -> tuple[tuple[int, ...], tuple[int, ...],
                               tuple[int, ...]]:
  """(kernel, strides, rhs dilation) of a conv_general_dilated equation."""
  dn = eqn.params['dimension_numbers']
  rhs = eqn.invars[1].aval.shape
  kernel = tuple(rhs[d] for d in dn.rhs_spec[2:])
  return kernel, tuple(eqn.params['window_strides']), tuple(
      eqn.params['rhs_dilation'])


def matmul_macs(eqn) -> tuple[int, int]:
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
      eqn.params['window_strides'], eqn.params['padding'], strict=True)):
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


class Flow:
  """Receptive fields per traced value and matmul macs per module call."""

  def __init__(self, calls: list[Call], row_calls: set[int],
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
      return grow(rf, kernel, m.strides, m.kernel_dilation)
    if isinstance(m, layers.LocallyConnected):
      return grow(rf, tuple(m.kernel_size), tuple(m.strides))
    if isinstance(m, layers.Pool):
      window = tuple(m.window)
      strides = tuple(m.strides) if m.strides else window
      if m.kind == 'blur':  # the max at stride 1, then the blur's taps.
        rf = grow(rf, window, (1,) * len(window))
        return grow(rf, (m.blur_size,) * len(window), strides)
      return grow(rf, window, strides)
    if isinstance(m, (layers.GlobalAvgPool, layers.Flatten)):
      if len(call.in_shape) == 4:
        hw = call.in_shape[1:3]
        return grow(rf, hw, hw)
      return rf
    if isinstance(m, nn.MultiHeadDotProductAttention):
      return global_rf(rf, self.image_hw)
    return rf

  @staticmethod
  def is_transform(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv, layers.LocallyConnected, layers.Pool,
                          layers.GlobalAvgPool, layers.Flatten,
                          nn.MultiHeadDotProductAttention))

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
          for vo, vi in zip(eqn.invars, inner.invars, strict=True):
            lit = isinstance(vo, literal)
            self.rf[vi] = None if lit else self.rf.get(vo)
            self.producer[vi] = frozenset() if lit else self.producer.get(
                vo, frozenset())
          for vc in inner.constvars:
            self.rf[vc] = None
          self._walk(inner, stack)
          for vo, vi in zip(eqn.outvars, inner.outvars, strict=True):
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
          self.rf_in[m] = max_rf(ext + ([self.rf_in[m]] if m in self.rf_in
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
        macs, nonpad = matmul_macs(eqn)
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
          kernel, strides, dilation = conv_window(eqn)
          out_rf = grow(self.rf[eqn.invars[0]], kernel, strides, dilation)
        elif (name == 'slice' and eqn.params.get('strides')
              and len(eqn.params['strides']) == len(self.image_hw) + 2
              and self.rf.get(eqn.invars[0])):
          # x[:, ::s, ::s] (option-A shortcuts): a 1x1 window with stride s.
          strides = eqn.params['strides'][1:-1]
          out_rf = grow(self.rf[eqn.invars[0]], (1,) * len(strides), strides)
        elif name == 'dot_general' and len(image_ins) > 1:
          out_rf = global_rf(max_rf([r for _, r in image_ins]), self.image_hw)
        else:
          out_rf = max_rf([r for _, r in image_ins])
      for v in eqn.outvars:
        self.rf[v] = out_rf
        self.producer[v] = frozenset(stack)
