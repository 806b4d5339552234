"""2-D convolutions on CPU through oneDNN, as a differentiable JAX function.

XLA CPU's convolution kernels are several times slower than oneDNN's at
CIFAR-ResNet shapes, weight gradients worst (benchmarks/FINDINGS.md §1, §7).
`conv2d` computes the forward pass, the input gradient and the weight
gradient with oneDNN primitives (onednn_conv.cc) called through XLA's FFI, so
they run inside the compiled step with no host round trip. Build the library
once with `python -m cnn.kernels.build` (scripts/setup.sh does);
`available()` says whether it is loaded.

Scope: float32 or bfloat16 (`supports(dtype)`: bfloat16 where this CPU's
oneDNN has kernels for it), NHWC inputs, HWIO kernels, strides and explicit
padding; no dilation or groups (`cnn.kernels.forms.Conv` chooses XLA for
those). The custom call has no sharding rule, so `forms.Conv` uses it only on
a single device.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn import fundamentals

SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
LIBRARY = pathlib.Path(__file__).with_name('libcnn_onednn.so')
_TARGETS = ('forward', 'backward_data', 'backward_weights')

Padding = tuple[tuple[int, int], tuple[int, int]]


@functools.cache
def available() -> bool:
  """Whether the kernel library is built, current and registered with XLA."""
  if not LIBRARY.exists():
    logging.info('oneDNN convolutions off: %s not built (python -m '
                 'cnn.kernels.build).', LIBRARY.name)
    return False
  if LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime:
    logging.warning('oneDNN convolutions off: %s is older than %s; rebuild '
                    'with python -m cnn.kernels.build.', LIBRARY.name,
                    SOURCE.name)
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(LIBRARY))
  except OSError as e:
    logging.warning('oneDNN convolutions off: cannot load %s (%s).', LIBRARY,
                    e)
    return False
  for target in _TARGETS:
    name = f'cnn_onednn_conv_{target}'
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)),
                                platform='cpu')
  return True


@functools.cache
def supports(dtype) -> bool:
  """Whether `conv2d` runs in `dtype` here (float32 wherever `available()`).

  bfloat16 is tried once on a tiny convolution: oneDNN has bfloat16 kernels
  only for some CPUs (e.g. AVX-512 BF16, AMX).
  """
  dtype = jnp.dtype(dtype)
  if not available() or dtype not in (jnp.float32, jnp.bfloat16):
    return False
  if dtype == jnp.float32:
    return True
  try:
    # Run now even when first asked while a model is being traced (inside
    # a trace the probe would only be staged, and never fail).
    with jax.ensure_compile_time_eval():
      x = jnp.ones((1, 3, 3, 1), dtype)
      jax.block_until_ready(jax.jit(jax.grad(
          lambda k: conv2d(x, k, (1, 1), ((1, 1), (1, 1))).astype(
              jnp.float32).sum()))(jnp.ones((3, 3, 1, 1), dtype)))
    return True
  except Exception as e:  # noqa: BLE001 - any failure means "use XLA"
    logging.info('oneDNN bfloat16 convolutions unavailable here: %s', e)
    return False


def _call(target: str, out_shape: Sequence[int], a: jax.Array, b: jax.Array,
          strides: tuple[int, int], padding: Padding) -> jax.Array:
  (pt, pb), (pl, pr) = padding
  # Under vmap (packed sweep members, per-example gradients) one call per
  # member: still faster than XLA's grouped convolution for every net the
  # studies train (benchmarks/packed_sweep.py, FINDINGS "Sixth pass").
  call = jax.ffi.ffi_call(f'cnn_onednn_conv_{target}',
                          jax.ShapeDtypeStruct(tuple(out_shape), a.dtype),
                          vmap_method='sequential')
  return call(a, b, stride_h=np.int64(strides[0]),
              stride_w=np.int64(strides[1]), pad_top=np.int64(pt),
              pad_bottom=np.int64(pb), pad_left=np.int64(pl),
              pad_right=np.int64(pr))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: Padding) -> jax.Array:
  """Cross-correlation like `lax.conv_general_dilated` in NHWC/HWIO.

  Args:
    x: [batch, height, width, in], float32 or bfloat16.
    kernel: [kh, kw, in, out], the same dtype.
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)) zero padding, in pixels.

  Returns:
    [batch, out_height, out_width, out] in the inputs' dtype (bfloat16
    products are accumulated in float32 by oneDNN).
  """
  if x.dtype != kernel.dtype or x.dtype not in (jnp.float32, jnp.bfloat16):
    raise TypeError(f'conv2d needs float32 or bfloat16 operands of one dtype, '
                    f'got {x.dtype} and {kernel.dtype}.')
  n, h, w, _ = x.shape
  kh, kw, _, o = kernel.shape
  shape = (n, fundamentals.conv_output_size(h, kh, strides[0], padding[0]),
           fundamentals.conv_output_size(w, kw, strides[1], padding[1]), o)
  return _call('forward', shape, x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return conv2d(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  dx = _call('backward_data', x.shape, dy, kernel, strides, padding)
  dkernel = _call('backward_weights', kernel.shape, x, dy, strides, padding)
  return dx, dkernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
