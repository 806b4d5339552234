"""Exports the transfer experiment's runs to results/ and prints its tables.

    python scripts/export_transfer.py [--runs=runs] [--results=results]
    python scripts/export_transfer.py --redraw   # figures from results/ alone

For each sweep of the experiment found under RUNS (configs/transfer_fmnist,
transfer_fmnist_resnet, transfer_yosinski, transfer_yosinski_resnet): its
small files into RESULTS/<name>/ (`cnn.experiments.analysis.export`,
replacing an older export), its figure, and its table on stdout. The
probes of the source networks (runs/transfer_probes/<network>-<data>/,
written by `main.py --mode=probe --probe_out=...`) are copied to
RESULTS/transfer_probes/ with one comparison figure per network.
`--redraw` exports nothing: it redraws every figure (and each probe run's
probe.png) and prints the tables from the exports already in RESULTS (the
committed ones need no runs/). Figures follow `cnn.plotting` (PNG + PDF +
JSON of the numbers drawn).
"""

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnn import plotting  # noqa: E402  pylint: disable=g-import-not-at-top
from cnn.experiments import analysis, probe  # noqa: E402  pylint: disable=g-import-not-at-top

GUIDANCE = ('transfer_fmnist', 'transfer_fmnist_resnet')
YOSINSKI = ('transfer_yosinski', 'transfer_yosinski_resnet')
PROBES = 'transfer_probes'
PROBE_SHOTS = 100


def _export(runs: str, results: str, name: str, redraw: bool):
  """(study, its results directory), exported from RUNS first unless
  `redraw`; None where there is nothing to read."""
  src, dest = os.path.join(runs, name), os.path.join(results, name)
  if not redraw:
    if not os.path.exists(os.path.join(src, 'sweep.json')):
      return None
    if os.path.isdir(dest):
      shutil.rmtree(dest)
    analysis.export(src, dest)
  elif not os.path.exists(os.path.join(dest, 'sweep.json')):
    return None
  return analysis.load(dest), dest


def _probes(runs: str, results: str, redraw: bool) -> None:
  src, dest = os.path.join(runs, PROBES), os.path.join(results, PROBES)
  if not os.path.isdir(dest if redraw else src):
    return
  probes = {}
  for run in sorted(os.listdir(dest if redraw else src)):
    if redraw:
      if not os.path.exists(os.path.join(dest, run, 'probe.csv')):
        continue
      network, data = run.split('-', 1)
      probe.probe_figure(
          analysis.read_probes(os.path.join(dest, run)),
          os.path.join(dest, run, 'probe.png'),
          title=f'{analysis.model_label(network)}, '
          f'{analysis.PROBE_DATA_LABELS.get(data, data)}')
    else:
      if not os.path.exists(os.path.join(src, run, 'probe.csv')):
        continue
      os.makedirs(os.path.join(dest, run), exist_ok=True)
      for f in ('probe.csv', 'probe.png'):
        shutil.copy2(os.path.join(src, run, f), os.path.join(dest, run, f))
    network, data = run.split('-', 1)
    probes.setdefault(network, {})[data] = analysis.read_probes(
        os.path.join(dest, run))
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
  for name in GUIDANCE:
    if (done := _export(args.runs, args.results, name, args.redraw)):
      study, dest = done
      analysis.transfer_curves(study, os.path.join(dest, 'transfer_curves.png'))
      print(f'## {name} ({len(study.rows)} members)\n')
      print(analysis.pivot_table(study, ['input.dataset', 'transfer.regime'],
                                 'input.per_class') + '\n')
  for name in YOSINSKI:
    if (done := _export(args.runs, args.results, name, args.redraw)):
      study, dest = done
      analysis.yosinski_curve(study, os.path.join(dest, 'yosinski.png'))
      print(f'## {name} ({len(study.rows)} members)\n')
      print(analysis.pivot_table(study, ['transfer.regime'],
                                 'transfer.copy_groups') + '\n')
  _probes(args.runs, args.results, args.redraw)


if __name__ == '__main__':
  with plotting.files_only():
    main()
