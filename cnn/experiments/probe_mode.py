"""`main.py --mode=probe`: linear probes of every layer of a trained workdir.

The probe options (`--probe_layers`, `--probe_shots`, `--probe_method`,
`--probe_out`) live here, beside the code they steer; `cnn.experiments.probe`
holds the probes themselves.
"""

from __future__ import annotations

import os

from absl import flags

flags.DEFINE_string('probe_layers', None,
                    '--mode=probe: comma list of layers (default: all but '
                    'logits).')
flags.DEFINE_string('probe_shots', '10,100,1000',
                    '--mode=probe: comma list of training examples per class '
                    '(0 = all).')
flags.DEFINE_string('probe_out', None,
                    '--mode=probe: directory for probe.csv and probe.png '
                    '(default WORKDIR/probe; another one keeps probes of '
                    'the same network on other data apart).')
flags.DEFINE_enum('probe_method', 'ridge', ('ridge', 'logistic', 'svm'),
                  '--mode=probe: closed-form ridge regression, or sklearn '
                  'logistic regression / linear SVM.')

FLAGS = flags.FLAGS


def run(config, workdir: str) -> None:
  """Fits the probes, writes --probe_out (WORKDIR/probe/), prints the table."""
  # pylint: disable=g-import-not-at-top
  from cnn.common import errors
  from cnn.experiments import probe
  layers = [s.strip() for s in (FLAGS.probe_layers or '').split(',')
            if s.strip()]
  try:
    shots = [int(s) for s in FLAGS.probe_shots.split(',') if s.strip()]
  except ValueError:
    raise errors.UserError(
        f'--probe_shots={FLAGS.probe_shots!r} is not a comma list of '
        'integers (e.g. 10,100,0; 0 = all).') from None
  rows = probe.probe_workdir(config, workdir, layers=layers or None,
                             shots=shots, method=FLAGS.probe_method)
  paths = probe.write_probe_results(
      rows, FLAGS.probe_out or os.path.join(workdir, 'probe'))
  print(probe.format_table(rows))
  for p in paths:
    print(p)
