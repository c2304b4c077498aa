"""Data pipeline benchmark: examples/s and mel frames/s of the grain pipeline beside the train step.

  python -m benchmarks.data_pipeline [--preset=demo] [--corpus=DIR] [--batches=300] [--threads=1,2,4]
                                     [--workers=2] [--step_steps=10]

Rows: the pipeline with 1, 2, 4 loading threads (and grain worker processes), then the preset's
train step on this machine's devices fed by the same pipeline (every bucket shape compiled before
timing). `x_step` is how many times faster the pipeline produces examples than the step consumes
them (the goal is >= 10). The bucketing's padding fraction is printed above the table. The corpus
is the built-in one for the preset (built on first use) unless --corpus names another.
"""

import os
import time

import jax
from absl import flags

from benchmarks.common import preset_config, print_table, run
from data_pipelines import pipeline
from jamflow_jax import sharding, train

_PRESET = flags.DEFINE_string("preset", "demo", "preset of configs/base.py (batch size, lengths, buckets)")
_CORPUS = flags.DEFINE_string("corpus", "", "corpus directory (default: the built-in corpus)")
_BATCHES = flags.DEFINE_integer("batches", 300, "batches timed per pipeline setting (after 5 warm-up)")
_THREADS = flags.DEFINE_list("threads", ["1", "2", "4"], "loading-thread counts to measure")
_WORKERS = flags.DEFINE_list("workers", ["2"], "grain worker-process counts to measure (empty: none)")
_STEP_STEPS = flags.DEFINE_integer("step_steps", 10, "timed train steps (0: skip the step)")


def _config():
  config = preset_config(_PRESET.value)
  config.data.path = _CORPUS.value
  return config


def measure_pipeline(config, source, motion, label: str) -> dict:
  iterator = pipeline.make_iterator(source, motion, config)
  for _ in range(5):
    next(iterator)
  examples = valid = padded = 0
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(iterator)
    examples += batch["mel"].shape[0]
    valid += int(batch["mel_valid"].sum())
    padded += batch["mel_valid"].size
  seconds = time.perf_counter() - start
  return {
    "what": label,
    "examples/s": examples / seconds,
    "mel_frames/s": valid / seconds,
    "padding": 1 - valid / padded,
  }


def measure_step(config, source, motion) -> dict:
  mesh = sharding.make_mesh(config)
  trainer = train.Trainer(config, mesh)
  iterator = pipeline.make_iterator(source, motion, config)
  plan = iterator.loader.plan
  state = trainer.init(config.train.seed)
  compiled = set()
  for index in range(plan.batches_per_epoch):  # one step per bucket shape: compile outside the timing
    if plan.batch(index)[1] not in compiled:
      compiled.add(plan.batch(index)[1])
      state, metrics = trainer.step(state, trainer.global_batch(iterator.loader(index)))
      jax.block_until_ready(metrics["loss"])
  batches = [next(iterator) for _ in range(_STEP_STEPS.value)]
  examples, valid = sum(b["mel"].shape[0] for b in batches), sum(int(b["mel_valid"].sum()) for b in batches)
  start = time.perf_counter()
  for batch in batches:
    state, metrics = trainer.step(state, trainer.global_batch(batch))
  jax.block_until_ready(metrics["loss"])
  seconds = time.perf_counter() - start
  return {
    "what": f"{_PRESET.value} train step ({mesh.size} x {jax.devices()[0].platform})",
    "examples/s": examples / seconds,
    "mel_frames/s": valid / seconds,
    "padding": 1 - valid / sum(b["mel_valid"].size for b in batches),
  }


def main(argv):
  del argv
  config = _config()
  source, motion = pipeline.open_source(config)
  plan = pipeline.make_iterator(source, motion, config).loader.plan
  print(
    f"corpus {config.data.path or 'built-in'}: {len(source)} records, {plan.eligible.size} within "
    f"{config.data.max_mel_frames} mel frames; batch {config.train.batch_size}; buckets {plan.buckets}; "
    f"padding over an epoch {100 * plan.padding_fraction():.1f}%; {os.cpu_count()} cores"
  )
  rows = []
  for threads in _THREADS.value:
    config.data.num_threads, config.data.worker_processes = int(threads), 0
    rows.append(measure_pipeline(config, source, motion, f"pipeline, {threads} thread(s)"))
  if _WORKERS.value:
    flags.FLAGS.mark_as_parsed()
  for workers in _WORKERS.value:
    config.data.num_threads, config.data.worker_processes = 2, int(workers)
    rows.append(measure_pipeline(config, source, motion, f"pipeline, {workers} worker process(es)"))
  if _STEP_STEPS.value:
    step = measure_step(_config(), source, motion)
    for row in rows:
      row["x_step"] = row["examples/s"] / step["examples/s"]
    rows.append({**step, "x_step": 1.0})
  print_table(rows)


if __name__ == "__main__":
  run(main)
