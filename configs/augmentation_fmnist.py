"""Data augmentation and the generalisation gap (issue #36, study 1).

    python main.py --config=configs/augmentation_fmnist.py \
        --workdir=runs/augmentation_fmnist
    python main.py --config=configs/augmentation_fmnist.py \
        --workdir=runs/augmentation_fmnist --mode=results
    python main.py --config=configs/augmentation_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/augmentation_fmnist   # the smoke test

Lecture 002, "effect of data augmentation". LeNet-5 (the default recipe:
batch norm, ReLU, AdamW one-cycle, label smoothing 0.1, batch 128) on a
small Fashion-MNIST training subset, with the augmentations of
`cnn.experiments.augmentation.AUGMENTATIONS` (`config.input.augment`):
  part 1, the first 2,000 training images: none, each augmentation alone
    (random crop ±2 px, left-right flip, up-down flip, rotation ±10°, zoom
    0.9-1.1, brightness ±0.1, contrast 0.8-1.2, Gaussian noise σ 0.1) and
    all of them together: 10 members a seed;
  part 2, none vs all at 1,000, 5,000 and 20,000 images (2,000 is part
    1's): 6 members a seed;
3 seeds, seeds the outer loop: 48 members, named like `rotation-n2000-seed1`
and `all-n20000-seed0`. Fashion-MNIST's items are centred and upright, so
flips and crops may help less than on natural images (the up-down flip
makes images the test set never shows).

Training length: a fixed number of epochs per training-set size (EPOCHS),
more for the smaller sets, so that every size is trained to convergence
(its training error flat by the end of the one-cycle schedule) at a
bounded cost: 60 / 40 / 24 / 12 epochs for 1,000 / 2,000 / 5,000 / 20,000
images (about 470, 625, 940 and 1,880 steps). A fixed number of steps for
all sizes would spend on the smallest sets what the largest one needs.
Evaluated every 2 epochs on the first 1,000 test and training images
(`eval_subset`), the last evaluation on all 10,000 test images and all the
training images; the training error is measured in eval mode without
augmentation (`eval_on_train`), so the gap = test error - training error.
Measured here (2 CPU cores shared with five other trainings): see
MEASURED; about 12 minutes on the 2 cores unshared, 50 under that load.
The committed run took 35 min, beside two to three other studies.

The committed result (results/augmentation_fmnist/), after the first two
commands:

    python -c "from cnn.experiments import analysis as a, augmentation as g; \
      a.export('runs/augmentation_fmnist', 'results/augmentation_fmnist'); \
      s = a.load('results/augmentation_fmnist'); \
      g.augmentation_figure(s, \
        'results/augmentation_fmnist/augmentation.png'); \
      print(g.augmentation_table(s))"

Full size, on an accelerator: the same sweep with part 2 extended to all
60,000 images (add 60000: 6 epochs to EPOCHS) and `--pack=3`:

    python main.py --config=configs/augmentation_fmnist.py \
        --workdir=runs/augmentation_fmnist_full --pack=3

`:runlocal`: seed 0, part 1's none, crop and all (3 members named as in the
full sweep), 512 images for 2 epochs (`default.shrink`).
"""

import ml_collections

from cnn.experiments import augmentation, sweep
from configs import default

# Part 1's training-set size: the base config's; part 2 overrides it.
TRAIN_IMAGES = 2_000
# Epochs per training-set size (see the docstring).
EPOCHS = {1_000: 60, 2_000: 40, 5_000: 24, 20_000: 12}
PART1 = tuple(augmentation.AUGMENTATIONS)  # none, each alone, all.
PART2 = ('none', 'all')
PART2_SIZES = (1_000, 5_000, 20_000)
SEEDS = (0, 1, 2)
EVAL_EVERY_EPOCHS = 2.0
# Seeds trained together (`--pack`): 1 on 2 CPU cores. LeNet-5's packed
# step is 1.4x one member's, but whole members of a few hundred steps lose
# it to the packed program's longer compilation (two LeNet-5 seeds packed:
# 105 s against 59 s one at a time, FINDINGS "Sixth pass"); on an
# accelerator pass --pack=3.
PACK = 1
# Measured on the 2 CPU cores while five other trainings shared them (load
# average ~9.5), `all-n2000-seed0` and `none-n2000-seed0` for 6 epochs:
# seconds per epoch of 2,000 images (training + evaluations every 2 epochs)
# and the first compilation of a member's programs. The study trains 4.9
# million images (2.4 M in part 1, 2.5 M in part 2): ~50 min under that
# load; the unloaded cores train LeNet-5 ~6x faster (benchmarks/FINDINGS.md:
# ~18,000 images/s against the ~2,500 measured here), i.e. ~10 min, ~12
# with the 16 compilations.
MEASURED = dict(load_average=9.5, epoch_s={'none': 1.25, 'all': 1.2},
                compile_s={'none': 14.0, 'all': 21.2})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.input.dataset = 'fashion_mnist'
  config.input.train_subset = TRAIN_IMAGES
  config.input.test_subset = 0  # all 10,000 at the last evaluation.
  # Every augmentation off: the members switch theirs on.
  config.input.augment.flip_lr = False
  config.input.augment.crop_padding = 0
  config.num_epochs = float(EPOCHS[TRAIN_IMAGES])
  config.eval_every_epochs = EVAL_EVERY_EPOCHS
  config.eval_subset = 1_000
  config.eval_on_train = True
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  seeds = SEEDS[:1] if runlocal else SEEDS
  # Part 1 keeps the base config's size and epochs (so `:runlocal` shrinks
  # them); part 2 sets both.
  part1 = [augmentation.overrides_of(a) for a in PART1]
  part2 = sweep.product(
      [{'input.train_subset': n, 'num_epochs': float(EPOCHS[n])}
       for n in PART2_SIZES],
      [augmentation.overrides_of(a) for a in PART2])
  if runlocal:
    return sweep.product(sweep.axis('seed', seeds), [
        augmentation.overrides_of(a) for a in ('none', 'crop', 'all')])
  return sweep.product(sweep.axis('seed', seeds),
                       sweep.chainit(part1, part2))


def member_name(overrides: dict) -> str:
  size = overrides.get('input.train_subset', TRAIN_IMAGES)
  return (f'{augmentation.augmentation_of(overrides) or "custom"}-n{size}-'
          f"seed{overrides['seed']}")
