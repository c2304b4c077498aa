"""Sampling many jobs (`--mode=sample --jobs`): utterances/s one job at a time against jobs batched.

  python -m benchmarks.sample_jobs [--preset=demo] [--jobs=32] [--batch_jobs=1,8] [--runs=1]
      [--nfe=0] [--config=configs/base.py --config.sample.cfg_text=2 ...]

The preset's model with random weights (speed does not depend on the values) runs `--jobs` text
to speech + motion jobs (sentences of 2 to 9 words, seeds 0, 1, ...) through `jobs.run_jobs` once
per `--batch_jobs` value (`sample.batch_jobs`: 1 is one job at a time), end to end: sampling,
Griffin-Lim vocoding and un-normalising. A first pass compiles every program; utt_per_s is the
jobs over the median wall time of `--runs` timed passes. `sampler_calls` counts the sampler calls of
one pass (`programs`: compiled so far), `max_abs_diff` compares each row's mels with the first row's (f32 rounding).
"""

import statistics
import time

import jax
import numpy as np
from absl import flags, logging
from flax import nnx

from benchmarks.common import preset_config, print_table, run
from jamflow_jax import model as model_lib, sharding
from jamflow_jax.inference import Pipeline, jobs as jobs_lib

_PRESET = flags.DEFINE_string("preset", "demo", "configs/base.py preset")
_JOBS = flags.DEFINE_integer("jobs", 32, "tts jobs per pass")
_BATCH_JOBS = flags.DEFINE_list("batch_jobs", ["1", "8"], "sample.batch_jobs values to compare")
_RUNS = flags.DEFINE_integer("runs", 1, "timed passes per row (median)")
_NFE = flags.DEFINE_integer("nfe", 0, "model evaluations per sample (0 = the preset's sample.nfe)")

WORDS = "the quick brown fox jumps over a lazy dog while seven old men sing".split()


def _jobs(n: int) -> list[dict]:
  """n tts jobs of 2-9 words (lengths spread over the demo's length buckets), seeds 0..n-1."""
  rng = np.random.default_rng(0)
  return [
    {"task": "tts", "text": " ".join(rng.choice(WORDS, int(rng.integers(2, 10)))) + ".", "seed": i} for i in range(n)
  ]


class _Counted:
  """A Sampler that counts its calls."""

  def __init__(self, sampler):
    self.sampler, self.calls = sampler, 0

  def __call__(self, *args, **kwargs):
    self.calls += 1
    return self.sampler(*args, **kwargs)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # not a line per job
  config = preset_config(_PRESET.value)
  if _NFE.value:
    config.sample.nfe = _NFE.value
  mesh = sharding.single_device_mesh(config)
  with sharding.use_mesh(mesh, config):
    model = model_lib.create(config, seed=0)
  pipe = Pipeline(config, nnx.to_pure_dict(nnx.split(model, nnx.Param)[1]))
  jobs = _jobs(_JOBS.value)
  wheres = [f"job {i}" for i in range(len(jobs))]
  pipe.sampler = counted = _Counted(pipe.sampler)
  rows, first = [], None
  for batch in map(int, _BATCH_JOBS.value):
    results = jobs_lib.run_jobs(pipe, jobs, wheres, batch=batch)  # compiles
    times = []
    for _ in range(_RUNS.value):
      start, counted.calls = time.perf_counter(), 0
      jobs_lib.run_jobs(pipe, jobs, wheres, batch=batch)
      times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    first = first or results
    rows.append(
      {
        "preset": _PRESET.value,
        "nfe": config.sample.nfe,
        "jobs": len(jobs),
        "batch_jobs": batch,
        "sampler_calls": counted.calls // _RUNS.value,
        "programs": counted.sampler.programs,
        "wall_s": seconds,
        "utt_per_s": len(jobs) / seconds,
        "x_first": rows[0]["wall_s"] / seconds if rows else 1.0,
        "max_abs_diff": max(float(np.abs(a.mel - b.mel).max()) for a, b in zip(first, results)),
      }
    )
  device = jax.devices()[0]
  audio_s = sum(r.mel.shape[0] for r in first) / pipe.mel_fps
  print(
    f"device: {device.device_kind} ({device.platform}); {len(jobs)} jobs, {audio_s:.1f} s of speech + motion; "
    f"median of {_RUNS.value} timed pass(es) after a compiling pass"
  )
  print_table(rows)


if __name__ == "__main__":
  run(main)
