"""The TFDS builder and its adapter: a shard corpus round-trips bit-exactly and feeds the same batches."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.base import get_config
from data_pipelines import pipeline, shards, tfds_builder
from jamflow_jax.motion.spec import motion_frames_for

from conftest import write_random_corpus

SPLITS = {"train": 25, "validation": 5}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("corpus")
  # 30 records, every 6th in validation, 10 per shard: several shards per split.
  write_random_corpus(directory, 30, min_frames=16, max_frames=47, records_per_shard=10, validation_every=6)
  return str(directory)


@pytest.fixture(scope="module")
def data_dir(corpus_dir, tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp("tfds"))
  tfds_builder.prepare(corpus_dir, directory)
  return directory


def test_data_source_records_equal_shard_records(corpus_dir, data_dir):
  corpus = shards.Corpus(corpus_dir)
  for split in SPLITS:
    source = tfds.data_source(tfds_builder.NAME, data_dir=data_dir, split=split, download=False)
    expected = corpus.split(split)
    assert len(source) == len(expected) == SPLITS[split]
    for index in range(len(expected)):
      example, record = source[index], expected[index]
      for key in ("id", "speaker", "text"):
        assert example[key].decode("utf-8") == record[key]
      for key in ("mel", "motion"):
        assert example[key].dtype == record[key].dtype and example[key].shape == record[key].shape
        assert example[key].tobytes() == record[key].tobytes(), (split, index, key)


def test_tfds_split_matches_corpus(corpus_dir, data_dir):
  corpus = shards.Corpus(corpus_dir)
  for split in SPLITS:
    source, expected = tfds_builder.TfdsSplit(tfds_builder.NAME, data_dir, split), corpus.split(split)
    assert source.lengths.dtype == np.int32
    np.testing.assert_array_equal(source.lengths, expected.lengths)
    assert source.motion == corpus.metadata["motion"]
    assert split in source.describe(3) and "record 3" in source.describe(3)
    for index in range(len(source)):
      record, reference = source[index], expected[index]
      for key in ("id", "speaker", "text"):
        assert record[key] == reference[key]
      assert record["mel"].dtype == np.float16 and record["motion"].dtype == np.float32
      np.testing.assert_array_equal(record["mel"], reference["mel"])
      np.testing.assert_array_equal(record["motion"], reference["motion"])
    with pytest.raises(IndexError):
      source[len(source)]
    copy = pickle.loads(pickle.dumps(source))  # grain worker processes receive the source pickled
    np.testing.assert_array_equal(copy[1]["mel"], source[1]["mel"])


def test_same_batches_as_the_shard_source(corpus_dir, data_dir):
  config = get_config("tiny")
  config.data.source, config.data.path = "tfds", data_dir
  corpus = shards.Corpus(corpus_dir)
  tfds_source, tfds_motion = pipeline.open_source(config)
  assert isinstance(tfds_source, tfds_builder.TfdsSplit) and tfds_motion == corpus.metadata["motion"]
  from_tfds = pipeline.make_iterator(tfds_source, tfds_motion, config)
  from_shards = pipeline.make_iterator(corpus.split("train"), corpus.metadata["motion"], config)
  b = config.train.batch_size
  mean, std = (np.asarray(corpus.metadata["motion"][k], np.float32) for k in ("mean", "std"))
  for step in range(4):  # more than one epoch of 3 batches
    batch, reference = next(from_tfds), next(from_shards)
    assert set(batch) == {"mel", "mel_valid", "motion", "motion_valid", "text"}
    ta, tm = batch["mel"].shape[1], batch["motion"].shape[1]
    assert batch["mel"].shape == (b, ta, 100) and batch["mel"].dtype == np.float32
    assert batch["motion"].shape == (b, tm, 61) and tm == motion_frames_for(ta)
    assert batch["text"].shape == (b, ta) and batch["text"].dtype == np.int32
    assert batch["mel_valid"].dtype == batch["motion_valid"].dtype == bool
    for key in reference:
      np.testing.assert_array_equal(batch[key], reference[key], err_msg=key)
    # The motion is normalised with the corpus' statistics, as the shard source does.
    indices, _ = from_tfds.loader.plan.batch(step)
    for row, index in enumerate(indices):
      motion = tfds_source[int(index)]["motion"]
      np.testing.assert_array_equal(batch["motion"][row, : len(motion)], (motion - mean) / std)


def test_bad_record_names_dataset_split_and_index(data_dir):
  source = tfds_builder.TfdsSplit(tfds_builder.NAME, data_dir, "validation")
  example = dict(source._source[2])  # noqa: SLF001 (the decoded example, corrupted below)
  example["mel"] = np.full_like(example["mel"], np.nan)
  source._source = {2: example}  # noqa: SLF001
  with pytest.raises(shards.BadRecordError, match=r"jamflow_corpus .*split 'validation'.*record 2.*NaN"):
    source[2]


def test_errors_say_what_to_do(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"python -m data_pipelines\.tfds_builder --corpus="):
    tfds_builder.TfdsSplit(tfds_builder.NAME, str(tmp_path / "empty"), "train")
  with pytest.raises(KeyError, match="train, validation"):
    tfds_builder.TfdsSplit(tfds_builder.NAME, data_dir, "test")
  with pytest.raises(FileNotFoundError, match="not a jamflow corpus"):
    tfds_builder.prepare(tmp_path, tmp_path / "tfds")


def test_prepare_reuses_or_overwrites(corpus_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  info_file = os.path.join(tfds_builder.prepare(corpus_dir, data_dir).data_dir, "dataset_info.json")
  written = os.stat(info_file).st_mtime_ns
  again = tfds_builder.prepare(corpus_dir, data_dir)  # the same corpus: reused, not rebuilt
  assert again.info.splits["train"].num_examples == SPLITS["train"]
  assert os.stat(info_file).st_mtime_ns == written
  other = tmp_path / "other"
  write_random_corpus(other, 1, seed=1, validation_every=2)
  with pytest.raises(ValueError, match="--overwrite"):
    tfds_builder.prepare(other, data_dir)
  tfds_builder.prepare(other, data_dir, overwrite=True)
  source = tfds_builder.TfdsSplit(tfds_builder.NAME, data_dir, "train")
  assert len(source) == 1 and source[0]["id"] == "utt-0000"
  assert source.motion == shards.Corpus(other).metadata["motion"]


def test_command_line(corpus_dir, tmp_path):
  flags = [f"--corpus={corpus_dir}", f"--data_dir={tmp_path}"]
  result = subprocess.run(
    [sys.executable, "-m", "data_pipelines.tfds_builder", *flags],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
    cwd=REPO,
  )
  counts = f"(train {SPLITS['train']}, validation {SPLITS['validation']} records)"
  assert f"is prepared in {tmp_path}/jamflow_corpus/1.0.0 {counts}" in result.stdout
  assert len(tfds_builder.TfdsSplit(tfds_builder.NAME, tmp_path, "train")) == SPLITS["train"]
