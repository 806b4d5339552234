"""The second source network of the offline transfer experiment: a CIFAR
ResNet-20 (He et al.'s 16/32/64 filters, option-A shortcuts) trained on
Fashion-MNIST classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat).

    python main.py --config=configs/transfer_source_resnet.py \
        --workdir=runs/transfer_source_resnet20
    python main.py --config=configs/transfer_source_resnet.py:runlocal \
        --workdir=/tmp/runlocal/transfer_source_resnet20

He et al.'s CIFAR recipe (configs/cifar10_resnet20.py: SGD 0.1, momentum
0.9, weight decay 1e-4, batch 128, horizontal flips) on the 30,000 training
images of the five classes, for EPOCHS epochs with a cosine schedule (the
budget of this machine's 2 cores); configs/transfer_fmnist_resnet.py starts
from this workdir, and its `:runlocal` (and transfer_yosinski_resnet.py's)
from the `:runlocal` one (512 images, 2 epochs, width 0.25).
"""

import ml_collections

from configs import cifar10_resnet20, default, transfer_source

EPOCHS = 6.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = cifar10_resnet20.get_config()
  config.input.dataset = 'fashion_mnist'
  config.input.classes = transfer_source.SOURCE_CLASSES
  config.input.augment.crop_padding = 0
  config.schedule.name = 'cosine'
  config.num_train_steps = -1
  config.num_epochs = EPOCHS
  config.eval_every_epochs = 2.0
  return default.shrink(config) if runlocal else config
