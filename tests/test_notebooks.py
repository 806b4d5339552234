"""The notebooks are code: both run top to bottom on tiny saved results,
and are for looking: their figures come out as images."""

from __future__ import annotations

import filecmp
import io
import os
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
import nbformat
import pytest
from nbclient import NotebookClient

from cnn import plotting
from cnn.experiments import analysis, probe, sweep
from tests.helpers import REPO, tiny_config

# The transfer protocol's exports the analysis notebook draws (one figure
# each), and the Yosinski exports with the protocol each reads.
TRANSFER_EXPORTS = ('transfer_fmnist', 'transfer_fmnist_resnet')
YOSINSKI_EXPORTS = {'transfer_yosinski': 'transfer_fmnist',
                    'transfer_yosinski_resnet': 'transfer_fmnist_resnet'}
# Figures the analysis notebook draws per committed lecture study.
LECTURE_STUDY_FIGURES = {
    'weight_sharing_fmnist': 2, 'batchnorm_fmnist': 1, 'activations_fmnist': 1,
    'gradient_flow_fmnist': 1, 'pooling_fmnist': 1, 'augmentation_fmnist': 1,
    'heads_fmnist': 1}


def _execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
  """Runs notebooks/NAME from notebooks/, as Jupyter would, with `env`;
  returns the executed notebook (with its outputs)."""
  path = os.path.join(REPO, 'notebooks', name)
  notebook = nbformat.read(path, as_version=4)
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel inherits the environment.
  try:
    return NotebookClient(
        notebook, timeout=300, kernel_name='python3',
        resources={'metadata': {'path': os.path.dirname(path)}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k)
      else:
        os.environ[k] = v


def _images(notebook: nbformat.NotebookNode) -> int:
  """How many PNG images the notebook's outputs hold."""
  return sum('image/png' in output.get('data', {})
             for cell in notebook.cells if cell.cell_type == 'code'
             for output in cell.outputs)


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """A two-member sweep (plain vs residual twins, one tiny epoch each),
  run and exported like the committed results."""
  workdir = tmp_path_factory.mktemp('sweep')
  base = tiny_config(**{'input.train_subset': 128, 'input.test_subset': 128,
                        'num_epochs': 1.0, 'eval_on_train': True,
                        'eval_every_epochs': 0.5})
  members = sweep.members_of(sweep.axis('model_name', ['lenet5']))
  members += [sweep.Member('lenet5-seed1', dict(model_name='lenet5',
                                                seed=1))]
  sweep.write_plan(str(workdir), base, 'tiny', members)
  outcome = sweep.run_local(base, members, str(workdir))
  assert outcome.exit_code == 0
  export = workdir / 'export'
  analysis.export(str(workdir), str(export))
  assert not (export / 'lenet5' / 'checkpoints').exists()
  return workdir, export


@pytest.fixture(scope='module')
def tiny_probes(tiny_sweep, tmp_path_factory):
  """Probes of the tiny run on two class subsets (the Zeiler & Fergus
  table's layout: one directory per network and data)."""
  workdir, _ = tiny_sweep
  probes = tmp_path_factory.mktemp('probes')
  for name, classes in (('first', (0, 1, 2)), ('last', (7, 8, 9))):
    config = tiny_config(**{'input.train_subset': 128, 'input.test_subset': 128,
                            'input.classes': classes})
    rows = probe.probe_workdir(config, str(workdir / 'lenet5'),
                               layers=['stage4', 'pre_logits'], shots=(5,),
                               seeds=(0, 1))
    probe.write_probe_results(rows, str(probes / f'lenet5-{name}'))
  return probes


def test_export_transfer_script_writes_results_and_tables(
    tiny_probes, tmp_path):
  """Probes exported from runs/; the committed protocol exports redrawn
  (tables and figures from results/ alone)."""
  runs, results = tmp_path / 'runs', tmp_path / 'results'
  runs.mkdir()
  os.symlink(tiny_probes, runs / 'transfer_probes')
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'export_transfer.py'),
       f'--runs={runs}', f'--results={results}'],
      capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '| stage4 |' in done.stdout  # the probe comparison
  assert (results / 'transfer_probes' / 'lenet5_probes.png').stat().st_size
  assert (results / 'transfer_probes' / 'lenet5_probes.json').stat().st_size
  committed = [name for name in TRANSFER_EXPORTS if os.path.exists(
      os.path.join(REPO, 'results', name, 'protocol.csv'))]
  for name in committed:
    shutil.copytree(os.path.join(REPO, 'results', name), results / name)
    (results / name / 'guidance.png').unlink()
  if committed:  # the ridge probes the linear regime is chosen against.
    shutil.copytree(os.path.join(REPO, 'results', 'transfer_probes'),
                    results / 'transfer_probes', dirs_exist_ok=True)
  redrawn = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'export_transfer.py'),
       '--runs=/nonexistent', f'--results={results}', '--redraw'],
      capture_output=True, text=True, timeout=300, check=False)
  assert redrawn.returncode == 0, redrawn.stderr[-3000:]
  assert '| stage4 |' in redrawn.stdout
  for name in committed:
    assert (results / name / 'guidance.png').stat().st_size
    assert filecmp.cmp(results / name / 'protocol.csv',
                       os.path.join(REPO, 'results', name, 'protocol.csv'),
                       shallow=False)
    assert '| scratch |' in redrawn.stdout


