"""LeNet-5 on Fashion-MNIST, offline: the default experiment.

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/default.py:runlocal --workdir=/tmp/tiny

The recipe (batch norm after both convolutions, ReLU, max-pool, random
horizontal flips, label smoothing 0.1, AdamW with a one-cycle schedule) keeps
the seeds' LeNet-5 sizes (61,706 weights; batch norm replaces the two conv
biases by 44 scale/shift parameters) and reaches >= 91 % test accuracy.
Other configs start from this one and change a few fields. `:runlocal` is
the same experiment shrunk to seconds (512 training examples, 2 epochs): the
tests build from it.

Every config file takes `:runlocal` the same way (`shrink` below; a sweep
also keeps few of its members, `runlocal_requested`), and reads its
`--config=FILE:ARG` with `parse_arg`.
"""

import os

import ml_collections
from absl import flags

from cnn.models import registry

# Arguments of `get_config` (`--config=configs/default.py:<variant>`).
VARIANTS = ('runlocal',)
# runlocal: 512 training examples at batch 32 for 2 epochs.
RUNLOCAL_STEPS = 32


class ConfigArgError(flags.IllegalFlagValueError):
  """An ARG of `--config=FILE:ARG` that FILE does not take.

  A flag error, not a ValueError: ml_collections wraps a ValueError raised by
  `get_config` in its traceback, while main.py prints a flag error as one
  `error:` line.
  """


def parse_arg(arg: str | None, config_file: str,
              value: str | None = None) -> tuple[str | None, bool]:
  """(value, runlocal) of `--config=config_file:ARG`.

  Args:
    arg: ARG, comma-separated words (None or '' for none): 'runlocal' and,
      for a file that takes one, one other word (configs/zoo.py's model
      name: `zoo.py:resnet20,runlocal`).
    config_file: the config file's path (`__file__`), for the message.
    value: what the other word is ('a model name'), or None when the file
      takes none.

  Returns:
    (the other word or None, whether 'runlocal' was given).

  Raises:
    ConfigArgError: an unknown word; the message lists the valid ones.
  """
  words = [w.strip() for w in (arg or '').split(',') if w.strip()]
  others = [w for w in words if w not in VARIANTS]
  if len(others) > (1 if value else 0):
    name = f'configs/{os.path.basename(config_file)}'
    variants = ', '.join(map(repr, VARIANTS))
    valid = (f'{value}, {variants} or both, comma-separated' if value else
             f'{variants} or nothing')
    raise ConfigArgError(f'Unknown argument {others[-1]!r} in '
                         f'--config={name}:{arg}; valid: {valid}.')
  return (others[0] if others else None), 'runlocal' in words


