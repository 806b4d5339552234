"""Shared pytest set-up: keep XLA and TensorFlow quiet and on the CPU, and
keep freed host memory as training does."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# PNG and JSON only (a PDF costs ~1 s a figure); test_figures.py checks the
# PDF of `cnn.plotting.save` itself.
os.environ.setdefault('CNN_FIGURE_VECTOR_FORMATS', '')

from cnn.training import host_memory  # noqa: E402

# As main.py does, before JAX's threads first allocate: without it every CPU
# step of the suite faults its buffers in again (cnn/training/host_memory.py).
host_memory.keep_freed_memory()

import jax  # noqa: E402

# Many tests compile the same tiny programs in fresh closures; the persistent
# cache turns every compile after the first into a file read.
jax.config.update('jax_compilation_cache_dir', os.path.join(
    os.path.expanduser('~'), '.cache', 'cnn-study', 'xla-tests'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
