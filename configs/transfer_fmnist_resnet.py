"""configs/transfer_fmnist.py's 2x2 guidance table from the CIFAR ResNet-20
source (configs/transfer_source_resnet.py) instead of LeNet-5.

    python main.py --config=configs/transfer_source_resnet.py \
        --workdir=runs/transfer_source_resnet20
    python main.py --config=configs/transfer_fmnist_resnet.py \
        --workdir=runs/transfer_fmnist_resnet

The same targets, shots, regimes, seeds and 300-step recipe; `fine_tune`
trains the last two of the four groups (stage2, stage3) at 0.001 and the
head at 0.01, with the stem and stage1 frozen.
"""

import ml_collections

from configs import transfer_fmnist, transfer_source_resnet

SOURCE_WORKDIR = 'runs/transfer_source_resnet20'


def use_resnet_source(config: ml_collections.ConfigDict
                      ) -> ml_collections.ConfigDict:
  """`config` with the ResNet-20 source's network and workdir."""
  source = transfer_source_resnet.get_config()
  config.model_name = source.model_name
  config.model = source.model
  config.init_from = SOURCE_WORKDIR
  return config


def get_config() -> ml_collections.ConfigDict:
  return use_resnet_source(transfer_fmnist.get_config())


get_sweep = transfer_fmnist.get_sweep
member_name = transfer_fmnist.member_name
