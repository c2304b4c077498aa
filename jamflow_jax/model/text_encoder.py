"""F5-TTS text encoder: filler-padded ids -> embedding + sinusoidal positions -> ConvNeXtV2 blocks.

The transcript ids are padded with the filler id (0) to the mel length, so text and audio are
aligned frame for frame only by what the model learns, as in F5-TTS. With `mask_padding`
(F5TTS_v1_Base's text_mask_padding) filler positions are zeroed after the positions are added and
after every block, so the blocks' convolutions read nothing from them.

A transcript withheld for classifier-free guidance (`given` False) is embedded as all filler ids.
What is masked then is `null`'s choice: "filler" masks the filler ids seen, i.e. every position
(the features are zeros); "f5" masks the withheld transcript's own padding, as F5-TTS does (dit.py
computes the mask before it zeroes the ids), so the transcript's positions keep the filler
embedding. Without `mask_padding` the two are the same.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jamflow_jax.axes import EMBED, MLP, VOCAB
from jamflow_jax.model.layers import GroupedConv, layer_norm, linear, partitioned
from jamflow_jax.text import FILLER_ID


class GRN(nnx.Module):
  """Global response normalisation over time (ConvNeXt-V2)."""

  def __init__(self, dim: int):
    self.gamma = nnx.Param(jnp.zeros((dim,)), out_sharding=(MLP,))
    self.beta = nnx.Param(jnp.zeros((dim,)), out_sharding=(MLP,))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, T, C] -> [B, T, C]; the L2 norm over time of a channel that is all zero (a withheld
    transcript under text_mask_padding, at a fresh init) is 0 with zero gradient, as PyTorch's norm
    gives: sqrt's derivative at 0 is infinite, and 0 x inf would make every gradient NaN."""
    sumsq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=1, keepdims=True)
    nonzero = sumsq > 0
    gx = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sumsq, 1.0)), 0.0)
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)
    return (self.gamma[...] * (x * nx) + self.beta[...] + x).astype(x.dtype)


class ConvNeXtV2Block(nnx.Module):
  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype, kernel: int = 7):
    self.dwconv = GroupedConv(dim, kernel, dim, rngs=rngs, dtype=dtype)  # depthwise
    self.norm = layer_norm(dim, rngs=rngs, dtype=dtype, affine=True)
    self.pw1 = linear(dim, 2 * dim, (EMBED, MLP), rngs=rngs, dtype=dtype)
    self.grn = GRN(2 * dim)
    self.pw2 = linear(2 * dim, dim, (MLP, EMBED), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.norm(self.dwconv(x))
    h = self.pw2(self.grn(nnx.gelu(self.pw1(h), approximate=False)))
    return x + h


class TextEncoder(nnx.Module):
  """ids int32 [B, T] (filler-padded to the mel length) -> [B, T, text_dim]."""

  def __init__(
    self,
    vocab_size: int,
    dim: int,
    num_blocks: int,
    *,
    rngs: nnx.Rngs,
    dtype,
    mask_padding: bool = False,
    null: str = "filler",
  ):
    self.dim, self.mask_padding, self.null = dim, mask_padding, null
    self.embed = nnx.Embed(
      vocab_size, dim, dtype=dtype, rngs=rngs, embedding_init=partitioned((VOCAB, EMBED), nnx.initializers.normal(1.0))
    )
    self.blocks = nnx.List([ConvNeXtV2Block(dim, rngs=rngs, dtype=dtype) for _ in range(num_blocks)])

  def __call__(self, ids: jax.Array, given: jax.Array) -> jax.Array:
    """ids int32 [B, T], given bool [B] (False: the transcript is withheld) -> [B, T, text_dim]."""
    seen = jnp.where(given[:, None], ids, FILLER_ID)
    x = self.embed(seen)
    pos = jnp.arange(ids.shape[1], dtype=jnp.float32)
    x = x + sinusoidal_positions(pos, self.dim).astype(x.dtype)
    padding = ((ids if self.null == "f5" else seen) == FILLER_ID)[..., None]

    def mask(x):
      return jnp.where(padding, 0, x) if self.mask_padding else x

    x = mask(x)
    for block in self.blocks:
      x = mask(block(x))
    return x


def sinusoidal_positions(pos: jax.Array, dim: int) -> jax.Array:
  """pos [T] -> [T, dim]: [cos | sin] of pos * 10000^(-2i/dim) (F5's precompute_freqs_cis)."""
  freqs = 1.0 / 10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32)[: dim // 2] / dim)
  arg = pos[:, None] * freqs
  return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)
