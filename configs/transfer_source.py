"""The source network of the offline transfer experiment: LeNet-5 trained on
Fashion-MNIST classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat).

    python main.py --config=configs/transfer_source.py \
        --workdir=runs/transfer_source_lenet5
    python main.py --config=configs/transfer_source.py:runlocal \
        --workdir=/tmp/runlocal/transfer_source_lenet5

The default recipe (configs/default.py) on the 30,000 training images of the
five classes; configs/transfer_fmnist.py starts from this workdir, and
`transfer_fmnist.py:runlocal` / `transfer_yosinski.py:runlocal` from the
`:runlocal` one (the classes among the first 512 images, 2 epochs).
"""

import ml_collections

from configs import default

SOURCE_CLASSES = (0, 1, 2, 3, 4)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.input.classes = SOURCE_CLASSES
  config.num_epochs = 10.0
  return default.shrink(config) if runlocal else config
