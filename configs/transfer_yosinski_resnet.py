"""configs/transfer_yosinski.py (copy the first n groups, frozen or
fine-tuned) on the CIFAR ResNet-20 source: n = 0..4 of stem, stage1,
stage2, stage3.

    python main.py --config=configs/transfer_yosinski_resnet.py \
        --workdir=runs/transfer_yosinski_resnet

The smoke test (`:runlocal`, as configs/transfer_yosinski.py's, from the
`:runlocal` ResNet-20 source):

    python main.py --config=configs/transfer_source_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_source_resnet20
    python main.py --config=configs/transfer_yosinski_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_yosinski_resnet
"""

import ml_collections

from configs import default, transfer_fmnist_resnet, transfer_yosinski


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  return transfer_fmnist_resnet.use_resnet_source(
      transfer_yosinski.get_config('runlocal' if runlocal else None), runlocal)


get_sweep = transfer_yosinski.get_sweep
member_name = transfer_yosinski.member_name
