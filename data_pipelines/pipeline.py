"""The grain pipeline: records -> length-bucketed, padded host batches of the batch contract.

Batches are *planned* before anything is read: per epoch, a seeded permutation of the records
(those within `max_mel_frames`) is cut into windows of `sort_window` batches, each window is sorted
by length and cut into global batches, and the batches are shuffled. A batch is padded to the
smallest bucket length that holds its longest record. Bucket lengths are quantiles of the corpus'
length distribution (rounded up to `bucket_multiple`), so there are few distinct shapes (few
compiles) and little padding (`BatchPlan.padding_fraction`).

The plan is a pure function of (seed, batch index), identical on every process; a process reads
the rows of each global batch that its devices hold (`jamflow_jax.sharding.process_rows`: under a
model axis across processes, several processes read the same rows). So the iterator's state is one integer
(grain's `next_index`), saved with the train state, and resuming replays exactly the batches an
uninterrupted run would have seen, on any number of hosts.

Loading runs in grain: `MapDataset.range(...).map(load)` -> `to_iter_dataset` with in-process
threads (best on small machines), optionally `mp_prefetch` worker processes.
"""

import dataclasses
import functools
import hashlib
import threading
from typing import Protocol

import grain
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import builtin, shards
from jamflow_jax import text as text_lib
from jamflow_jax.errors import BadRecordError, ConfigError
from jamflow_jax.motion.spec import motion_frames_for
from jamflow_jax.motion.stats import MotionStats

_UNBOUNDED = 2**62  # "repeat forever": batch indices are never exhausted in practice


class RecordSource(Protocol):
  """What the pipeline reads: shards (`ShardedSplit`) or a TFDS data source adapter."""

  lengths: np.ndarray  # [N] mel frames of every record

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict: ...  # raises BadRecordError naming file/record


