"""ResNet-20 on CIFAR-10: He et al. (2016), section 4.2.

    python main.py --config=configs/cifar10_resnet20.py \
        --config.input.download=True --workdir=runs/cifar10_resnet20
    python main.py --config=configs/cifar10_resnet20.py:runlocal \
        --config.input.download=True --workdir=/tmp/runlocal/cifar10_resnet20

SGD momentum 0.9, learning rate 0.1 divided by 10 at 32k and 48k steps,
64k steps of batch 128 (about 164 epochs), weight decay 1e-4, 4-pixel
padded random crops + horizontal flips, no label smoothing. CIFAR-10
(150 MB decoded) stays in memory (`config.input.streaming='auto'` streams
only data sets above `stream_threshold_bytes`); it needs tfds' cifar10
prepared in `data_dir` (or download=True with network). `:runlocal` is the
same recipe in seconds (`default.shrink`: 512 images, 32 steps, width 0.25).
"""

import ml_collections

from cnn.models import registry
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.model_name = 'resnet20'
  config.model = ml_collections.ConfigDict(registry.backbone_options(
      'resnet20'))
  config.input.dataset = 'cifar10'
  config.input.batch_size = 128
  config.input.eval_batch_size = 1000
  config.input.augment.crop_padding = 4
  config.input.augment.flip_lr = True

  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4

  config.schedule.name = 'step'
  config.schedule.decay_steps = (32_000, 48_000)
  config.schedule.decay_factor = 0.1
  config.loss.label_smoothing = 0.0

  config.num_train_steps = 64_000
  config.eval_every_epochs = 5.0
  return default.shrink(config) if runlocal else config
