"""Exports the transfer experiment's runs to results/ and prints its tables.

    python scripts/export_transfer.py [--runs=runs] [--results=results]

For each sweep of the experiment found under RUNS (configs/transfer_fmnist,
transfer_fmnist_resnet, transfer_yosinski, transfer_yosinski_resnet): its
small files into RESULTS/<name>/ (`cnn.experiments.analysis.export`, replacing an older
export), its figure, and its table on stdout. The probes of the source
networks (runs/transfer_probes/<network>-<data>/, written by
`main.py --mode=probe --probe_out=...`) are copied to
RESULTS/transfer_probes/ with one comparison figure per network.
"""

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnn.experiments import analysis  # noqa: E402  pylint: disable=g-import-not-at-top

GUIDANCE = ('transfer_fmnist', 'transfer_fmnist_resnet')
YOSINSKI = ('transfer_yosinski', 'transfer_yosinski_resnet')
PROBES = 'transfer_probes'
PROBE_SHOTS = 100


def _export(runs: str, results: str, name: str):
  src, dest = os.path.join(runs, name), os.path.join(results, name)
  if not os.path.exists(os.path.join(src, 'sweep.json')):
    return None
  if os.path.isdir(dest):
    shutil.rmtree(dest)
  analysis.export(src, dest)
  return analysis.load(dest), dest


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', default='runs')
  parser.add_argument('--results', default='results')
  args = parser.parse_args()
  for name in GUIDANCE:
    if (done := _export(args.runs, args.results, name)):
      study, dest = done
      analysis.transfer_curves(study, os.path.join(dest, 'transfer_curves.png'))
      print(f'## {name} ({len(study.rows)} members)\n')
      print(analysis.pivot_table(study, ['input.dataset', 'transfer.regime'],
                                 'input.per_class') + '\n')
  for name in YOSINSKI:
    if (done := _export(args.runs, args.results, name)):
      study, dest = done
      analysis.yosinski_curve(study, os.path.join(dest, 'yosinski.png'))
      print(f'## {name} ({len(study.rows)} members)\n')
      print(analysis.pivot_table(study, ['transfer.regime'],
                                 'transfer.copy_groups') + '\n')
  src = os.path.join(args.runs, PROBES)
  if os.path.isdir(src):
    dest = os.path.join(args.results, PROBES)
    probes = {}
    for run in sorted(os.listdir(src)):
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
                            os.path.join(dest, f'{network}_probes.png'))
      print(f'## probes of {network}, {PROBE_SHOTS} per class\n')
      print(analysis.probe_comparison(by_data, PROBE_SHOTS) + '\n')


if __name__ == '__main__':
  main()
