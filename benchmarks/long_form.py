"""Long form: mel generation for many chunks, and vocoding a long mel whole against in windows.

  python -m benchmarks.long_form [--seconds=133] [--chars=2000] [--nfe=8] [--max_frames=150]
      [--vocoder=griffin_lim] [--workdir=DIR] [--rows=vocoder,tts]

Each row runs in its own process, so `peak_rss_mb` is that row's own peak (`rss_before_mb`: before
it vocodes). `whole` is one vocoder call over the whole mel (what long form did before windowing);
`windowed` is the vocoder's default (windows of `audio.vocoder.WINDOW_FRAMES` frames).

- vocoder rows: a random log mel of `--seconds`; `max_abs_diff` is windowed against whole.
- tts rows: `Pipeline.text_to_speech` of a `--chars`-character text on the tiny preset (a workdir
  trained two steps on synthetic batches unless --workdir names one) with chunks of
  `--max_frames` frames: chunks, chunks/s and sampler compiles of the mel generation, then the
  vocoder's time and compiled programs. Wall times include compiling.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags

from benchmarks.common import preset_config, print_table, run
from jamflow_jax.audio import mel, vocoder

_SECONDS = flags.DEFINE_float("seconds", 133.0, "vocoder rows: seconds of mel (133 s: the tts rows' output)")
_CHARS = flags.DEFINE_integer("chars", 2000, "tts rows: characters of text")
_NFE = flags.DEFINE_integer("nfe", 8, "tts rows: model evaluations per chunk")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 150, "tts rows: sample.max_frames, the longest chunk")
_VOCODER = flags.DEFINE_string("vocoder", "griffin_lim", "griffin_lim or a Vocos checkpoint file")
_WORKDIR = flags.DEFINE_string("workdir", "", "tts rows: a tiny-preset workdir (default: train one)")
_ROWS = flags.DEFINE_list("rows", ["vocoder", "tts"], "which rows to run")
_ROW = flags.DEFINE_string("row", "", "internal: run one row KIND:MODE in this process, print its JSON")
_OUT = flags.DEFINE_string("out", "", "internal: where a vocoder row saves its wav (.npy)")

MODES = ("whole", "windowed")
WHOLE = 1 << 30  # a window no mel reaches: one call, however long
MEL_FPS = mel.SAMPLE_RATE / mel.HOP_LENGTH


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _Timed:
  """The vocoder of `mode` (see the module docstring), recording its last call's wall time, the
  peak RSS before that call, and how many programs it has compiled."""

  def __init__(self, mode: str):
    self.vocoder = vocoder.load_vocoder(_VOCODER.value, **({"window": WHOLE} if mode == "whole" else {}))
    self.name, self.seconds, self.rss_before_mb = self.vocoder.name, 0.0, 0.0

  def __call__(self, log_mel: np.ndarray) -> np.ndarray:
    self.rss_before_mb, start = _peak_rss_mb(), time.perf_counter()
    wav = self.vocoder(log_mel)
    self.seconds = time.perf_counter() - start
    return wav

  def stats(self, frames: int) -> dict:
    return {
      "wall_s": self.seconds,
      "rtf": self.seconds / (frames / MEL_FPS),
      "programs": self.vocoder.programs,
      "rss_before_mb": self.rss_before_mb,
      "peak_rss_mb": _peak_rss_mb(),
    }


def _vocoder_row(mode: str) -> dict:
  voc = _Timed(mode)
  log_mel = (
    np.random.default_rng(0).normal(-5, 2, (int(round(_SECONDS.value * MEL_FPS)), mel.N_MELS)).astype(np.float32)
  )
  np.save(_OUT.value, voc(log_mel))
  return {"row": "vocoder", "mode": mode, "frames": log_mel.shape[0], **voc.stats(log_mel.shape[0])}


def _text(chars: int) -> str:
  """Sentences of 4 to 12 common words, `chars` characters in all."""
  words = "the quick brown fox jumps over a lazy dog while seven wise men sing of rain and light".split()
  rng = np.random.default_rng(0)
  text = ""
  while len(text) < chars:
    text += " " + " ".join(rng.choice(words, rng.integers(4, 13))).capitalize() + "."
  return text.strip()[:chars].rstrip() + "."


def _tiny_workdir() -> str:
  if _WORKDIR.value:
    return _WORKDIR.value
  from data_pipelines.synthetic import SyntheticBatches
  from jamflow_jax import train

  workdir = os.path.join(tempfile.mkdtemp(prefix="long_form_"), "work")
  config = preset_config("tiny")
  config.data.source = "synthetic"
  config.train.num_steps = config.checkpoint.every_steps = 2
  train.train(config, workdir, SyntheticBatches(config))
  return workdir


def _tts_row(mode: str, workdir: str) -> dict:
  from jamflow_jax import generate

  config = generate.saved_config(workdir)
  config.sample.max_frames = _MAX_FRAMES.value
  voc = _Timed(mode)
  pipe = generate.Pipeline.from_workdir(workdir, config, vocoder=voc)
  start = time.perf_counter()
  out = pipe.text_to_speech(_text(_CHARS.value), nfe=_NFE.value)
  generation = time.perf_counter() - start - voc.seconds  # every chunk's mel, then one vocoder call
  chunks = len(out.info["chunks"])
  return {
    "row": "tts",
    "mode": mode,
    "frames": out.mel.shape[0],
    "chunks": chunks,
    "gen_s": generation,
    "chunks_per_s": chunks / generation,
    "sampler_compiles": pipe.sampler.programs,
    **voc.stats(out.mel.shape[0]),
  }


def _subprocess_row(row: str, **flag_values) -> dict:
  argv = [sys.executable, "-m", "benchmarks.long_form", f"--row={row}"] + [
    f"--{name}={getattr(flags.FLAGS, name)}" for name in ("seconds", "chars", "nfe", "max_frames", "vocoder")
  ]
  argv += [f"--{k}={v}" for k, v in flag_values.items()]
  done = subprocess.run(argv, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"row {row} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _ROW.value:
    kind, mode = _ROW.value.split(":")
    print(json.dumps(_vocoder_row(mode) if kind == "vocoder" else _tts_row(mode, _WORKDIR.value)))
    return
  rows = []
  if "vocoder" in _ROWS.value:
    with tempfile.TemporaryDirectory() as tmp:
      wavs = {}
      for mode in MODES:
        wavs[mode] = os.path.join(tmp, f"{mode}.npy")
        rows.append(_subprocess_row(f"vocoder:{mode}", out=wavs[mode]))
      rows[-1]["max_abs_diff"] = float(np.abs(np.load(wavs["windowed"]) - np.load(wavs["whole"])).max())
  if "tts" in _ROWS.value:
    workdir = _tiny_workdir()
    rows += [_subprocess_row(f"tts:{mode}", workdir=workdir) for mode in MODES]
  print(
    f"vocoder {_VOCODER.value}; vocoder rows: {_SECONDS.value:g} s of mel; tts rows: {_CHARS.value} "
    f"characters, tiny preset, chunks of {_MAX_FRAMES.value} frames, NFE {_NFE.value}; wall_s and rtf: "
    "the vocoder's (including its compile)"
  )
  print_table(rows)


if __name__ == "__main__":
  run(main)
