"""The built-in corpus: built from eSpeak NG into a cache directory on first use.

The cache key is (shard format and generator versions, the sentence list's digest, number of
utterances, seed), so changing `data.corpus.*` or the generator builds a new corpus beside the old
one and never reuses a stale one.
"""

import contextlib
import fcntl
import os

import ml_collections
from absl import logging

from data_pipelines import shards, synth_corpus


def cache_root(config: ml_collections.ConfigDict) -> str:
  return (
    config.data.corpus.cache_dir
    or os.environ.get("JAMFLOW_CACHE")
    or os.path.join(os.path.expanduser("~"), ".cache", "jamflow_jax")
  )


def corpus_dir(config: ml_collections.ConfigDict) -> str:
  c = config.data.corpus
  version = f"v{shards.VERSION}.{synth_corpus.GENERATOR_VERSION}-{synth_corpus.sentences_digest()[:8]}"
  return os.path.join(cache_root(config), f"espeak-corpus-{version}-n{c.num_utterances}-seed{c.seed}")


def ensure_corpus(config: ml_collections.ConfigDict) -> str:
  """The built-in corpus directory, building it (with a progress bar) if it is not there yet.

  Needs no distributed runtime (main calls it before `jax.distributed.initialize`, so a build that
  outlasts the collectives' timeouts cannot break a multi-process start). Processes sharing the
  cache's file system take a file lock: one builds, the others wait for it and reuse its corpus; a
  host with a file system of its own builds its own, byte-identical copy. The build itself is atomic
  (a temporary directory renamed into place).
  """
  path = corpus_dir(config)
  done = os.path.join(path, shards.METADATA_FILE)
  if os.path.exists(done):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning("waiting for another process that is building the built-in corpus into %s", path)
      fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(done):
      logging.warning(
        "data.path is empty: building the built-in eSpeak corpus (%d utterances) into %s; this happens once",
        config.data.corpus.num_utterances,
        path,
      )
      synth_corpus.build_corpus(
        path, num_utterances=config.data.corpus.num_utterances, seed=config.data.corpus.seed, progress=True
      )
    # Safe while others still wait on it: whoever comes later finds the corpus before any lock.
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path + ".lock")
  return path
