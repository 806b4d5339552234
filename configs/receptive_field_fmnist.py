"""The receptive-field study offline on Fashion-MNIST (2 CPU cores).

    python main.py --config=configs/receptive_field_fmnist.py \
        --workdir=runs/receptive_field_fmnist
    python main.py --config=configs/receptive_field_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/receptive_field_fmnist   # the smoke test

configs/receptive_field.py's four forms and seeds, reduced: the first 5,000
training images (flips only), the full test set, 8 epochs of a cosine
schedule. About 15 minutes for all twelve members here. `:runlocal`: the
four forms, seed 0, 512 images, 2 epochs (`default.shrink`).
"""

import ml_collections

from configs import default, receptive_field

get_sweep = receptive_field.get_sweep
member_name = receptive_field.member_name


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = receptive_field.get_config()
  config.input.dataset = 'fashion_mnist'
  config.input.train_subset = 5_000
  config.input.augment.crop_padding = 0
  config.num_epochs = 8.0
  return default.shrink(config) if runlocal else config
