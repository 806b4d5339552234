"""PyTorch twins of our LeNet-5 and CIFAR ResNets, for speed comparisons.

Each twin has the same layers, shapes and parameter count as the registry
model of the same name (`create_model(name)` with the default config's options),
so a throughput ratio compares frameworks, not architectures:

  lenet5   28x28x1 zero-padded to 32x32; conv5x5 6 (no bias) + BN + ReLU +
           2x2 max-pool; conv5x5 16 (no bias) + BN + ReLU + 2x2 max-pool;
           Dense 120, 84 (ReLU); head 10. 61,728 parameters.
  resnetN  CIFAR ResNet (He et al., 2016, section 4.2), N = 6n + 2: 3x3 conv 16
           + BN + ReLU; three stages of n basic blocks with 16/32/64 filters;
           option A shortcuts (identity, stride-2 subsampling and zero-padded
           channels); global average pooling; head. resnet20 269,722 and
           resnet56 853,018 parameters with 3-channel inputs and 10 classes.
  plainN   the same without shortcuts (same parameters).

Batch norm uses PyTorch's momentum 0.1 (flax's 0.9) and epsilon 1e-5, as ours.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LeNet5(nn.Module):
  """LeNet-5 with batch norm: [batch, 1, 28, 28] -> logits [batch, 10]."""

  def __init__(self, in_channels: int = 1, num_classes: int = 10,
               pad_to: int = 32, input_size: int = 28):
    super().__init__()
    self.pad = (pad_to - input_size) // 2
    self.c1 = nn.Conv2d(in_channels, 6, 5, bias=False)
    self.bn1 = nn.BatchNorm2d(6)
    self.c3 = nn.Conv2d(6, 16, 5, bias=False)
    self.bn3 = nn.BatchNorm2d(16)
    self.f5 = nn.Linear(16 * 5 * 5, 120)
    self.f6 = nn.Linear(120, 84)
    self.head = nn.Linear(84, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pad:
      x = F.pad(x, (self.pad,) * 4)
    x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
    x = F.max_pool2d(F.relu(self.bn3(self.c3(x))), 2)
    x = torch.flatten(x, 1)
    x = F.relu(self.f5(x))
    x = F.relu(self.f6(x))
    return self.head(x)


class BasicBlock(nn.Module):
  """3x3 conv (stride) + BN + ReLU, 3x3 conv + BN, (+ option-A shortcut), ReLU.

  [batch, in_ch, H, W] -> [batch, out_ch, H / stride, W / stride].
  """

  def __init__(self, in_ch: int, out_ch: int, stride: int, residual: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(out_ch)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_ch)
    self.stride, self.extra = stride, out_ch - in_ch
    self.residual = residual

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.residual:
      s = x
      if self.stride != 1:
        s = s[:, :, ::self.stride, ::self.stride]
      if self.extra:
        # Zero channels appended after the existing ones, as ours.
        s = F.pad(s, (0, 0, 0, 0, 0, self.extra))
      y = y + s
    return F.relu(y)


class CifarResNet(nn.Module):
  """CIFAR ResNet-(6n+2) / plain twin: [batch, C, H, W] -> [batch, classes]."""

  def __init__(self, n: int, residual: bool = True, in_channels: int = 3,
               num_classes: int = 10):
    super().__init__()
    self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
    self.stem_bn = nn.BatchNorm2d(16)
    blocks, in_ch = [], 16
    for i, width in enumerate((16, 32, 64)):
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(BasicBlock(in_ch, width, stride, residual))
        in_ch = width
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):  # He init, as ours (fan_out, normal).
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem(x)))
    x = self.blocks(x)
    return self.head(x.mean(dim=(2, 3)))


# name -> constructor(in_channels, num_classes).
_CIFAR_N = {'resnet20': 3, 'resnet32': 5, 'resnet44': 7, 'resnet56': 9,
            'resnet110': 18}


def create(name: str, in_channels: int, num_classes: int = 10,
           input_size: int | None = None) -> nn.Module:
  """The twin of registry model `name` ('lenet5', 'resnetN', 'plainN')."""
  if name == 'lenet5':
    return LeNet5(in_channels, num_classes, input_size=input_size or 28)
  residual = name.startswith('resnet')
  key = 'resnet' + name[len('resnet' if residual else 'plain'):]
  if key not in _CIFAR_N:
    raise ValueError(f'No PyTorch twin for {name!r}; have lenet5, '
                     f'{sorted(_CIFAR_N)} and their plainN twins.')
  return CifarResNet(_CIFAR_N[key], residual, in_channels, num_classes)


def num_params(model: nn.Module) -> int:
  """Trainable parameters (batch-norm running statistics excluded)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)
