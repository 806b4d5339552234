"""Activations: one network, eight non-linearities (offline Fashion-MNIST).

    python main.py --config=configs/activations_fmnist.py \
        --workdir=runs/activations_fmnist
    python main.py --config=configs/activations_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/activations_fmnist   # the smoke test

LeNet-5 (cnn/models/lenet.py) *without* batch norm, so that each activation
acts on the raw pre-activations (and SELU can self-normalise: LeCun-normal
kernels, no BN, as Klambauer et al. prescribe; `layers.kernel_init_for`),
with each of `ACTIVATIONS`: ReLU, leaky ReLU (slope 0.01), ELU, SELU, GELU,
tanh, sigmoid and identity (no non-linearity: the whole network is one
linear map, `cnn.fundamentals.compose_conv_kernels`), three seeds each (24
members; seeds are the outer loop).

The recipe is the default experiment's (configs/default.py: AdamW at a peak
3e-3 with a one-cycle schedule, weight decay 5e-4, label smoothing 0.1,
flips) for every activation alike: nothing is tuned per activation, and no
learning rate is chosen on the test split. Adam scales each parameter's step
by its own gradient history, which partly hides the small gradients of
saturating activations: the accuracy gaps are what remains with a modern
optimizer; the gradient norms themselves are logged raw. Data: the first
10,000 training images, `EPOCHS` epochs, the full 10,000-image test set.

Logged for the figure (`cnn.experiments.training_studies.
activations_figure`): the test error every epoch (the first 1,000 test and
training images, the last evaluation all of them: `eval_subset`), the
fraction of exactly-zero activations of each stage over the whole test set
at the end (`log_zero_fraction`: ReLU's sparsity) and each layer's mean
gradient norm between evaluations (`log_grad_norms`).

Time (2026-12-06): one member took 86 s on these 2 cores shared with
several other jobs (load average 8; 37 s of CPU, 20 s of it compiling,
which each activation does once): the 24 members need about 10 min of CPU,
an estimated 10-12 min on idle cores (25-30 min as loaded as that). The
committed run took 19 min, beside three other studies. The committed
result and its figure:
    python main.py --config=configs/activations_fmnist.py \
        --workdir=runs/activations_fmnist    # also writes results.csv
and then, in Python from the repository root:
    from cnn.experiments import analysis, training_studies as t
    analysis.export('runs/activations_fmnist', 'results/activations_fmnist')
    s = analysis.load('results/activations_fmnist')
    t.activations_figure(s, 'results/activations_fmnist/activations.png')
    print(t.activations_table(s))

Full size (an accelerator): all 60,000 training images
(`--config.input.train_subset=0`), `--config.num_epochs=15` (the default
experiment), `--pack=3`; or plain-20 at full width
(`--config=configs/zoo.py:plain20` has BN, which SELU's recipe excludes).

`:runlocal`: the eight activations at seed 0 on 512 images for 2 epochs
(`default.shrink`), named as in the full sweep.
"""

from __future__ import annotations

import ml_collections

from cnn.experiments import sweep
from configs import default

# Seeds trained together (`--pack`): 1 on 2 CPU cores. LeNet-5's packed
# step is 1.4x one member's, but whole members of a few hundred steps lose
# it to the packed program's longer compilation (two LeNet-5 seeds packed:
# 105 s against 59 s one at a time, FINDINGS "Sixth pass"); on an
# accelerator pass --pack=3.
PACK = 1

ACTIVATIONS = ('relu', 'leaky_relu', 'elu', 'selu', 'gelu', 'tanh',
               'sigmoid', 'identity')
SEEDS = (0, 1, 2)
TRAIN_IMAGES = 10_000
EPOCHS = 10.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()  # LeNet-5, its recipe.
  config.model.batch_norm = False
  config.input.dataset = 'fashion_mnist'
  config.input.train_subset = TRAIN_IMAGES
  config.input.test_subset = 0  # all 10,000: zero fractions over the set.
  config.num_epochs = EPOCHS
  config.eval_every_epochs = 1.0
  config.eval_subset = 1_000
  config.eval_on_train = True
  config.log_grad_norms = True
  config.log_zero_fraction = True
  config.checkpoint_every_steps = 1_000
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  return sweep.product(sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
                       sweep.axis('model.activation', ACTIVATIONS))


def member_name(overrides: dict) -> str:
  """'leaky_relu-seed1'."""
  return f"{overrides['model.activation']}-seed{overrides['seed']}"
