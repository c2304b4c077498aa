"""Loudness of speech on the motion clock: the energy envelope lip motion is drawn and scored against."""

import math

import numpy as np


def frame_rms(wav, sample_rate: int, *, fps: float = 25.0, num_frames: int | None = None) -> np.ndarray:
  """RMS energy of audio per motion frame: wav [N] -> [T] float64 (linear amplitude).

  Frame j is the instant j / fps (as motion frame j, and as the centred mel frames); its value is
  sqrt(mean(wav^2)) over a window of one frame period (sample_rate / fps samples) centred there,
  samples beyond the clip counting as silence. T = num_frames, or ceil(N * fps / sample_rate).
  """
  wav = np.asarray(wav, np.float64)
  if wav.ndim != 1:
    raise ValueError(f"wav must be mono audio [N], got shape {wav.shape}")
  if num_frames is None:
    num_frames = math.ceil(wav.size * fps / sample_rate)
  period = sample_rate / fps
  centres = np.arange(num_frames) * period
  starts = np.round(centres - period / 2).astype(np.int64)
  ends = np.round(centres + period / 2).astype(np.int64)
  energy = np.concatenate([[0.0], np.cumsum(wav * wav)])
  total = energy[np.clip(ends, 0, wav.size)] - energy[np.clip(starts, 0, wav.size)]
  return np.sqrt(np.maximum(total, 0.0) / (ends - starts))
