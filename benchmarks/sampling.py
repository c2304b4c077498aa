"""Sampling speed: real-time factor of speech + motion generation per attention backend and guidance.

  python -m benchmarks.sampling [--preset=base] [--seconds=10] [--nfe=32] [--impls=xla,pallas,cudnn]
      [--runs=3] [--vocoder=griffin_lim] [--json=rows.json] [--config=configs/base.py --config.model.dtype=float32]

The preset's model with random weights (speed does not depend on the values) generates `--seconds`
of speech with motion at NFE `--nfe` (Euler) under three guidance plans: none (one model call a
step), text only (the F5-TTS case: two variants in one batched call) and text + audio + motion
(four variants, e.g. a voice and a motion prompt). RTF = sampling wall time / seconds generated
(median of --runs after a compile and warm-up run); the vocoder's own RTF is a separate row.
`x_none` is the time relative to the no-guidance row of the same backend.
"""

import statistics
import time

import jax
import numpy as np
from absl import flags
from flax import nnx

from benchmarks.common import preset_config, report, run
from jamflow_jax import config as config_lib, model as model_lib, sharding
from jamflow_jax.model import attention
from jamflow_jax.sampling import Conditions, Sampler, SamplerOptions

_PRESET = flags.DEFINE_string("preset", "base", "configs/base.py preset")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "seconds of speech + motion per sample")
_NFE = flags.DEFINE_integer("nfe", 32, "model evaluations per sample")
_IMPLS = flags.DEFINE_list("impls", ["xla", "pallas", "cudnn"], "attention implementations")
_RUNS = flags.DEFINE_integer("runs", 3, "timed runs per row (median)")
_VOCODER = flags.DEFINE_string("vocoder", "griffin_lim", "griffin_lim or a Vocos checkpoint file ('' = skip)")

PLANS = {"none": {}, "text": {"text": True}, "text+audio+motion": {"text": True, "audio": True, "motion": True}}


def _conditions(config, seconds: float) -> Conditions:
  """One request: a transcript, a 1 s voice and motion prompt, the rest generated."""
  fps = config_lib.mel_fps(config)
  ta = int(round(seconds * fps))
  tm = config_lib.motion_frames(config, ta)
  rng = np.random.default_rng(0)
  text = np.zeros((1, ta), np.int32)
  text[0, : int(seconds * 15)] = rng.integers(97, 123, int(seconds * 15))
  return Conditions(
    text=text,
    text_given=np.ones(1, bool),
    audio=rng.normal(size=(1, ta, config.model.mel_dim)).astype(np.float32),
    audio_given=(np.arange(ta) < fps)[None],
    audio_valid=np.ones((1, ta), bool),
    motion=rng.normal(size=(1, tm, config.model.motion_dim)).astype(np.float32),
    motion_given=(np.arange(tm) < config.data.motion_fps)[None],
    motion_valid=np.ones((1, tm), bool),
  )


def _median(fn) -> float:
  fn()  # compile + warm-up
  times = []
  for _ in range(_RUNS.value):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  device = jax.devices()[0]
  cfg_all = SamplerOptions(nfe=_NFE.value)
  rows = []
  for impl in _IMPLS.value:
    config = preset_config(_PRESET.value)
    config.model.attention_impl = impl
    row = {"preset": _PRESET.value, "impl": impl, "nfe": _NFE.value, "seconds": _SECONDS.value}
    try:
      config = attention.for_platform(config, device.platform)
    except config_lib.ConfigError as e:
      rows.append({**row, "note": str(e)})
      continue
    mesh = sharding.single_device_mesh(config)
    with sharding.use_mesh(mesh, config):
      model = model_lib.create(config, seed=0)
    _, params = nnx.split(model, nnx.Param)
    sampler = Sampler(config, nnx.to_pure_dict(params), mesh)
    c = jax.device_put(_conditions(config, _SECONDS.value))
    none_s = None
    for plan, present in PLANS.items():
      present = {k: present.get(k, False) for k in ("text", "audio", "motion")}
      seconds = _median(lambda: sampler(c, cfg_all, 0, present))
      none_s = seconds if none_s is None else none_s
      rows.append(
        {
          **row,
          "guidance": plan,
          "calls_per_step": 1 + sum(present.values()),
          "wall_s": seconds,
          "rtf": seconds / _SECONDS.value,
          "x_none": seconds / none_s,
        }
      )
  if _VOCODER.value:
    from jamflow_jax.audio.vocoder import load_vocoder

    vocoder = load_vocoder(_VOCODER.value)
    mel = np.random.default_rng(0).normal(-5, 2, (int(round(_SECONDS.value * 93.75)), 100)).astype(np.float32)
    seconds = _median(lambda: vocoder(mel))
    rows.append(
      {
        "preset": "vocoder",
        "impl": vocoder.name,
        "seconds": _SECONDS.value,
        "wall_s": seconds,
        "rtf": seconds / _SECONDS.value,
      }
    )
  header = (
    f"device: {device.device_kind} ({device.platform}), {jax.device_count()} devices; median of "
    f"{_RUNS.value} runs after a warm-up"
  )
  report(rows, header)


if __name__ == "__main__":
  run(main)
