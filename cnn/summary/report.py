"""The text of a `Summary`: the per-layer table and the model listing.

Formatting only: `cnn/summary/accounting.py` computes the numbers, and
`cnn/summary/cli.py` prints them.
"""

from __future__ import annotations

from cnn.models import registry
from cnn.summary import accounting


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


def _describe(r: accounting.LayerRow) -> str:
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


def format_table(s: accounting.Summary, input_source: str = '') -> str:
  """A readable per-layer table: one line per row, totals, subtotals per
  group. The header names the input shape, and `input_source` (where that
  shape came from: 'fashion_mnist', 'natural input', ...) beside it."""
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
  source = f' ({input_source})' if input_source else ''
  out = [f'{s.model}: input {h}x{w}x{c}{source}, {s.num_classes} classes, '
         f'{s.dtype}, {"train" if s.train else "eval"} mode, per image',
         rule, fmt(head), rule, *map(fmt, lines), rule, fmt(total), rule]
  out.append(
      f'params {t["params"]:,} ({t["params_without_bias"]:,} without biases, '
      f'{_bytes(t["param_bytes"])}); multiply-adds {t["macs"]:,} '
      f'({_si(t["macs"])}: conv {_si(t["macs_conv"])}, dense '
      f'{_si(t["macs_dense"])}, other {_si(t["macs_other"])}); '
      f'FLOPs = 2 x MACs + pooling = {_si(t["flops"])}; activations '
      f'{t["units"]:,} units = {_bytes(t["activation_bytes"])}.')
  out.append(
      f'training step: about 3 x forward = {_si(t["train_flops"])} FLOPs per '
      'image (forward + input gradients + weight gradients).')
  if s.train_memory:
    m = s.train_memory
    out.append(
        f'compiled train step (XLA memory_analysis, value_and_grad, batch '
        f'{m["batch_size"]}): temporaries {_bytes(m["temp_bytes"])}, '
        f'arguments {_bytes(m["argument_bytes"])}, outputs '
        f'{_bytes(m["output_bytes"])}; forward-only activation estimate '
        f'{_bytes(t["activation_bytes"] * m["batch_size"])}.')
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


def list_descriptions() -> str:
  """One line per registered model: name, input, classes, description."""
  lines = []
  for name in registry.list_models():
    spec = registry.get_spec(name)
    shape = 'x'.join(map(str, spec.input_shape))
    lines.append(f'{name:20s} {shape:>11s} {spec.num_classes:>5d}  '
                 f'{spec.description}')
  return '\n'.join(lines)
