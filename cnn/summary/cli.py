"""`python -m cnn.summary` and the print functions `main.py` calls.

    python -m cnn.summary --model=resnet20
    python -m cnn.summary --model=lenet5 --input_shape=32,32,1 --json
    python -m cnn.summary --list
    python -m cnn.summary --model=lenet5 --plot=lenet5_cost.png

Besides the forward counts the table reports the training step: about 3 x
the forward FLOPs, and the memory XLA plans for a compiled value_and_grad
step (`--train_batch`, default 1; 0 skips the compile).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Sequence

from cnn.models import registry
from cnn.summary import accounting, report


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
  name = config.model_name
  spec = registry.get_spec(name)
  shape, classes = tuple(spec.input_shape), spec.num_classes
  size = int(config.input.image_size)
  try:
    from input_pipeline.sources import datasets  # pylint: disable=g-import-not-at-top
    if config.input.dataset in datasets.local_names():
      info = datasets.get_dataset_info(config.input.dataset)
      shape, classes = tuple(info.image_shape), info.num_classes
  except ImportError:  # The model library used without the data pipeline.
    pass
  if size > 0:
    shape = (size, size, shape[2])
  s = accounting.summarize(name, shape, classes, config.dtype,
                           **config.model.to_dict())
  print(s.to_json() if as_json else report.format_table(s), file=file or sys.stdout)
  return s


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
                      help='H,W,C (default: the model\'s natural input)')
  parser.add_argument('--num_classes', type=int, default=None)
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
    s = accounting.summarize(args.model, args.input_shape, args.num_classes,
                             args.dtype, train=args.train)
    if args.train_batch > 0:
      s.train_memory = accounting.train_step_memory(
          args.model, args.input_shape, args.num_classes, args.train_batch,
          args.dtype)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(s.to_json() if args.json else report.format_table(s))
  if args.plot:
    from cnn.summary import plot  # pylint: disable=g-import-not-at-top
    plot.plot_summary(s, args.plot)
    print(f'wrote {args.plot}', file=sys.stderr)
  return 0
