"""The shard format: one ArrayRecord record per utterance, parsed, never unpickled.

A corpus directory holds `<split>-NNNNN.array_record` shards and `corpus.json` beside them:
audio and motion settings, the motion layout, per-dimension motion mean/std (train split),
counts, hours, and per shard the mel length of every record (so batches can be planned by
length without reading the data).

A record is

    b"JAMR" | version u8 | 3 zero bytes | header length u32 | header (UTF-8 JSON) | arrays | crc32 u32

The header holds `id`, `speaker`, `text` and for `mel` (float16 [T_a, 100]) and `motion`
(float32 [T_m, D]) their dtype and shape; the arrays follow in that order, little-endian, and the
CRC covers everything before it. Every record is validated when written and when read (dtype,
dims, NaN/inf, T_m = ceil(T_a * 25 / 93.75), empty or unencodable text); a bad record raises
`BadRecordError` naming the file, the record index and the utterance id.
"""

import json
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Self

import numpy as np
from absl import logging
from array_record.python import array_record_data_source, array_record_module

from jamflow_jax import text as text_lib
from jamflow_jax.audio import mel as mel_lib
from jamflow_jax.errors import BadRecordError
from jamflow_jax.motion.spec import MOTION_SPEC, MotionSpec, motion_frames_for

MAGIC = b"JAMR"
VERSION = 1
FORMAT = "jamflow-shards"
METADATA_FILE = "corpus.json"
STD_FLOOR = 1e-3  # a constant motion dimension normalises to 0 instead of dividing by ~0
_PREFIX = struct.Struct("<4sB3xI")
_ARRAYS = (("mel", np.float16), ("motion", np.float32))
STRINGS = ("id", "speaker", "text")  # the string fields of a record


class BadShardError(BadRecordError):
  """A shard that cannot be read as a whole (missing, truncated, or not matching corpus.json)."""


def validate(record: dict, spec: MotionSpec = MOTION_SPEC) -> None:
  """Raises ValueError with the reason if `record` breaks the schema (dtypes exact, as stored)."""
  missing = [k for k in (*STRINGS, "mel", "motion") if k not in record]
  if missing:
    raise ValueError(f"missing fields {missing}")
  for key in STRINGS:
    if not isinstance(record[key], str):
      raise ValueError(f"{key} is {type(record[key]).__name__}, not str")  # noqa: TRY004 (one error type for bad records)
  if not record["id"]:
    raise ValueError("empty id")
  for key, dtype in _ARRAYS:
    value = record[key]
    if not isinstance(value, np.ndarray) or value.dtype != dtype:
      raise ValueError(f"{key} dtype {getattr(value, 'dtype', type(value).__name__)}, expected {np.dtype(dtype).name}")
    if value.ndim != 2 or value.shape[0] == 0:
      raise ValueError(f"{key} shape {value.shape}, expected [frames > 0, dims]")
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{key} has NaN/inf at frame {int(np.argwhere(~np.isfinite(value))[0, 0])}")
  mel, motion = record["mel"], record["motion"]
  if mel.shape[1] != mel_lib.N_MELS:
    raise ValueError(f"mel has {mel.shape[1]} bins, expected {mel_lib.N_MELS}")
  if motion.shape[1] != spec.dim:
    raise ValueError(f"motion has {motion.shape[1]} dims, expected {spec.dim} ({spec.names})")
  expected = motion_frames_for(mel.shape[0], motion_fps=spec.fps)
  if motion.shape[0] != expected:
    raise ValueError(f"motion has {motion.shape[0]} frames but {mel.shape[0]} mel frames need {expected}")
  ids = text_lib.encode(record["text"], where="text")  # TextError is a ValueError
  if ids.shape[0] > mel.shape[0]:
    raise ValueError(f"text of {ids.shape[0]} characters is longer than its {mel.shape[0]} mel frames")


