"""torchvision state_dicts -> our flax models (cnn/transfer/torch_convert.py).

The torch twins below rebuild torchvision's ResNet, VGG and AlexNet with its
module and parameter names (torchvision itself is not installable here), with
random weights and random batch-norm running statistics, so that the logits
of the converted flax model can be compared with torch's on one input.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
from torch import nn  # noqa: E402

from cnn.common import errors  # noqa: E402
from cnn.models import registry  # noqa: E402
from cnn.training import train  # noqa: E402
from cnn.transfer import pretrained, torch_convert  # noqa: E402
from tests.helpers import assert_trees_equal, tiny_config  # noqa: E402

NUM_CLASSES = 10


# --- torchvision twins (names as torchvision's). ---


class _Basic(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class _Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    # v1.5: the stride on the 3x3 conv.
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class _ResNet(nn.Module):

  def __init__(self, block, layers, num_classes):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), 1):
      setattr(self, f'layer{i}',
              self._make_layer(block, planes, n, 1 if i == 1 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, n, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                    bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, 1, None) for _ in range(1, n)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


_VGG_CFG = {'vgg11': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512,
                      512, 'M']}


def _vgg_features(cfg, batch_norm) -> nn.Sequential:
  layers, c = [], 3
  for v in cfg:
    if v == 'M':
      layers.append(nn.MaxPool2d(2, 2))
      continue
    layers.append(nn.Conv2d(c, v, 3, padding=1))
    if batch_norm:
      layers.append(nn.BatchNorm2d(v))
    layers.append(nn.ReLU())
    c = v
  return nn.Sequential(*layers)


class _VGG(nn.Module):

  def __init__(self, cfg, batch_norm, num_classes):
    super().__init__()
    self.features = _vgg_features(cfg, batch_norm)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _AlexNet(nn.Module):

  def __init__(self, num_classes):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _twin(name: str) -> nn.Module:
  if name == 'resnet18':
    return _ResNet(_Basic, (2, 2, 2, 2), NUM_CLASSES)
  if name == 'resnet50':
    return _ResNet(_Bottleneck, (3, 4, 6, 3), NUM_CLASSES)
  if name.startswith('vgg'):
    return _VGG(_VGG_CFG[name.split('_')[0]], name.endswith('_bn'),
                NUM_CLASSES)
  return _AlexNet(NUM_CLASSES)


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights (He-normal convs so deep nets keep a signal) and random
  BN scale, shift and running statistics, in eval mode."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if m.bias is not None:
          m.bias.normal_(0, 0.1)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.num_batches_tracked.fill_(7)
      elif isinstance(m, nn.Linear):
        m.weight.normal_(0, 1 / np.sqrt(m.in_features))
        m.bias.normal_(0, 0.1)
  return model.eval()


def _compare(name: str, size: int, state_dict=None, model=None):
  """Converted flax logits == torch logits on one random [2, size, size, 3]
  input, to 1e-4 of the logits' scale."""
  model = model or _randomised(_twin(name))
  state_dict = model.state_dict() if state_dict is None else state_dict
  variables = torch_convert.from_torch_state_dict(name, state_dict)
  x = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(
      np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(x)).numpy()
  flax_model = registry.create_model(name, num_classes=NUM_CLASSES)
  got = np.asarray(flax_model.apply(variables, x.transpose(0, 2, 3, 1),
                                    train=False)[0])
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
  return variables


# --- Equivalence. ---


@pytest.fixture(scope='module')
def resnet18_twin():
  return _randomised(_twin('resnet18'))


def test_resnet18_matches_torch(resnet18_twin):
  variables = _compare('resnet18', 64, model=resnet18_twin)
  bn = variables['batch_stats']['backbone']['stage2_block1']['proj_bn']
  np.testing.assert_array_equal(
      bn['var'], resnet18_twin.layer2[0].downsample[1].running_var.numpy())


def test_alexnet_matches_torch():
  # 127x127 -> a 3x3 map before the 6x6 adaptive pool: distinct pixels, so
  # the (C, H, W) -> (H, W, C) reordering of fc6's rows is really tested.
  _compare('alexnet', 127)


def test_resnet50_matches_torch():
  _compare('resnet50', 64)


def test_vgg11_bn_matches_torch():
  _compare('vgg11_bn', 32)


def test_vgg_table_indices():
  # torchvision's vgg11_bn features: conv, BN, ReLU per conv, one pool per
  # stage; vgg16 without BN: conv, ReLU.
  spec = registry.get_spec('vgg11_bn')
  table = torch_convert._vgg_table(spec)  # pylint: disable=protected-access
  assert table['features.0'].path == ('backbone', 'stage1_conv1')
  assert table['features.1'].path == ('backbone', 'stage1_bn1')
  assert table['features.4'].path == ('backbone', 'stage2_conv1')
  assert table['features.25'].path == ('backbone', 'stage5_conv2')
  table = torch_convert._vgg_table(registry.get_spec('vgg16'))  # pylint: disable=protected-access
  assert table['features.28'].path == ('backbone', 'stage5_conv3')
  assert len([k for k in table if k.startswith('features')]) == 13


def test_all_supported_tables_fit_the_models():
  # Every model parameter has a torch key and vice versa (shapes aside):
  # a state_dict of zeros of the right shapes converts.
  for name in ('resnet34', 'resnet101', 'resnet152', 'vgg19_bn', 'vgg13'):
    shapes = torch_convert._model_shapes(name, 1000)  # pylint: disable=protected-access
    table = torch_convert._TABLES[name](registry.get_spec(name))  # pylint: disable=protected-access
    inverse = {t.path: m for m, t in table.items()}
    names = {torch_convert._expected_torch_key(n, inverse): n  # pylint: disable=protected-access
             for n in shapes}
    assert not [k for k in names if k.startswith('?')], name
    assert len(names) == len(shapes), name


