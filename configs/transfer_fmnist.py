"""The lectures' 2x2 transfer guidance table, measured offline.

    python main.py --config=configs/transfer_source.py \
        --workdir=runs/transfer_source_lenet5
    python main.py --config=configs/transfer_fmnist.py \
        --workdir=runs/transfer_fmnist

The smoke test, about three minutes on 2 CPU cores (`:runlocal`: the
source and every member shrunk by `default.shrink`, 32 steps each):

    python main.py --config=configs/transfer_source.py:runlocal \
        --workdir=/tmp/runlocal/transfer_source_lenet5
    python main.py --config=configs/transfer_fmnist.py:runlocal \
        --workdir=/tmp/runlocal/transfer_fmnist

Source: LeNet-5 trained on Fashion-MNIST classes 0-4
(configs/transfer_source.py). Targets: Fashion-MNIST classes 5-9 (Sandal,
Shirt, Sneaker, Bag, Ankle boot: the *similar* domain) and scikit-learn's
8x8 digits resized to 28x28 (a *different* domain), with 10, 100 and 1,000
training examples per class (digits has about 143 per class: "1000" is all
of them), under each regime of `cnn.transfer.regimes`:
  scratch             random initialisation (the baseline);
  feature_extraction  the pretrained backbone frozen, a new head;
  fine_tune           the last two parameter groups (f5, f6) at 0.001, the
                      head at 0.01, the convolutions frozen;
  full                everything from the pretrained start at 0.01.
Every member trains 300 SGD steps (batch 50, momentum 0.9, cosine from
0.01, no augmentation) whatever its data size, and is evaluated once at the
end on the target's whole test split (5,000 / 360 images); 3 seeds (the
seed draws the head's initialisation and the batch order; the examples per
class are the first N of the split, the same for every seed). The batch
norms of frozen groups run in eval mode (the source's running statistics,
kept); those of trained groups normalise with batch statistics and update
their running ones on the target. `:runlocal` starts from
RUNLOCAL_SOURCE_WORKDIR (`--config.init_from` for another) and keeps seed 0,
both targets, 10 and 1000 shots (the examples of the first 512 images) and
the four regimes: 16 members named as in the full sweep.
"""

import ml_collections

from cnn.experiments import sweep
from configs import default

SOURCE_WORKDIR = 'runs/transfer_source_lenet5'
# configs/transfer_source.py:runlocal's workdir in its docstring's command.
RUNLOCAL_SOURCE_WORKDIR = '/tmp/runlocal/transfer_source_lenet5'
TARGETS = {
    'fmnist59': dict(dataset='fashion_mnist', classes=(5, 6, 7, 8, 9),
                     image_size=0),
    'digits': dict(dataset='digits', classes=(), image_size=28),
}
SHOTS = (10, 100, 1000)
REGIMES = ('scratch', 'feature_extraction', 'fine_tune', 'full')
SEEDS = (0, 1, 2)
STEPS = 300
# Seeds trained together (`--pack`): 1. Two seeds of one cell packed took
# 105 s against 59 s one at a time on 2 CPU cores (the same metrics): the
# packed program's compilation outweighs 300 short steps (FINDINGS "Sixth
# pass"). On an accelerator try --pack=3.
PACK = 1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = default.get_config()
  config.init_from = RUNLOCAL_SOURCE_WORKDIR if runlocal else SOURCE_WORKDIR
  config.input.classes = TARGETS['fmnist59']['classes']
  config.input.batch_size = 50
  config.input.augment.flip_lr = False
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.loss.label_smoothing = 0.0
  config.transfer.fine_tune_groups = 2
  config.transfer.pretrained_lr_mult = 0.1
  config.transfer.freeze_batch_stats = True  # frozen groups: eval mode.
  config.num_train_steps = STEPS
  config.eval_every_epochs = 1e9  # once, at the end.
  config.eval_on_train = True
  config.checkpoint_every_steps = 10 * STEPS
  config.keep_checkpoints = 1
  return default.shrink(config) if runlocal else config


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  targets = [{'input.dataset': t['dataset'], 'input.classes': t['classes'],
              'input.image_size': t['image_size']} for t in TARGETS.values()]
  return sweep.product(
      sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS), targets,
      sweep.axis('input.per_class', (SHOTS[0], SHOTS[-1]) if runlocal
                 else SHOTS),
      sweep.axis('transfer.regime', REGIMES))


def member_name(overrides: dict) -> str:
  target = next(k for k, t in TARGETS.items()
                if t['dataset'] == overrides['input.dataset'])
  return (f"{target}-shots{overrides['input.per_class']}-"
          f"{overrides['transfer.regime']}-seed{overrides['seed']}")
