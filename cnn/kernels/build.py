"""Builds the oneDNN convolution kernel: `python -m cnn.kernels.build`.

`scripts/setup.sh` runs this after installing the requirements. It needs a C++
compiler, the XLA FFI headers shipped in jaxlib, and oneDNN's headers and
library (the `onednn-devel-cpu-gomp` wheel in requirements.txt installs them
into the virtualenv's `include/` and `lib/`). Without the kernel everything
still runs, with XLA's own (slower) CPU convolutions.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import jax.ffi

from cnn.kernels import onednn


def _library_dirs(prefix: pathlib.Path) -> list[pathlib.Path]:
  return [d for d in (prefix / 'lib', prefix / 'lib' / 'x86_64-linux-gnu')
          if d.is_dir()]


def onednn_prefix() -> pathlib.Path | None:
  """The install prefix holding include/dnnl.hpp and lib/libdnnl.so."""
  candidates = [os.environ.get('DNNL_ROOT'), sys.prefix, '/usr']
  for prefix in map(pathlib.Path, filter(None, candidates)):
    if (prefix / 'include' / 'dnnl.hpp').exists() and any(
        any(d.glob('libdnnl.so*')) for d in _library_dirs(prefix)):
      return prefix
  return None


def compile_command(prefix: pathlib.Path, out: pathlib.Path) -> list[str]:
  libdirs = _library_dirs(prefix)
  return [os.environ.get('CXX', 'g++'), '-O2', '-std=c++17', '-shared',
          '-fPIC', '-fopenmp', '-w', f'-I{jax.ffi.include_dir()}',
          f'-I{prefix / "include"}', str(onednn.SOURCE),
          *[f'-L{d}' for d in libdirs], '-ldnnl',
          *[f'-Wl,-rpath,{d}' for d in libdirs], '-o', str(out)]


def build() -> pathlib.Path:
  """Compiles `onednn.SOURCE` into `onednn.LIBRARY`; returns its path."""
  prefix = onednn_prefix()
  if prefix is None:
    raise SystemExit('oneDNN headers/library not found: install the '
                     'requirements (onednn-devel-cpu-gomp) or set DNNL_ROOT.')
  if shutil.which(os.environ.get('CXX', 'g++')) is None:
    raise SystemExit('No C++ compiler (g++) found: apt-get install g++, or set '
                     'CXX.')
  tmp = onednn.LIBRARY.with_suffix('.so.tmp')
  subprocess.run(compile_command(prefix, tmp), check=True)
  tmp.replace(onednn.LIBRARY)  # atomic: a running process never sees half
  return onednn.LIBRARY


if __name__ == '__main__':
  print(f'Built {build()}')
