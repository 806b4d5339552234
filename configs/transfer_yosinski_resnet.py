"""configs/transfer_yosinski.py (copy the first n groups from A or B,
frozen or fine-tuned) on the CIFAR ResNet-20 source: n = 1..3 of stem,
stage1, stage2, stage3.

    python main.py --config=configs/transfer_yosinski_resnet.py \
        --workdir=runs/transfer_yosinski_resnet

after configs/transfer_fmnist_resnet.py's grid and seeds. The smoke test,
after that file's `:runlocal` commands:

    python main.py --config=configs/transfer_yosinski_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_yosinski_resnet
"""

import ml_collections

from configs import transfer_fmnist_resnet, transfer_yosinski

SEEDS_WORKDIR = 'runs/transfer_fmnist_resnet'
RUNLOCAL_SEEDS_WORKDIR = '/tmp/runlocal/transfer_fmnist_resnet'
PACK = 1  # as configs/transfer_fmnist_resnet.py's.
READS_RUNS = True  # as configs/transfer_yosinski.py's.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return transfer_fmnist_resnet.get_config(
      'runlocal' if transfer_yosinski.transfer_fmnist.stage(arg, __file__)[1]
      else None)


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = transfer_yosinski.transfer_fmnist.stage(arg, __file__)[1]
  r = transfer_fmnist_resnet
  return transfer_yosinski.sweep_for(
      arg, r.RUNLOCAL_SOURCE_WORKDIR if runlocal else r.SOURCE_WORKDIR,
      r.RUNLOCAL_GRID_WORKDIR if runlocal else r.GRID_WORKDIR,
      RUNLOCAL_SEEDS_WORKDIR if runlocal else SEEDS_WORKDIR, __file__)


def member_name(overrides: dict) -> str:
  return transfer_yosinski.transfer_protocol.yosinski_name(
      overrides, (transfer_fmnist_resnet.SOURCE_WORKDIR,
                  transfer_fmnist_resnet.RUNLOCAL_SOURCE_WORKDIR))
