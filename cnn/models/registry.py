"""Models chosen by name: `create_model('resnet20', num_classes=10)`.

Each registered name is a family module with fixed keyword arguments (variants
are configuration, not copies of code). A typo in a name or a keyword fails
with the list of valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

import flax.linen as nn

from cnn.common import errors
from cnn.models import base


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the registry knows about a model name.

  Attributes:
    name: registry name.
    backbone_cls: the family's backbone module class.
    kwargs: fixed keyword arguments of the backbone for this name.
    input_shape: natural input (height, width, channels).
    num_classes: natural number of classes (1000 for ImageNet nets).
    min_input_size: smallest height/width the backbone accepts.
    head_dropout: dropout before the head, as in the reference architecture.
    reference_params: parameter count of the reference implementation at
      `input_shape`/`num_classes` (None where there is none).
    description: one line for `--list`.
  """

  name: str
  backbone_cls: type[nn.Module]
  kwargs: dict[str, Any]
  input_shape: tuple[int, int, int]
  num_classes: int
  min_input_size: int
  head_dropout: float = 0.0
  reference_params: int | None = None
  description: str = ''

_REGISTRY: dict[str, ModelSpec] = {}

def register(name: str, backbone_cls: type[nn.Module], *, input_shape,
             num_classes: int, min_input_size: int, head_dropout: float = 0.0,
             reference_params: int | None = None, description: str = '',
             **kwargs) -> None:
  """Registers `name` as `backbone_cls(**kwargs)` with a head."""
  if name in _REGISTRY:
    raise errors.UserError(f'Model {name!r} is registered twice.')
  _REGISTRY[name] = ModelSpec(
      name=name, backbone_cls=backbone_cls, kwargs=dict(kwargs),
      input_shape=tuple(input_shape), num_classes=num_classes,
      min_input_size=min_input_size, head_dropout=head_dropout,
      reference_params=reference_params, description=description)

def _ensure_loaded() -> None:
  # Importing the families registers their names.
  import cnn.models  # noqa: F401  pylint: disable=g-import-not-at-top

def list_models(pattern: str = '*') -> list[str]:
  """Registered names matching a glob pattern, sorted."""
  _ensure_loaded()
  return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))

def get_spec(name: str) -> ModelSpec:
  """The `ModelSpec` of `name`; unknown names list the valid ones."""
  _ensure_loaded()
  try:
    return _REGISTRY[name]
  except KeyError:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise errors.UserError(
        f'Unknown model {name!r}.{hint} Valid names: {list_models()}. '
        'Run `python -m cnn.summary --list` to see them with descriptions.'
    ) from None

def backbone_fields(spec: ModelSpec) -> list[str]:
  """Keyword arguments a config may set on this model's backbone."""
  return sorted(f.name for f in dataclasses.fields(spec.backbone_cls)
                if f.init and f.name not in ('parent', 'name'))

def backbone_options(name: str) -> dict[str, Any]:
  """Every option a config may set on `name`'s backbone, with its value for
  this name (the family default, or the registered fixed value).

  Configs use this as their `config.model` section, so a command-line
  override of an option that does not exist fails and lists the valid ones.
  `dtype` and `num_classes` are set elsewhere (`config.dtype`, the data set).
  """
  spec = get_spec(name)
  options = {}
  for f in dataclasses.fields(spec.backbone_cls):
    if not f.init or f.name in ('parent', 'name', 'dtype', 'num_classes'):
      continue
    if f.name in spec.kwargs:
      options[f.name] = spec.kwargs[f.name]
    elif f.default is not dataclasses.MISSING:
      options[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      options[f.name] = f.default_factory()
  return options


def create_model(name: str, *, num_classes: int | None = None,
                 head_dropout: float | None = None, dtype: Any = 'float32',
                 **overrides) -> base.Classifier:
  """Builds the registered model `name` as a `Classifier`.

  Args:
    name: registry name, e.g. 'lenet5', 'resnet20', 'vgg16_bn'.
    num_classes: logits; defaults to the spec's natural class count.
    head_dropout: overrides the spec's dropout before the head.
    dtype: compute dtype ('float32' or 'bfloat16'); parameters stay float32.
    **overrides: backbone fields (e.g. `activation='gelu'`, `residual=False`).
  """
  spec = get_spec(name)
  valid = backbone_fields(spec)
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise errors.UserError(
        f'Model {name!r} has no option(s) {unknown}. Valid options for its '
        f'backbone {spec.backbone_cls.__name__}: {valid}. (A config\'s '
        '`model` section holds the options of one model; to train another, '
        f'use its own config, e.g. --config=configs/zoo.py:{name}.)')
  kwargs = dict(spec.kwargs, **overrides)
  if 'dtype' in valid:
    kwargs['dtype'] = dtype
  if 'num_classes' in valid:  # backbones with auxiliary heads
    kwargs['num_classes'] = num_classes or spec.num_classes
  backbone = spec.backbone_cls(**kwargs)
  return base.Classifier(
      backbone=backbone,
      num_classes=num_classes or spec.num_classes,
      head_dropout=spec.head_dropout if head_dropout is None else head_dropout,
      dtype=dtype)

def check_input_shape(name: str, input_shape) -> None:
  """Fails early, with the minimum, when images are too small for `name`."""
  spec = get_spec(name)
  h, w = input_shape[:2]
  if min(h, w) < spec.min_input_size:
    # Variants of the family that take this size as it is (not `name`).
    fitting = [n for n in list_models(name.split('_')[0] + '*')
               if n != name and get_spec(n).min_input_size <= min(h, w)]
    variant = ''
    if fitting:
      variant = ', or train a variant made for small images: ' + ' or '.join(
          f'--config=configs/zoo.py:{n}' for n in fitting)
    raise errors.UserError(
        f'Input {h}x{w} is too small for model {name!r}: it needs at least '
        f'{spec.min_input_size}x{spec.min_input_size} (its natural input is '
        f'{spec.input_shape[0]}x{spec.input_shape[1]}). Resize the images '
        f'to its natural size with --config.input.image_size='
        f'{spec.input_shape[0]}{variant}.')
