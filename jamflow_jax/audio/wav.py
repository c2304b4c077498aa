"""Reading, writing and resampling waveforms (mono float32 in -1..1)."""

import math
import os

import numpy as np
import scipy.signal
import soundfile


def load_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """Any format libsndfile reads (wav, flac, ogg) -> (mono float32 [N], sample rate)."""
  try:
    wav, sr = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError) as e:
    raise ValueError(f"{path}: cannot read audio ({e})") from e
  return wav.mean(axis=1), int(sr)


def write_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
  """Writes 16-bit PCM (values clipped to -1..1)."""
  soundfile.write(os.fspath(path), np.clip(np.asarray(wav, np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  """Band-limited polyphase resampling by the exact ratio sr_out / sr_in (e.g. 22050 -> 24000 is 160/147)."""
  if sr_in == sr_out:
    return np.asarray(wav, np.float32)
  g = math.gcd(int(sr_in), int(sr_out))
  return scipy.signal.resample_poly(np.asarray(wav, np.float64), sr_out // g, sr_in // g).astype(np.float32)