def test_analysis_notebook_runs(tiny_sweep, tiny_probes):
  _, export = tiny_sweep
  probes = tiny_probes
  done = _execute('analysis.ipynb', {'DEPTH_STUDY': str(export),
                                     'RECEPTIVE_FIELD_STUDY': str(export),
                                     'PROBES': str(probes)})
  # Depth curves, error vs depth, accuracy vs parameters and the probe
  # curves, each drawn once; the 1x1 conv = Dense check and the MobileNetV2
  # separable-cost bars; then from results/: each committed transfer
  # protocol's figure and Yosinski figure, and each lecture study's figures.
  committed = lambda *names: os.path.exists(os.path.join(REPO, 'results',
                                                          *names))
  lecture = sum(n for name, n in LECTURE_STUDY_FIGURES.items()
                if committed(name, 'results.csv'))
  transfer = sum(committed(name, 'protocol.csv') for name in TRANSFER_EXPORTS)
  yosinski = sum(committed(name, 'sweep.json') and committed(protocol,
                                                             'protocol.csv')
                 for name, protocol in YOSINSKI_EXPORTS.items())
  assert _images(done) == 6 + transfer + yosinski + lecture


def test_training_curves_notebook_runs(tiny_sweep):
  workdir, _ = tiny_sweep
  done = _execute('training_curves.ipynb', {'CNN_RUNS_DIR': str(workdir)})
  assert _images(done) == 1  # accuracy and loss curves, one figure.


def test_analysis_figures_are_written(tiny_sweep, tmp_path):
  _, export = tiny_sweep
  study = analysis.load(str(export))
  assert [r['status'] for r in study.rows] == ['completed'] * 2
  assert len(study.curves['lenet5']['step']) == 2  # two evaluations
  open_figures = plt.get_fignums()
  for draw in (analysis.depth_curves, analysis.error_vs_depth,
               analysis.accuracy_vs_params):
    path = tmp_path / f'{draw.__name__}.png'
    fig = draw(study, str(path))
    assert path.stat().st_size > 1000
    # The figure standard (tests/test_figures.py): a vector copy and the
    # numbers drawn beside the PNG, no text on other text.
    assert all(path.with_suffix(f'.{fmt}').exists()
               for fmt in plotting.VECTOR_FORMATS)
    assert path.with_suffix('.json').exists()
    assert plotting.overlapping_text(fig) == []
    # Written and closed: pyplot holds no new figure (no growth in a loop),
    # and the returned one still renders (what Jupyter's display(fig) does).
    assert plt.get_fignums() == open_figures
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    assert buf.getvalue().startswith(b'\x89PNG')
  assert '| lenet5 |' in analysis.table(study)
