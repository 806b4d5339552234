"""Batch norm: Ioffe & Szegedy's (2015) ablation, offline on Fashion-MNIST.

    python main.py --config=configs/batchnorm_fmnist.py \
        --workdir=runs/batchnorm_fmnist
    python main.py --config=configs/batchnorm_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/batchnorm_fmnist   # the smoke test
    python main.py --config=configs/batchnorm_fmnist.py:lr_grid \
        --workdir=runs/batchnorm_fmnist_lr_grid    # how BASE_LR was chosen

One deep network, the small VGG-11 (`vgg11_small`: eight 3x3 convs in five
stages, global average pooling, one hidden FC; cnn/models/vgg.py), in the
paper's variants (its Fig. 2 and 3: Inception, BN-Baseline, BN-x5, BN-x30;
its BN-x5-Sigmoid is here BN with sigmoid at 1x), with `model.batch_norm`
switching the norm between each conv and its activation (True is exactly
`vgg11_bn_small`):
  no BN,  1x the base learning rate   (the baseline)
  BN,     1x                          (BN-Baseline)
  BN,     5x and 30x                  (BN-x5, BN-x30: BN lets it go faster)
  no BN,  5x                          (should diverge or stall: a member
                                       whose loss goes non-finite ends with
                                       status 'diverged', a result)
  BN,     1x, sigmoid                 (BN makes a saturating activation
                                       trainable)
three seeds each (18 members; seeds are the outer loop, so a stopped sweep
already has every variant for the first seeds).

The recipe: the first 5,000 Fashion-MNIST training images that remain after
holding out 100 per class for validation (`input.validation_per_class`,
1,000 images never trained on), resized to 32x32 (the network halves the
size five times), flips only; SGD with momentum 0.9, weight decay 5e-4,
batch 128, a cosine schedule without warm-up over `EPOCHS` epochs, no label
smoothing; a quarter of vgg11_small's width (8/16/32/64/64 filters, FC 512:
`WIDTH` times the registry's 0.5). Evaluation every epoch on the first 1,000
test, training (eval mode) and validation images (`eval_subset`), the last
one on all of them (5,000 test images): the curves and the number of steps
to reach `ACCURACY_THRESHOLD` test accuracy
(`cnn.experiments.training_studies.steps_to_accuracy`).

The base learning rate (`BASE_LR`, 0.02) is chosen for the network
*without* BN, on the validation split, never on the test split: `:lr_grid`
trains it at seed 0 for each rate of `LR_GRID` (same recipe; 8 min 20 s for
the five beside a background training run), and the rate with the lowest
final validation error is the base (20.0 %, against 23.6-73.6 % for the
others; see `BASE_LR`).

Time (2026-12-06): a member took 76-127 s on these 2 cores shared with a
background training run (about 35 s of CPU each, 14 s of it compiling,
which each variant does once), so the 18 take about 25-35 min shared, an
estimated 15 min on idle cores. The committed run took 22 min, beside
three other studies. The committed result and its figure:
    python main.py --config=configs/batchnorm_fmnist.py \
        --workdir=runs/batchnorm_fmnist      # also writes results.csv
and then, in Python from the repository root:
    from cnn.experiments import analysis, training_studies as t
    from configs import batchnorm_fmnist as c
    analysis.export('runs/batchnorm_fmnist', 'results/batchnorm_fmnist')
    s = analysis.load('results/batchnorm_fmnist')
    t.batchnorm_curves(s, 'results/batchnorm_fmnist/curves.png',
                       threshold=c.ACCURACY_THRESHOLD)
    print(t.batchnorm_table(s), t.steps_table(s, c.ACCURACY_THRESHOLD))

Full size (an accelerator): the whole vgg11_small (`--config.model.width=
0.5`; or CIFAR-10 with `--config.input.dataset=cifar10
--config.input.download=True`), all the training images but the validation
split (`--config.input.train_subset=0`), `--config.num_epochs=30`, `--pack=3`.

`:runlocal`: the six variants at seed 0 on 512 images for 2 epochs
(`default.shrink`), named as in the full sweep.
"""

from __future__ import annotations

import ml_collections

from cnn.experiments import sweep
from cnn.models import registry
from configs import default

# Seeds trained together (`--pack`): 1 on 2 CPU cores (see
# configs/depth_study_fmnist.py); --pack=3 on an accelerator.
PACK = 1

