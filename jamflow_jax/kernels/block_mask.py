"""Block summaries of the local joint mask: which key blocks a query block must visit.

The mask is described per token by a code (its modality id, or -1 for padding / an absent token)
and a time on the shared clock (mel frames). A block of tokens is summarised, per modality, by
whether it holds any valid token of that modality and the min / max time of those tokens. Query
block i may need key block j iff some modality pair (a, c) is present in both and either a == c
or the time intervals of a in i and of c in j lie within `window` of each other. The test is
conservative (never drops an allowed pair): overlapping intervals count as near even when the
tokens inside them are sparse. Computed once per call in plain JAX; the kernels only read the
resulting visit lists.
"""

import jax
import jax.numpy as jnp

NUM_MODALITIES = 2  # AUDIO = 0, MOTION = 1 (jamflow_jax.model.attention)


def token_codes(mod: jax.Array, valid: jax.Array) -> jax.Array:
  """int32 [B, L]: the modality id of each valid token, -1 for invalid ones."""
  return jnp.where(valid, mod, -1).astype(jnp.int32)


def block_summaries(codes: jax.Array, time: jax.Array, block: int):
  """Per-block, per-modality (present, min time, max time).

  Args: codes int32 [B, L] (L a multiple of `block`), time float32 [B, L].
  Returns: present bool [B, n, M]; t_min, t_max float32 [B, n, M] (+inf / -inf where absent),
    with n = L // block and M = NUM_MODALITIES.
  """
  b, length = codes.shape
  codes = codes.reshape(b, length // block, block, 1)
  time = time.reshape(b, length // block, block, 1)
  is_mod = codes == jnp.arange(NUM_MODALITIES, dtype=jnp.int32)  # [B, n, block, M]
  present = is_mod.any(axis=2)
  t_min = jnp.where(is_mod, time, jnp.inf).min(axis=2)
  t_max = jnp.where(is_mod, time, -jnp.inf).max(axis=2)
  return present, t_min, t_max


def allowed_blocks(q_summary, kv_summary, window: float) -> jax.Array:
  """bool [B, nq, nk]: key block j may hold a key that some query of block i may attend."""
  q_present, q_min, q_max = (x[:, :, None, :, None] for x in q_summary)  # [B, nq, 1, Mq, 1]
  k_present, k_min, k_max = (x[:, None, :, None, :] for x in kv_summary)  # [B, 1, nk, 1, Mk]
  gap = jnp.maximum(jnp.maximum(k_min - q_max, q_min - k_max), 0.0)
  same = jnp.eye(NUM_MODALITIES, dtype=bool)
  return (q_present & k_present & (same | (gap <= window))).any(axis=(3, 4))


def visit_lists(allowed: jax.Array) -> jax.Array:
  """int32 [B, n, 1 + m] from allowed [B, n, m]: [count, the allowed block indices in order, ...].

  The entries past the count are the disallowed indices; the kernels never read them.
  """
  order = jnp.argsort(~allowed, axis=-1, stable=True).astype(jnp.int32)
  count = allowed.sum(axis=-1, dtype=jnp.int32)[..., None]
  return jnp.concatenate([count, order], axis=-1)
