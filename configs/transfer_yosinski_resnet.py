"""configs/transfer_yosinski.py (copy the first n groups, frozen or
fine-tuned) on the CIFAR ResNet-20 source: n = 0..4 of stem, stage1,
stage2, stage3.

    python main.py --config=configs/transfer_yosinski_resnet.py \
        --workdir=runs/transfer_yosinski_resnet
"""

import ml_collections

from configs import transfer_fmnist_resnet, transfer_yosinski


def get_config() -> ml_collections.ConfigDict:
  return transfer_fmnist_resnet.use_resnet_source(
      transfer_yosinski.get_config())


get_sweep = transfer_yosinski.get_sweep
member_name = transfer_yosinski.member_name
