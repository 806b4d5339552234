"""The depth study reduced to run offline on 2 CPU cores (Fashion-MNIST).

    python main.py --config=configs/depth_study_fmnist.py \
        --workdir=runs/depth_study_fmnist
    python main.py --config=configs/depth_study_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/depth_study_fmnist   # the smoke test

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
  - evaluation every epoch, on the first 1,000 test and training images
    (`eval_subset`), the last one on all 5,000 of each: 32 points a curve for
    He et al.'s Fig. 6 layout. (The committed results/depth_study_fmnist
    evaluated every 4 epochs on all 5,000; the rerun with this cadence goes
    to runs/depth_study_fmnist_dense, `PACK` below.)
What it must still show: the deeper plain nets end with a higher *training*
error than plain-20 (underfitting, not overfitting) while the deeper residual
nets do not. The training error is the error on the 5,000 training images
in eval mode, without augmentation (`train_eval_accuracy`, recorded by
`config.eval_on_train`), at the end of the run. Seeds are the outer loop,
so a stopped sweep already has every depth for the first seeds.

`:runlocal`: 512 images, 32 steps (`default.shrink`), depths 20 and 56,
plain and residual, seed 0 (four members named as in the full sweep).
"""

import ml_collections

from cnn.experiments import sweep
from configs import default, depth_study

# Seeds trained together (`--pack`): 1, as measured here. On 2 CPU cores
# a packed step of three quarter-width ResNet-20s gave 0.6x the member-epochs
# per hour of one at a time (benchmarks/packed_sweep.py, FINDINGS "Sixth
# pass"); on an accelerator pass --pack=3.
PACK = 1

DEPTHS = (20, 32, 56)
SEEDS = (0, 1, 2)
TRAIN_IMAGES, EPOCHS, BATCH = 5_000, 32, 128


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = depth_study.get_config()
  config.input.dataset = 'fashion_mnist'
  config.input.train_subset = TRAIN_IMAGES
  config.input.test_subset = 5_000
  config.input.augment.crop_padding = 0
  config.model.width = 0.25
  steps = EPOCHS * (TRAIN_IMAGES // BATCH)
  config.num_train_steps = steps
  config.schedule.decay_steps = (steps // 2, steps * 3 // 4)
  config.eval_every_epochs = 1.0
  config.eval_subset = 1_000
  config.checkpoint_every_steps = 1_000
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  depths = (DEPTHS[0], DEPTHS[-1]) if runlocal else DEPTHS
  nets = [dict(model_name=f'{kind}{d}') for d in depths
          for kind in ('plain', 'resnet')]
  return sweep.product(sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
                       nets)


member_name = depth_study.member_name
