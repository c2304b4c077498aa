"""Rotary position embedding on float positions: one clock for both modalities.

Audio token i sits at time i (mel frames); motion frame j at j * mel_fps / motion_fps. Because the
angle is position * frequency with float positions, an audio and a motion token at the same instant
get the same rotation, and attention logits depend only on their time difference.
"""

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> jax.Array:
  """positions float32 [B, L] -> angles float32 [B, L, head_dim // 2]."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x: jax.Array, angles: jax.Array, heads: int = 0) -> jax.Array:
  """Rotates feature pairs (x[2i], x[2i+1]) of x [B, L, H, Dh] by angles [B, L, Dh//2].

  The pairing is that of x_transformers >= 1.30, which F5-TTS requires. `heads` > 0 rotates only
  the first `heads` heads and passes the others through (F5TTS_Base rotates head 0 only); 0 all.
  """
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  x1, x2 = xf[..., 0], xf[..., 1]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  out = out.reshape(x.shape).astype(x.dtype)
  if heads:  # a select, not a slice: the heads axis may be sharded
    out = jnp.where((jnp.arange(x.shape[2]) < heads)[:, None], out, x)
  return out
