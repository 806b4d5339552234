"""Yosinski et al. 2014 on LeNet-5: which layers are general, which specific.

    python main.py --config=configs/transfer_yosinski.py \
        --workdir=runs/transfer_yosinski

The smoke test (`:runlocal`; the source as for configs/transfer_fmnist.py):

    python main.py --config=configs/transfer_source.py:runlocal \
        --workdir=/tmp/runlocal/transfer_source_lenet5
    python main.py --config=configs/transfer_yosinski.py:runlocal \
        --workdir=/tmp/runlocal/transfer_yosinski

Copy the first n parameter groups (n = 0..4 of c1, c3, f5, f6) of the
source network (configs/transfer_source.py: Fashion-MNIST classes 0-4) into
a fresh LeNet-5 and train on the target (classes 5-9, 100 examples per
class), the copied groups either frozen ("AnB": the rest trains from
scratch at 0.01) or fine-tuned with everything ("AnB+", 0.01 throughout).
n = 0 is training from scratch; n = 4 frozen is feature extraction. The
training recipe is configs/transfer_fmnist.py's; 3 seeds. `:runlocal`
keeps seed 0 and n = 0, 1 and 4: five members named as in the full sweep,
shrunk like transfer_fmnist.py's.
"""

import ml_collections

from cnn.experiments import sweep
from configs import default, transfer_fmnist

NUM_GROUPS = 4  # c1, c3, f5, f6 (the pools have none); ResNet-20: 4 too.
SHOTS = 100
SEEDS = (0, 1, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, runlocal = default.parse_arg(arg, __file__)
  config = transfer_fmnist.get_config('runlocal' if runlocal else None)
  config.input.per_class = SHOTS
  config.transfer.pretrained_lr_mult = 1.0
  return config


def _frozen(n: int) -> dict:
  """The first n groups copied and frozen, the others fresh and trained."""
  if n == NUM_GROUPS:
    return {'transfer.regime': 'feature_extraction'}
  return {'transfer.regime': 'fine_tune',
          'transfer.fine_tune_groups': NUM_GROUPS - n}


def get_sweep(arg: str | None = None) -> list[dict]:
  runlocal = default.runlocal_requested(arg, __file__)
  copies = []
  for n in (0, 1, NUM_GROUPS) if runlocal else range(NUM_GROUPS + 1):
    copies.append(dict(_frozen(n), **{'transfer.copy_groups': n}))
    if n:  # n = 0 fine-tuned is the same run as n = 0 frozen.
      copies.append({'transfer.regime': 'full', 'transfer.copy_groups': n})
  return sweep.product(sweep.axis('seed', SEEDS[:1] if runlocal else SEEDS),
                       copies)


def member_name(overrides: dict) -> str:
  kind = 'finetuned' if overrides['transfer.regime'] == 'full' else 'frozen'
  return (f"copy{overrides['transfer.copy_groups']}-{kind}-"
          f"seed{overrides['seed']}")
