"""Exports the transfer experiment's runs to results/ and prints its tables.

    python scripts/export_transfer.py [--runs=runs] [--results=results]
    python scripts/export_transfer.py --redraw   # figures from results/ alone

For each source network (configs/transfer_fmnist.py: LeNet-5,
transfer_fmnist_resnet.py: ResNet-20), the protocol's three parts found
under RUNS — the grid (RUNS/<name>_grid), the seeds (RUNS/<name>) and the
linear regime (RUNS/transfer_linear/<network>-<target>/probe.csv) — go to
RESULTS/<name>/{grid,seeds,linear}/ (small files only), with
`protocol.csv` (one row per cell, seed and setting: target, examples per
class, regime, chosen hyper-parameters, validation and test accuracy,
commit; `cnn.experiments.transfer_protocol.protocol_rows`), `tables.md`
(the guidance table with paired differences to scratch, and the choices)
and `guidance.png`. The Yosinski sweeps (RUNS/transfer_yosinski,
transfer_yosinski_resnet) go to RESULTS/<name>/ with `yosinski.png`; the
probes of the source networks (RUNS/transfer_probes/<network>-<data>/,
`main.py --mode=probe --probe_out=...`) to RESULTS/transfer_probes/ with one
comparison figure per network. `--redraw` exports nothing: it redraws every
figure and table from the exports already in RESULTS. Figures follow
`cnn.plotting` (PNG + PDF + JSON of the numbers drawn).
"""

import argparse
import importlib
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from cnn import plotting  # noqa: E402
from cnn.experiments import analysis, probe, sweep_results  # noqa: E402
from cnn.experiments import transfer_protocol as tp  # noqa: E402
from configs import transfer_yosinski  # noqa: E402

# network -> (the protocol's config module, its Yosinski config module).
NETWORKS = {'lenet5': ('transfer_fmnist', 'transfer_yosinski'),
            'resnet20': ('transfer_fmnist_resnet', 'transfer_yosinski_resnet')}
LINEAR = 'transfer_linear'
PROBES = 'transfer_probes'
PROBE_SHOTS = 100


def _export_sweep(src: str, dest: str, redraw: bool) -> list[dict] | None:
  """The results rows of sweep `src`, exported to `dest` first unless
  `redraw` (then read from `dest`); None where there is nothing."""
  if not redraw:
    if not os.path.exists(os.path.join(src, 'sweep.json')):
      return None
    if os.path.isdir(dest):
      shutil.rmtree(dest)
    analysis.export(src, dest)
  elif not os.path.exists(os.path.join(dest, 'sweep.json')):
    return None
  return sweep_results.collect(dest)


def _linear_rows(runs: str, dest: str, network: str, targets, redraw: bool
                 ) -> list[dict]:
  """The `linear` regime's probe rows of each target (logistic on
  pre_logits), copied to DEST/linear/<target>/probe.csv unless `redraw`."""
  rows = []
  for target in targets:
    out = os.path.join(dest, 'linear', target)
    if not redraw:
      src = os.path.join(runs, LINEAR, f'{network}-{target}', 'probe.csv')
      if not os.path.exists(src):
        continue
      os.makedirs(out, exist_ok=True)
      shutil.copy2(src, os.path.join(out, 'probe.csv'))
    if os.path.exists(os.path.join(out, 'probe.csv')):
      rows += [dict(r, target=target) for r in analysis.read_probes(out)
               if r['layer'] == 'pre_logits']
  return rows


