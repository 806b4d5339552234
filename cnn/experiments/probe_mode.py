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
flags.DEFINE_string('probe_seeds', '0,1,2',
                    '--mode=probe: comma list of seeds; each draws its own '
                    'examples, as a run with --config.input.sample_seed=SEED '
                    'does.')
flags.DEFINE_string('probe_out', None,
                    '--mode=probe: directory for probe.csv and probe.png '
                    '(default WORKDIR/probe; another one keeps probes of '
                    'the same network on other data apart).')
flags.DEFINE_enum('probe_method', 'ridge', ('ridge', 'logistic', 'svm'),
                  '--mode=probe: closed-form ridge regression, or sklearn '
                  'logistic regression (L-BFGS, to convergence) / linear '
                  'SVM. With --config.input.validation_per_class (or '
                  'validation_fraction) the L2 is chosen on validation.')

FLAGS = flags.FLAGS


def _integers(name: str, example: str) -> list[int]:
  """The comma list of integers of flag `name`."""
  from cnn.common import errors  # pylint: disable=g-import-not-at-top
  text = FLAGS[name].value
  try:
    return [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise errors.UserError(
        f'--{name}={text!r} is not a comma list of integers (e.g. '
        f'{example}).') from None


def run(config, workdir: str) -> None:
  """Fits the probes, writes --probe_out (WORKDIR/probe/), prints the table."""
  from cnn.experiments import probe  # pylint: disable=g-import-not-at-top
  layers = [s.strip() for s in (FLAGS.probe_layers or '').split(',')
            if s.strip()]
  shots = _integers('probe_shots', '10,100,0; 0 = all')
  seeds = _integers('probe_seeds', '0,1,2,3,4')
  rows = probe.probe_workdir(config, workdir, layers=layers or None,
                             shots=shots, seeds=seeds,
                             method=FLAGS.probe_method)
  paths = probe.write_probe_results(
      rows, FLAGS.probe_out or os.path.join(workdir, 'probe'))
  print(probe.format_table(rows))
  for p in paths:
    print(p)
