"""A JAX/Flax codebase for studying convolutional networks.

Importing it changes no process setting: entry points that train call
`cnn.training.host_memory.keep_freed_memory()` themselves, before JAX starts.
"""
