"""A JAX/Flax codebase for studying convolutional networks."""

from cnn import host_memory

# Before JAX starts its threads: see cnn/host_memory.py (up to 1.6x faster
# CPU steps).
host_memory.keep_freed_memory()
