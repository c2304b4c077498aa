"""Pallas kernels; each has a plain-JAX reference beside it (jamflow_jax.model.attention)."""
