"""A JAX/Flax codebase for studying convolutional networks."""