def test_explicit_num_classes_keeps_the_checkpoint_head(resnet18_twin):
  # As pretrained.load_pretrained calls it: the target's class count; the
  # checkpoint's head comes back at its own shape, to be replaced.
  variables = torch_convert.from_torch_state_dict(
      'resnet18', resnet18_twin.state_dict(), num_classes=3)
  assert variables['params']['head']['kernel'].shape == (512, NUM_CLASSES)


# --- Files. ---


def test_pth_round_trip(tmp_path, resnet18_twin):
  path = tmp_path / 'm.pth'
  torch.save(resnet18_twin.state_dict(), path)
  state_dict = torch_convert.load_state_dict_file(str(path))
  assert state_dict['conv1.weight'].dtype == np.float32
  _compare('resnet18', 32, state_dict=state_dict, model=resnet18_twin)


def test_init_from_a_pth_file_starts_the_run_from_it(tmp_path, resnet18_twin):
  # What a run with config.init_from=FILE.pth starts from: the converted
  # backbone and batch-norm statistics, and a fresh head for its 3 classes.
  path = tmp_path / 'resnet18.pth'
  torch.save(resnet18_twin.state_dict(), path)
  config = tiny_config(model_name='resnet18', init_from=str(path))
  with config.unlocked():
    config.model = ml_collections.ConfigDict(
        registry.backbone_options('resnet18'))
  model = train.create_model(config, 3)
  fresh = jax.device_get(jax.jit(lambda k: model.init(
      k, jnp.zeros((1, 32, 32, 3))))(jax.random.key(0)))
  start = pretrained.load_pretrained(config, fresh, groups=[])
  converted = torch_convert.from_torch_state_dict(
      'resnet18', resnet18_twin.state_dict(), num_classes=3)
  for key in ('params', 'batch_stats'):
    assert jax.tree.leaves(converted[key]['backbone'])
    assert_trees_equal(start[key]['backbone'], converted[key]['backbone'])
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(start['params']['head'][name],
                                  fresh['params']['head'][name])
  assert start['params']['head']['kernel'].shape == (512, 3)


def test_checkpoint_dict_module_prefix_and_npz(tmp_path, resnet18_twin):
  sd = resnet18_twin.state_dict()
  path = tmp_path / 'ckpt.pt'
  torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v
                                         for k, v in sd.items()}}, path)
  loaded = torch_convert.load_state_dict_file(str(path))
  assert set(loaded) == set(sd)
  npz = tmp_path / 'm.npz'
  np.savez(npz, **{k: v.numpy() for k, v in sd.items()})
  loaded = torch_convert.load_state_dict_file(str(npz))
  np.testing.assert_array_equal(loaded['fc.bias'], sd['fc.bias'].numpy())


def test_file_errors(tmp_path):
  with pytest.raises(errors.UserError, match='does not exist'):
    torch_convert.load_state_dict_file(str(tmp_path / 'nope.pth'))
  bad = tmp_path / 'm.ckpt'
  bad.write_text('x')
  with pytest.raises(errors.UserError, match=r'\.pth.*\.npz'):
    torch_convert.load_state_dict_file(str(bad))
  broken = tmp_path / 'broken.pth'
  broken.write_text('not a pickle')
  with pytest.raises(errors.UserError, match='Cannot read'):
    torch_convert.load_state_dict_file(str(broken))


# --- Conversion errors. ---


@pytest.fixture
def resnet18_sd(resnet18_twin):
  return {k: v.numpy() for k, v in resnet18_twin.state_dict().items()}


def _message(model_name, state_dict) -> str:
  with pytest.raises(errors.UserError) as e:
    torch_convert.from_torch_state_dict(model_name, state_dict)
  message = str(e.value)
  assert '\n' not in message
  return message


def test_unknown_model(resnet18_sd):
  message = _message('resnet20', resnet18_sd)
  assert "'resnet20'" in message and 'resnet18' in message
  assert 'vgg16_bn' in message and 'alexnet' in message


def test_extra_key(resnet18_sd):
  resnet18_sd['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  message = _message('resnet18', resnet18_sd)
  assert 'layer5.0.conv1.weight' in message and 'no place' in message


def test_missing_key(resnet18_sd):
  del resnet18_sd['layer1.0.bn1.running_var']
  del resnet18_sd['fc.bias']
  message = _message('resnet18', resnet18_sd)
  assert 'batch_stats/backbone/stage1_block1/bn1/var' in message
  assert 'layer1.0.bn1.running_var' in message
  assert 'params/head/bias' in message and 'fc.bias' in message


def test_wrong_shape(resnet18_sd):
  resnet18_sd['layer2.0.conv1.weight'] = np.zeros((128, 64, 5, 5), np.float32)
  message = _message('resnet18', resnet18_sd)
  assert 'layer2.0.conv1.weight (128, 64, 5, 5)' in message
  assert 'params/backbone/stage2_block1/conv1/kernel' in message
  assert '(3, 3, 64, 128)' in message


def test_bn_state_dict_into_plain_vgg():
  # vgg11_bn's features indices do not fit vgg11: a clear error, not a mixup.
  features = _vgg_features(_VGG_CFG['vgg11'], batch_norm=True)
  sd = {f'features.{k}': v.numpy() for k, v in features.state_dict().items()}
  message = _message('vgg11', sd)
  assert 'no place' in message or 'got no value' in message
