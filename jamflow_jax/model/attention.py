"""Masked joint attention: the contract every implementation meets, and the dense reference.

The local joint mask is *described*, never stored: token a may attend token b iff both are valid
and (same modality, or |time_a - time_b| <= window). Kernels compute it per block on the fly;
the `xla` reference here builds it densely and is the truth the kernels are tested against.
"""

import math

import jax
import jax.numpy as jnp

from jamflow_jax.config import ATTENTION_IMPLS

AUDIO, MOTION = 0, 1  # modality ids carried by every token


def joint_mask(q_mod, kv_mod, q_time, kv_time, q_valid, kv_valid, window) -> jax.Array:
  """The local joint mask, dense: bool [B, Lq, Lk].

  Args: *_mod int32 [B, L]; *_time float32 [B, L] (mel frames); *_valid bool [B, L];
    window: float, mel frames (inf = no locality across modalities).
  """
  same = q_mod[:, :, None] == kv_mod[:, None, :]
  near = jnp.abs(q_time[:, :, None] - kv_time[:, None, :]) <= window
  return q_valid[:, :, None] & kv_valid[:, None, :] & (same | near)


def _xla_attention(q, k, v, mask):
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask[:, None], logits, -jnp.inf)
  # Rows with no allowed key: the max is -inf; use 0 there so exp() gives zeros, not NaNs.
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  p = jnp.exp(logits - row_max)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom > 0, denom, 1.0)
  return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v)


def joint_attention(q, k, v, *, q_mod, kv_mod, q_time, kv_time, q_valid, kv_valid,
                    window: float, impl: str = "xla") -> jax.Array:
  """Attention under the local joint mask.

  Args:
    q: [B, Lq, H, Dh]; k, v: [B, Lk, H, Dh].
    q_mod, kv_mod: int32 [B, L] modality ids (AUDIO / MOTION).
    q_time, kv_time: float32 [B, L] positions in mel frames on the shared clock.
    q_valid, kv_valid: bool [B, L], False for padding or an absent modality.
    window: float, in mel frames; math.inf disables locality.
    impl: "xla" (dense reference).
  Returns:
    [B, Lq, H, Dh] in v's dtype; rows with no allowed key are 0.
  """
  if impl == "xla":
    mask = joint_mask(q_mod, kv_mod, q_time, kv_time, q_valid, kv_valid, window)
    return _xla_attention(q, k, v, mask)
  raise ValueError(f"joint_attention impl={impl!r}; available: {', '.join(ATTENTION_IMPLS)}")
