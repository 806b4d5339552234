"""ResNet-50 on ImageNet (ILSVRC 2012), streamed: the flax examples/imagenet
recipe.

    python main.py --config=configs/imagenet_resnet50.py \
        --config.input.data_dir=/data/tfds \
        --config.input.manual_dir=/data/imagenet_archives \
        --config.input.download=True --workdir=runs/imagenet_resnet50
    python main.py --config=configs/imagenet_resnet50.py:runlocal \
        --config.input.dataset=folder:/tmp/my_images --workdir=/tmp/r50

SGD with Nesterov momentum 0.9, peak learning rate 0.1 x batch / 256 after
a 5-epoch linear warm-up, then cosine decay to 0 over 90 epochs; weight
decay 1e-4 (kernels), no label smoothing; bfloat16 compute, float32
parameters. Inception-style random-resized crop + flip at 224x224 for
training, resize + centre crop (fraction 0.875) for eval, ImageNet mean/std;
the data are streamed from disk (`input_pipeline/pipelines/streaming.py`).
imagenet2012 needs its archives (ILSVRC2012_img_train.tar,
ILSVRC2012_img_val.tar) in `manual_dir` the first time (tfds prepares
it once into `data_dir`). `:runlocal` is the same recipe shrunk to a CPU
smoke test on any folder of images (set config.input.dataset):
`default.shrink`, then 64x64 images, batch 8, one epoch.
"""

import ml_collections

from cnn.models import registry
from configs import default

BATCH_SIZE = 1024
BASE_LEARNING_RATE = 0.1  # per 256 examples of batch.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.model_name = 'resnet50'
  config.model = ml_collections.ConfigDict(registry.backbone_options(
      'resnet50'))
  config.dtype = 'bfloat16'

  config.input.dataset = 'imagenet2012'
  # ImageNet's "test" is its validation split (tfds: 'validation').
  config.input.batch_size = BATCH_SIZE
  config.input.eval_batch_size = BATCH_SIZE
  config.input.image_size = 224
  config.input.streaming = 'always'
  config.input.preprocess = 'imagenet'
  # The flip is part of the 'imagenet' preprocessing; no batch augmentation.
  config.input.augment.flip_lr = False

  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = BASE_LEARNING_RATE * BATCH_SIZE / 256
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4

  config.schedule.name = 'warmup_cosine'
  config.schedule.warmup_epochs = 5.0
  config.schedule.warmup_kind = 'linear'
  config.schedule.final_fraction = 0.0
  config.loss.label_smoothing = 0.0

  config.num_epochs = 90.0
  config.log_every_steps = 100
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 1000
  if runlocal:
    default.shrink(config)
    config.input.dataset = ''  # set --config.input.dataset=folder:<dir>.
    config.input.batch_size = 8
    config.input.eval_batch_size = 16
    config.input.image_size = 64
    config.optimizer.learning_rate = BASE_LEARNING_RATE * 8 / 256
    config.num_epochs = 1.0
    config.schedule.warmup_epochs = 0.0
    config.log_every_steps = 1
  return config
