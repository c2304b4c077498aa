"""The built-in corpus: built from eSpeak NG into a cache directory on first use.

The cache key is (number of utterances, seed, corpus format version), so changing
`data.corpus.*` builds a new corpus beside the old one and never reuses a wrong one.
"""

import os

import ml_collections
from absl import logging

from data_pipelines import shards


def cache_root(config: ml_collections.ConfigDict) -> str:
  return (config.data.corpus.cache_dir or os.environ.get("JAMFLOW_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "jamflow_jax"))


def corpus_dir(config: ml_collections.ConfigDict) -> str:
  c = config.data.corpus
  return os.path.join(cache_root(config), f"espeak-corpus-v{shards.VERSION}-n{c.num_utterances}-seed{c.seed}")


def ensure_corpus(config: ml_collections.ConfigDict) -> str:
  """The built-in corpus directory, building it (with a progress bar) if it is not there yet."""
  path = corpus_dir(config)
  if not os.path.exists(os.path.join(path, shards.METADATA_FILE)):
    from data_pipelines import synth_corpus
    logging.warning("data.path is empty: building the built-in eSpeak corpus (%d utterances) into %s; "
                    "this happens once", config.data.corpus.num_utterances, path)
    synth_corpus.build_corpus(path, num_utterances=config.data.corpus.num_utterances,
                              seed=config.data.corpus.seed, progress=True)
  return path
