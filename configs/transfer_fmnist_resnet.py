"""configs/transfer_fmnist.py's 2x2 guidance table from the CIFAR ResNet-20
source (configs/transfer_source_resnet.py) instead of LeNet-5.

    python main.py --config=configs/transfer_source_resnet.py \
        --workdir=runs/transfer_source_resnet20
    python main.py --config=configs/transfer_fmnist_resnet.py \
        --workdir=runs/transfer_fmnist_resnet

The smoke test (`:runlocal`, as configs/transfer_fmnist.py's, from the
`:runlocal` source at width 0.25 in RUNLOCAL_SOURCE_WORKDIR):

    python main.py --config=configs/transfer_source_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_source_resnet20
    python main.py --config=configs/transfer_fmnist_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_fmnist_resnet

The same targets, shots, regimes, seeds and 300-step recipe; `fine_tune`
trains the last two of the four groups (stage2, stage3) at 0.001 and the
head at 0.01, with the stem and stage1 frozen.
"""

import ml_collections

from configs import default, transfer_fmnist, transfer_source_resnet

SOURCE_WORKDIR = 'runs/transfer_source_resnet20'
# configs/transfer_source_resnet.py:runlocal's workdir in its docstring.
RUNLOCAL_SOURCE_WORKDIR = '/tmp/runlocal/transfer_source_resnet20'


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
  _, runlocal = default.parse_arg(arg, __file__)
  return use_resnet_source(
      transfer_fmnist.get_config('runlocal' if runlocal else None), runlocal)


get_sweep = transfer_fmnist.get_sweep
member_name = transfer_fmnist.member_name
