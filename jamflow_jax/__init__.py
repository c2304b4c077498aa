"""jamflow_jax: JAM-Flow (joint audio-motion flow matching) in JAX/Flax NNX."""
