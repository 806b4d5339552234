"""The classifier-head study (issue #36, study 3) on Fashion-MNIST, 2 CPU cores.

    python main.py --config=configs/heads_fmnist.py --workdir=runs/heads_fmnist
    python main.py --config=configs/heads_fmnist.py \
        --workdir=runs/heads_fmnist --mode=results   # results.csv / .json
    python -c "from cnn.experiments import analysis as a, heads as h; \
      a.export('runs/heads_fmnist', 'results/heads_fmnist'); \
      s = a.load('results/heads_fmnist'); print(h.heads_table(s)); \
      h.heads_figure(s, 'results/heads_fmnist/heads.png')"
    python main.py --config=configs/heads_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/heads_fmnist   # the smoke test
    python main.py --config=configs/heads_fmnist.py:full \
        --workdir=runs/heads_fmnist_full       # the accelerator size

Lecture 002's claims about the classifier head, each on one network:
  (a) VGG's head (flatten -> FC -> FC -> classifier) against GoogLeNet's
      (global average pooling -> classifier): parameters and accuracy. The
      network is a VGG-style trunk (`vgg11_bn_small`'s first three stages,
      1 / 1 / 2 3x3 convs with batch norm and a 2x2 max-pool each, at 16 /
      32 / 64 channels) on 32x32 images (Fashion-MNIST resized), whose last
      map is 4x4x64: the flatten head has 330,762 of the 391,338
      parameters (FC 1,024 -> 256 -> 256 -> 10), the pooled one 650 of
      61,226; the trunk is the same 60,576.
  (b) dropout 0 vs 0.5 in that head (after each hidden FC and before the
      classifier, as VGG and torchvision place it): a 2 x 2 with (a).
  (c) GoogLeNet-small (`googlenet_small`, 28x28 input) without and with its
      two auxiliary classifiers (after 4a and 4d; their loss weighted 0.3 as
      in Szegedy et al.; 70,516 parameters used in training only) at an
      eighth of the paper's channels (96,258 parameters without them).
Three seeds each (seeds the outer loop: a stopped sweep has every variant
for the first seeds), 18 members. Common recipe: the first 5,000 training
images (flips only), AdamW with the one-cycle schedule, no label smoothing
(itself a regulariser of the classifier, it would blur the ones compared);
evaluation every epoch on the first 1,000 test and training images
(`eval_subset`, `eval_on_train`: the training error in eval mode), the last
on all 10,000 test and 5,000 training images. The VGG trunk trains 10
epochs at batch 128 (390 steps); GoogLeNet-small, ~13x slower per image
(many thin convolutions), 2 epochs at batch 64 (156 steps; evaluated every
half epoch), see `GOOGLENET_RECIPE`.

Sizing, measured on this machine while it ran 3-4 other trainings (load
average 7): one VGG member 62 s wall (52 s of CPU), one GoogLeNet member
276 s (228 s of CPU), i.e. 33 CPU-minutes for the 18: about 20 minutes on 2
idle cores (members of one shape share compiled steps within the process).
The committed run took 46 min, beside three other studies.

`:full`, the accelerator-size version (not run here): all 60,000 training
images, 30 epochs for every member at batch 128, GoogLeNet-small at its own
width (0.5). `:runlocal`: the six variants, seed 0, 512 images, 2 epochs at
batch 32 (`default.shrink`), named as in the full sweep.
"""

from __future__ import annotations

import ml_collections

from cnn.experiments import sweep
from cnn.models import registry
from configs import default

VGG = 'vgg11_bn_small'
GOOGLENET = 'googlenet_small'
SEEDS = (0, 1, 2)
TRAIN_IMAGES, EPOCHS = 5_000, 10

# The VGG trunk: the first three of VGG's stages (one, one and two 3x3
# convs with batch norm, each stage ending in a 2x2 max-pool) at a quarter
# of VGG's channels (16, 32, 64), on 32x32 images (Fashion-MNIST's 28x28
# resized: the registered model's minimum): 32 -> 16 -> 8 -> 4 pixels, so
# the flattened map has 4 x 4 x 64 = 1,024 features.
VGG_TRUNK = dict(stage_sizes=(1, 1, 2), widths=(64, 128, 256), width=0.25)
FINAL_MAP = 4  # pixels of the trunk's last map (32 / 2**3).
FC_WIDTH = 256  # units of each hidden FC layer of the flatten head.
# The two heads on that trunk: VGG's (flatten -> fc6 -> fc7 -> classifier;
# `pool_to` at the map's own size pools nothing) and GoogLeNet's (global
# average pooling -> classifier).
HEADS = {
    'flatten_fc': {'model.pool_to': FINAL_MAP,
                   'model.fc': (FC_WIDTH, FC_WIDTH)},
    'gap': {'model.pool_to': None, 'model.fc': ()},
}
# Dropout after each hidden FC and before the classifier (VGG: 0.5).
DROPOUTS = (0.0, 0.5)