def serialize(record: dict, spec: MotionSpec = MOTION_SPEC) -> bytes:
  """Validates and encodes one record; mel is stored as float16, motion as float32."""
  record = dict(record)
  for key, dtype in _ARRAYS:
    if key in record and isinstance(record[key], np.ndarray) and np.issubdtype(record[key].dtype, np.floating):
      with np.errstate(over="ignore"):  # overflow to inf in float16 is caught by validate
        record[key] = np.ascontiguousarray(record[key], dtype=dtype)
  validate(record, spec)
  header = {k: record[k] for k in STRINGS}
  header["arrays"] = {k: {"dtype": np.dtype(d).name, "shape": list(record[k].shape)} for k, d in _ARRAYS}
  header_bytes = json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8")
  body = b"".join(
    [
      _PREFIX.pack(MAGIC, VERSION, len(header_bytes)),
      header_bytes,
      *(record[k].astype(np.dtype(d).newbyteorder("<")).tobytes() for k, d in _ARRAYS),
    ]
  )
  return body + struct.pack("<I", zlib.crc32(body))


def deserialize(data: bytes, spec: MotionSpec = MOTION_SPEC) -> dict:
  """Parses and validates one record; raises ValueError with the reason."""
  if len(data) < _PREFIX.size + 4:
    raise ValueError(f"record of {len(data)} bytes is too short")
  body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
  if zlib.crc32(body) != crc:
    raise ValueError("checksum mismatch (corrupt record)")
  magic, version, header_len = _PREFIX.unpack_from(body)
  if magic != MAGIC or version != VERSION:
    raise ValueError(f"not a jamflow record (magic {magic!r}, version {version})")
  try:
    header = json.loads(body[_PREFIX.size : _PREFIX.size + header_len].decode("utf-8"))
    record, offset = {k: header[k] for k in STRINGS}, _PREFIX.size + header_len
    for key, dtype in _ARRAYS:
      info = header["arrays"][key]
      if info["dtype"] != np.dtype(dtype).name:
        raise ValueError(f"{key} stored as {info['dtype']}, expected {np.dtype(dtype).name}")
      count = int(np.prod(info["shape"]))
      array = np.frombuffer(body, np.dtype(dtype).newbyteorder("<"), count, offset)
      record[key] = array.astype(dtype).reshape(info["shape"])
      offset += array.nbytes
  except (KeyError, TypeError, IndexError) as e:  # a header of the wrong shape, however it passed the CRC
    raise ValueError(f"malformed record header ({type(e).__name__}: {e})") from e
  if offset != len(body):
    raise ValueError(f"record has {len(body) - offset} unexpected trailing bytes")
  validate(record, spec)
  return record


def _open_shard(path: str) -> array_record_data_source.ArrayRecordDataSource:
  if not os.path.exists(path):
    raise BadShardError(f"{path}: shard file is missing")
  try:
    return array_record_data_source.ArrayRecordDataSource([path])
  except Exception as e:  # array_record reports truncation as a bare RuntimeError
    raise BadShardError(f"{path}: not a readable ArrayRecord file (truncated or corrupt: {e!r})") from e


def read_records(path: str | os.PathLike, spec: MotionSpec = MOTION_SPEC) -> Iterator[dict]:
  """Iterates the records of one shard as dicts of the schema, each validated."""
  path = os.fspath(path)
  source = _open_shard(path)
  for i in range(len(source)):
    try:
      yield deserialize(source[i], spec)
    except ValueError as e:
      raise BadRecordError(f"{path}: record {i}: {e}") from e


class _MomentAccumulator:
  """Per-dimension mean/std over all frames, in float64 (stable enough for corpus sizes here)."""

  def __init__(self, dim: int):
    self.count, self.total, self.squares = 0, np.zeros(dim), np.zeros(dim)

  def add(self, x: np.ndarray) -> None:
    x = x.astype(np.float64)
    self.count += x.shape[0]
    self.total += x.sum(0)
    self.squares += np.square(x).sum(0)

  def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
    mean = self.total / self.count
    std = np.sqrt(np.maximum(self.squares / self.count - np.square(mean), 0.0))
    return mean, np.maximum(std, STD_FLOOR)


