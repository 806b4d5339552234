"""`python -m cnn.summary` and the print functions `main.py` calls.

    python -m cnn.summary --model=resnet20
    python -m cnn.summary --model=lenet5 --input_shape=32,32,1 --json
    python -m cnn.summary --list
    python -m cnn.summary --model=lenet5 --plot=lenet5_cost.png

`--model=NAME` counts the model as `main.py --config=configs/zoo.py:NAME`
trains it (the offline Fashion-MNIST: 28x28x1, resized up for models that
need more, 10 classes), so `main.py --config=configs/zoo.py:NAME
--mode=summary` prints the same table; `--input_shape` / `--num_classes`
count another input (`--list` shows each model's natural one). The header
names the input and where it came from. Besides the forward counts the
table reports the training step: about 3 x the forward FLOPs, and the memory
XLA plans for a compiled value_and_grad step (`--train_batch`, default 1; 0
skips the compile).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Sequence

from cnn.models import registry
from cnn.summary import accounting, report

# The config file whose input `--model=NAME` counts by default (a file of
# this repository, beside the `cnn` package).
ZOO_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), 'configs', 'zoo.py')


def print_summary(model_name: str, input_shape: Sequence[int] | None = None,
                  num_classes: int | None = None, dtype: Any = 'float32',
                  as_json: bool = False, file=None,
                  **overrides) -> accounting.Summary:
  """Prints the table (or JSON) of `summarize(...)` and returns the Summary."""
  s = accounting.summarize(model_name, input_shape, num_classes, dtype,
                           **overrides)
  print(s.to_json() if as_json else report.format_table(s), file=file or sys.stdout)
  return s


def print_summary_for_config(config, as_json: bool = False,
                             file=None) -> accounting.Summary:
  """`main.py --mode=summary`: the model of a training config, as trained.

  The model is `config.model_name` with the backbone options `config.model`
  and compute dtype `config.dtype`. Input shape and classes are those of
  `config.input.dataset` where it is a local data set (answered without
  reading any file); for other (tfds) names, whose metadata would need the
  data, the model's natural input and classes. `config.input.image_size` > 0
  resizes the input as the trainer does.
  """
  shape, classes, source = config_input(config)
  s = accounting.summarize(config.model_name, shape, classes, config.dtype,
                           **config.model.to_dict())
  print(s.to_json() if as_json else report.format_table(s, source),
        file=file or sys.stdout)
  return s


def config_input(config) -> tuple[tuple[int, int, int], int, str]:
  """(input shape (H, W, C), classes, where they come from) of a training
  config's model, as `print_summary_for_config` counts it.

  The source is the data set's name (', resized' with
  `config.input.image_size` > 0) or 'natural input' when the data set's
  metadata would need its files.
  """
  spec = registry.get_spec(config.model_name)
  shape, classes = tuple(spec.input_shape), spec.num_classes
  source = 'natural input'
  size = int(config.input.image_size)
  try:
    from input_pipeline.sources import datasets  # pylint: disable=g-import-not-at-top
    if config.input.dataset in datasets.local_names():
      info = datasets.get_dataset_info(config.input.dataset)
      shape, classes = tuple(info.image_shape), info.num_classes
      source = config.input.dataset
  except ImportError:  # The model library used without the data pipeline.
    pass
  if size > 0:
    shape = (size, size, shape[2])
    source += ', resized'
  return shape, classes, source


def zoo_config(model_name: str):
  """`configs/zoo.py:model_name` (what `--model` counts by default), or None
  where this repository's configs/ is not beside the package."""
  if not os.path.exists(ZOO_CONFIG):
    return None
  from cnn.common import config_utils  # pylint: disable=g-import-not-at-top
  return config_utils.load_config_file(f'{ZOO_CONFIG}:{model_name}')


def _parse_shape(text: str) -> tuple[int, int, int]:
  parts = [int(p) for p in re.split(r'[,x ]+', text.strip()) if p]
  if len(parts) != 3:
    raise argparse.ArgumentTypeError(
        f'--input_shape must be H,W,C (e.g. 224,224,3), got {text!r}.')
  return tuple(parts)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m cnn.summary',
      description='Per-layer units, weights, connections, memory, FLOPs and '
                  'receptive fields of a registered model (no compute).')
  parser.add_argument('--model', help='registry name, e.g. lenet5, resnet50')
  parser.add_argument('--input_shape', type=_parse_shape,
                      help='H,W,C (default: what configs/zoo.py:MODEL '
                           'trains on, Fashion-MNIST 28x28x1 resized up '
                           'where the model needs more)')
  parser.add_argument('--num_classes', type=int, default=None,
                      help='head size (default: configs/zoo.py\'s, 10)')
  parser.add_argument('--dtype', default='float32',
                      help='compute dtype: float32 or bfloat16')
  parser.add_argument('--train', action='store_true',
                      help='count the training forward pass (aux heads)')
  parser.add_argument('--json', action='store_true', help='print JSON')
  parser.add_argument('--list', action='store_true',
                      help='list registered models and exit')
  parser.add_argument('--plot', default=None,
                      help='also write per-layer memory/params/FLOPs bars '
                           'to this PNG file')
  parser.add_argument('--train_batch', type=int, default=1,
                      help='batch of the compiled train step whose XLA '
                           'memory is reported (0: skip the compile)')
  args = parser.parse_args(argv)
  if args.list:
    print(report.list_descriptions())
    return 0
  if not args.model:
    parser.error('--model is required (or --list).')
  try:
    spec = registry.get_spec(args.model)  # an unknown name lists the valid.
    config = zoo_config(args.model)
    if config is None:
      shape, classes, source = spec.input_shape, spec.num_classes, (
          'natural input')
      options = {}
    else:
      shape, classes, source = config_input(config)
      options = config.model.to_dict()
    if args.input_shape:
      shape, source = args.input_shape, '--input_shape'
    classes = args.num_classes or classes
    s = accounting.summarize(args.model, shape, classes, args.dtype,
                             train=args.train, **options)
    if args.train_batch > 0:
      s.train_memory = accounting.train_step_memory(
          args.model, shape, classes, args.train_batch, args.dtype, **options)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(s.to_json() if args.json else report.format_table(s, source))
  if args.plot:
    from cnn.summary import plot  # pylint: disable=g-import-not-at-top
    plot.plot_summary(s, args.plot)
    print(f'wrote {args.plot}', file=sys.stderr)
  return 0