# GoogLeNet-small at an eighth of the paper's channels (a quarter of
# googlenet_small's own 0.5, which trains at ~40 images/s here, issue #36)
# on Fashion-MNIST's own 28x28 (inception stages at 28, 14 and 7 pixels; the
# auxiliary heads after 4a and 4d see 14x14 maps). Still ~13x the VGG
# trunk's time per image (many thin convolutions), so it trains for 2 epochs
# of the same 5,000 images, at batch 64 for 156 steps. Not fewer steps:
# after 39 steps the eval-mode test accuracy is at chance (0.10, in a
# 39-step pilot at batch 128 and in this recipe; 0.59 at step 78, 0.80 at
# 156), as expected while batch norm's running variance still remembers its
# initial 1 against the far smaller variance of convolutions with weights
# drawn at std 0.01 (momentum 0.9: 0.9**39 = 0.016, 0.9**78 = 0.0003).
GOOGLENET_WIDTH = 0.125
GOOGLENET_RECIPE = {'input.image_size': 0, 'input.batch_size': 64,
                    'num_epochs': 2.0, 'eval_every_epochs': 0.5}
AUX_WEIGHT = 0.3  # Szegedy et al.: the auxiliary losses' weight.
# `:full`: all training images, this many epochs, GoogLeNet-small's own width.
FULL_EPOCHS, FULL_GOOGLENET_WIDTH = 30, 0.5


def parse_arg(arg: str | None) -> tuple[bool, bool]:
  """(full, runlocal) of `--config=configs/heads_fmnist.py:ARG`: 'full'
  (the accelerator size), 'runlocal' (the smoke test), both or nothing."""
  size, runlocal = default.parse_arg(arg, __file__, "'full'")
  if size not in (None, 'full'):
    raise default.ConfigArgError(
        f'Unknown argument {size!r} in --config=configs/heads_fmnist.py:'
        f"{arg}; valid: 'full', 'runlocal' or both, comma-separated.")
  return size == 'full', runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  full, runlocal = parse_arg(arg)
  config = default.get_config()
  config.model_name = VGG
  config.model = ml_collections.ConfigDict(
      dict(registry.backbone_options(VGG), **VGG_TRUNK))
  config.input.dataset = 'fashion_mnist'
  config.input.image_size = 32
  config.input.train_subset = 0 if full else TRAIN_IMAGES
  config.input.test_subset = 0  # all 10,000 test images at the end.
  # No label smoothing: it is a regulariser of the classifier too, and
  # would blur the effect of the ones compared here (dropout, aux heads).
  config.loss.label_smoothing = 0.0
  config.loss.aux_weight = 0.0  # VGG has no auxiliary heads.
  config.num_epochs = float(FULL_EPOCHS if full else EPOCHS)
  config.eval_every_epochs = 1.0
  config.eval_subset = 1_000
  config.eval_on_train = True
  return default.shrink(config) if runlocal else config


def variants(full: bool = False, runlocal: bool = False) -> list[dict]:
  """The six variants (overrides without the seed): the VGG trunk with
  each head and dropout 0 / 0.5, then GoogLeNet-small without and with its
  auxiliary heads. `full` and `runlocal` give GoogLeNet the base config's
  batch and length (the accelerator's, or the smoke test's few steps)."""
  vgg = sweep.product(
      [dict(model_name=VGG, **head) for head in HEADS.values()],
      [{'model.dropout': d, 'head_dropout': d} for d in DROPOUTS])
  recipe = ({'input.image_size': 0} if full or runlocal else
            GOOGLENET_RECIPE)
  width = FULL_GOOGLENET_WIDTH if full else GOOGLENET_WIDTH
  if runlocal:  # `default.shrink`'s cap, which the override would undo.
    width = min(width, 0.25)
  googlenet = [
      {'model_name': GOOGLENET, 'model.width': width,
       'model.aux_heads': aux, 'loss.aux_weight': AUX_WEIGHT if aux else 0.0,
       **recipe}
      for aux in (False, True)]
  return vgg + googlenet


def get_sweep(arg: str | None = None) -> list[dict]:
  full, runlocal = parse_arg(arg)
  return sweep.product(sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
                       variants(full, runlocal))


def member_name(overrides: dict) -> str:
  """'vgg-flatten_fc-dropout0.5-seed0', 'googlenet-aux0.3-seed1', ..."""
  seed = f"seed{overrides['seed']}"
  if overrides['model_name'] == GOOGLENET:
    aux = (f"aux{overrides['loss.aux_weight']:g}"
           if overrides['model.aux_heads'] else 'noaux')
    return f'googlenet-{aux}-{seed}'
  head = 'gap' if overrides['model.pool_to'] is None else 'flatten_fc'
  return f"vgg-{head}-dropout{overrides['head_dropout']:g}-{seed}"
