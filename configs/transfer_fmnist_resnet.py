"""configs/transfer_fmnist.py's protocol from the CIFAR ResNet-20 source
(configs/transfer_source_resnet.py) instead of LeNet-5.

    python main.py --config=configs/transfer_source_resnet.py \
        --workdir=runs/transfer_source_resnet20
    python main.py --config=configs/transfer_fmnist_resnet.py:grid \
        --workdir=runs/transfer_fmnist_resnet_grid
    python main.py --config=configs/transfer_fmnist_resnet.py \
        --workdir=runs/transfer_fmnist_resnet
    python main.py --mode=probe --config=configs/transfer_source_resnet.py \
        --workdir=runs/transfer_source_resnet20 ...  # the linear regime, as
                                                     # transfer_fmnist.py's

The same targets, examples per class, steps, seeds and grid; the four
parameter groups are stem, stage1, stage2, stage3 (freeze1 freezes the stem,
freeze3 everything but stage3). The smoke test (`:runlocal` or
`:grid,runlocal`, from the `:runlocal` source at width 0.25 in
RUNLOCAL_SOURCE_WORKDIR):

    python main.py --config=configs/transfer_source_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_source_resnet20
    python main.py --config=configs/transfer_fmnist_resnet.py:grid,runlocal \
        --workdir=/tmp/runlocal/transfer_fmnist_resnet_grid
    python main.py --config=configs/transfer_fmnist_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_fmnist_resnet
"""

import ml_collections

from cnn.experiments import transfer_protocol
from configs import transfer_fmnist, transfer_source_resnet

SOURCE_WORKDIR = 'runs/transfer_source_resnet20'
# configs/transfer_source_resnet.py:runlocal's workdir in its docstring.
RUNLOCAL_SOURCE_WORKDIR = '/tmp/runlocal/transfer_source_resnet20'
GRID_WORKDIR = 'runs/transfer_fmnist_resnet_grid'
RUNLOCAL_GRID_WORKDIR = '/tmp/runlocal/transfer_fmnist_resnet_grid'
PROTOCOL = transfer_fmnist.PROTOCOL
# 1: ResNet-20 members packed 3 to a step ran at 0.61x the member-epochs per
# hour of lone ones on 2 CPU cores (FINDINGS "Sixth pass"); on an
# accelerator try --pack=3.
PACK = 1
FIRST_STAGE = 'grid'  # as configs/transfer_fmnist.py's.


def use_resnet_source(config: ml_collections.ConfigDict,
                      runlocal: bool = False) -> ml_collections.ConfigDict:
  """`config` with the ResNet-20 source's network and workdir (those of its
  `:runlocal` with `runlocal`)."""
  source = transfer_source_resnet.get_config('runlocal' if runlocal else None)
  config.model_name = source.model_name
  config.model = source.model
  config.init_from = RUNLOCAL_SOURCE_WORKDIR if runlocal else SOURCE_WORKDIR
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = transfer_fmnist.stage(arg, __file__)
  return use_resnet_source(
      transfer_fmnist.get_config('runlocal' if runlocal else None), runlocal)


def get_sweep(arg: str | None = None) -> list[dict]:
  """`grid`: seed 0's grid; otherwise the other seeds with the grid's
  choices (read from GRID_WORKDIR)."""
  grid, runlocal = transfer_fmnist.stage(arg, __file__)
  return transfer_protocol.protocol_sweep(
      PROTOCOL, grid=grid, runlocal=runlocal,
      grid_workdir=RUNLOCAL_GRID_WORKDIR if runlocal else GRID_WORKDIR)


member_name = transfer_protocol.member_name