class CorpusWriter:
  """Writes records into `<split>-NNNNN.array_record` shards and `corpus.json` on close.

  Deterministic: the same sequence of `add` calls gives byte-identical files.
  """

  def __init__(
    self,
    out_dir: str | os.PathLike,
    *,
    records_per_shard: int = 256,
    motion_spec: MotionSpec = MOTION_SPEC,
    metadata: dict | None = None,
  ):
    self.out_dir = os.fspath(out_dir)
    os.makedirs(self.out_dir, exist_ok=True)
    self.records_per_shard, self.spec, self.metadata = records_per_shard, motion_spec, metadata or {}
    self._writers: dict[str, array_record_module.ArrayRecordWriter] = {}
    self._shards: dict[str, list[dict]] = {}
    self._speakers: dict[str, set[str]] = {}
    self._ids: set[str] = set()
    self._moments = _MomentAccumulator(motion_spec.dim)

  def __enter__(self) -> Self:
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:
      for writer in self._writers.values():
        writer.close()

  def add(self, split: str, record: dict) -> None:
    """Validates and appends one record to `split`; raises BadRecordError naming the record."""
    where = f"{self.out_dir}: {split} record {record.get('id', '?')!r}"
    if record.get("id") in self._ids:
      raise BadRecordError(f"{where}: duplicate id")
    try:
      data = serialize(record, self.spec)
    except ValueError as e:
      raise BadRecordError(f"{where}: {e}") from e
    shards = self._shards.setdefault(split, [])
    if not shards or shards[-1]["num_records"] == self.records_per_shard:
      if split in self._writers:
        self._writers[split].close()
      name = f"{split}-{len(shards):05d}.array_record"
      self._writers[split] = array_record_module.ArrayRecordWriter(os.path.join(self.out_dir, name), "group_size:1")
      shards.append({"file": name, "num_records": 0, "mel_frames": []})
    self._writers[split].write(data)
    shards[-1]["num_records"] += 1
    shards[-1]["mel_frames"].append(int(record["mel"].shape[0]))
    self._speakers.setdefault(split, set()).add(record["speaker"])
    self._ids.add(record["id"])
    if split == "train":
      self._moments.add(np.asarray(record["motion"], np.float32))

  def close(self) -> dict:
    """Closes the shards and writes corpus.json; returns its contents."""
    for writer in self._writers.values():
      writer.close()
    self._writers = {}
    if not self._moments.count:
      raise BadRecordError(f"{self.out_dir}: no train records were written; motion statistics need them")
    mean, std = self._moments.mean_std()
    seconds_per_frame = mel_lib.HOP_LENGTH / mel_lib.SAMPLE_RATE
    metadata = {
      "format": FORMAT,
      "version": VERSION,
      "audio": {
        "sample_rate": mel_lib.SAMPLE_RATE,
        "n_fft": mel_lib.N_FFT,
        "win_length": mel_lib.WIN_LENGTH,
        "hop_length": mel_lib.HOP_LENGTH,
        "n_mels": mel_lib.N_MELS,
        "mel": "F5-TTS vocos log mel",
      },
      "motion": {**self.spec.to_json(), "mean": mean.tolist(), "std": std.tolist()},
      "splits": {
        split: {
          "num_records": sum(s["num_records"] for s in shards),
          "hours": sum(sum(s["mel_frames"]) for s in shards) * seconds_per_frame / 3600,
          "num_speakers": len(self._speakers[split]),
          "shards": shards,
        }
        for split, shards in sorted(self._shards.items())
      },
      "source": self.metadata,
    }
    tmp = os.path.join(self.out_dir, METADATA_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(metadata, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(self.out_dir, METADATA_FILE))
    return metadata


class ShardedSplit:
  """Random access to one split of a corpus: `len`, `[i] -> record`, `lengths` [N] (from corpus.json).

  Shards are opened (and their record counts checked against corpus.json) up front. An unreadable
  shard raises BadShardError naming the file with `on_bad="fail"`; with "skip" it is logged and
  listed in `skipped_shards`, and reading one of its records raises BadShardError, which the loader
  treats like any bad record. Its records stay in `lengths`, so every process plans the same batches
  whichever shards it can read.
  """

  def __init__(self, directory: str, split: str, shards: list[dict], spec: MotionSpec, on_bad: str = "fail"):
    if on_bad not in ("fail", "skip"):
      raise ValueError(f"bad-record policy {on_bad!r}; choose fail or skip")
    self.spec, self.skipped_shards = spec, []
    self._paths, self._sources = [], []
    for shard in shards:
      path = os.path.join(directory, shard["file"])
      if len(shard["mel_frames"]) != shard["num_records"]:
        raise BadShardError(
          f"{os.path.join(directory, METADATA_FILE)}: {shard['file']} lists "
          f"{len(shard['mel_frames'])} lengths for {shard['num_records']} records"
        )
      try:
        source = _open_shard(path)
        if len(source) != shard["num_records"]:
          raise BadShardError(
            f"{path}: holds {len(source)} records but {METADATA_FILE} lists "
            f"{shard['num_records']} (truncated or replaced shard)"
          )
      except BadShardError as e:
        if on_bad == "fail":
          raise
        logging.warning("data.on_bad_record=skip: %s; its %d records will be skipped", e, shard["num_records"])
        self.skipped_shards.append(path)
        source = None
      self._paths.append(path)
      self._sources.append(source)
    if not shards:
      raise BadShardError(f"{directory}: split {split!r} has no shards")
    self.lengths = np.concatenate([np.asarray(s["mel_frames"], np.int32) for s in shards])
    self._starts = np.cumsum([0] + [s["num_records"] for s in shards])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of a split with {len(self)} records")
    shard = int(np.searchsorted(self._starts, index, side="right")) - 1
    path, local, source = self._paths[shard], index - int(self._starts[shard]), self._sources[shard]
    if source is None:
      raise BadShardError(f"{path}: record {local}: the shard is unreadable (skipped)")
    try:
      record = deserialize(source[local], self.spec)
    except ValueError as e:
      raise BadRecordError(f"{path}: record {local}: {e}") from e
    if record["mel"].shape[0] != self.lengths[index]:
      raise BadRecordError(
        f"{path}: record {local} ({record['id']!r}) has {record['mel'].shape[0]} mel "
        f"frames but {METADATA_FILE} lists {self.lengths[index]}"
      )
    return record


class Corpus:
  """A corpus directory: `metadata` (corpus.json), `motion_mean`/`motion_std` [D], `split(name)`."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = os.fspath(directory)
    path = os.path.join(self.directory, METADATA_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"{self.directory} is not a jamflow corpus: {METADATA_FILE} is missing "
        "(build one with data_pipelines.synth_corpus or data_pipelines.preprocess)"
      )
    try:
      with open(path) as f:
        self.metadata = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise BadShardError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(self.metadata, dict):
      raise BadShardError(f"{path}: holds a JSON {type(self.metadata).__name__}, not the corpus description")
    if self.metadata.get("format") != FORMAT or self.metadata.get("version") != VERSION:
      raise BadShardError(
        f"{path}: format {self.metadata.get('format')!r} version "
        f"{self.metadata.get('version')!r}; this build reads {FORMAT!r} version {VERSION}"
      )
    # What the loaders read (CorpusWriter writes all of it), so a damaged file fails here, by name.
    for key, fields in (
      ("audio", ("sample_rate", "hop_length")),
      ("splits", ()),
      ("motion", ("parts", "fps", "rotations", "mean", "std")),
    ):
      if not isinstance(self.metadata.get(key), dict) or not all(f in self.metadata[key] for f in fields):
        raise BadShardError(f"{path}: needs a {key!r} object" + (f" with {', '.join(fields)}" if fields else ""))
    motion = self.metadata["motion"]
    try:
      self.spec = MotionSpec.from_json(motion)
      self.motion_mean = np.asarray(motion["mean"], np.float32)
      self.motion_std = np.asarray(motion["std"], np.float32)
    except (TypeError, ValueError) as e:
      raise BadShardError(f"{path}: unreadable 'motion' ({e})") from None
    if (
      self.motion_mean.shape != (self.spec.dim,)
      or self.motion_std.shape != (self.spec.dim,)
      or not np.all(self.motion_std > 0)
      or not np.all(np.isfinite(self.motion_mean))
    ):
      raise BadShardError(f"{path}: motion mean/std must be {self.spec.dim} finite values (std > 0)")

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.metadata["splits"])

  def split(self, name: str, on_bad: str = "fail") -> ShardedSplit:
    if name not in self.metadata["splits"]:
      raise KeyError(f"{self.directory}: no split {name!r}; it has {', '.join(self.splits)}")
    return ShardedSplit(self.directory, name, self.metadata["splits"][name]["shards"], self.spec, on_bad)
