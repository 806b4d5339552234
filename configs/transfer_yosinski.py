"""Yosinski et al. 2014 on LeNet-5: which layers are general, which specific.

    python main.py --config=configs/transfer_yosinski.py \
        --workdir=runs/transfer_yosinski

after configs/transfer_fmnist.py's grid and seeds (it reads both: the
hyper-parameters they chose and their `scratch` members, the B networks).

On each target of the transfer protocol (Fashion-MNIST classes 5-9, the
similar domain; digits, the different one) with 100 examples per class and
seeds 0-2 (each drawing its own examples), the first n = 1..3 of LeNet-5's
four parameter groups (c1, c3, f5, f6) are copied from
  A  the source network (Fashion-MNIST classes 0-4), or
  B  a LeNet-5 trained from scratch on the same target examples (the
     protocol's `scratch` member of that seed),
and either frozen (AnB, BnB: the rest starts afresh and trains) or
fine-tuned with the rest (AnB+, BnB+); each at the learning rate and weight
decay the protocol chose on validation for that target and regime
(`freeze<n>` for frozen, `full` for fine-tuned). n = 0 is the protocol's
`scratch`; n = 4 frozen from A is its `linear` regime (the export reads
both). BnB against B itself measures co-adaptation (fragile features
split apart), AnB against BnB the specificity of A's features to A's task.
The analysis: `cnn.experiments.transfer_protocol.yosinski_figure`.
`:runlocal`: n = 1 on 10 examples per class, shrunk, after the `:runlocal`
protocol of configs/transfer_fmnist.py's docstring (seeds 0 and 1):

    python main.py --config=configs/transfer_yosinski.py:runlocal \
        --workdir=/tmp/runlocal/transfer_yosinski
"""

import ml_collections

from cnn.experiments import transfer_protocol
from configs import transfer_fmnist

COPIES = (1, 2, 3)
COLUMN = 1  # 100 examples per class.
SEEDS = (0, 1, 2)
SEEDS_WORKDIR = 'runs/transfer_fmnist'
RUNLOCAL_SEEDS_WORKDIR = '/tmp/runlocal/transfer_fmnist'
PACK = 1  # as configs/transfer_fmnist.py's.
# `get_sweep()` lists its members from the protocol's runs.
READS_RUNS = True


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = transfer_fmnist.stage(arg, __file__)
  return transfer_fmnist.get_config('runlocal' if runlocal else None)


def sweep_for(arg, source, grid_workdir, seeds_workdir, config_file):
  """The members of a Yosinski config reading the protocol's workdirs."""
  _, runlocal = transfer_fmnist.stage(arg, config_file)
  p = transfer_fmnist.PROTOCOL
  return transfer_protocol.yosinski_members(
      p, transfer_protocol.read_grid(grid_workdir), source_workdir=source,
      grid_workdir=grid_workdir, seeds_workdir=seeds_workdir,
      column=0 if runlocal else COLUMN,
      copies=COPIES[:1] if runlocal else COPIES,
      seeds=p.seeds[0][:2] if runlocal else SEEDS, runlocal=runlocal)


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = transfer_fmnist.stage(arg, __file__)[1]
  return sweep_for(
      arg, transfer_fmnist.RUNLOCAL_SOURCE_WORKDIR if runlocal
      else transfer_fmnist.SOURCE_WORKDIR,
      transfer_fmnist.RUNLOCAL_GRID_WORKDIR if runlocal
      else transfer_fmnist.GRID_WORKDIR,
      RUNLOCAL_SEEDS_WORKDIR if runlocal else SEEDS_WORKDIR, __file__)


def member_name(overrides: dict) -> str:
  return transfer_protocol.yosinski_name(
      overrides, (transfer_fmnist.SOURCE_WORKDIR,
                  transfer_fmnist.RUNLOCAL_SOURCE_WORKDIR))