def bucket_lengths(lengths: np.ndarray, num_buckets: int, multiple: int, max_len: int) -> tuple[int, ...]:
  """Bucket boundaries: length quantiles rounded up to `multiple`, the last covering the longest."""
  quantiles = np.quantile(lengths, np.arange(1, num_buckets + 1) / num_buckets, method="higher")
  rounded = np.minimum(-(-quantiles.astype(np.int64) // multiple) * multiple, max_len)
  return tuple(int(b) for b in np.unique(rounded))


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: it holds an array
class BatchPlan:
  """Which records form global batch i, and its padded length (same answer on every process)."""

  lengths: np.ndarray  # [N] mel frames of every record of the source
  batch_size: int  # global batch size
  buckets: tuple[int, ...]  # padded lengths, ascending
  seed: int
  sort_window: int = 32  # batches sorted together: larger -> less padding, less randomness
  _epochs: dict = dataclasses.field(default_factory=dict, init=False, repr=False)  # the last epochs planned

  def __post_init__(self):
    if not self.eligible.size:
      raise ValueError(f"no record is at most {self.buckets[-1]} mel frames long")
    if self.eligible.size < self.batch_size:
      raise ValueError(
        f"{self.eligible.size} records within {self.buckets[-1]} mel frames cannot fill one batch of {self.batch_size}"
      )

  @functools.cached_property
  def eligible(self) -> np.ndarray:
    return np.flatnonzero(self.lengths <= self.buckets[-1])

  @property
  def batches_per_epoch(self) -> int:
    window = self.batch_size * self.sort_window
    n = self.eligible.size
    return (n // window) * self.sort_window + (n % window) // self.batch_size

  @functools.cached_property
  def fingerprint(self) -> str:
    """Names the batch stream: equal fingerprints plan equal batches."""
    digest = hashlib.sha256(np.asarray(self.lengths, np.int64).tobytes())
    digest.update(repr((self.batch_size, self.buckets, self.seed, self.sort_window)).encode())
    return digest.hexdigest()[:16]

  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (record indices [batches, B], padded length [batches]) of one epoch."""
    if epoch not in self._epochs:
      if len(self._epochs) >= 2:  # loader threads only ever straddle two epochs
        self._epochs.pop(min(self._epochs), None)  # None: another loader thread got there first
      self._epochs[epoch] = self._plan_epoch(epoch)
    return self._epochs[epoch]

  def _plan_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(self.eligible)
    window = self.batch_size * self.sort_window
    batches = []
    for start in range(0, order.size, window):
      chunk = order[start : start + window]
      chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
      usable = chunk.size // self.batch_size * self.batch_size
      batches.append(chunk[:usable].reshape(-1, self.batch_size))
    indices = np.concatenate(batches)[rng.permutation(self.batches_per_epoch)]
    longest = self.lengths[indices].max(axis=1)
    padded = np.asarray(self.buckets)[np.searchsorted(self.buckets, longest)]
    return indices, padded

  def batch(self, index: int) -> tuple[np.ndarray, int]:
    epoch, within = divmod(index, self.batches_per_epoch)
    indices, padded = self.epoch(epoch)
    return indices[within], int(padded[within])

  def padding_fraction(self, epoch: int = 0) -> float:
    """Fraction of padded mel frames over one epoch's batches."""
    indices, padded = self.epoch(epoch)
    return float(1.0 - self.lengths[indices].sum() / (padded.sum() * self.batch_size))


class BatchLoader:
  """Global batch index -> this process' host batch (dict of numpy arrays, the batch contract).

  `rows`: the positions within each global batch that this process loads (default: all of them).
  """

  def __init__(
    self,
    source: RecordSource,
    plan: BatchPlan,
    stats: MotionStats,
    *,
    rows: np.ndarray | None = None,
    on_bad: str = "fail",
    sample_rate: int = 24000,
    hop_length: int = 256,
    motion_fps: float = 25.0,
    tokenizer: text_lib.Tokenizer = text_lib.Latin1Tokenizer(),
  ):
    self.rows = np.arange(plan.batch_size) if rows is None else np.asarray(rows, np.int64)
    if not self.rows.size or self.rows.min() < 0 or self.rows.max() >= plan.batch_size:
      raise ValueError(f"rows {self.rows.tolist()} are not positions in a global batch of {plan.batch_size}")
    self.source, self.plan, self.on_bad, self.tokenizer = source, plan, on_bad, tokenizer
    self.stats = stats
    self.frames = functools.partial(
      motion_frames_for, motion_fps=motion_fps, sample_rate=sample_rate, hop_length=hop_length
    )
    self.skipped, self._lock = 0, threading.Lock()

  def __getstate__(self) -> dict:  # grain worker processes receive a pickled copy (without the lock)
    return {k: v for k, v in self.__dict__.items() if k != "_lock"}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _lock=threading.Lock())

  def load(self, i: int) -> dict:
    """Record i with its transcript's token ids under "ids"."""
    record = self.source[i]
    try:
      return {**record, "ids": self.tokenizer.encode(record["text"], where=record["id"])}
    except text_lib.TextError as e:  # the corpus accepted it, the configured vocabulary cannot spell it
      raise BadRecordError(f"{e} (model.text_vocab)") from None

  def records(self, index: int) -> list[dict]:
    """The records of this process' rows of global batch `index` (bad ones replaced under "skip")."""
    indices, _ = self.plan.batch(index)
    records, bad = [], []
    for i in indices[self.rows]:
      try:
        records.append(self.load(int(i)))
      except BadRecordError as e:
        if self.on_bad == "fail":
          raise
        bad.append(e)
    if bad:
      with self._lock:
        self.skipped += len(bad)
        logging.warning("skipped %d bad record(s) (%d so far): %s", len(bad), self.skipped, bad[0])
      if not records:
        raise BadRecordError(f"every record of batch {index} is bad; first: {bad[0]}")
      # Stand-ins from the same batch keep its shape; they are valid data, counted as skipped.
      records += [records[k % len(records)] for k in range(len(bad))]
    return records

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    _, length = self.plan.batch(index)
    records = self.records(index)
    b, motion_len = len(records), self.frames(length)
    dim = self.stats.mean.shape[0]
    batch = {
      "mel": np.zeros((b, length, records[0]["mel"].shape[1]), np.float32),
      "mel_valid": np.zeros((b, length), bool),
      "motion": np.zeros((b, motion_len, dim), np.float32),
      "motion_valid": np.zeros((b, motion_len), bool),
      "text": np.zeros((b, length), np.int32),
    }
    for row, record in enumerate(records):
      ta, tm = record["mel"].shape[0], record["motion"].shape[0]
      batch["mel"][row, :ta] = record["mel"]
      batch["mel_valid"][row, :ta] = True
      batch["motion"][row, :tm] = self.stats.normalise(record["motion"])
      batch["motion_valid"][row, :tm] = True
      batch["text"][row] = text_lib.pad_to(record["ids"], length, where=record["id"])
    return batch


class DataIterator:
  """Host batches forever; `get_state()/set_state()` checkpoint the position (JSON-able dict).

  `motion` describes the motion normalisation (parts, fps, mean, std) for whoever un-normalises.
  """

  def __init__(
    self, loader: BatchLoader, motion: dict, *, num_threads: int = 2, prefetch: int = 4, worker_processes: int = 0
  ):
    self.loader, self.motion = loader, motion
    dataset = (
      grain.MapDataset.range(_UNBOUNDED)
      .map(loader)
      .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    )
    if worker_processes:
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_processes))
    self._iterator = iter(dataset)

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict:
    return {"grain": self._iterator.get_state(), "plan": self.loader.plan.fingerprint}

  def set_state(self, state: dict) -> None:
    """Resumes at a saved position; one saved for another batch plan restarts the data, with a warning."""
    if state.get("plan") != self.loader.plan.fingerprint:
      logging.warning(
        "the checkpoint's data position belongs to another batch stream (corpus, data.* "
        "bucketing, train.batch_size or train.seed changed, or another source): the data "
        "restarts from the first batch of the current plan"
      )
      return
    self._iterator.set_state(state["grain"])


