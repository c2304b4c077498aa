"""Masked joint attention: the contract every implementation meets, and the dense reference.

The local joint mask is *described*, never stored: token a may attend token b iff both are valid
and (same modality, or |time_a - time_b| <= window). Kernels compute it per block on the fly;
the `xla` reference here builds it densely and is the truth the kernels are tested against.

Implementations (`model.attention_impl`):
  xla     the dense reference: B x H x Lq x Lk logits in f32.
  pallas  the block-sparse flash kernel of `jamflow_jax.kernels.joint_attention`, run per shard
          (batch and heads) under shard_map; lowering by `model.attention_backend`.
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")` with the dense mask (GPU, bf16):
          flash attention without block skipping, the baseline the kernel is measured against.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from jamflow_jax import config as config_lib, sharding
from jamflow_jax.axes import ACT_HEADS, BATCH, LENGTH
from jamflow_jax.choices import ATTENTION_IMPLS
from jamflow_jax.kernels import joint_attention as kernel

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


def _cudnn_attention(q, k, v, mask):
  has_key = mask.any(axis=-1)  # [B, Lq]
  # Keyless rows attend everything and are zeroed after: no NaN from an empty softmax, and the zero
  # output cotangent of those rows gives them zero gradient.
  mask = mask | ~has_key[:, :, None]
  out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")
  return jnp.where(has_key[:, :, None, None], out, 0).astype(v.dtype)


def _per_shard(fn, q, k, v, *tokens):
  """Runs `fn` on each device's batch and heads (Pallas calls do not partition themselves)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn(q, k, v, *tokens)
  heads = (BATCH, LENGTH, ACT_HEADS, None)
  specs = [sharding.divisible_spec(heads, x.shape, mesh) for x in (q, k, v)]
  specs += [sharding.divisible_spec((BATCH, LENGTH), x.shape, mesh) for x in tokens]
  # q and k/v may shard differently only if their batch/heads sizes differ; they never do here.
  return jax.shard_map(fn, in_specs=tuple(specs), out_specs=specs[0], check_vma=False)(q, k, v, *tokens)


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
  """How joint attention is computed (not what it computes): `model.attention_*`."""

  impl: str = "xla"
  backend: str = "auto"  # pallas lowering: auto | triton | mosaic_tpu | interpret | interpret_triton
  block_q: int = 0  # pallas block sizes, 0 = the backend's default
  block_k: int = 0

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict) -> "AttentionOptions":
    return cls(model.attention_impl, model.attention_backend, model.attention_block_q, model.attention_block_k)


def for_platform(config: ml_collections.ConfigDict, platform: str) -> ml_collections.ConfigDict:
  """A copy of `config` with `model.attention_backend` resolved for devices of `platform`.

  Raises ConfigError where the attention settings cannot run there.
  """
  config_lib.check_platform(config, platform)
  config = config.copy_and_resolve_references()
  config.model.attention_backend = kernel.resolve_backend(config.model.attention_backend, platform)
  return config


def joint_attention(
  q,
  k,
  v,
  *,
  q_mod,
  kv_mod,
  q_time,
  kv_time,
  q_valid,
  kv_valid,
  window: float,
  impl: str = "xla",
  backend: str = "auto",
  block_q: int = 0,
  block_k: int = 0,
) -> jax.Array:
  """Attention under the local joint mask.

  Args:
    q: [B, Lq, H, Dh]; k, v: [B, Lk, H, Dh].
    q_mod, kv_mod: int32 [B, L] modality ids (AUDIO / MOTION).
    q_time, kv_time: float32 [B, L] positions in mel frames on the shared clock.
    q_valid, kv_valid: bool [B, L], False for padding or an absent modality.
    window: float, in mel frames; math.inf disables locality.
    impl: "xla" (dense reference) | "pallas" (block-sparse kernel) | "cudnn" (GPU).
    backend, block_q, block_k: the pallas kernel's lowering and block sizes (see AttentionOptions).
  Returns:
    [B, Lq, H, Dh] in v's dtype; rows with no allowed key are 0.
  """
  if impl in ("xla", "cudnn"):
    mask = joint_mask(q_mod, kv_mod, q_time, kv_time, q_valid, kv_valid, window)
    return (_xla_attention if impl == "xla" else _cudnn_attention)(q, k, v, mask)
  if impl == "pallas":

    def flash(q, k, v, q_mod, kv_mod, q_time, kv_time, q_valid, kv_valid):
      return kernel.flash_joint_attention(
        q,
        k,
        v,
        q_mod=q_mod,
        kv_mod=kv_mod,
        q_time=q_time,
        kv_time=kv_time,
        q_valid=q_valid,
        kv_valid=kv_valid,
        window=window,
        block_q=block_q,
        block_k=block_k,
        backend=backend,
      )

    return _per_shard(flash, q, k, v, q_mod, kv_mod, q_time, kv_time, q_valid, kv_valid)
  raise ValueError(f"joint_attention impl={impl!r}; available: {', '.join(ATTENTION_IMPLS)}")
