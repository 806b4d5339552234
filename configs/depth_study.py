"""Depth vs training error, plain vs residual: He et al. 2016, section 4.2.

    python main.py --config=configs/depth_study.py --workdir=runs/depth_study
    python main.py --config=configs/depth_study.py --workdir=runs/depth_study \
        --member=resnet110-seed0          # one member (a cluster job)
    python main.py --config=configs/depth_study.py --workdir=runs/depth_study \
        --launcher=slurm --slurm_gpus_per_node=1   # a SLURM job array
    python main.py --config=configs/depth_study.py:runlocal \
        --workdir=/tmp/runlocal/depth_study   # the smoke test

The paper's CIFAR-10 protocol, field by field: CIFAR ResNets (6n+2 layers,
16/32/64 filters, option A shortcuts) and their plain twins at depths 20, 32,
44, 56 and 110; SGD with momentum 0.9, weight decay 1e-4, batch 128, learning
rate 0.1 divided by 10 at 32k and 48k iterations, stopped at 64k; ResNet-110
warms up at 0.01 for its first 400 iterations (the paper: until the training
error is below 80 %, about 400 iterations); 4-pixel padding + random 32x32
crop + horizontal flip. For users with CIFAR-10 through tfds and an
accelerator (it downloads CIFAR-10: `--config.input.download=True`).

Differences from the paper, on purpose: it trains on all 50k training images
(the paper's 45k/5k split only chose when to stop) and normalises with the
per-channel mean and standard deviation of the training set instead of
subtracting the per-pixel mean image; no label smoothing (the paper has
none). Three seeds per point (the paper: best of 5 for ResNet-110).

`:runlocal` is the whole study shrunk to a smoke test before the real
launch: the same data and recipe on 512 images for 32 steps at a quarter
width (`default.shrink`), and the extremes of the study, depths 20 and 110
(with its warm-up), plain and residual, seed 0: four members named and laid
out as in the full sweep.
"""

import ml_collections

from cnn.experiments import sweep
from configs import cifar10_resnet20, default

DEPTHS = (20, 32, 44, 56, 110)
SEEDS = (0, 1, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  # The recipe itself (data, SGD, schedule, augmentation) is
  # configs/cifar10_resnet20.py; the study adds the training error.
  config = cifar10_resnet20.get_config()
  config.eval_every_epochs = 4.0
  config.eval_on_train = True
  config.checkpoint_every_steps = 2_000
  return default.shrink(config) if runlocal else config


def warmup(depth: int) -> dict:
  """ResNet-110's (and plain-110's) 400 iterations at 0.01."""
  if depth != 110:
    return {}
  return {'schedule.warmup_steps': 400, 'schedule.warmup_kind': 'constant',
          'schedule.warmup_factor': 0.1}


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  depths = (DEPTHS[0], DEPTHS[-1]) if runlocal else DEPTHS
  nets = sweep.chainit(*(
      [dict(model_name=f'{kind}{d}', **warmup(d))]
      for d in depths for kind in ('plain', 'resnet')))
  return sweep.product(nets, sweep.axis('seed', SEEDS[:1] if runlocal
                                        else SEEDS))


def member_name(overrides: dict) -> str:
  return f"{overrides['model_name']}-seed{overrides['seed']}"