def runlocal_requested(arg: str | None, config_file: str) -> bool:
  """Whether a sweep config's `get_sweep(arg)` lists its runlocal members
  (main.py passes the ARG of `--config=FILE:ARG` to `get_sweep` as it does
  to `get_config`)."""
  return parse_arg(arg, config_file)[1]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default experiment; every field is listed here (configs are locked).

  Args:
    arg: None for the full run, or 'runlocal' for the same config shrunk to
      a few seconds of CPU (`--config=configs/default.py:runlocal`).
  """
  _, runlocal = parse_arg(arg, __file__)
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: a registry name plus every option of its backbone (`python -m
  # cnn.summary --list` lists names). To switch model, use a config made for
  # it (e.g. configs/zoo.py:resnet20), whose `model` section has that
  # model's options.
  config.model_name = 'lenet5'
  config.model = ml_collections.ConfigDict(
      dict(registry.backbone_options('lenet5'), batch_norm=True))
  config.dtype = 'float32'  # compute dtype: 'float32' or 'bfloat16'.
  # How convolutions are computed ('auto', 'xla', 'banded', 'onednn'; or env
  # CNN_CONV_IMPL): not part of the experiment.
  config.conv_impl = 'auto'
  config.head_dropout = -1.0  # < 0: the model's own default.

  config.input = ml_collections.ConfigDict()
  config.input.dataset = 'fashion_mnist'  # local IDX; any tfds name online.
  config.input.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.input.manual_dir = ml_collections.FieldReference(None, field_type=str)
  config.input.download = False  # tfds names only: allow tfds to download.
  config.input.pipeline = 'device'  # 'device' (no TF) or 'tfdata'.
  config.input.batch_size = 128  # global, over all devices and processes.
  config.input.eval_batch_size = 1000
  config.input.train_subset = 0  # first N training examples (0 = all).
  config.input.test_subset = 0
  # Transfer tasks: keep these class ids, relabelled 0..k-1 (() = all), and
  # the first N training examples of each (0 = all); input_pipeline.sources.class_subset.
  config.input.classes = ml_collections.FieldReference((), field_type=tuple)
  config.input.per_class = 0
  # A validation split held out of the training images, class-balanced:
  # N examples per class, or a fraction of each class (0 = none); it is
  # never the test split. Evaluated as `validation_*` in metrics.jsonl.
  config.input.validation_per_class = 0
  config.input.validation_fraction = 0.0
  # -1: per_class and validation take each class's first examples (nested
  # subsets); >= 0: drawn per class with this seed (set it with the run's
  # seed so seeds resample the few examples).
  config.input.sample_seed = -1
  # >= 0: every image of every split has its pixels shuffled by one fixed
  # permutation drawn with this seed (the weight-sharing study: a network
  # that assumes nearby pixels belong together loses that prior; an MLP
  # does not notice). -1 = the images as they are.
  config.input.permute_pixels = -1
  config.input.image_size = 0  # 0 = native size.
  # Stream from disk instead of holding the split in memory: 'auto' (tfds
  # names whose decoded train split exceeds stream_threshold_bytes; folders
  # always), 'always' or 'never'. A streamed source ignores `pipeline`.
  config.input.streaming = 'auto'
  config.input.stream_threshold_bytes = 2**30  # decoded uint8 size, tfds info.
  # Streamed data: 'resize' (square image_size, then `augment` on batches) or
  # 'imagenet' (random-resized crop + flip / centre crop, ImageNet mean/std).
  config.input.preprocess = 'resize'
  config.input.shuffle_buffer = 10_000  # tfds streaming: encoded examples.
  config.input.stats_sample = 10_000  # mean/std from at most this many.
  # Folders: every file is decoded once before training; one that does not
  # decode stops the run (False) or is left out, counted in the log (True).
  config.input.skip_bad_images = False
  config.input.augment = ml_collections.ConfigDict(dict(
      crop_padding=0, flip_lr=True, flip_ud=False, rotation_degrees=0.0,
      brightness=0.0, contrast=0.0, noise_std=0.0, scale=(1.0, 1.0)))

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adamw'  # 'sgd', 'adam' or 'adamw'.
  config.optimizer.learning_rate = 3e-3  # peak learning rate.
  config.optimizer.momentum = 0.9  # sgd only.
  config.optimizer.nesterov = False  # sgd only.
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 5e-4  # kernels only.
  config.optimizer.grad_clip_norm = 0.0  # 0 = no clipping.

  config.schedule = ml_collections.ConfigDict()
  # 'constant', 'cosine', 'warmup_cosine', 'onecycle', 'step',
  # 'reduce_on_plateau'.
  config.schedule.name = 'onecycle'
  config.schedule.warmup_epochs = 0.0
  config.schedule.warmup_steps = -1  # >= 0 overrides warmup_epochs.
  # 'linear' (0 -> peak) or 'constant' (peak * warmup_factor, He et al.'s
  # ResNet-110 warm-up).
  config.schedule.warmup_kind = 'linear'
  config.schedule.warmup_factor = 0.1
  config.schedule.final_fraction = 0.0  # cosine: final lr / peak lr.
  config.schedule.onecycle_pct_start = 0.3
  config.schedule.onecycle_div_factor = 25.0
  config.schedule.onecycle_final_div_factor = 1e4
  config.schedule.decay_epochs = (30, 60, 80)  # step: when to decay.
  # step: boundaries in steps instead (used when not empty).
  config.schedule.decay_steps = ml_collections.FieldReference(
      (), field_type=tuple)
  config.schedule.decay_factor = 0.1  # step: multiplier at each boundary.
  config.schedule.plateau_factor = 0.1  # reduce_on_plateau (AlexNet: /10).
  config.schedule.plateau_patience = 5  # in accumulation windows.
  config.schedule.plateau_accumulation_steps = 100
  config.schedule.plateau_cooldown = 0

  # Transfer learning (cnn/transfer): start from a workdir of ours (its
  # latest checkpoint) or a torchvision state_dict file (.pth/.pt/.npz);
  # '' = random initialisation. Names matched by `init_dont_load` (regexes
  # over 'params/...' and 'batch_stats/...' paths) keep their fresh values;
  # the head is not loaded when its class count differs.
  config.init_from = ''
  config.init_dont_load = ml_collections.FieldReference((), field_type=tuple)
  config.transfer = ml_collections.ConfigDict()
  # 'full', 'fine_tune', 'freeze_first', 'feature_extraction' or 'scratch'
  # (cnn/transfer/regimes.py says what each trains).
  config.transfer.regime = 'full'
  # fine_tune: the last k groups train at pretrained_lr_mult x the rate (the
  # lecture: 0.001 vs the head's 0.01), the groups before them are frozen
  # (-1: none frozen, all at the lower rate).
  config.transfer.fine_tune_groups = 2
  config.transfer.pretrained_lr_mult = 0.1
  # freeze_first: the first k groups frozen, the rest and the head trained
  # at the configured rate (freezing without a lower learning rate).
  config.transfer.freeze_groups = 1
  # [(regex over parameter paths, multiplier or None = frozen), ...]; when
  # not empty, replaces the regime's rules.
  config.transfer.rules = ml_collections.FieldReference((), field_type=tuple)
  # Frozen groups' batch norms in eval mode: they normalise with their loaded
  # running statistics and keep them. False: batch statistics, updated.
  config.transfer.freeze_batch_stats = True
  # Yosinski et al.: load only the first n backbone groups (-1 = all).
  config.transfer.copy_groups = -1
  # feature_extraction: compute the frozen backbone's features of the
  # training images once and train the head on them (no augmentation;
  # cnn/transfer/cached_features.py).
  config.transfer.cache_features = False

  config.loss = ml_collections.ConfigDict()
  config.loss.label_smoothing = 0.1
  config.loss.aux_weight = 0.3  # GoogLeNet's auxiliary classifiers.

  # 15: crosses 91 % at epoch 13 (oneDNN convolutions) or 14 (banded) and
  # ends at 0.913-0.914; 13 epochs ended at 0.9088-0.9113 depending on the
  # convolution's rounding, too close to the line (benchmarks/FINDINGS.md).
  config.num_epochs = 15.0
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  config.log_every_steps = 100
  # Also log each module's mean gradient L2 norm since the previous
  # evaluation as `grad_norm/<module path>` keys of metrics.jsonl (forward
  # order): per-layer gradient flow, for vanishing-gradient studies. Off: the
  # step computes no norms.
  config.log_grad_norms = False
  # At the last evaluation, also the fraction of exactly-zero values of each
  # entry of the model's `out` dict (the stages, pre_logits) over the whole
  # evaluated set: `test_zero_fraction/<stage>` in metrics.jsonl (ReLU
  # sparsity, the activations study).
  config.log_zero_fraction = False
  config.eval_every_epochs = 1.0
  # > 0: evaluations before the last use the first N examples of the test
  # (and train_eval) set, the last one all of them: dense curves, cheaply.
  config.eval_subset = 0
  # Also evaluate the training examples (eval mode, no augmentation) at every
  # evaluation: `train_eval_accuracy`, the training error the studies plot.
  config.eval_on_train = False
  config.checkpoint_every_steps = 1000  # plus one at every evaluation.
  config.keep_checkpoints = 3
  config.on_nonfinite = 'stop'  # 'stop' the run or 'skip' the update.
  # A rerun in a workdir that trained with another recipe is refused; True
  # continues with the new values and records the change with its step in
  # config_history.jsonl (cnn/training/recipe.py).
  config.accept_recipe_change = False
  config.progress_bar = True  # shown only when stderr is a terminal.
  if runlocal:
    shrink(config)
  return config


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`runlocal`: the same experiment in seconds; changes `config` in place.

  The first 512 training and 1,000 test examples, batch 32 (16 steps an
  epoch), 2 epochs or, for a run counted in steps, RUNLOCAL_STEPS with the
  step schedule's boundaries scaled alike; width multipliers at most 0.25.
  The model, data set, optimizer, augmentation and evaluation schedule stay
  the experiment's own. Returns `config`.
  """
  config.input.train_subset = 512
  config.input.test_subset = 1000
  config.input.batch_size = 32
  config.input.eval_batch_size = 384  # does not divide 1,000: tests padding.
  config.num_epochs = 2.0
  if config.num_train_steps > 0:
    steps = config.num_train_steps
    config.num_train_steps = RUNLOCAL_STEPS
    config.schedule.decay_steps = tuple(
        max(1, s * RUNLOCAL_STEPS // steps)
        for s in config.schedule.decay_steps)
  # A float `width` multiplies every layer's channels (ResNets, VGG, ...);
  # an int one is a channel count chosen for the study (kernel_stack).
  if 'width' in config.model and isinstance(config.model.width, float):
    config.model.width = min(config.model.width, 0.25)
  config.log_every_steps = 8
  config.checkpoint_every_steps = 8
  config.progress_bar = False
  return config
