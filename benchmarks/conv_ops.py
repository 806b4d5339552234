"""Per-convolution timings, XLA vs PyTorch (oneDNN), forward and gradients.

    python -m benchmarks.conv_ops                  # about 1 min
    python -m benchmarks.conv_ops --reps=200

For the convolutions of LeNet-5 (c1, c3) and of the CIFAR ResNets (3x3 at
16/32/64 channels, and the stride-2 16 -> 32 one), batch 128: the forward
pass, the weight gradient and the input gradient, each as its own jitted
XLA program (`lax.conv_general_dilated` and its VJP; `banded` rows use
`cnn.kernels.forms.banded_conv`, `onednn` rows `cnn.kernels.onednn.conv2d`,
our XLA FFI call into oneDNN) and as the PyTorch op (NCHW and channels_last;
`aten.convolution_backward` for the gradients), interleaved. Reports the
minimum over `--reps` single calls in milliseconds: on a shared machine the
minimum is the best estimate of the uncontended time.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import torch

from cnn.kernels import forms, onednn
from cnn.training import host_memory

DN = ('NHWC', 'HWIO', 'NHWC')
B = 128
# name -> (input HWC, kernel HWIO, padding, stride)
CASES = {
    'lenet c1 28x28 1->6 5x5': ((32, 32, 1), (5, 5, 1, 6), 0, 1),
    'lenet c3 10x10 6->16 5x5': ((14, 14, 6), (5, 5, 6, 16), 0, 1),
    'resnet 32x32 16->16 3x3': ((32, 32, 16), (3, 3, 16, 16), 1, 1),
    'resnet 16x16 32->32 3x3': ((16, 16, 32), (3, 3, 32, 32), 1, 1),
    'resnet 8x8 64->64 3x3': ((8, 8, 64), (3, 3, 64, 64), 1, 1),
    'resnet 32->16 16->32 3x3/2': ((32, 32, 16), (3, 3, 16, 32), 1, 2),
}


def jax_fns(x_shape, k_shape, pad, stride, impl: str):
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.normal(size=(B, *x_shape)), np.float32)
  k = jax.numpy.asarray(rng.normal(size=k_shape), np.float32)
  pads = ((pad, pad), (pad, pad))
  if impl == 'banded':
    conv = lambda x, k: forms.banded_conv(x, k, (stride, stride), pads)
  elif impl == 'onednn':
    conv = lambda x, k: onednn.conv2d(x, k, (stride, stride), pads)
  else:
    conv = lambda x, k: jax.lax.conv_general_dilated(
        x, k, (stride, stride), pads, dimension_numbers=DN)
  dy = jax.numpy.ones_like(conv(x, k))
  return {
      'forward': (jax.jit(conv), (x, k)),
      'weight grad': (jax.jit(lambda x, k, dy: jax.vjp(
          lambda k: conv(x, k), k)[1](dy)[0]), (x, k, dy)),
      'input grad': (jax.jit(lambda x, k, dy: jax.vjp(
          lambda x: conv(x, k), x)[1](dy)[0]), (x, k, dy)),
  }


def torch_fns(x_shape, k_shape, pad, stride, channels_last: bool):
  h, w, c = x_shape
  kh, kw, ci, co = k_shape
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.randn(B, c, h, w).contiguous(memory_format=fmt)
  k = torch.randn(co, ci, kh, kw).contiguous(memory_format=fmt)
  dy = torch.ones_like(torch.nn.functional.conv2d(x, k, None, stride, pad))
  back = lambda mask: torch.ops.aten.convolution_backward(
      dy, x, k, None, (stride, stride), (pad, pad), (1, 1), False, (0, 0), 1,
      mask)
  return {
      'forward': (lambda: torch.nn.functional.conv2d(x, k, None, stride, pad),
                  ()),
      'weight grad': (lambda: back((False, True, False)), ()),
      'input grad': (lambda: back((True, False, False)), ()),
  }


def main(argv=None) -> None:
  # Before JAX first computes: CPU steps then reuse freed memory instead of
  # faulting it in again (cnn/training/host_memory.py).
  host_memory.keep_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reps', type=int, default=60)
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  impls = ('xla', 'banded', 'onednn', 'torch', 'torch_cl')
  if not onednn.available():
    print('oneDNN kernel not built (python -m cnn.kernels.build): no onednn '
          'column.')
    impls = tuple(i for i in impls if i != 'onednn')
  fns = {}
  for name, (xs, ks, pad, stride) in CASES.items():
    for impl in impls:
      if impl == 'banded' and not name.startswith('lenet'):
        continue  # Too redundant at these widths (forms.Conv picks xla).
      if impl.startswith('torch'):
        group = torch_fns(xs, ks, pad, stride, impl == 'torch_cl')
      else:
        group = jax_fns(xs, ks, pad, stride, impl)
      for op, (fn, a) in group.items():
        if op == 'input grad' and 'c1' in name:
          continue  # the image needs no gradient.
        fns[(name, op, impl)] = (fn, a)
  times = {key: [] for key in fns}
  with torch.no_grad():
    for fn, a in fns.values():
      jax.block_until_ready(fn(*a))
    for _ in range(args.reps):
      for key, (fn, a) in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*a))
        times[key].append((time.perf_counter() - start) * 1e3)
  print(f'batch {B}, min of {args.reps} calls, ms; torch {args.threads} '
        'threads')
  ours = 'onednn' if 'onednn' in impls else 'xla'
  print('| convolution | op | ' + ' | '.join(impls) +
        f' | xla / torch_cl | {ours} / torch_cl |')
  print('|---|---|' + '---|' * (len(impls) + 2))
  for name in CASES:
    for op in ('forward', 'weight grad', 'input grad'):
      row = {impl: min(times[(name, op, impl)]) for impl in impls
             if (name, op, impl) in times}
      if not row:
        continue
      cells = ' | '.join(f'{row[i]:.2f}' if i in row else '-' for i in impls)
      print(f'| {name} | {op} | {cells} | '
            f'{row["xla"] / row["torch_cl"]:.1f} | '
            f'{row[ours] / row["torch_cl"]:.2f} |')


if __name__ == '__main__':
  main()
