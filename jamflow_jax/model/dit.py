"""DiT layers of the two streams and their selective joint attention (SD3 / Flux double-stream).

Each layer index holds one block per stream. A block keeps its own adaLN-zero modulation, QKV,
qk-norm, output projection and MLP. In a joint layer the two streams' Q, K, V are concatenated over
the sequence axis and one attention call under the local joint mask serves both; elsewhere each
stream attends within itself.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.ad_checkpoint import checkpoint_name

from jamflow_jax.axes import ACT_EMBED, ACT_HEADS, BATCH, EMBED, HEAD_DIM, HEADS, LENGTH
from jamflow_jax.model.attention import AttentionOptions, joint_attention
from jamflow_jax.model.layers import AdaLNModulation, FeedForward, layer_norm, modulate, partitioned
from jamflow_jax.model.rope import apply_rope
from jamflow_jax.sharding import constrain

# Activation names that model.remat_policy can keep (jamflow_jax.model.layer_stack).
QKV_NAMES = ("query_proj", "key_proj", "value_proj")
ATTENTION_OUT = "attention_out"


@struct.dataclass
class Tokens:
  """What the local joint mask and RoPE need to know of one stream's tokens."""

  mod: jax.Array  # int32 [B, L] modality id
  time: jax.Array  # float32 [B, L] position on the shared clock (mel frames)
  valid: jax.Array  # bool [B, L]
  angles: jax.Array  # float32 [B, L, head_dim // 2] RoPE angles of `time`
  # bool [B, L] or None: where attention outputs are kept when `valid` also admits padding
  # (model.attend_padding: F5-TTS zeroes the padded queries' outputs); None: wherever computed.
  keep: jax.Array | None = None

  @staticmethod
  def concat(a: "Tokens", b: "Tokens") -> "Tokens":
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), a, b)


def attend(q, k, v, qt: Tokens, kt: Tokens, window: float, attn: AttentionOptions) -> jax.Array:
  return joint_attention(
    q,
    k,
    v,
    q_mod=qt.mod,
    kv_mod=kt.mod,
    q_time=qt.time,
    kv_time=kt.time,
    q_valid=qt.valid,
    kv_valid=kt.valid,
    window=window,
    **dataclasses.asdict(attn),
  )


class StreamBlock(nnx.Module):
  """One stream's half of a layer: x [B, L, width], conditioned on temb [B, width]."""

  def __init__(
    self,
    width: int,
    heads: int,
    head_dim: int,
    ff_mult: int,
    qk_norm: bool,
    *,
    rngs: nnx.Rngs,
    dtype,
    rope_heads: int = 0,
  ):
    proj = lambda: nnx.Einsum(
      "bld,dhk->blhk",
      (width, heads, head_dim),
      (heads, head_dim),
      dtype=dtype,
      rngs=rngs,
      kernel_init=partitioned((EMBED, HEADS, HEAD_DIM), nnx.initializers.xavier_uniform()),
      bias_init=partitioned((HEADS, HEAD_DIM), nnx.initializers.zeros_init()),
    )
    self.rope_heads = rope_heads  # RoPE on the first rope_heads heads; 0 = all
    self.modulation = AdaLNModulation(width, 6, rngs=rngs, dtype=dtype)
    self.norm_attn = layer_norm(width, rngs=rngs, dtype=dtype, affine=False)
    self.q, self.k, self.v = proj(), proj(), proj()
    norm = lambda: nnx.RMSNorm(
      head_dim, epsilon=1e-6, dtype=dtype, rngs=rngs, scale_init=partitioned((HEAD_DIM,), nnx.initializers.ones_init())
    )
    self.q_norm, self.k_norm = (norm(), norm()) if qk_norm else (None, None)
    self.out = nnx.Einsum(
      "blhk,hkd->bld",
      (heads, head_dim, width),
      (width,),
      dtype=dtype,
      rngs=rngs,
      kernel_init=partitioned((HEADS, HEAD_DIM, EMBED), nnx.initializers.xavier_uniform()),
      bias_init=partitioned((EMBED,), nnx.initializers.zeros_init()),
    )
    self.norm_ff = layer_norm(width, rngs=rngs, dtype=dtype, affine=False)
    self.ff = FeedForward(width, ff_mult, rngs=rngs, dtype=dtype)

  def qkv(self, x: jax.Array, temb: jax.Array, tokens: Tokens):
    """-> q, k, v [B, L, H, Dh] (rotated), and the modulation kept for `finish`."""
    shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(temb)
    h = modulate(self.norm_attn(x), shift_a, scale_a)
    q, k, v = (checkpoint_name(proj(h), name) for proj, name in zip((self.q, self.k, self.v), QKV_NAMES))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, tokens.angles, self.rope_heads), apply_rope(k, tokens.angles, self.rope_heads)
    q, k, v = (constrain(a, (BATCH, LENGTH, ACT_HEADS, None)) for a in (q, k, v))
    return q, k, v, (gate_a, shift_f, scale_f, gate_f)

  def finish(self, x: jax.Array, attn: jax.Array, mods, keep: jax.Array | None = None) -> jax.Array:
    gate_a, shift_f, scale_f, gate_f = mods
    out = self.out(attn)
    if keep is not None:
      out = jnp.where(keep[..., None], out, 0)
    x = x + gate_a * out
    x = x + gate_f * self.ff(modulate(self.norm_ff(x), shift_f, scale_f))
    return constrain(x, (BATCH, LENGTH, ACT_EMBED))


