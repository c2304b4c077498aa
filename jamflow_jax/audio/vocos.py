"""Vocos (the charactr/vocos-mel-24khz architecture) in flax.nnx: log mel -> 24 kHz waveform.

Backbone: Conv1d(100 -> 512, kernel 7) embedding, LayerNorm, 8 ConvNeXt blocks (depthwise conv
k7, LayerNorm, Linear 512 -> 1536, exact GELU, Linear 1536 -> 512, layer scale, residual), final
LayerNorm. Head (ISTFTHead): Linear(512 -> 1026) split into log-magnitude and phase (513 each),
magnitude exp(.) clipped at 100, then an inverse STFT with "same" padding: T frames -> T * 256
samples. All in float32 (matmuls and convolutions at full precision on every backend).

`Vocos.from_checkpoint` reads the public PyTorch weights (pytorch_model.bin or a safetensors copy)
through `jamflow_jax.torch_checkpoint`, so neither torch nor the vocos package is needed. Module
attributes carry the PyTorch names, so each parameter's state-dict name follows from its path.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jamflow_jax import torch_checkpoint
from jamflow_jax.audio import griffin_lim, mel

_HIGHEST = jax.lax.Precision.HIGHEST
N_FFT, HOP = mel.N_FFT, mel.HOP_LENGTH

# Buffers the PyTorch module saves alongside its parameters; the window and filterbank are fixed.
IGNORED_BUFFERS = frozenset(
  {"head.istft.window", "feature_extractor.mel_spec.spectrogram.window", "feature_extractor.mel_spec.mel_scale.fb"}
)


class VocoderCheckpointError(ValueError):
  """A checkpoint whose parameter names or shapes do not fit the Vocos architecture."""


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance, as torch computes it.
  return nnx.LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, rngs=rngs)


def _linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, precision=_HIGHEST, rngs=rngs)


class ConvNeXtBlock(nnx.Module):
  """x [B, T, dim] -> x + gamma * pwconv2(gelu(pwconv1(norm(dwconv(x)))))."""

  def __init__(self, dim: int, intermediate_dim: int, layer_scale: float, *, rngs: nnx.Rngs):
    self.dwconv = nnx.Conv(dim, dim, kernel_size=7, padding=3, feature_group_count=dim, precision=_HIGHEST, rngs=rngs)
    self.norm = _layer_norm(dim, rngs)
    self.pwconv1 = _linear(dim, intermediate_dim, rngs)
    self.pwconv2 = _linear(intermediate_dim, dim, rngs)
    self.gamma = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.pwconv1(self.norm(self.dwconv(x)))
    return x + self.gamma[...] * self.pwconv2(jax.nn.gelu(h, approximate=False))


class Vocos(nnx.Module):
  """log mel [B, T, 100] -> waveform [B, T * 256] (24 kHz). Defaults are vocos-mel-24khz's."""

  def __init__(
    self, *, n_mels: int = mel.N_MELS, dim: int = 512, intermediate_dim: int = 1536, num_layers: int = 8, rngs: nnx.Rngs
  ):
    self.config = dict(n_mels=n_mels, dim=dim, intermediate_dim=intermediate_dim, num_layers=num_layers)
    self.embed = nnx.Conv(n_mels, dim, kernel_size=7, padding=3, precision=_HIGHEST, rngs=rngs)
    self.norm = _layer_norm(dim, rngs)
    self.convnext = nnx.List(
      [ConvNeXtBlock(dim, intermediate_dim, 1.0 / num_layers, rngs=rngs) for _ in range(num_layers)]
    )
    self.final_layer_norm = _layer_norm(dim, rngs)
    self.out = _linear(dim, N_FFT + 2, rngs)  # the head: log-magnitude and phase of 513 bins

  @property
  def context_frames(self) -> int:
    """Frames either side that output frame t (its 256 samples) depends on.

    The embedding and each block's depthwise conv (kernel 7) reach 3 frames; LayerNorm, the
    Linears and the head are per frame; in the "same"-trimmed ISTFT, frames t - 2 .. t + 2 overlap
    t's samples. Beyond this distance from a window's edge (where the convs see zero padding) a
    window's output is the whole signal's.
    """
    return 3 * (1 + self.config["num_layers"]) + 2

  def __call__(self, log_mel: jax.Array) -> jax.Array:
    x = self.norm(self.embed(log_mel.astype(jnp.float32)))
    for block in self.convnext:
      x = block(x)
    log_magnitude, phase = jnp.split(self.out(self.final_layer_norm(x)), 2, axis=-1)
    magnitude = jnp.minimum(jnp.exp(log_magnitude), 100.0)
    spec = jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))
    # "same" padding: drop (win - hop) / 2 samples each side, leaving exactly T * hop.
    return griffin_lim.istft(spec, start=(N_FFT - HOP) // 2, length=log_mel.shape[-2] * HOP)

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike, **config) -> "Vocos":
    """Vocos with the weights of a PyTorch checkpoint (state-dict names of the vocos package).

    Every parameter must be present with its shape; anything else in the file, apart from
    IGNORED_BUFFERS, is an error too. All problems are reported together in one
    VocoderCheckpointError. `config` overrides the mel-24khz sizes (see __init__).
    """
    path = os.fspath(path)
    tensors = torch_checkpoint.flatten(torch_checkpoint.load(path))
    abstract = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0), **config))
    graphdef, state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(state))
    # PyTorch stores Linear [out, in] and Conv1d [out, in / groups, k]; flax keeps [in, out] and
    # [k, in / groups, out]: the same arrays with their axes reversed.
    expected = {torch_name(p): tuple(reversed(v.shape)) for p, v in flat}
    problems = []
    for name, shape in expected.items():
      if name not in tensors:
        problems.append(f"missing {name} {list(shape)}")
      elif tensors[name].shape != shape:
        problems.append(f"{name}: expected {list(shape)}, got {list(tensors[name].shape)}")
    problems += [
      f"unexpected {name} {list(tensors[name].shape)}"
      for name in sorted(set(tensors) - set(expected) - IGNORED_BUFFERS)
    ]
    if problems:
      raise VocoderCheckpointError(
        f"{path} does not fit Vocos({', '.join(f'{k}={v}' for k, v in abstract.config.items())}):\n  "
        + "\n  ".join(problems)
      )
    values = [(p, v.replace(jnp.asarray(np.transpose(tensors[torch_name(p)]).astype(np.float32)))) for p, v in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(values))


def torch_name(path: tuple) -> str:
  """A parameter path of `Vocos` -> its PyTorch state-dict name.

  ('convnext', 3, 'pwconv1', 'kernel') -> 'backbone.convnext.3.pwconv1.weight';
  ('out', 'bias') -> 'head.out.bias'.
  """
  *modules, leaf = (str(part) for part in path)
  leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  return ".".join(["head" if modules[0] == "out" else "backbone", *modules, leaf])
