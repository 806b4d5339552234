"""The depth study reduced to run offline on 2 CPU cores (Fashion-MNIST).

    python main.py --config=configs/depth_study_fmnist.py \
        --workdir=runs/depth_study_fmnist

It keeps He et al.'s recipe (configs/depth_study.py: CIFAR ResNets with
option A shortcuts and their plain twins, SGD 0.1 / momentum 0.9 / weight
decay 1e-4, batch 128, the learning rate divided by 10 at 1/2 and 3/4 of the
run) and reduces, so that all 18 members fit in about two hours of this
machine's 2 cores:
  - data: the first 5,000 Fashion-MNIST training images (28x28, flips only;
    the first 5,000 test images for the test error),
  - schedule: 32 epochs of the subset (1,248 iterations instead of 64k).
    A pilot with 16 epochs (seed 0, results/depth_study_fmnist_pilot16)
    already showed the plain nets degrading (final training error 12.7 /
    18.1 / 25.5 % at depth 20 / 32 / 56) but left ResNet-56 just above
    ResNet-20 (11.8 vs 11.6 %): the deeper residual net was still catching
    up, so the budget was doubled,
  - width: a quarter (4/8/16 filters, stem included), depths 20, 32 and 56
    (110 would take as long as all the others together),
  - evaluation every 4 epochs.
What it must still show: the deeper plain nets end with a higher *training*
error than plain-20 (underfitting, not overfitting) while the deeper residual
nets do not. The training error is the error on the 5,000 training images
in eval mode, without augmentation (`train_eval_accuracy`, recorded by
`config.eval_on_train`), at the end of the run. Seeds are the outer loop,
so a stopped sweep already has every depth for the first seeds.
"""

import ml_collections

from cnn.experiments import sweep
from configs import depth_study

DEPTHS = (20, 32, 56)
SEEDS = (0, 1, 2)
TRAIN_IMAGES, EPOCHS, BATCH = 5_000, 32, 128


def get_config() -> ml_collections.ConfigDict:
  config = depth_study.get_config()
  config.input.dataset = 'fashion_mnist'
  config.input.train_subset = TRAIN_IMAGES
  config.input.test_subset = 5_000
  config.input.augment.crop_padding = 0
  config.model.width = 0.25
  steps = EPOCHS * (TRAIN_IMAGES // BATCH)
  config.num_train_steps = steps
  config.schedule.decay_steps = (steps // 2, steps * 3 // 4)
  config.eval_every_epochs = 4.0
  config.checkpoint_every_steps = 1_000
  return config


def get_sweep() -> list[dict]:
  nets = [dict(model_name=f'{kind}{d}') for d in DEPTHS
          for kind in ('plain', 'resnet')]
  return sweep.product(sweep.axis('seed', SEEDS), nets)


member_name = depth_study.member_name
