"""Two stacked 3x3 convolutions vs one 5x5 (and the controls), on CIFAR-10.

    python main.py --config=configs/receptive_field.py \
        --workdir=runs/receptive_field
    python main.py --config=configs/receptive_field.py:runlocal \
        --workdir=/tmp/runlocal/receptive_field   # the smoke test

One network (`cnn/models/kernel_stack.py`: a 3x3 stem, three stages of
conv -> BN -> ReLU layouts at one width, 2x2 max-pools between them, global
average pooling) in four forms, registered as:
  kstack_5x5          one 5x5 conv per stage                (25 C^2 a stage)
  kstack_3x3x2        two stacked 3x3 convs per stage       (18 C^2, same
                      receptive field, one more non-linearity)
  kstack_3x3          one 3x3 conv per stage (control: smaller field)
  kstack_5x5_matched  one 5x5 conv per stage at width C * sqrt(18/25), about
                      the weights of the 3x3 stack
Three seeds each; parameters, multiply-adds and receptive fields come from
`cnn.summary` in the sweep's results.csv. It downloads CIFAR-10 through tfds
(`--config.input.download=True`). `:runlocal`: the four forms, seed 0, on
512 images for 2 epochs (`default.shrink`; the widths stay the study's).
"""

import ml_collections

from cnn.experiments import sweep
from cnn.models import registry
from configs import default

MODELS = ('kstack_5x5', 'kstack_3x3x2', 'kstack_3x3', 'kstack_5x5_matched')
SEEDS = (0, 1, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.model_name = 'kstack_3x3x2'
  config.model = ml_collections.ConfigDict(
      registry.backbone_options('kstack_3x3x2'))
  config.input.dataset = 'cifar10'
  config.input.augment.crop_padding = 4
  config.input.augment.flip_lr = True
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.1
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.loss.label_smoothing = 0.0
  config.num_epochs = 30.0
  config.eval_on_train = True
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  return sweep.product(sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
                       sweep.axis('model_name', MODELS))


def member_name(overrides: dict) -> str:
  return f"{overrides['model_name']}-seed{overrides['seed']}"
