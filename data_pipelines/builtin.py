"""The built-in corpus: built from eSpeak NG into a cache directory on first use.

The cache key is (shard format and generator versions, the sentence list's digest, number of
utterances, seed), so changing `data.corpus.*` or the generator builds a new corpus beside the old
one and never reuses a stale one.
"""

import os

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from data_pipelines import shards, synth_corpus


def cache_root(config: ml_collections.ConfigDict) -> str:
  return (config.data.corpus.cache_dir or os.environ.get("JAMFLOW_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "jamflow_jax"))


def corpus_dir(config: ml_collections.ConfigDict) -> str:
  c = config.data.corpus
  version = f"v{shards.VERSION}.{synth_corpus.GENERATOR_VERSION}-{synth_corpus.sentences_digest()[:8]}"
  return os.path.join(cache_root(config), f"espeak-corpus-{version}-n{c.num_utterances}-seed{c.seed}")


def _build_if_missing(config: ml_collections.ConfigDict, path: str) -> None:
  if not os.path.exists(os.path.join(path, shards.METADATA_FILE)):
    logging.warning("data.path is empty: building the built-in eSpeak corpus (%d utterances) into %s; "
                    "this happens once", config.data.corpus.num_utterances, path)
    synth_corpus.build_corpus(path, num_utterances=config.data.corpus.num_utterances,
                              seed=config.data.corpus.seed, progress=True)


def ensure_corpus(config: ml_collections.ConfigDict) -> str:
  """The built-in corpus directory, building it (with a progress bar) if it is not there yet.

  With several processes, process 0 builds first and the others wait; a process that still sees no
  corpus (a host not sharing that file system) builds its own, byte-identical copy.
  """
  path = corpus_dir(config)
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      _build_if_missing(config, path)
    multihost_utils.sync_global_devices("jamflow_jax: built-in corpus")
  _build_if_missing(config, path)
  return path
