"""The inputs of a request, loaded and checked: wav files, FLAME motion files, transcripts.

Each failure is an InputError naming the input (`name`), the file and what is wrong with it.
"""

import os

import numpy as np
from absl import logging

from jamflow_jax import text as text_lib
from jamflow_jax.audio import mel as mel_lib, wav as wav_lib
from jamflow_jax.errors import InputError, TextError
from jamflow_jax.motion import trackers
from jamflow_jax.motion.spec import MotionSpec


def load_wav(audio, sample_rate: int, *, name: str = "audio", resample: bool = False) -> np.ndarray:
  """A wav path or (samples, sample_rate) -> checked mono float32 [N] at `sample_rate`."""
  if isinstance(audio, (str, os.PathLike)):
    if not os.path.exists(audio):
      raise InputError(f"{name}: {audio} does not exist")
    try:
      wav, sr = wav_lib.load_wav(audio)
    except ValueError as e:  # empty, or not audio; the message starts with the file
      raise InputError(f"{name} {e}") from None
    where = f"{name} {os.fspath(audio)}"
  else:
    wav, sr = audio
    wav, where = np.asarray(wav, np.float32), name
  if sr != sample_rate:
    if not resample:
      raise InputError(
        f"{where}: sample rate {sr} Hz; the model works at {sample_rate} Hz. Resample it "
        f"(or pass resample=True / --resample)"
      )
    wav = wav_lib.resample(wav, sr, sample_rate)
  if wav.ndim != 1 or wav.shape[0] <= mel_lib.N_FFT:
    raise InputError(f"{where}: need mono audio longer than {mel_lib.N_FFT} samples, got shape {wav.shape}")
  if not np.all(np.isfinite(wav)):  # float wavs can hold them; the outputs would be all NaN
    raise InputError(f"{where}: has NaN or infinite samples")
  return wav


def load_motion(motion, spec: MotionSpec, dim: int, *, name: str = "motion") -> np.ndarray:
  """A FLAME npz path (any format `jamflow_jax.motion.trackers` reads) or an array [T, D] -> checked
  float32 [T, dim] (the model's model.motion_dim, in the layout of `spec`), un-normalised."""
  if isinstance(motion, (str, os.PathLike)):
    if not os.path.exists(motion):
      raise InputError(f"{name}: {motion} does not exist")
    try:
      path, (motion, track) = motion, trackers.load_motion(motion, default_fps=spec.fps, spec=spec)
    except trackers.TrackError as e:
      raise InputError(f"{name}: {e}") from e
    if track.fps is None:
      logging.warning("%s: %s stores no frame rate; taken as %g fps", name, path, spec.fps)
  motion = np.asarray(motion, np.float32)
  if motion.ndim != 2 or motion.shape[1] != dim:
    raise InputError(
      f"{name}: motion of shape {motion.shape}; the model's layout is [frames, {dim}] "
      f"({' | '.join(f'{n}[{s}]' for n, s in spec.parts)})"
    )
  if motion.shape[0] < 1 or not np.all(np.isfinite(motion)):
    raise InputError(f"{name}: motion must have at least one frame and finite values")
  return motion


def encode(tokenizer: text_lib.Tokenizer, text: str, *, where: str = "text") -> np.ndarray:
  """A transcript -> int32 ids [n]; InputError naming `where` for one the vocabulary cannot spell."""
  try:
    return tokenizer.encode(text, where=where)
  except TextError as e:
    raise InputError(str(e)) from e


def describe(x) -> str | None:
  """How an input is recorded in a result's info: its path, "array", or None."""
  if x is None:
    return None
  if isinstance(x, (str, os.PathLike)):
    return os.fspath(x)
  return "array"
