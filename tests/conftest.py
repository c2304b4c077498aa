"""Every test sees 8 simulated CPU devices, and compiled programs are cached across runs."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (the flags above must be set before JAX initialises)

_CACHE = os.environ.get("JAMFLOW_JAX_CACHE",
                        os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402

from configs.base import get_config  # noqa: E402


@pytest.fixture
def tiny_config():
  """The tiny preset on synthetic batches, sized for 8 simulated devices."""
  config = get_config("tiny")
  config.data.source = "synthetic"
  return config
