"""Every test sees 8 simulated CPU devices, and compiled programs are cached across runs."""

import os

os.environ["XLA_FLAGS"] = " ".join(
  [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (the flags above must be set before JAX initialises)

_CACHE = os.environ.get("JAMFLOW_JAX_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))
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


def write_random_corpus(
  directory,
  num_records: int = 40,
  *,
  min_frames: int = 20,
  max_frames: int = 60,
  seed: int = 0,
  records_per_shard: int = 16,
  validation_every: int = 5,
):
  """A valid corpus of random mel/motion (every `validation_every`-th record in validation)."""
  import numpy as np

  from data_pipelines import shards
  from jamflow_jax.motion.spec import motion_frames_for

  rng = np.random.default_rng(seed)
  with shards.CorpusWriter(directory, records_per_shard=records_per_shard) as writer:
    for i in range(num_records):
      frames = int(rng.integers(min_frames, max_frames + 1))
      writer.add(
        "validation" if i % validation_every == validation_every - 1 else "train",
        {
          "id": f"utt-{i:04d}",
          "speaker": f"spk-{i % 3}",
          "text": f"utt {i}.",
          "mel": rng.normal(-5, 2, (frames, 100)).astype(np.float32),
          "motion": rng.normal(0.1, 0.5, (motion_frames_for(frames), 61)).astype(np.float32),
        },
      )
  return shards.Corpus(directory)


def train_tiny_workdir(root, **settings):
  """root/work: the tiny preset trained two steps on a random corpus at root/corpus (so motion
  statistics and a checkpoint exist); `settings` are config overrides, e.g. eval__every_steps=2."""
  from configs.base import get_config
  from data_pipelines import sources
  from jamflow_jax import train

  write_random_corpus(root / "corpus", 24, min_frames=20, max_frames=45)
  config = get_config("tiny")
  config.data.path = str(root / "corpus")
  config.train.num_steps = config.checkpoint.every_steps = 2
  for key, value in settings.items():
    section, name = key.split("__")
    config[section][name] = value
  train.train(config, str(root / "work"), *sources.for_training(config))
  return root / "work"
