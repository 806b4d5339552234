"""Gradient flow: plain-56 vs ResNet-56, ReLU vs sigmoid (Fashion-MNIST).

    python main.py --config=configs/gradient_flow_fmnist.py \
        --workdir=runs/gradient_flow_fmnist
    python main.py --config=configs/gradient_flow_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/gradient_flow_fmnist   # the smoke test

The vanishing-gradient story of why residual connections and ReLUs work, as
per-layer gradient norms: the CIFAR ResNet-56 of He et al. (option A
shortcuts) and its plain twin plain-56 (the same 55 convolutions and batch
norms, no shortcuts), each with ReLU and with sigmoid (`model.activation`,
every activation of the net), three seeds each (12 members; seeds are the
outer loop). `log_grad_norms` records, at every evaluation, the mean L2 norm
of each layer's gradient since the previous one (`grad_norm/<module>` in
metrics.jsonl), which `cnn.experiments.training_studies.
gradient_flow_figure` draws against the layer index at the first, middle
and last evaluation.

Note: these nets always have batch norm (conv -> BN -> activation), and a
block's activation comes after the addition (He et al.'s post-activation
block), so in ResNet-56 with sigmoid the identity path itself passes through
27 sigmoids.

The recipe is configs/depth_study_fmnist.py's (the first 5,000 training
images, flips, SGD with momentum 0.9, weight decay 1e-4, batch 128, quarter
width: 4/8/16 filters) for only `EPOCHS` epochs at its initial learning
rate 0.1 (the run ends before He et al.'s first decay): gradients tell their
story early, and one learning rate keeps the evaluations comparable. An
evaluation every half epoch (the first 1,000 test and training images, the
last one 5,000 of each: `eval_subset`).

Time (2026-12-06): one epoch of plain-56 (sigmoid) took 118 s on these 2
cores shared with several other jobs (load average 9; 46 s of CPU, 45 s of
wall time compiling, which each network does once); with the depth study's
rate beside one background run (about 500 images/s for a 56-layer net), a
4-epoch member takes about 75 s and the 12 about 18 min. The committed
run took 30 min, beside three other studies. The committed result and its
figure:
    python main.py --config=configs/gradient_flow_fmnist.py \
        --workdir=runs/gradient_flow_fmnist  # also writes results.csv
and then, in Python from the repository root:
    from cnn.experiments import analysis, training_studies as t
    analysis.export('runs/gradient_flow_fmnist', 'results/gradient_flow_fmnist')
    s = analysis.load('results/gradient_flow_fmnist')
    t.gradient_flow_figure(s, 'results/gradient_flow_fmnist/flow.png')
    print(t.gradient_flow_table(s))

Full size (an accelerator): `--config.model.width=1.0`, CIFAR-10
(`--config.input.dataset=cifar10 --config.input.download=True
--config.input.train_subset=0 --config.input.augment.crop_padding=4`) and
`--config.num_train_steps=3910` (10 epochs of 50,000), `--pack=3`.

`:runlocal`: the four networks at seed 0 on 512 images for 32 steps
(`default.shrink`), named as in the full sweep.
"""

from __future__ import annotations

import ml_collections

from cnn.experiments import sweep
from cnn.models import registry
from configs import default, depth_study_fmnist

# Seeds trained together (`--pack`): 1 on 2 CPU cores (see
# configs/depth_study_fmnist.py); --pack=3 on an accelerator.
PACK = 1

MODELS = ('plain56', 'resnet56')
ACTIVATIONS = ('relu', 'sigmoid')
SEEDS = (0, 1, 2)
EPOCHS = 4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = depth_study_fmnist.get_config()
  config.model_name = MODELS[-1]
  config.model = ml_collections.ConfigDict(dict(
      registry.backbone_options(MODELS[-1]), width=config.model.width))
  steps_per_epoch = (depth_study_fmnist.TRAIN_IMAGES
                     // depth_study_fmnist.BATCH)
  config.num_train_steps = EPOCHS * steps_per_epoch
  config.schedule.name = 'constant'  # 0.1 throughout: before any decay.
  config.schedule.decay_steps = ()
  config.eval_every_epochs = 0.5
  config.eval_subset = 1_000
  config.eval_on_train = True
  config.log_grad_norms = True
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  return sweep.product(sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
                       sweep.axis('model_name', MODELS),
                       sweep.axis('model.activation', ACTIVATIONS))


def member_name(overrides: dict) -> str:
  """'plain56-sigmoid-seed2'."""
  return (f"{overrides['model_name']}-{overrides['model.activation']}-"
          f"seed{overrides['seed']}")