def _protocol(runs: str, results: str, network: str, redraw: bool
              ) -> list[dict] | None:
  """Exports one network's protocol; returns its rows."""
  name, _ = NETWORKS[network]
  config = importlib.import_module(f'configs.{name}')
  p, dest = config.PROTOCOL, os.path.join(results, name)
  grid = _export_sweep(os.path.join(runs, f'{name}_grid'),
                       os.path.join(dest, 'grid'), redraw)
  if grid is None:
    return None
  seeds = _export_sweep(os.path.join(runs, name), os.path.join(dest, 'seeds'),
                        redraw) or []
  logistic = _linear_rows(runs, dest, network, p.targets, redraw)
  ridge = []
  for target in p.targets:  # the ridge probes of the same features.
    where = os.path.join(results if redraw else runs, PROBES,
                         f'{network}-{target}')
    if os.path.exists(os.path.join(where, 'probe.csv')):
      ridge += [dict(r, target=target) for r in analysis.read_probes(where)]
  # The linear regime: logistic or ridge, whichever validation prefers.
  rows = tp.protocol_rows(p, grid, seeds, tp.select_linear([*logistic,
                                                            *ridge]))
  tp.write_rows(rows, os.path.join(dest, 'protocol.csv'))
  source = analysis.model_label(network)
  tables = (f'## {source}: test accuracy %, mean ± std (seeds) '
            '[paired difference to scratch ± 95 % half-width]\n\n'
            + tp.guidance_table(p, rows, list(tp.REGIME_STYLE) +
                                [f'full@{lr:g}' for lr in p.learning_rates])
            + '\n\n## Chosen on validation (seed 0): learning rate / weight '
            'decay, or the linear head and its L2\n\n'
            + tp.choices_table(p, rows) + '\n')
  if ridge and logistic:
    tables += ('\n## Logistic regression (L-BFGS) against the ridge probe of '
               'the same features (test accuracy %, paired over seeds)\n\n' +
               tp.linear_vs_ridge_table(tp.linear_vs_ridge(logistic, ridge))
               + '\n\n## The linear regime (the head validation chose) '
               'against the ridge probe\n\n' + tp.linear_vs_ridge_table(
                   tp.linear_vs_ridge([dict(r, shots=r['per_class'])
                                       for r in rows
                                       if r['regime'] == tp.LINEAR], ridge),
                   label='linear regime')
               + '\n')
  with open(os.path.join(dest, 'tables.md'), 'w') as f:
    f.write(tables)
  print(tables)
  tp.guidance_figure(p, [r for r in rows if '@' not in r['regime']],
                     os.path.join(dest, 'guidance.png'),
                     source=f'a {source} trained on Fashion-MNIST 0–4')
  return rows


def _yosinski(runs: str, results: str, network: str, protocol_rows,
              redraw: bool) -> None:
  protocol_name, name = NETWORKS[network]
  protocol_config = importlib.import_module(f'configs.{protocol_name}')
  dest = os.path.join(results, name)
  rows = _export_sweep(os.path.join(runs, name), dest, redraw)
  if rows is None:
    return
  p = protocol_config.PROTOCOL
  sources = (protocol_config.SOURCE_WORKDIR,
             protocol_config.RUNLOCAL_SOURCE_WORKDIR)
  values = tp.yosinski_rows(p, rows, sources, protocol_rows or [],
                            transfer_yosinski.COLUMN)
  tp.yosinski_figure(p, values, os.path.join(dest, 'yosinski.png'),
                     source=analysis.model_label(network))
  table = (f'## {analysis.model_label(network)}, Yosinski et al.: test '
           'accuracy %, mean ± std (seeds); n = 0 is scratch, n = 4 frozen '
           'from A the linear regime\n\n' + tp.yosinski_table(values) + '\n')
  with open(os.path.join(dest, 'tables.md'), 'w') as f:
    f.write(table)
  print(table)


def _probes(runs: str, results: str, redraw: bool) -> None:
  src, dest = os.path.join(runs, PROBES), os.path.join(results, PROBES)
  if not os.path.isdir(dest if redraw else src):
    return
  probes = {}
  for run in sorted(os.listdir(dest if redraw else src)):
    where = os.path.join(dest if redraw else src, run)
    if not os.path.exists(os.path.join(where, 'probe.csv')):
      continue
    os.makedirs(os.path.join(dest, run), exist_ok=True)
    if not redraw:
      shutil.copy2(os.path.join(where, 'probe.csv'),
                   os.path.join(dest, run, 'probe.csv'))
    network, data = run.split('-', 1)
    rows = analysis.read_probes(os.path.join(dest, run))
    probe.probe_figure(
        rows, os.path.join(dest, run, 'probe.png'),
        title=f'{analysis.model_label(network)}, '
        f'{analysis.PROBE_DATA_LABELS.get(data, data)}')
    probes.setdefault(network, {})[data] = rows
  for network, by_data in probes.items():
    analysis.probe_curves(by_data, PROBE_SHOTS,
                          os.path.join(dest, f'{network}_probes.png'),
                          network=network)
    print(f'## probes of {network}, {PROBE_SHOTS} per class\n')
    print(analysis.probe_comparison(by_data, PROBE_SHOTS) + '\n')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', default='runs')
  parser.add_argument('--results', default='results')
  parser.add_argument('--redraw', action='store_true',
                      help='redraw the figures of the exports in --results; '
                           'export nothing')
  args = parser.parse_args()
  for network in NETWORKS:
    rows = _protocol(args.runs, args.results, network, args.redraw)
    _yosinski(args.runs, args.results, network, rows, args.redraw)
  _probes(args.runs, args.results, args.redraw)


if __name__ == '__main__':
  with plotting.files_only():
    main()
