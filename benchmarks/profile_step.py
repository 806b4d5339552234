"""Where a compiled train step spends its time on CPU, per XLA operation.

    python -m benchmarks.profile_step --model=lenet5
    python -m benchmarks.profile_step --model=resnet20 --plain --top=30

Runs the train step of `benchmarks.train_throughput` (optionally with the
proposed changes) under `jax.profiler` with XLA's per-operation trace events
(`--xla_cpu_enable_xprof_traceme`), then sums the time of each compiled HLO
operation (thunk) over `--steps` steps. Operations are grouped by kind, read
from the compiled HLO: 'conv' (a convolution, in a library fusion or not,
split into forward / input gradient / weight gradient), 'dot',
'transpose/copy', 'reduce', 'reduce-window', 'elementwise'. Wall time per step
is larger than the sum when operations wait on each other or on the host, and
smaller when independent operations run on both cores at once.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

# Must precede the first jax import: adds a trace event per HLO operation.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_cpu_enable_xprof_traceme=true')

import jax  # noqa: E402
from jax._src import profiler as jax_profiler  # noqa: E402

from benchmarks import train_throughput as tt  # noqa: E402
from cnn.training import host_memory  # noqa: E402

_KIND_PATTERNS = (('conv', r' convolution\('), ('dot', r' dot\('),
                  ('select-and-scatter', r'select-and-scatter\('),
                  ('reduce-window', r'reduce-window\('),
                  ('reduce', r' reduce\('),
                  ('transpose/copy', r'transpose\(|copy\('))


def hlo_tables(hlo: str):
  """(ops, bodies) of compiled HLO text.

  ops: name -> (opcode, called computation or None, shape, op_name metadata).
  bodies: computation name -> its text.
  """
  bodies, current = {}, None
  ops = {}
  for line in hlo.splitlines():
    head = re.match(r'^(?:ENTRY )?%(\S+) .*\{$', line)
    if head:
      current = head.group(1)
      bodies[current] = []
      continue
    if current:
      bodies[current].append(line)
    op = re.match(r'^\s+(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(', line)
    if op:
      called = re.search(r'calls=%([\w.\-]+)', line)
      meta = re.search(r'op_name="([^"]+)"', line)
      ops[op.group(1)] = (op.group(3), called.group(1) if called else None,
                          op.group(2), meta.group(1) if meta else '')
  return ops, {k: '\n'.join(v) for k, v in bodies.items()}


def op_kind(name: str, ops, bodies, batch_size: int) -> str:
  """Kind of a compiled operation; convolutions split by direction."""
  opcode, called, shape, meta = ops.get(name, ('?', None, '', ''))
  text = bodies.get(called, '') if called else f' {opcode}('
  for kind, pattern in _KIND_PATTERNS:
    if re.search(pattern, text):
      if kind == 'conv':
        dims = re.findall(r'\[([\d,]+)\]', shape)
        lead = int(dims[0].split(',')[0]) if dims else -1
        if lead != batch_size:
          return 'conv weight-grad'
        return 'conv input-grad' if 'transpose(' in meta else 'conv forward'
      return kind
  return 'elementwise' if called else opcode


def main(argv=None) -> None:
  # Before JAX first computes: CPU steps then reuse freed memory instead of
  # faulting it in again (cnn/training/host_memory.py).
  host_memory.keep_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='lenet5')
  parser.add_argument('--plain', action='store_true',
                      help='the naive network, without the models\' CPU '
                      'forms (jax_plain)')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--resnet_input', default='32x32x3')
  parser.add_argument('--optimizer', default='adamw')
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--top', type=int, default=20)
  parser.add_argument('--kind', default='',
                      help='list only operations of this kind (e.g. '
                      '"transpose/copy", "reduce")')
  parser.add_argument('--hlo_out', default='',
                      help='also write the compiled HLO text here')
  args = parser.parse_args(argv)
  shape = tt.input_shape(args.model, args.resnet_input)
  config = tt.make_config(args.model, args.optimizer, args.dtype)
  runner = tt.jax_runner('jax_plain' if args.plain else 'jax', config, shape,
                         args.batch_size, naive=args.plain)
  runner.run(3)
  hlo = runner.compiled_text()
  if args.hlo_out:
    with open(args.hlo_out, 'w') as f:
      f.write(hlo)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      runner.run(args.steps)
      wall = (time.perf_counter() - start) / args.steps
    path = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                     recursive=True)[0]
    data = jax_profiler.ProfileData.from_file(path)
  total = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'PjitFunction', '$')):
          total[event.name] += event.duration_ns
  ops, bodies = hlo_tables(hlo)
  by_kind = collections.Counter()
  for name, ns in total.items():
    by_kind[op_kind(name, ops, bodies, args.batch_size)] += ns
  per_step = lambda ns: ns / args.steps / 1e6
  print(f'{args.model} {"jax_plain" if args.plain else "jax"}: wall '
        f'{wall * 1e3:.2f} ms/step, sum of operations '
        f'{per_step(sum(total.values())):.2f} ms/step, {len(total)} '
        f'operations, load {os.getloadavg()[0]:.1f}')
  print('by kind (ms/step): ' + ', '.join(
      f'{k} {per_step(v):.2f}' for k, v in by_kind.most_common()))
  listed = [(name, ns, op_kind(name, ops, bodies, args.batch_size))
            for name, ns in total.most_common()]
  listed = [row for row in listed if args.kind in ('', row[2])]
  for name, ns, kind in listed[:args.top]:
    _, _, shape_, meta = ops.get(name, ('', '', '', ''))
    print(f'  {per_step(ns):7.3f} ms  {kind:17s} {name:28s} {shape_:30s} '
          f'{meta[-60:]}')


if __name__ == '__main__':
  main()
