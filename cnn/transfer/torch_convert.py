"""torchvision `state_dict`s -> our flax variables.

  variables = from_torch_state_dict('resnet50', load_state_dict_file(path))
  logits, _ = create_model('resnet50').apply(variables, x_nhwc, train=False)

Two declarative parts:

* a name table per family (`_TABLES`): torch module name ('layer2.0.conv1')
  -> flax module path ('backbone', 'stage2_block1', 'conv1'), generated from
  the registry spec (stage sizes, batch norm) exactly as torchvision builds its
  modules, so every torch module of a supported net has one flax twin;
* layout rules (`_LEAF_RULES`, `_to_flax_layout`): torch parameter name and
  rank -> flax collection, leaf name and axis order (conv OIHW -> HWIO, Linear
  [out, in] -> [in, out], BN weight/bias/running stats -> scale/bias and
  batch_stats mean/var; `num_batches_tracked` is dropped).

The first Linear after a flatten (VGG `classifier.0`, AlexNet `classifier.1`)
also has its input rows reordered: torch flattens NCHW maps in (C, H, W)
order, our NHWC maps flatten in (H, W, C) order.

Every parameter is checked against `jax.eval_shape` of the model's init:
unknown torch keys, model parameters without a value and shape mismatches are
`UserError`s naming both sides. torch is imported only to read `.pth` files.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from cnn.common import errors

_RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
_VGGS = tuple(f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn'))
SUPPORTED: tuple[str, ...] = _RESNETS + _VGGS + ('alexnet',)

# Our leaf name -> torch's, per collection; the inverse of `_LEAF_RULES`, for
# naming the torch key a model parameter expected.
_TORCH_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
               ('params', 'bias'): 'bias',
               ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}
_IGNORED_LEAVES = ('num_batches_tracked',)  # a step counter, not a weight.
_MAX_LISTED = 10


@dataclasses.dataclass(frozen=True)
class Target:
  """Where one torch module goes.

  Attributes:
    path: flax module path, e.g. ('backbone', 'stem_conv') or ('head',).
    flatten_chw: (C, H, W) of the feature map a Linear sees flattened, for the
      first Linear after a flatten (its rows are reordered); None otherwise.
  """

  path: tuple[str, ...]
  flatten_chw: tuple[int, int, int] | None = None


def _leaf_rule(leaf: str, ndim: int) -> tuple[str, str] | None:
  """(collection, flax leaf) of a torch parameter `leaf` of rank `ndim`.

  'weight' is a kernel for convs (4-D) and Linears (2-D), a BN scale (1-D).
  """
  if leaf == 'weight':
    return ('params', 'kernel' if ndim >= 2 else 'scale')
  return {'bias': ('params', 'bias'),
          'running_mean': ('batch_stats', 'mean'),
          'running_var': ('batch_stats', 'var')}.get(leaf)


def _to_flax_layout(value: np.ndarray, target: Target) -> np.ndarray:
  """torch layout -> flax layout.

  conv [O, I, H, W] -> [H, W, I, O]; Linear [out, in] -> [in, out], with the
  `in` axis reordered from (C, H, W) to (H, W, C) after a flatten; 1-D
  (biases, BN) unchanged.
  """
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    if target.flatten_chw is None:
      return value.T
    c, h, w = target.flatten_chw
    if value.shape[1] != c * h * w:
      return value.T  # The shape check reports it with the torch shape.
    return value.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(
        h * w * c, -1)
  return value


# --- Name tables: torch module name -> Target, one function per family. ---


def _resnet_table(spec) -> dict[str, Target]:
  """torchvision ResNet: conv1/bn1, layerL.B.{convK, bnK, downsample.0/1},
  fc. A block has a downsample where torchvision's has one: the first block
  of every stage but the first, and of the first too with bottlenecks
  (64 -> 256 channels)."""
  bottleneck = spec.kwargs['block'] == 'bottleneck'
  convs = 3 if bottleneck else 2
  table = {'conv1': Target(('backbone', 'stem_conv')),
           'bn1': Target(('backbone', 'stem_bn')),
           'fc': Target(('head',))}
  for s, n_blocks in enumerate(spec.kwargs['stage_sizes'], start=1):
    for b in range(n_blocks):
      block = ('backbone', f'stage{s}_block{b + 1}')
      torch_block = f'layer{s}.{b}'
      for k in range(1, convs + 1):
        table[f'{torch_block}.conv{k}'] = Target(block + (f'conv{k}',))
        table[f'{torch_block}.bn{k}'] = Target(block + (f'bn{k}',))
      if b == 0 and (s > 1 or bottleneck):
        table[f'{torch_block}.downsample.0'] = Target(block + ('proj_conv',))
        table[f'{torch_block}.downsample.1'] = Target(block + ('proj_bn',))
  return table


def _vgg_table(spec) -> dict[str, Target]:
  """torchvision VGG: `features` is cfg-ordered conv, [BN], ReLU per conv and
  one MaxPool per stage, so module indices follow from the stage sizes;
  classifier.0/3/6 are fc6, fc7 and the head (1, 4 are ReLU, 2, 5 Dropout)."""
  batch_norm = spec.kwargs.get('batch_norm', False)
  table, index = {}, 0
  for s, n_convs in enumerate(spec.kwargs['stage_sizes'], start=1):
    for i in range(1, n_convs + 1):
      table[f'features.{index}'] = Target(('backbone', f'stage{s}_conv{i}'))
      index += 1
      if batch_norm:
        table[f'features.{index}'] = Target(('backbone', f'stage{s}_bn{i}'))
        index += 1
      index += 1  # ReLU.
    index += 1  # MaxPool.
  last_width = 512  # torchvision's cfg ends every variant with 512 channels.
  table['classifier.0'] = Target(('backbone', 'classifier_fc6'),
                                 flatten_chw=(last_width, 7, 7))
  table['classifier.3'] = Target(('backbone', 'classifier_fc7'))
  table['classifier.6'] = Target(('head',))
  return table


def _alexnet_table(spec) -> dict[str, Target]:
  """torchvision AlexNet: features.{0,3,6,8,10} are conv1..conv5 (ReLUs and
  pools between), classifier.{1,4,6} fc6, fc7 and the head (0, 3 Dropout)."""
  del spec
  convs = ('stem_conv1', 'stage1_conv2', 'stage2_conv3', 'stage3_conv4',
           'stage4_conv5')
  table = {f'features.{i}': Target(('backbone', name))
           for i, name in zip((0, 3, 6, 8, 10), convs)}
  table['classifier.1'] = Target(('backbone', 'classifier_fc6'),
                                 flatten_chw=(256, 6, 6))
  table['classifier.4'] = Target(('backbone', 'classifier_fc7'))
  table['classifier.6'] = Target(('head',))
  return table


_TABLES: dict[str, Callable[[Any], dict[str, Target]]] = dict(
    [(n, _resnet_table) for n in _RESNETS] + [(n, _vgg_table) for n in _VGGS]
    + [('alexnet', _alexnet_table)])


# --- Conversion. ---


def _as_numpy(value) -> np.ndarray:
  """A torch tensor or any array-like -> float32 numpy (no torch import)."""
  if hasattr(value, 'detach'):  # torch.Tensor: off the autograd graph first.
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _listed(names) -> str:
  names = sorted(names)
  more = f' ... (+{len(names) - _MAX_LISTED} more)' if len(
      names) > _MAX_LISTED else ''
  return f'{names[:_MAX_LISTED]}{more}'


def _head_key(table: dict[str, Target]) -> str:
  return next(k for k, t in table.items() if t.path == ('head',)) + '.weight'


def _model_shapes(model_name: str, num_classes: int) -> dict[str, tuple]:
  """'params/backbone/stem_conv/kernel' -> shape, from an abstract init (no
  memory for the weights, no compute)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from cnn.models import registry  # pylint: disable=g-import-not-at-top
  spec = registry.get_spec(model_name)
  model = registry.create_model(model_name, num_classes=num_classes)
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(
      lambda: model.init({'params': key, 'dropout': key},
                         jnp.zeros((1, *spec.input_shape), jnp.float32)))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {'/'.join(k.key for k in path): tuple(leaf.shape)
          for path, leaf in flat}


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _expected_torch_key(flax_name: str, inverse: dict[tuple, str]) -> str:
  """The torch key that would fill 'params/backbone/stem_conv/kernel'."""
  collection, *path, leaf = flax_name.split('/')
  module = inverse.get(tuple(path), '?')
  return f'{module}.{_TORCH_LEAF.get((collection, leaf), leaf)}'