def open_source(config: ml_collections.ConfigDict) -> tuple[RecordSource, dict]:
  """The configured records and their motion description (corpus.json "motion": parts, fps, mean, std).

  data.source "tfds": `tfds.data_source(data.tfds_name, data_dir=data.path)`; otherwise the shard
  corpus at data.path, or the built-in corpus (built into the cache on first use) when it is empty.
  """
  d = config.data
  if d.source == "tfds":
    from data_pipelines import tfds_builder  # imports TensorFlow (seconds): only for TFDS corpora

    try:
      source = tfds_builder.TfdsSplit(d.tfds_name, d.path, d.split)
    except (FileNotFoundError, KeyError) as e:
      raise ConfigError(f"data.source=tfds, data.path={d.path!r}, data.split={d.split!r}: {e}") from None
    motion, audio = source.motion, source.audio
  else:
    try:
      corpus = shards.Corpus(d.path or builtin.ensure_corpus(config))
    except FileNotFoundError as e:
      raise ConfigError(f"data.path={d.path!r}: {e}") from None
    if d.split not in corpus.splits:
      raise ConfigError(f"data.split={d.split!r}: {corpus.directory} has splits {', '.join(corpus.splits)}")
    source, motion = corpus.split(d.split, on_bad=d.on_bad_record), corpus.metadata["motion"]
    audio = corpus.metadata["audio"]
  for key, have, want in (
    ("data.sample_rate", audio["sample_rate"], d.sample_rate),
    ("data.hop_length", audio["hop_length"], d.hop_length),
    ("data.motion_fps", motion["fps"], d.motion_fps),
  ):
    if have != want:  # lengths and the shared RoPE clock are derived from these
      raise ConfigError(f"{key}={want} but the data was made with {have}")
  dim = sum(size for _, size in motion["parts"])
  if dim != config.model.motion_dim:
    raise ConfigError(
      f"model.motion_dim={config.model.motion_dim} but the data's motion frames have {dim} dims ({motion['parts']})"
    )
  return source, motion


def make_iterator(
  source: RecordSource, motion: dict, config: ml_collections.ConfigDict, *, rows: np.ndarray | None = None
) -> DataIterator:
  """The training iterator over `source` with `config.data` / `config.train` settings; logs the padding.

  `motion` is the corpus' motion description (its "mean"/"std" normalise the motion); `rows` the
  positions of each global batch this process loads (default all; see `BatchLoader`).
  """
  d = config.data
  if not len(source):
    raise ConfigError(f"data.split={d.split!r} has no records")
  usable = source.lengths[source.lengths <= d.max_mel_frames]
  batch = config.train.batch_size
  if usable.size < batch:
    fix = (
      f"set --config.train.batch_size={len(source)} or less"
      if len(source) < batch
      else f"set --config.data.max_mel_frames={int(np.sort(source.lengths)[batch - 1])} or more "
      f"({int(source.lengths.max())} keeps every record)"
    )
    raise ConfigError(
      f"{usable.size} of {len(source)} records are at most data.max_mel_frames="
      f"{d.max_mel_frames} mel frames long (shortest {int(source.lengths.min())}); "
      f"train.batch_size={batch} needs at least that many: {fix}"
    )
  buckets = bucket_lengths(usable, d.num_buckets, d.bucket_multiple, d.max_mel_frames)
  plan = BatchPlan(source.lengths, config.train.batch_size, buckets, config.train.seed, d.sort_window)
  logging.info(
    "data: %d records, %d longer than %d mel frames left out; buckets %s; %d batches per epoch; padding %.1f%%",
    len(source),
    len(source) - plan.eligible.size,
    d.max_mel_frames,
    buckets,
    plan.batches_per_epoch,
    100 * plan.padding_fraction(),
  )
  loader = BatchLoader(
    source,
    plan,
    MotionStats.from_json(motion, config.model.motion_dim),
    rows=rows,
    on_bad=d.on_bad_record,
    sample_rate=d.sample_rate,
    hop_length=d.hop_length,
    motion_fps=d.motion_fps,
    tokenizer=text_lib.tokenizer(config),
  )
  return DataIterator(
    loader, motion, num_threads=d.num_threads, prefetch=d.prefetch, worker_processes=d.worker_processes
  )
