"""One entry for turning log mels into 24 kHz audio: Griffin-Lim (no weights) or Vocos weights.

    vocoder = load_vocoder("griffin_lim")                  # offline, no files
    vocoder = load_vocoder("ckpt/vocos/pytorch_model.bin")  # charactr/vocos-mel-24khz
    wav = vocoder(log_mel)  # [T, 100] -> [T * 256], or [B, T, 100] -> [B, T * 256]

Both give T * 256 samples per T frames, so either can stand in for the other.

Long mels (more than `window` frames, default WINDOW_FRAMES) are vocoded in windows of exactly
`window` frames, so activations stay bounded by one window and one compiled program serves every
window. Both vocoders are local in time (ConvNeXt convs + ISTFT; Griffin-Lim's iterations), so each
window carries the vocoder's `context` frames either side and keeps only its interior: the result
equals the whole-signal vocode to float rounding (measured 0.0 for Griffin-Lim, 1.4e-7 for Vocos).
"""

import functools
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from flax import nnx

from jamflow_jax import torch_checkpoint
from jamflow_jax.audio import griffin_lim, mel
from jamflow_jax.audio.vocos import Vocos

GRIFFIN_LIM = "griffin_lim"
# ~44 s of mel per vocoder call: ~90 MB of Griffin-Lim and ~100 MB of Vocos activations (XLA's
# temp buffers), against 22 KB a frame for a whole-signal Griffin-Lim (1.2 GB for 10 minutes).
# Griffin-Lim's 194 context frames either side cost 10% extra work at this size.
WINDOW_FRAMES = 4096


def window_plan(frames: int, window: int, context: int) -> list[tuple[int, int, int]]:
  """(start, keep_start, keep_end) per window for a mel of `frames` > `window` > 2 * `context` frames.

  Window i vocodes frames [start, start + window) and contributes frames [keep_start, keep_end)
  of the output; the kept ranges tile [0, frames). Each kept range lies at least `context` frames
  inside its window, except at the mel's own ends: the first window starts at frame 0 and the last
  ends at `frames` (it overlaps its neighbour more instead of being padded), so those edges are
  the whole signal's edges too.
  """
  plan, done = [], 0
  while done < frames:
    start = min(max(done - context, 0), frames - window)
    end = frames if start + window == frames else start + window - context
    plan.append((start, done, end))
    done = end
  return plan


class Vocoder:
  """`name` (for logs and JSON) and a call log mel [T, 100] / [B, T, 100] -> float32 [T*256] / [B, T*256].

  `fn` is jitted: (log mel [B, T, 100], first_frame int32 []) -> [B, T * 256], where first_frame
  is the index of the mel's first frame in the whole mel (a window's offset). `context`: the frames
  either side an output frame depends on. Mels of up to `window` frames run in one call (one
  program per length); longer ones in windows of `window` frames (one program for all windows).
  """

  def __init__(
    self, name: str, fn: Callable[[jax.Array, jax.Array], jax.Array], *, context: int, window: int = WINDOW_FRAMES
  ):
    if window <= 2 * context:
      raise ValueError(
        f"vocoder {name}: a window of {window} frames keeps nothing inside {context} context "
        f"frames each side; use more than {2 * context}"
      )
    self.name, self.context, self.window = name, context, window
    self._fn = fn  # compiled once per shape

  @property
  def programs(self) -> int:
    """How many programs the vocoder has compiled (one per mel length up to `window`)."""
    program = getattr(self._fn, "func", self._fn)  # Vocos binds its weights with a partial
    return program._cache_size()

  def __call__(self, log_mel: np.ndarray) -> np.ndarray:
    log_mel = np.asarray(log_mel, np.float32)
    if log_mel.ndim not in (2, 3) or log_mel.shape[-1] != mel.N_MELS:
      raise ValueError(
        f"vocoder {self.name} expects log mel [T, {mel.N_MELS}] or [B, T, {mel.N_MELS}], got {log_mel.shape}"
      )
    batch = log_mel if log_mel.ndim == 3 else log_mel[None]
    if batch.shape[1] <= self.window:
      wav = np.asarray(self._fn(batch, np.int32(0)), np.float32)
    else:
      wav = self._windowed(batch)
    return wav if log_mel.ndim == 3 else wav[0]

  def _windowed(self, log_mel: np.ndarray) -> np.ndarray:
    """log mel [B, T > window, 100] -> [B, T * 256], written window by window into one array."""
    frames, hop = log_mel.shape[1], mel.HOP_LENGTH
    plan = window_plan(frames, self.window, self.context)
    wav = np.empty((log_mel.shape[0], frames * hop), np.float32)
    t0 = time.perf_counter()
    for i, (start, keep_start, keep_end) in enumerate(plan):
      piece = np.asarray(self._fn(log_mel[:, start : start + self.window], np.int32(start)), np.float32)
      wav[:, keep_start * hop : keep_end * hop] = piece[:, (keep_start - start) * hop : (keep_end - start) * hop]
      logging.info(
        "vocoding window %d of %d: frames %d-%d of %d, %.1f s so far",
        i + 1,
        len(plan),
        keep_start,
        keep_end,
        frames,
        time.perf_counter() - t0,
      )
    return wav

  def __repr__(self) -> str:
    return f"Vocoder({self.name!r})"


def load_vocoder(spec: str = GRIFFIN_LIM, *, window: int = WINDOW_FRAMES, **kw) -> Vocoder:
  """A vocoder from `spec`: "griffin_lim" (kw: num_iters, momentum, seed, nnls_iters of
  griffin_lim.griffin_lim) or the path of a Vocos checkpoint file (.bin / .pt / .pth / .ckpt /
  .safetensors; kw: Vocos sizes, default mel-24khz). `window`: frames per call for long mels."""
  spec = os.fspath(spec)
  if spec == GRIFFIN_LIM:
    run = jax.jit(lambda log_mel, first_frame: griffin_lim.griffin_lim(log_mel, first_frame=first_frame, **kw))
    return Vocoder(
      GRIFFIN_LIM, run, context=griffin_lim.context_frames(kw.get("num_iters", griffin_lim.NUM_ITERS)), window=window
    )
  if os.path.isfile(spec):
    model = Vocos.from_checkpoint(spec, **kw)
    graphdef, state = nnx.split(model)
    # A pure function of (state, mel) under jax.jit: the weights are arguments, not baked-in constants.
    # Nothing in Vocos depends on a frame's position (Griffin-Lim's initial phase does), so
    # first_frame does not enter.
    run = jax.jit(lambda state, log_mel, first_frame: nnx.merge(graphdef, state)(log_mel))
    return Vocoder(f"vocos:{spec}", functools.partial(run, state), context=model.context_frames, window=window)
  raise ValueError(
    f"unknown vocoder {spec!r}: expected {GRIFFIN_LIM!r} or the path of an existing Vocos "
    f"checkpoint file ({', '.join(torch_checkpoint.TORCH_SUFFIXES)}, "
    f"{torch_checkpoint.SAFETENSORS_SUFFIX})"
  )