def from_torch_state_dict(model_name: str, state_dict: Mapping[str, Any], *,
                          num_classes: int | None = None) -> dict[str, Any]:
  """A torchvision `state_dict` as variables of `create_model(model_name)`.

  Args:
    model_name: one of `SUPPORTED` (torchvision's names and layouts).
    state_dict: torch key ('layer1.0.conv1.weight') -> tensor or array-like.
    num_classes: class count of the model to check against; default: the
      rows of the state_dict's last Linear (`fc.weight`,
      `classifier.6.weight`). A head of another class count is converted at
      its own shape (the caller replaces it, as `pretrained.load_pretrained`
      does); every other shape must match the model exactly.

  Returns:
    {'params': ..., 'batch_stats': ...}: nested dicts of float32 numpy arrays
    in the model's tree (`batch_stats` is {} for nets without batch norm).

  Raises:
    UserError: an unsupported name, torch keys the table does not map, model
      parameters without a value, or a shape mismatch.
  """
  if model_name not in _TABLES:
    raise errors.UserError(
        f'Cannot convert a torchvision state_dict for model {model_name!r}: '
        f'choose one of {list(SUPPORTED)}.')
  from cnn.models import registry  # pylint: disable=g-import-not-at-top
  table = _TABLES[model_name](registry.get_spec(model_name))
  head_key = _head_key(table)
  ckpt_classes = (np.shape(state_dict[head_key])[0]
                  if head_key in state_dict else None)
  num_classes = num_classes or ckpt_classes
  shapes = _model_shapes(model_name, num_classes or
                         registry.get_spec(model_name).num_classes)

  converted, unmapped = {}, []
  for key, value in state_dict.items():
    module, _, leaf = key.rpartition('.')
    if leaf in _IGNORED_LEAVES:
      continue
    value = _as_numpy(value)
    rule = _leaf_rule(leaf, value.ndim)
    if module not in table or rule is None:
      unmapped.append(key)
      continue
    target = table[module]
    name = '/'.join((rule[0],) + target.path + (rule[1],))
    converted[name] = (key, value.shape, _to_flax_layout(value, target))
  if unmapped:
    raise errors.UserError(
        f'{len(unmapped)} key(s) of the state_dict have no place in '
        f'{model_name!r}: {_listed(unmapped)}; pass a torchvision '
        f'{model_name} state_dict (strip wrapper prefixes) or drop them.')

  missing = sorted(set(shapes) - set(converted))
  if missing:
    inverse = {t.path: m for m, t in table.items()}
    expected = [_expected_torch_key(n, inverse) for n in missing]
    raise errors.UserError(
        f'{len(missing)} parameter(s) of {model_name!r} got no value: '
        f'{_listed(missing)}, expected from torch key(s) {_listed(expected)}; '
        f'pass a complete torchvision {model_name} state_dict.')
  extra = sorted(set(converted) - set(shapes))
  if extra:  # A torch leaf the model lacks, e.g. a BN stat for a non-BN net.
    raise errors.UserError(
        f'{len(extra)} key(s) of the state_dict have no place in '
        f'{model_name!r}: {_listed(converted[n][0] for n in extra)}; is it '
        f'a state_dict of another variant (e.g. _bn)?')

  flat = {}
  for name, (key, torch_shape, value) in converted.items():
    want = shapes[name]
    is_head_rows = (name.startswith('params/head/') and ckpt_classes
                    and value.shape[-1] == ckpt_classes
                    and value.shape[:-1] == want[:-1])
    if value.shape != want and not is_head_rows:
      raise errors.UserError(
          f'Shape mismatch: torch {key} {tuple(torch_shape)} -> {name} '
          f'{value.shape}, but {model_name!r} needs {want}; pass a '
          f'state_dict of torchvision {model_name} (or check num_classes).')
    flat[name] = np.ascontiguousarray(value)
  variables = _nest(flat)
  return {'params': variables.get('params', {}),
          'batch_stats': variables.get('batch_stats', {})}


