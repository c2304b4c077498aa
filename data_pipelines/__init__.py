"""Data for jamflow_jax: shard format, input pipeline, corpora."""
