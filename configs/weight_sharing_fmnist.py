"""Why weight sharing: LeNet-5 as an MLP, locally connected, and a CNN.

    python main.py --config=configs/weight_sharing_fmnist.py \
        --workdir=runs/weight_sharing_fmnist
    python main.py --config=configs/weight_sharing_fmnist.py \
        --workdir=runs/weight_sharing_fmnist --mode=results
    python main.py --config=configs/weight_sharing_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/weight_sharing_fmnist   # the smoke test

Lectures 000/001: fully connected -> locally connected -> convolution. One
network layout (LeNet-5, `cnn/models/lenet.py`), C1 and C3 in three forms
(`model.connectivity`): 'dense' (fully connected, reshaped to the conv's
maps: the MLP, 5,634,974 weights), 'local' (a 5x5 filter per output
position, 423,038) and 'conv' (shared 5x5 filters, 61,706); the pools, F5,
F6 and the head are the same. Each on the images as they are
(`input.permute_pixels=-1`) and on images whose pixels are shuffled by one
fixed permutation (`input.permute_pixels=0`, every image of every split):
the CNN should lose its edge there, the MLP should not notice. No batch
norm (its per-channel scale and statistics would be shared over positions
in all three) and no flips (a flipped permuted image is no fixed
permutation of the original).

Protocol (2 CPU cores): the first 5,000 Fashion-MNIST training images for
training; 100 images per class held out for validation (1,000: the last
100 of each class of the 60,000-image training split, disjoint from the
5,000); the first 5,000 test images for the test error. AdamW (the
default recipe: one-cycle schedule, weight decay 5e-4, label smoothing
0.1, batch 128: 39 steps an epoch), EPOCHS = 8 epochs, evaluated every
epoch on the first 1,000 test and training images (the last evaluation on
all 5,000 of each) and on the 1,000 validation images. The learning rate
is chosen per network and pixel order on the validation split, never the
test split: each of LEARNING_RATES is trained with 3 seeds and
`cnn.experiments.weight_sharing.select_on_validation` keeps the one with
the lowest mean final validation error. 3 x 2 x 2 x 3 = 36 members, seeds
the outer loop (a stopped sweep already has every cell for the first
seeds); names like `conv-natural-lr0.003-seed0`.

Time, measured on 2 CPU cores that other jobs kept at a load of 8-11:
whole 8-epoch members took 40 s (conv, lr 3e-3, its compilation
included), 33 s (conv, lr 1e-3) and 65 s (dense) in one process; 2 seeds
x 3 epochs per network showed the compilation (13 / 22 / 9 s for dense /
local / conv, once per network, pixel order and learning rate: 12
programs, shared by the seeds) and then 9.7 / 8.7 / 2.3 s an epoch (the
last, evaluating all 5,000 + 5,000 images, 3-4 s more). Estimate for the
36 members: 27-40 minutes at that load. Those runs used 0.4-0.5 of a core
on average (user + sys against wall), so on 2 idle cores about 10-16
minutes. 10 epochs would add a quarter. The committed run took 28 min,
beside three other studies.

Pilot (seed 0, natural pixels, 8 epochs): test accuracy CNN 85.1 % (lr
3e-3; 81.4 % at 1e-3), MLP 85.8 % (3e-3; validation 86.2 vs 85.7 %): at
this budget the CNN's edge on natural pixels is small or absent. After 3
epochs on permuted pixels (lr 1e-3, 2 seeds) the test error was MLP 16.2,
locally connected 20.7, CNN 28.1 %: what the permutation costs each.

The committed result (results/weight_sharing_fmnist/), after the two
commands above:

    python -c "from cnn.experiments import analysis as a, weight_sharing as w; \
      from input_pipeline.sources import datasets; \
      r = 'results/weight_sharing_fmnist'; \
      a.export('runs/weight_sharing_fmnist', r); s = a.load(r); \
      w.weight_sharing_figure(s, f'{r}/weight_sharing.png'); \
      print(w.weight_sharing_table(s)); \
      x, _ = datasets.load_split('fashion_mnist', 'train', subset=5000); \
      w.pixel_correlation_figure(x, f'{r}/pixel_correlation.png')"

Full size, on an accelerator: all 60,000 training images less
`--config.input.validation_per_class=600` held out, the full test set,
30 epochs, `--pack=3` (the seeds of a cell in one step):

    python main.py --config=configs/weight_sharing_fmnist.py \
        --workdir=runs/weight_sharing_fmnist_full --pack=3 \
        --config.input.train_subset=0 --config.input.test_subset=0 \
        --config.input.validation_per_class=600 --config.num_epochs=30

(a third learning rate, 3e-4, goes into LEARNING_RATES). `:runlocal`:
seed 0, the three networks x both pixel orders x both learning rates (12
members named as in the full sweep), 512 images for 2 epochs
(`default.shrink`).
"""

import ml_collections

from cnn.experiments import sweep
from configs import default

# C1/C3 of LeNet-5: fully connected (the MLP), locally connected, shared.
CONNECTIVITIES = ('dense', 'local', 'conv')
# `input.permute_pixels`: -1 the images as they are; >= 0 the seed of the
# one permutation every permuted member shares.
PIXEL_ORDERS = {'natural': -1, 'permuted': 0}
LEARNING_RATES = (1e-3, 3e-3)  # AdamW peaks; chosen on validation.
SEEDS = (0, 1, 2)
TRAIN_IMAGES, TEST_IMAGES, VALIDATION_PER_CLASS = 5_000, 5_000, 100
EPOCHS = 8  # what fits 20 minutes of 2 cores (module docstring).
# Seeds trained together (`--pack`): 1, not measured for this study (on 2
# CPU cores packing paid 0.6x for the depth study's ResNets); on an
# accelerator pass --pack=3.
PACK = 1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.model.batch_norm = False
  config.input.dataset = 'fashion_mnist'
  config.input.train_subset = TRAIN_IMAGES
  config.input.test_subset = TEST_IMAGES
  config.input.validation_per_class = VALIDATION_PER_CLASS
  config.input.augment.flip_lr = False
  config.num_epochs = float(EPOCHS)
  config.eval_every_epochs = 1.0
  config.eval_subset = 1_000
  config.eval_on_train = True
  config.checkpoint_every_steps = 10_000  # and one at every evaluation.
  # The MLP's checkpoint is 68 MB (5.6 M weights and AdamW's two moments).
  config.keep_checkpoints = 1
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  return sweep.product(
      sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
      sweep.axis('model.connectivity', CONNECTIVITIES),
      sweep.axis('input.permute_pixels', PIXEL_ORDERS.values()),
      sweep.axis('optimizer.learning_rate', LEARNING_RATES))


def pixel_order(permute_pixels: int) -> str:
  """'natural' (-1) or 'permuted' (a permutation seed >= 0)."""
  return 'permuted' if permute_pixels >= 0 else 'natural'


def member_name(overrides: dict) -> str:
  return (f"{overrides['model.connectivity']}-"
          f"{pixel_order(overrides['input.permute_pixels'])}-"
          f"lr{overrides['optimizer.learning_rate']:g}-"
          f"seed{overrides['seed']}")