# --- Files. ---

_TORCH_SUFFIXES = ('.pth', '.pt')


def _unwrap(obj) -> Mapping[str, Any]:
  """A bare state_dict, or the one inside a training checkpoint dict."""
  for key in ('state_dict', 'model'):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      return obj[key]
  return obj


def load_state_dict_file(path: str) -> dict[str, np.ndarray]:
  """Reads a state_dict: `.pth`/`.pt` (torch.save, loaded with
  weights_only=True, bare or under 'state_dict'/'model') or `.npz`.

  Returns:
    torch key -> numpy array (floats as float32), with a DataParallel
    'module.' prefix stripped.
  """
  path = os.path.expanduser(str(path))
  if not os.path.isfile(path):
    raise errors.UserError(
        f'State_dict file {path!r} does not exist: give the path of a '
        f'{"/".join(_TORCH_SUFFIXES)} or .npz file.')
  if path.endswith(_TORCH_SUFFIXES):
    import torch  # pylint: disable=g-import-not-at-top
    try:
      obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise errors.UserError(
          f'Cannot read {path!r} as a torch state_dict ({type(e).__name__}: '
          f'{first}); save it with torch.save(model.state_dict(), path).'
      ) from None
    arrays = {}
    for key, value in _unwrap(obj).items():
      if not hasattr(value, 'detach'):
        raise errors.UserError(
            f'{path!r}: entry {key!r} is a {type(value).__name__}, not a '
            'tensor; save it with torch.save(model.state_dict(), path).')
      value = value.detach().cpu()
      arrays[key] = (value.float() if value.is_floating_point()
                     else value).numpy()
  elif path.endswith('.npz'):
    with np.load(path) as data:
      arrays = {k: data[k] for k in data.files}
  else:
    raise errors.UserError(
        f'Cannot read {path!r}: a state_dict file must end in '
        f'{", ".join(_TORCH_SUFFIXES)} or .npz.')
  return {re.sub(r'^module\.', '', k): v for k, v in arrays.items()}
