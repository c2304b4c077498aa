"""One entry for turning log mels into 24 kHz audio: Griffin-Lim (no weights) or Vocos weights.

    vocoder = load_vocoder("griffin_lim")                  # offline, no files
    vocoder = load_vocoder("ckpt/vocos/pytorch_model.bin")  # charactr/vocos-mel-24khz
    wav = vocoder(log_mel)  # [T, 100] -> [T * 256], or [B, T, 100] -> [B, T * 256]

Both give T * 256 samples per T frames, so either can stand in for the other.
"""

import functools
import os
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from jamflow_jax import torch_checkpoint
from jamflow_jax.audio import griffin_lim, mel
from jamflow_jax.audio.vocos import Vocos

GRIFFIN_LIM = "griffin_lim"


class Vocoder:
  """`name` (for logs and JSON) and a call log mel [T, 100] / [B, T, 100] -> float32 [T*256] / [B, T*256]."""

  def __init__(self, name: str, fn: Callable[[jax.Array], jax.Array]):
    self.name = name
    self._fn = fn  # jitted over [B, T, 100]: compiled once per shape

  def __call__(self, log_mel: np.ndarray) -> np.ndarray:
    log_mel = np.asarray(log_mel, np.float32)
    if log_mel.ndim not in (2, 3) or log_mel.shape[-1] != mel.N_MELS:
      raise ValueError(f"vocoder {self.name} expects log mel [T, {mel.N_MELS}] or [B, T, {mel.N_MELS}], "
                       f"got {log_mel.shape}")
    wav = np.asarray(self._fn(log_mel if log_mel.ndim == 3 else log_mel[None]), np.float32)
    return wav if log_mel.ndim == 3 else wav[0]

  def __repr__(self) -> str:
    return f"Vocoder({self.name!r})"


def load_vocoder(spec: str = GRIFFIN_LIM, **kw) -> Vocoder:
  """A vocoder from `spec`: "griffin_lim" (kw: num_iters, momentum, seed, nnls_iters of
  griffin_lim.griffin_lim) or the path of a Vocos checkpoint file (.bin / .pt / .pth / .ckpt /
  .safetensors; kw: Vocos sizes, default mel-24khz)."""
  spec = os.fspath(spec)
  if spec == GRIFFIN_LIM:
    return Vocoder(GRIFFIN_LIM, jax.jit(functools.partial(griffin_lim.griffin_lim, **kw)))
  if os.path.isfile(spec):
    graphdef, state = nnx.split(Vocos.from_checkpoint(spec, **kw))
    # A pure function of (state, mel) under jax.jit: the weights are arguments, not baked-in constants.
    run = jax.jit(lambda state, log_mel: nnx.merge(graphdef, state)(log_mel))
    return Vocoder(f"vocos:{spec}", functools.partial(run, state))
  raise ValueError(f"unknown vocoder {spec!r}: expected {GRIFFIN_LIM!r} or the path of an existing Vocos "
                   f"checkpoint file ({', '.join(torch_checkpoint.TORCH_SUFFIXES)}, "
                   f"{torch_checkpoint.SAFETENSORS_SUFFIX})")