MODEL = 'vgg11_small'
# vgg11_small is already half of VGG's width (registry); this multiplies it.
WIDTH = 0.25
SEEDS = (0, 1, 2)
TRAIN_IMAGES, VALIDATION_PER_CLASS, TEST_IMAGES = 5_000, 100, 5_000
EPOCHS = 10.0
# Chosen on the validation split by `:lr_grid` (no BN, ReLU, seed 0, the
# recipe below), 2026-12-06: final validation error 33.9 / 24.9 / 20.0 /
# 73.6 / 23.6 % at 0.005 / 0.01 / 0.02 / 0.05 / 0.1 (0.05 stalled near
# chance for four epochs and never recovered; 0.1 trained, worse than 0.02).
BASE_LR = 0.02
LR_GRID = (0.005, 0.01, 0.02, 0.05, 0.1)
# (batch_norm, learning-rate multiplier, activation) of each variant, in the
# order of Ioffe & Szegedy's Fig. 2.
VARIANTS = (
    (False, 1, 'relu'),
    (True, 1, 'relu'),
    (True, 5, 'relu'),
    (True, 30, 'relu'),
    (False, 5, 'relu'),
    (True, 1, 'sigmoid'),
)
# The fixed test accuracy whose first crossing `steps_to_accuracy` counts
# (Ioffe & Szegedy: the steps to reach Inception's final accuracy): one the
# network without BN reaches late in the run (at its grid run, 0.769 at
# epoch 6 of 10, 0.788 at the end).
ACCURACY_THRESHOLD = 0.75
# `--config=configs/batchnorm_fmnist.py:ARG`: the other word it takes.
GRID_ARG = 'lr_grid'


def _parse(arg: str | None) -> tuple[bool, bool]:
  """(lr_grid, runlocal) of `--config=configs/batchnorm_fmnist.py:ARG`."""
  word, runlocal = default.parse_arg(arg, __file__, repr(GRID_ARG))
  if word not in (None, GRID_ARG):
    raise default.ConfigArgError(
        f'Unknown argument {word!r} in --config=configs/batchnorm_fmnist.py:'
        f"{arg}; valid: {GRID_ARG!r}, 'runlocal' or both, comma-separated.")
  return word == GRID_ARG, runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = _parse(arg)
  config = default.get_config()
  config.model_name = MODEL
  config.model = ml_collections.ConfigDict(registry.backbone_options(MODEL))
  config.model.width = registry.backbone_options(MODEL)['width'] * WIDTH
  config.model.batch_norm = False
  config.input.dataset = 'fashion_mnist'
  config.input.image_size = 32
  config.input.train_subset = TRAIN_IMAGES
  config.input.validation_per_class = VALIDATION_PER_CLASS
  config.input.test_subset = TEST_IMAGES
  config.input.augment.crop_padding = 0
  config.input.augment.flip_lr = True
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = BASE_LR
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.loss.label_smoothing = 0.0
  config.num_epochs = EPOCHS
  config.eval_every_epochs = 1.0
  config.eval_subset = 1_000
  config.eval_on_train = True
  config.checkpoint_every_steps = 1_000
  return default.shrink(config) if runlocal else config


def variant(batch_norm: bool, lr_multiplier: float, activation: str
            ) -> dict:
  """The overrides of one variant (every member sets all three fields, so
  results.csv has a column for each)."""
  return {'model.batch_norm': batch_norm,
          'optimizer.learning_rate': round(BASE_LR * lr_multiplier, 10),
          'model.activation': activation}


def get_sweep(arg: str | None = None) -> list[dict]:
  grid, runlocal = _parse(arg)
  seeds = SEEDS[:1] if runlocal or grid else SEEDS
  if grid:
    variants = [{'model.batch_norm': False, 'optimizer.learning_rate': lr,
                 'model.activation': 'relu'} for lr in LR_GRID]
  else:
    variants = [variant(*v) for v in VARIANTS]
  return sweep.product(sweep.axis('seed', seeds), variants)


def member_name(overrides: dict) -> str:
  """'bn-relu-lr0.1-seed0': the norm, the activation, the absolute learning
  rate (stable names, whatever BASE_LR becomes) and the seed."""
  norm = 'bn' if overrides['model.batch_norm'] else 'nobn'
  return (f"{norm}-{overrides['model.activation']}-"
          f"lr{overrides['optimizer.learning_rate']:g}-"
          f"seed{overrides['seed']}")
