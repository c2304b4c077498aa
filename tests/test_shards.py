"""The shard format: round trip, validation on write and on read, corrupt and truncated shards."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from array_record.python import array_record_module

from data_pipelines import shards
from jamflow_jax import text as text_lib
from jamflow_jax.motion.spec import motion_frames_for

from conftest import write_random_corpus


def _record(frames=40, **overrides):
  rng = np.random.default_rng(frames)
  record = {
    "id": "utt-1",
    "speaker": "spk",
    "text": "Hello, world!",
    "mel": rng.normal(-4, 2, (frames, 100)).astype(np.float16),
    "motion": rng.normal(0, 0.3, (motion_frames_for(frames), 61)).astype(np.float32),
  }
  record.update(overrides)
  return record


def test_record_round_trip():
  record = _record()
  back = shards.deserialize(shards.serialize(record))
  assert {k: back[k] for k in ("id", "speaker", "text")} == {"id": "utt-1", "speaker": "spk", "text": "Hello, world!"}
  np.testing.assert_array_equal(back["mel"], record["mel"])
  np.testing.assert_array_equal(back["motion"], record["motion"])
  assert back["mel"].dtype == np.float16 and back["motion"].dtype == np.float32


def test_corpus_round_trip_and_metadata(tmp_path):
  corpus = write_random_corpus(tmp_path, 40, records_per_shard=16)
  train = corpus.split("train")
  assert len(train) == 32 and len(corpus.split("validation")) == 8
  assert sorted(os.listdir(tmp_path)) == [
    "corpus.json",
    "train-00000.array_record",
    "train-00001.array_record",
    "validation-00000.array_record",
  ]
  records = [train[i] for i in range(len(train))]
  streamed = [r for f in ("train-00000", "train-00001") for r in shards.read_records(tmp_path / f"{f}.array_record")]
  assert [r["id"] for r in records] == [r["id"] for r in streamed]
  np.testing.assert_array_equal(train.lengths, [r["mel"].shape[0] for r in records])
  motion = np.concatenate([r["motion"] for r in records]).astype(np.float64)
  np.testing.assert_allclose(corpus.motion_mean, motion.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(corpus.motion_std, motion.std(0), rtol=1e-4)
  meta = corpus.metadata
  assert meta["splits"]["train"]["num_records"] == 32 and meta["splits"]["train"]["num_speakers"] == 3
  assert meta["splits"]["train"]["hours"] == pytest.approx(train.lengths.sum() * 256 / 24000 / 3600)
  assert meta["motion"]["parts"][1] == ["jaw", 3] and meta["audio"]["n_mels"] == 100


@pytest.mark.parametrize(
  "change, reason",
  [
    ({"mel": np.zeros((40, 100), np.int16)}, "mel dtype int16"),
    ({"mel": np.zeros((40, 80), np.float32)}, "mel has 80 bins"),
    ({"motion": np.zeros((motion_frames_for(40), 60), np.float32)}, "motion has 60 dims"),
    ({"motion": np.full((motion_frames_for(40), 61), np.nan, np.float32)}, "motion has NaN/inf at frame 0"),
    ({"mel": np.full((40, 100), 1e6, np.float32)}, "mel has NaN/inf"),  # overflows float16
    ({"motion": np.zeros((motion_frames_for(40) + 2, 61), np.float32)}, "motion has 13 frames but 40 mel frames"),
    ({"text": "   "}, "empty transcript"),
    ({"text": "na\u00efve \u4e2d"}, "outside the vocabulary"),
    ({"text": "x" * 41}, "longer than its 40 mel frames"),
    ({"speaker": 3}, "speaker is int"),
  ],
)
def test_bad_record_is_refused_when_written(tmp_path, change, reason):
  with shards.CorpusWriter(tmp_path) as writer:
    writer.add("train", _record())
    with pytest.raises(shards.BadRecordError, match=reason) as error:
      writer.add("train", _record(id="utt-2", **change))
  assert "utt-2" in str(error.value) and str(tmp_path) in str(error.value)


def test_duplicate_id_is_refused(tmp_path):
  with shards.CorpusWriter(tmp_path) as writer:
    writer.add("train", _record())
    with pytest.raises(shards.BadRecordError, match="duplicate id"):
      writer.add("validation", _record())


def _raw(record) -> bytes:
  """Encodes like `serialize` but without validating, as a buggy or foreign writer might."""
  header = {k: record[k] for k in ("id", "speaker", "text")}
  header["arrays"] = {k: {"dtype": record[k].dtype.name, "shape": list(record[k].shape)} for k in ("mel", "motion")}
  h = json.dumps(header).encode()
  body = struct.pack("<4sB3xI", b"JAMR", 1, len(h)) + h + record["mel"].tobytes() + record["motion"].tobytes()
  return body + struct.pack("<I", zlib.crc32(body))


def _reseal(data: bytes) -> bytes:
  """A new CRC over an edited record, so the edit is what the reader meets."""
  return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def _write_shard(path, payloads):
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for p in payloads:
    writer.write(p)
  writer.close()


@pytest.mark.parametrize(
  "payload, reason",
  [
    (_raw(_record(motion=np.full((motion_frames_for(40), 61), np.inf, np.float32))), "motion has NaN/inf"),
    (_raw(_record(mel=np.zeros((40, 100), np.float32))), "mel stored as float32, expected float16"),
    (_raw(_record(text="")), "empty transcript"),
    (_raw(_record(motion=np.zeros((5, 61), np.float32))), "motion has 5 frames"),
    (_raw(_record())[:-40] + _raw(_record())[-4:], "checksum mismatch"),
    (b"\x00" * 64, "checksum mismatch"),
    (_reseal(_raw(_record()).replace(b'"arrays"', b'"arrayz"')), "malformed record header"),
  ],
)
def test_bad_record_is_refused_when_read(tmp_path, payload, reason):
  path = tmp_path / "train-00000.array_record"
  _write_shard(path, [shards.serialize(_record()), payload])
  records = shards.read_records(path)
  assert next(records)["id"] == "utt-1"
  with pytest.raises(shards.BadRecordError, match=reason) as error:
    next(records)
  assert f"{path}: record 1" in str(error.value)


def test_truncated_shard_fails_or_is_skipped(tmp_path):
  write_random_corpus(tmp_path, 40, records_per_shard=16)
  path = tmp_path / "train-00001.array_record"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 3])
  with pytest.raises(shards.BadShardError, match="train-00001.array_record"):
    shards.Corpus(tmp_path).split("train")
  with pytest.raises(shards.BadShardError, match="train-00001.array_record"):
    list(shards.read_records(path))
  split = shards.Corpus(tmp_path).split("train", on_bad="skip")
  # The skipped shard's records stay in the plan (every process plans the same batches) and read as bad.
  assert split.skipped_shards == [str(path)] and len(split) == 32 and split.lengths.shape == (32,)
  assert [split[i]["id"] for i in range(2)] == ["utt-0000", "utt-0001"]
  with pytest.raises(shards.BadShardError, match=r"train-00001.array_record: record 3: the shard is unreadable"):
    split[19]


def test_missing_corpus_json_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="corpus.json is missing"):
    shards.Corpus(tmp_path)


def test_text_encoding():
  assert text_lib.normalize("  \u201cHi\u201d \u2014 there\n") == '"Hi" - there'
  ids = text_lib.encode("Caf\u00e9!")
  np.testing.assert_array_equal(ids, [67, 97, 102, 233, 33])
  padded = text_lib.pad_to(ids, 8)
  np.testing.assert_array_equal(padded, [67, 97, 102, 233, 33, 0, 0, 0])
  with pytest.raises(text_lib.TextError, match=r"'\\x07' .* at position 1"):
    text_lib.encode("a\x07b", where="x")
