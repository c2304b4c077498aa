"""The grain pipeline: bucketed plans, per-process slices, the batch contract, exact resume."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from configs.base import get_config
from data_pipelines import builtin, pipeline, shards, sources
from jamflow_jax import checkpoint as checkpoint_lib, text as text_lib, train as train_lib
from jamflow_jax.config import ConfigError
from jamflow_jax.motion.stats import MotionStats

from conftest import write_random_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_random_corpus(tmp_path_factory.mktemp("corpus"), 150, min_frames=16, max_frames=60, records_per_shard=32)


def _config(corpus, **data):
  config = get_config("tiny")
  config.data.path = corpus.directory
  config.data.max_mel_frames, config.data.num_buckets = 48, 3
  config.data.update(data)
  return config


def test_bucket_lengths_are_quantiles_rounded_up():
  lengths = np.arange(1, 101)
  assert pipeline.bucket_lengths(lengths, 4, 16, 1000) == (32, 64, 80, 112)
  assert pipeline.bucket_lengths(lengths, 4, 16, 96) == (32, 64, 80, 96)


def test_plan_covers_each_record_once_per_epoch():
  lengths = np.random.default_rng(0).integers(10, 200, 1000)
  plan = pipeline.BatchPlan(lengths, 16, (64, 128, 160), seed=3, sort_window=8)
  eligible = set(np.flatnonzero(lengths <= 160))
  for epoch in range(2):
    indices, padded = plan.epoch(epoch)
    assert indices.shape == (plan.batches_per_epoch, 16)
    assert len(set(indices.ravel())) == indices.size and set(indices.ravel()) <= eligible
    assert len(eligible) - indices.size < 16  # only the last window's remainder is left out
    longest = lengths[indices].max(1)
    assert np.all(longest <= padded) and set(padded) <= {64, 128, 160}
    assert np.all(padded == np.asarray((64, 128, 160))[np.searchsorted((64, 128, 160), longest)])
  assert not np.array_equal(plan.epoch(0)[0], plan.epoch(1)[0])
  again = pipeline.BatchPlan(lengths, 16, (64, 128, 160), seed=3, sort_window=8)
  np.testing.assert_array_equal(again.batch(plan.batches_per_epoch + 5)[0], plan.epoch(1)[0][5])
  assert 0 < plan.padding_fraction() < 0.35
  unsorted = pipeline.BatchPlan(lengths, 16, (64, 128, 160), seed=3, sort_window=1).padding_fraction()
  assert plan.padding_fraction() < unsorted


def test_batch_contract(corpus):
  config = _config(corpus)
  source, motion = pipeline.open_source(config)
  iterator = pipeline.make_iterator(source, motion, config)
  plan = iterator.loader.plan
  for index in range(3):
    batch = next(iterator)
    indices, length = plan.batch(index)
    assert batch["mel"].shape == (8, length, 100) and batch["motion"].shape == (8, -(-length * 25 * 256 // 24000), 61)
    for row, i in enumerate(indices):
      record = source[int(i)]
      ta, tm = record["mel"].shape[0], record["motion"].shape[0]
      np.testing.assert_array_equal(batch["mel"][row, :ta], record["mel"].astype(np.float32))
      assert batch["mel_valid"][row].sum() == ta and batch["motion_valid"][row].sum() == tm
      assert np.all(batch["mel"][row, ta:] == 0) and np.all(batch["motion"][row, tm:] == 0)
      np.testing.assert_allclose(
        batch["motion"][row, :tm] * corpus.motion_std + corpus.motion_mean, record["motion"], atol=1e-5
      )
      np.testing.assert_array_equal(batch["text"][row], text_lib.pad_to(text_lib.encode(record["text"]), length))
  assert iterator.get_state() == {"grain": {"next_index": 3}, "plan": plan.fingerprint}


def test_processes_get_disjoint_slices_covering_the_data(corpus):
  config = _config(corpus)
  source, motion = pipeline.open_source(config)
  plan = pipeline.make_iterator(source, motion, config).loader.plan
  seen = []
  for p in range(2):
    rows = np.arange(p * config.train.batch_size // 2, (p + 1) * config.train.batch_size // 2)
    loader = pipeline.BatchLoader(source, plan, MotionStats(corpus.motion_mean, corpus.motion_std), rows=rows)
    seen.append([r["id"] for index in range(plan.batches_per_epoch) for r in loader.records(index)])
  assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == len(set(seen[0]))
  covered = {source[int(i)]["id"] for i in plan.epoch(0)[0].ravel()}
  assert set(seen[0]) | set(seen[1]) == covered
  assert len(covered) > len(plan.eligible) - config.train.batch_size


def test_resume_through_the_checkpoint_manager_replays_the_same_batches(corpus, tmp_path):
  config = _config(corpus)
  source, motion = pipeline.open_source(config)
  iterator = pipeline.make_iterator(source, motion, config)
  for _ in range(4):
    next(iterator)
  ckpt = checkpoint_lib.Checkpointer(tmp_path, config)
  state = {"w": jax.numpy.arange(3.0)}
  ckpt.save(4, state, iterator.get_state())
  ckpt.wait()
  expected = [next(iterator) for _ in range(6)]  # crosses into the second epoch (4 batches per epoch)
  restored_state, data_state = ckpt.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
  ckpt.close()
  resumed = pipeline.make_iterator(*pipeline.open_source(config), config)
  resumed.set_state(data_state)
  for want, got in zip(expected, [next(resumed) for _ in range(6)], strict=True):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_bad_record_policy(tmp_path):
  corpus = write_random_corpus(tmp_path, 20, min_frames=16, max_frames=40, validation_every=100)
  config = _config(corpus, num_buckets=1)
  config.train.batch_size = 4
  source, motion = pipeline.open_source(config)
  plan = pipeline.make_iterator(source, motion, config).loader.plan
  victim = int(plan.batch(0)[0][1])

  class Corrupted:  # one record reads back as corrupt, as a flipped byte on disk would
    lengths = source.lengths

    def __len__(self):
      return len(source)

    def __getitem__(self, index):
      if index == victim:
        raise shards.BadRecordError(
          f"{corpus.directory}/train-00000.array_record: record {index}: checksum mismatch (corrupt record)"
        )
      return source[index]

  with pytest.raises(shards.BadRecordError, match=r"train-\d+.array_record: record \d+: checksum mismatch"):
    pipeline.BatchLoader(Corrupted(), plan, MotionStats(corpus.motion_mean, corpus.motion_std))(0)
  loader = pipeline.BatchLoader(Corrupted(), plan, MotionStats(corpus.motion_mean, corpus.motion_std), on_bad="skip")
  batch = loader(0)
  assert loader.skipped == 1 and batch["mel"].shape[0] == 4 and batch["mel_valid"].any(axis=1).all()


def test_worker_processes_give_the_same_batches(corpus):
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  threads = pipeline.make_iterator(*pipeline.open_source(_config(corpus)), _config(corpus))
  workers = pipeline.make_iterator(*pipeline.open_source(_config(corpus)), _config(corpus, worker_processes=1))
  for _ in range(2):
    want, got = next(threads), next(workers)
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_train_on_a_corpus_resumes_exactly(corpus, tmp_path):
  config = _config(corpus, num_buckets=2)
  config.train.num_steps, config.checkpoint.every_steps, config.train.log_every_steps = 6, 3, 1
  straight = train_lib.train(config, str(tmp_path / "straight"), *sources.for_training(config))
  config.train.num_steps = 3
  first = train_lib.train(config, str(tmp_path / "resumed"), *sources.for_training(config))
  config.train.num_steps = 6
  second = train_lib.train(config, str(tmp_path / "resumed"), *sources.for_training(config))
  assert sorted({**first, **second}) == list(range(1, 7))
  np.testing.assert_allclose(
    [{**first, **second}[s] for s in range(1, 7)], [straight[s] for s in range(1, 7)], rtol=1e-6
  )
  assert (tmp_path / "straight" / "motion_stats.json").exists()


def test_main_names_a_truncated_shard_in_one_line(tmp_path):
  write_random_corpus(tmp_path, 40, records_per_shard=16)
  path = tmp_path / "train-00001.array_record"
  path.write_bytes(path.read_bytes()[:1000])
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jamflow_jax.main",
      "--config=configs/base.py:tiny",
      f"--workdir={tmp_path / 'run'}",
      f"--config.data.path={tmp_path}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(f"data error: {path}: "), proc.stderr[-2000:]


def test_a_position_saved_for_another_plan_restarts_the_data(corpus):
  make = lambda config: pipeline.make_iterator(*pipeline.open_source(config), config)  # noqa: E731
  first = next(make(_config(corpus)))
  other = _config(corpus)
  other.train.seed += 1
  foreign = make(other).get_state()
  # Another batch plan's position, and the synthetic source's state: both restart at the first batch.
  for state in ({**foreign, "grain": {"next_index": 2}}, {"index": 5}):
    resumed = make(_config(corpus))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["mel"], first["mel"])


@pytest.mark.parametrize(
  "change, message",
  [
    ({"data.motion_fps": 30.0}, "data.motion_fps=30.0 but the data was made with 25.0"),
    ({"data.hop_length": 240}, "data.hop_length=240 but the data was made with 256"),
    ({"data.max_mel_frames": 17}, "at most data.max_mel_frames=17 mel frames"),
    ({"data.split": "test"}, "data.split='test'"),
    ({"model.motion_dim": 58}, "model.motion_dim=58"),
  ],
)
def test_data_that_does_not_fit_the_config_is_a_config_error(corpus, change, message):
  config = _config(corpus)
  for key, value in change.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    pipeline.make_iterator(*pipeline.open_source(config), config)


def test_the_builtin_corpus_is_built_once_into_the_cache(tmp_path):
  config = get_config("demo")
  config.data.corpus.cache_dir, config.data.corpus.num_utterances = str(tmp_path), 12
  source, motion = pipeline.open_source(config)
  path = builtin.corpus_dir(config)
  assert os.path.dirname(path) == str(tmp_path) and os.listdir(tmp_path) == [os.path.basename(path)]
  stamp = os.stat(os.path.join(path, shards.METADATA_FILE)).st_mtime_ns
  again, _ = pipeline.open_source(config)
  assert os.stat(os.path.join(path, shards.METADATA_FILE)).st_mtime_ns == stamp
  assert len(source) == len(again) > 8 and motion["parts"][0] == ["expression", 50]
  batch = next(pipeline.make_iterator(source, motion, config))
  assert batch["mel"].shape[0] == 8 and (batch["text"] > 0).sum(axis=1).min() > 10  # every row has its transcript
