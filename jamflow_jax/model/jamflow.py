"""The JAM-Flow MM-DiT: an Audio-DiT and a Motion-DiT coupled by selective joint attention."""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx, struct

from jamflow_jax import config as config_lib
from jamflow_jax.axes import ACT_EMBED, BATCH, EMBED, LENGTH
from jamflow_jax.model import layer_stack
from jamflow_jax.model.attention import AUDIO, MOTION
from jamflow_jax.model.dit import Tokens
from jamflow_jax.model.layers import (
  AdaLNModulation,
  ConvPositionEmbedding,
  TimestepEmbedding,
  layer_norm,
  linear,
  modulate,
)
from jamflow_jax.model.rope import rope_angles
from jamflow_jax.model.text_encoder import TextEncoder
from jamflow_jax.sharding import constrain


@struct.dataclass
class FlowInputs:
  """One model call's inputs (B examples, Ta mel frames, Tm motion frames).

  An absent modality is given with all-False `*_valid`: its tokens are then neither attended to
  nor produce anything the loss reads. A withheld transcript keeps its ids (`text_given` False):
  how it is embedded is the text encoder's `null` choice.
  """

  audio_xt: jax.Array  # float [B, Ta, mel_dim]   noisy mel at time t
  audio_cond: jax.Array  # float [B, Ta, mel_dim]   given mel frames, zeros elsewhere
  text: jax.Array  # int32 [B, Ta]            filler-padded transcript ids
  text_given: jax.Array  # bool [B]             False: the transcript is withheld (CFG dropout)
  audio_valid: jax.Array  # bool  [B, Ta]
  motion_xt: jax.Array  # float [B, Tm, motion_dim]
  motion_cond: jax.Array  # float [B, Tm, motion_dim]
  motion_valid: jax.Array  # bool  [B, Tm]
  t: jax.Array  # float [B] flow time in [0, 1]


class StreamHead(nnx.Module):
  """Final adaLN (shift, scale) + LayerNorm + Linear to the stream's feature size."""

  def __init__(self, width: int, out_dim: int, *, rngs: nnx.Rngs, dtype):
    self.modulation = AdaLNModulation(width, 2, rngs=rngs, dtype=dtype)
    self.norm = layer_norm(width, rngs=rngs, dtype=dtype, affine=False)
    self.proj = linear(width, out_dim, (EMBED, None), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    shift, scale = self.modulation(temb)
    return self.proj(modulate(self.norm(x), shift, scale))


class JamFlow(nnx.Module):
  """Predicts the flow velocity of both modalities: (v_audio [B,Ta,mel], v_motion [B,Tm,D]) f32."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    dtype = jnp.dtype(m.dtype)
    self.compute_dtype = dtype
    self.head_dim, self.rope_theta = m.head_dim, m.rope_theta
    self.motion_step = config_lib.motion_step(config)
    self.scan_layers, self.remat_policy = m.scan_layers, m.remat_policy

    self.text = TextEncoder(
      m.text_vocab_size,
      m.text_dim,
      m.text_conv_layers,
      rngs=rngs,
      dtype=dtype,
      mask_padding=m.text_mask_padding,
      null=m.text_null,
    )
    self.attend_padding = m.attend_padding
    self.audio_in = linear(2 * m.mel_dim + m.text_dim, m.audio_width, (None, EMBED), rngs=rngs, dtype=dtype)
    self.motion_in = linear(2 * m.motion_dim, m.motion_width, (None, EMBED), rngs=rngs, dtype=dtype)
    pos = lambda w: ConvPositionEmbedding(w, m.conv_pos_kernel, m.conv_pos_groups, rngs=rngs, dtype=dtype)
    self.audio_pos, self.motion_pos = pos(m.audio_width), pos(m.motion_width)
    self.audio_time = TimestepEmbedding(m.time_freq_dim, m.audio_width, rngs=rngs, dtype=dtype)
    self.motion_time = TimestepEmbedding(m.time_freq_dim, m.motion_width, rngs=rngs, dtype=dtype)
    if m.scan_layers:  # parameters stacked over `layers` (layer_stack: layer i = group i // p, member i % p)
      self.layer_groups = layer_stack.stacked_groups(config, rngs=rngs, dtype=dtype)
    else:
      self.layers = nnx.List([layer_stack.dual_layer(config, i, rngs=rngs, dtype=dtype) for i in range(m.depth)])
    self.audio_head = StreamHead(m.audio_width, m.mel_dim, rngs=rngs, dtype=dtype)
    self.motion_head = StreamHead(m.motion_width, m.motion_dim, rngs=rngs, dtype=dtype)

  def tokens(self, x: FlowInputs) -> tuple[Tokens, Tokens]:
    """Per-token (modality, time, valid, RoPE angles) of both streams on one clock.

    With `attend_padding` (F5-TTS given its mask, attn_mask_enabled False) every frame of a present
    modality is read as a key and the padded queries' attention outputs are zeroed (`Tokens.keep`)."""
    b, ta = x.audio_valid.shape
    tm = x.motion_valid.shape[1]
    time_a = jnp.broadcast_to(jnp.arange(ta, dtype=jnp.float32), (b, ta))
    time_m = jnp.broadcast_to(jnp.arange(tm, dtype=jnp.float32) * self.motion_step, (b, tm))

    def make(mod: int, time: jax.Array, valid: jax.Array) -> Tokens:
      modality, angles = jnp.full(valid.shape, mod, jnp.int32), rope_angles(time, self.head_dim, self.rope_theta)
      if not self.attend_padding:
        return Tokens(modality, time, valid, angles)
      present = jnp.broadcast_to(jnp.any(valid, axis=1, keepdims=True), valid.shape)
      return Tokens(modality, time, present, angles, keep=valid)

    return make(AUDIO, time_a, x.audio_valid), make(MOTION, time_m, x.motion_valid)

  def embed(self, x: FlowInputs) -> tuple[jax.Array, jax.Array]:
    """Input embeddings: audio [B, Ta, Wa] from (x_t, cond, text); motion [B, Tm, Wm] from (x_t, cond)."""
    cast = lambda a: a.astype(self.compute_dtype)
    text = self.text(x.text, x.text_given)
    ha = self.audio_in(jnp.concatenate([cast(x.audio_xt), cast(x.audio_cond), text], axis=-1))
    hm = self.motion_in(jnp.concatenate([cast(x.motion_xt), cast(x.motion_cond)], axis=-1))
    ha = self.audio_pos(ha, x.audio_valid)  # F5-TTS masks its padding here with or without attend_padding
    hm = self.motion_pos(hm, x.motion_valid)
    return constrain(ha, (BATCH, LENGTH, ACT_EMBED)), constrain(hm, (BATCH, LENGTH, ACT_EMBED))

  def __call__(self, x: FlowInputs) -> tuple[jax.Array, jax.Array]:
    ta, tm = self.tokens(x)
    ha, hm = self.embed(x)
    temb_a, temb_m = self.audio_time(x.t), self.motion_time(x.t)
    stack = self.layer_groups if self.scan_layers else self.layers
    ha, hm = layer_stack.run(stack, self.scan_layers, self.remat_policy, ha, hm, temb_a, temb_m, ta, tm)
    va = self.audio_head(ha, temb_a).astype(jnp.float32)
    vm = self.motion_head(hm, temb_m).astype(jnp.float32)
    return va, vm
