"""Pooling and shift invariance (issue #36, study 2) on Fashion-MNIST.

    python main.py --config=configs/pooling_fmnist.py \
        --workdir=runs/pooling_fmnist
    python -m cnn.experiments.shift_consistency runs/pooling_fmnist
    python main.py --config=configs/pooling_fmnist.py \
        --workdir=runs/pooling_fmnist --mode=results
    python main.py --config=configs/pooling_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/pooling_fmnist   # the smoke test

Lecture 002: "a small distortion will not change the output of pooling";
lecture 001: convolution is equivariant, pooling makes it invariant. The
committed inspection of LeNet-5 (results/inspect/lenet5) found a 1-pixel
shift changing the S2 max-pool output by 0.55 (relative L2) and the
predicted class of 8 % of the test images. Here LeNet-5 with its S2/S4
subsampling as (`model.pool`):
  max      2x2 max pooling, stride 2 (the default),
  avg      2x2 average pooling, stride 2,
  strided  a learned 2x2 stride-2 convolution instead of pooling,
  blur     Zhang (2019)'s anti-aliased max pool: 2x2 max at stride 1, then
           a [1, 2, 1] x [1, 2, 1] / 16 blur sampled at stride 2
           (`cnn.layers.Pool`),
each trained without and with random translations (`input.augment.
crop_padding`: zero-pad by 2 pixels and crop back at a random offset, i.e.
shifts of up to ±2 pixels in each direction), 3 seeds: 4 x 2 x 3 = 24
members, seeds the outer loop, named like `blur-shift2-seed1` and
`max-noshift-seed0`. No other augmentation (no flips), so the translation is
the only difference between the two halves; otherwise the default recipe
(batch norm, ReLU, AdamW one-cycle, label smoothing 0.1, batch 128).

Protocol: the first TRAIN_IMAGES Fashion-MNIST training images, EPOCHS
epochs, evaluated every epoch on the first 1,000 test and training images
(`eval_subset`; the training images in eval mode, without augmentation:
`eval_on_train`), the last evaluation on all 10,000 test and all training
images. Then `cnn.experiments.shift_consistency.measure_sweep` (the second
command) writes each member's `shift_consistency.json`: over all 10,000 test
images, the fraction whose predicted class is unchanged by a circular shift
of k = 1..8 pixels (the inspection mode's measure, the mean of right and
down shifts), and each stage's relative L2 change. The committed run
(2026-12-06, 2 CPU cores shared with three other studies): 12 min of
training for the 24 members, then 13 min of measuring; per-epoch and
compile times in MEASURED.

The committed result (results/pooling_fmnist/), after the commands above:

    python -c "from cnn.experiments import analysis as a, \
      shift_consistency as s; \
      a.export('runs/pooling_fmnist', 'results/pooling_fmnist'); \
      s.shift_consistency_figure('results/pooling_fmnist', \
        'results/pooling_fmnist/shift_consistency.png'); \
      print(a.pivot_table(a.load('results/pooling_fmnist'), \
        ['model.pool'], 'input.augment.crop_padding'))"

(`analysis.export` copies a member's `shift_consistency.json` only where
`analysis.MEMBER_FILES` lists it.)

Full size, on an accelerator: all 60,000 training images, 30 epochs,
`--pack=3`:

    python main.py --config=configs/pooling_fmnist.py \
        --workdir=runs/pooling_fmnist_full --pack=3 \
        --config.input.train_subset=0 --config.num_epochs=30

`:runlocal`: seed 0, the four pools with and without translation (8 members
named as in the full sweep), 512 images for 2 epochs (`default.shrink`).
"""

import ml_collections

from cnn.experiments import sweep
from configs import default

POOLS = ('max', 'avg', 'strided', 'blur')
# `input.augment.crop_padding`: 0 none; p > 0 random shifts of up to ±p px.
TRANSLATIONS = (0, 2)
SEEDS = (0, 1, 2)
TRAIN_IMAGES, EPOCHS = 5_000, 10
# Seeds trained together (`--pack`): 1 on 2 CPU cores. LeNet-5's packed
# step is 1.4x one member's, but whole members of a few hundred steps lose
# it to the packed program's longer compilation (two LeNet-5 seeds packed:
# 105 s against 59 s one at a time, FINDINGS "Sixth pass"); on an
# accelerator pass --pack=3.
PACK = 1
# Measured on the 2 CPU cores while five other trainings shared them (load
# average 8.4-9.8), one member for 3 epochs each: seconds per epoch
# (training + the two 1,000-image evaluations), the first compilation of a
# member's programs, and `shift_consistency.measure` per member (10,000 test
# images x 9 shifts x 2 directions; ~20 s of CPU). The whole study from
# these: ~16 min of training + ~20 min of measurement under that load; the
# unloaded cores train LeNet-5 ~6x faster (benchmarks/FINDINGS.md: ~18,000
# images/s against the ~2,500 measured here), i.e. ~3 + ~5 min.
MEASURED = dict(load_average=9.8, epoch_s={'max': 2.65, 'blur': 3.9},
                compile_s={'max': 11.5, 'blur': 27.3},
                shift_consistency_s=50.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.input.dataset = 'fashion_mnist'
  config.input.train_subset = TRAIN_IMAGES
  config.input.test_subset = 0  # all 10,000 at the last evaluation.
  config.input.augment.flip_lr = False  # translation is the only one.
  config.input.augment.crop_padding = 0
  config.num_epochs = float(EPOCHS)
  config.eval_every_epochs = 1.0
  config.eval_subset = 1_000
  config.eval_on_train = True
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  return sweep.product(
      sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
      sweep.axis('model.pool', POOLS),
      sweep.axis('input.augment.crop_padding', TRANSLATIONS))


def translation_name(crop_padding: int) -> str:
  """'noshift' (0) or 'shift<p>' (random shifts of up to ±p pixels)."""
  return f'shift{crop_padding}' if crop_padding else 'noshift'


def member_name(overrides: dict) -> str:
  return (f"{overrides['model.pool']}-"
          f"{translation_name(overrides['input.augment.crop_padding'])}-"
          f"seed{overrides['seed']}")
