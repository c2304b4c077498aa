"""What a run reads: the configured batch source for training and the validation records.

`main` builds these and hands them to `jamflow_jax.train.train` and `jamflow_jax.eval.evaluate.run`,
so the library never reaches into the data pipelines (imports run one way: data_pipelines ->
jamflow_jax).
"""

from typing import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import pipeline
from data_pipelines.synthetic import SyntheticBatches
from jamflow_jax import sharding
from jamflow_jax.errors import ConfigError


def training_source(
  config: ml_collections.ConfigDict, rows: np.ndarray | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """The configured batch source (an iterator with get_state/set_state; `.motion`, the motion
  description, for real data) of the global batch positions `rows`, by default the rows this
  process holds on the training mesh (`sharding.process_rows`)."""
  if rows is None:
    rows = sharding.process_rows(sharding.make_mesh(config), config.train.batch_size, sharding.batch_axes(config))
    if jax.process_count() > 1:
      logging.info(
        "process %d loads rows %s of each global batch of %d",
        jax.process_index(),
        _ranges(rows),
        config.train.batch_size,
      )
  if config.data.source == "synthetic":
    logging.warning("data.source=synthetic: training on SYNTHETIC batches (not speech, not faces).")
    return SyntheticBatches(config, rows=rows)
  source, motion = pipeline.open_source(config)
  return pipeline.make_iterator(source, motion, config, rows=rows)


def validation_records(config: ml_collections.ConfigDict, count: int) -> list[dict]:
  """The first `count` records of the configured corpus's eval.split (validation)."""
  config = config.copy_and_resolve_references()
  config.data.split = config.eval.split
  source, _ = pipeline.open_source(config)
  if len(source) == 0:
    raise ConfigError(f"the corpus at data.path={config.data.path!r} has no validation records")
  return [source[i] for i in range(min(count, len(source)))]


def for_training(config: ml_collections.ConfigDict) -> tuple[Iterator[dict[str, np.ndarray]], list[dict] | None]:
  """(batch source, validation records for evaluation during training or None) of `config`: the
  arguments `train.train` takes after (config, workdir)."""
  evaluates = config.eval.every_steps and config.data.source != "synthetic"
  return training_source(config), validation_records(config, config.eval.train_examples) if evaluates else None


def _ranges(rows: np.ndarray) -> str:
  """[0 1 2 3 8 9] -> '0-3, 8-9' (for logs)."""
  cuts = np.flatnonzero(np.diff(rows) != 1) + 1
  return ", ".join(f"{r[0]}-{r[-1]}" if r.size > 1 else f"{r[0]}" for r in np.split(rows, cuts))