class DualLayer(nnx.Module):
  """Layer i of both streams; `joint` selects one attention over the concatenation."""

  def __init__(
    self,
    audio_width: int,
    motion_width: int,
    heads: int,
    head_dim: int,
    ff_mult: int,
    qk_norm: bool,
    joint: bool,
    *,
    window: float,
    attention: AttentionOptions,
    rngs: nnx.Rngs,
    dtype,
    audio_rope_heads: int = 0,
  ):
    # Static settings (not parameters): the local window in mel frames and how attention runs.
    self.joint, self.window, self.attention = joint, window, attention
    # Partial RoPE (model.rope_heads) is for the audio stream only: it reproduces F5TTS_Base, whose
    # weights expect head 0 alone rotated. The motion stream has no pretrained weights and rotates
    # every head, so its own attention is relative in time on all heads and each motion key sits on
    # the shared clock. Cross-modal logits depend on the time difference alone on the heads both
    # streams rotate: all of them with rope_heads=0 (F5TTS_v1_Base).
    self.audio = StreamBlock(
      audio_width, heads, head_dim, ff_mult, qk_norm, rngs=rngs, dtype=dtype, rope_heads=audio_rope_heads
    )
    self.motion = StreamBlock(motion_width, heads, head_dim, ff_mult, qk_norm, rngs=rngs, dtype=dtype)

  def __call__(self, xa, xm, temb_a, temb_m, ta: Tokens, tm: Tokens):
    """xa [B, La, Wa], xm [B, Lm, Wm], temb_* [B, W*] -> updated (xa, xm)."""
    window, attn = self.window, self.attention
    qa, ka, va, mods_a = self.audio.qkv(xa, temb_a, ta)
    qm, km, vm, mods_m = self.motion.qkv(xm, temb_m, tm)
    if self.joint:
      cat = lambda a, b: jnp.concatenate([a, b], axis=1)
      both = Tokens.concat(ta, tm)
      o = attend(cat(qa, qm), cat(ka, km), cat(va, vm), both, both, window, attn)
      oa, om = o[:, : xa.shape[1]], o[:, xa.shape[1] :]
    else:
      oa = attend(qa, ka, va, ta, ta, window, attn)
      om = attend(qm, km, vm, tm, tm, window, attn)
    oa, om = checkpoint_name(oa, ATTENTION_OUT), checkpoint_name(om, ATTENTION_OUT)
    return self.audio.finish(xa, oa, mods_a, ta.keep), self.motion.finish(xm, om, mods_m, tm.keep)
