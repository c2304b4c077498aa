"""Block-sparse flash attention under the local joint mask, as Pallas kernels (forward and backward).

The mask is never stored. Each token carries a code (modality id, -1 = padding) and a time; the
kernels evaluate `valid_a & valid_b & (same modality | |t_a - t_b| <= window)` per block on the fly.
Before the kernels run, `block_mask` summarises every block and lists, per query block, the key
blocks that may hold an allowed pair (and per key block the query blocks, for dk/dv); each kernel
program loops over its list only, so blocks the mask leaves empty cost neither loads nor FLOPs.

  forward   grid (B, H, nq): online softmax in f32 over the visited key blocks -> out, log-sum-exp
  dq        grid (B, H, nq): FlashAttention-2 backward over the same key blocks
  dk, dv    grid (B, H, nk): over the query blocks that visit key block j

Kernels see [B, H, L, D] (the wrapper transposes the model's [B, L, H, D]); the key side is also
viewed as [B, H, n, block, D] so that a visited block is a leading-axis index (cheap on every
lowering). Per-token vectors (codes, times, log-sum-exp, delta) are stored as rows [.., n, 1, block].
Rows without an allowed key return 0, with log-sum-exp 0 and zero gradient (their probabilities are
masked to 0, never computed from -inf).

Lowerings (`backend`): "triton" (GPU), "mosaic_tpu" (TPU), "interpret" (CPU, tests); "auto"
picks from the default backend. Block sizes default per backend (`DEFAULT_BLOCKS`).
"""

import dataclasses
import functools
import math

import einops
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jamflow_jax.choices import ATTENTION_BACKENDS, PLATFORM_BACKENDS
from jamflow_jax.kernels import block_mask

# (block_q, block_k) per lowering. GPU: 128 query rows keep a warpgroup busy while 64-key blocks keep
# the f32 logits in registers; TPU: 128 matches the MXU and the lane width.
DEFAULT_BLOCKS = {"triton": (128, 64), "mosaic_tpu": (128, 128), "interpret": (128, 128)}


def resolve_backend(backend: str = "auto", platform: str | None = None) -> str:
  """ "auto" -> the lowering for `platform` (default: jax.default_backend()); others pass through."""
  if backend not in ATTENTION_BACKENDS:
    raise ValueError(f"attention backend {backend!r}; available: {', '.join(ATTENTION_BACKENDS)}")
  if backend != "auto":
    return backend
  return PLATFORM_BACKENDS.get(platform or jax.default_backend(), "interpret")


@dataclasses.dataclass(frozen=True)
class _Plan:
  """The static part of one call: hashable, so it can key custom_vjp and jit caches."""

  window: float
  scale: float
  block_q: int
  block_k: int
  backend: str
  count_visits: bool = False


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _pow2_at_least(x: int, lo: int = 16) -> int:
  return max(lo, 1 << (max(x, 1) - 1).bit_length())


def _allowed(a_code, a_time, b_code, b_time, window: float):
  """The joint mask between a column [n, 1] and a row [1, m] of tokens -> bool [n, m] (symmetric)."""
  both = (a_code >= 0) & (b_code >= 0)
  if math.isinf(window):
    return both
  return both & ((a_code == b_code) | (jnp.abs(a_time - b_time) <= window))


def _to_column(row):
  """[1, n] -> [n, 1]. Per-token vectors travel as lane-dense rows (a [.., n, 1] array would pad
  every value to a 128-lane tile in TPU HBM). Transposed as a tile-shaped (8, n) broadcast and
  reduced back to one column, which every lowering supports (Triton has no slicing)."""
  return jnp.transpose(jnp.broadcast_to(row, (8, row.shape[1]))).max(axis=1, keepdims=True)


def _to_row(column):
  """[n, 1] -> [1, n] (as _to_column, through an (n, 128) broadcast)."""
  return jnp.transpose(jnp.broadcast_to(column, (column.shape[0], 128))).max(axis=0, keepdims=True)


def _dot(a, b, trans_b: bool = False):
  dims = (((1,), (1 if trans_b else 0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


# Finite stand-in for -inf: masked logits never produce inf - inf = NaN in the running max.
_NEG = -1e30


def _forward_kernel(
  visits_ref, q_ref, k_ref, v_ref, qc_ref, qt_ref, kc_ref, kt_ref, o_ref, lse_ref, *count_ref, plan: _Plan
):
  row = pl.program_id(2)
  q, q_code, q_time = q_ref[...], _to_column(qc_ref[...]), _to_column(qt_ref[...])  # [bq, D], [bq, 1] x 2
  bq, d = q.shape

  def visit(i, carry):
    m, l, acc = carry
    j = visits_ref[row, 1 + i]
    mask = _allowed(q_code, q_time, kc_ref[j], kt_ref[j], plan.window)  # [bq, bk]
    s = jnp.where(mask, _dot(q, k_ref[j], trans_b=True) * plan.scale, _NEG)
    m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
    p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m - m_new)
    v = v_ref[j]
    if count_ref:
      count_ref[0][j] += 1
    return m_new, alpha * l + p.sum(axis=1, keepdims=True), alpha * acc + _dot(p.astype(v.dtype), v)

  if count_ref:
    count_ref[0][...] = jnp.zeros(count_ref[0].shape, jnp.int32)
  init = (jnp.full((bq, 1), _NEG, jnp.float32), jnp.zeros((bq, 1), jnp.float32), jnp.zeros((bq, d), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, visits_ref[row, 0], visit, init)
  has_key = l > 0
  l_safe = jnp.where(has_key, l, 1.0)
  o_ref[...] = jnp.where(has_key, acc / l_safe, 0.0).astype(o_ref.dtype)
  lse_ref[...] = _to_row(jnp.where(has_key, m + jnp.log(l_safe), 0.0))


def _dq_kernel(
  visits_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qc_ref, qt_ref, kc_ref, kt_ref, dq_ref, *, plan: _Plan
):
  row = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]
  lse, delta, q_code, q_time = (_to_column(r[...]) for r in (lse_ref, delta_ref, qc_ref, qt_ref))

  def visit(i, dq):
    j = visits_ref[row, 1 + i]
    k = k_ref[j]
    mask = _allowed(q_code, q_time, kc_ref[j], kt_ref[j], plan.window)
    p = jnp.where(mask, jnp.exp(_dot(q, k, trans_b=True) * plan.scale - lse), 0.0)
    ds = p * (_dot(do, v_ref[j], trans_b=True) - delta)
    return dq + _dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, visits_ref[row, 0], visit, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)


def _dkv_kernel(
  visits_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  qc_ref,
  qt_ref,
  kc_ref,
  kt_ref,
  dk_ref,
  dv_ref,
  *,
  plan: _Plan,
):
  # Transposed: key rows [bk, ...] against query columns, so lse / delta are read as rows [1, bq].
  row = pl.program_id(2)
  k, v, k_code, k_time = k_ref[...], v_ref[...], _to_column(kc_ref[...]), _to_column(kt_ref[...])

  def visit(idx, carry):
    dk, dv = carry
    i = visits_ref[row, 1 + idx]
    q, do = q_ref[i], do_ref[i]
    mask = _allowed(k_code, k_time, qc_ref[i], qt_ref[i], plan.window)  # [bk, bq]
    p = jnp.where(mask, jnp.exp(_dot(k, q, trans_b=True) * plan.scale - lse_ref[i]), 0.0)
    dv = dv + _dot(p.astype(do.dtype), do)
    ds = p * (_dot(v, do, trans_b=True) - delta_ref[i])
    return dk + _dot(ds.astype(q.dtype), q), dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, visits_ref[row, 0], visit, (zeros, zeros))
  dk_ref[...] = (dk * plan.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _call_options(plan: _Plan, head_dim: int) -> dict:
  if plan.backend == "interpret":
    return {"interpret": True}
  if plan.backend == "triton":
    from jax.experimental.pallas import triton as pl_triton

    return {"compiler_params": pl_triton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)}
  from jax.experimental.pallas import tpu as pltpu

  # The whole-sequence key / value (or query / dO) blocks live in VMEM: 32 MiB (every TPU since v4
  # has it) holds ~40k joint tokens at head_dim 64, twice the default scoped limit.
  return {
    "compiler_params": pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel"), vmem_limit_bytes=32 * 2**20
    )
  }


def _cost(q, k, matmuls: int, exps: bool, *arrays) -> pl.CostEstimate:
  """XLA's view of a kernel (scheduling, cost analysis): dense FLOPs, an upper bound under skipping."""
  b, h, lq, d = q.shape
  pairs = b * h * lq * k.shape[2]
  return pl.CostEstimate(
    flops=2 * matmuls * pairs * d,
    transcendentals=pairs if exps else 0,
    bytes_accessed=sum(x.size * x.dtype.itemsize for x in arrays),
  )


def _visits_spec(plan: _Plan, n: int, width: int) -> pl.BlockSpec:
  """The visit lists [n, 1 + width] of the program's batch row (scalars: SMEM on TPU, where a block
  must span whole (8, 128) tiles, so each program picks its own list by program id)."""
  index = lambda b, h, i: (b, 0, 0)
  if plan.backend == "mosaic_tpu":
    from jax.experimental.pallas import tpu as pltpu

    return pl.BlockSpec((None, n, 1 + width), index, memory_space=pltpu.SMEM)
  return pl.BlockSpec((None, n, 1 + width), index)


def _own(block: int, width: int) -> pl.BlockSpec:
  """This program's block [block, width] of a [B, H, L, width] array."""
  return pl.BlockSpec((None, None, block, width), lambda b, h, i: (b, h, i, 0))


def _whole(plan: _Plan):
  """Pipelining of the whole-sequence operands, which change only with (b, h): one VMEM buffer on
  TPU (a second would only prefetch the next head, at twice the VMEM); the default elsewhere."""
  return pl.Buffered(1) if plan.backend == "mosaic_tpu" else None


def _all(plan: _Plan, n: int, block: int, width: int) -> pl.BlockSpec:
  """All blocks [n, block, width] of a [B, H, n, block, width] array, for the program's (b, h)."""
  return pl.BlockSpec((None, None, n, block, width), lambda b, h, i: (b, h, 0, 0, 0), _whole(plan))


def _own_meta(block: int) -> pl.BlockSpec:
  """This program's token codes / times, a row [1, block] of a [B, n, 1, block] array."""
  return pl.BlockSpec((None, None, 1, block), lambda b, h, i: (b, i, 0, 0))


def _own_row(block: int) -> pl.BlockSpec:
  """This program's row [1, block] of a per-query [B, H, n, 1, block] array (lse, delta)."""
  return pl.BlockSpec((None, None, None, 1, block), lambda b, h, i: (b, h, i, 0, 0))


def _all_meta(plan: _Plan, n: int, block: int) -> pl.BlockSpec:
  """All token codes / times as rows [n, 1, block] of a [B, n, 1, block] array."""
  return pl.BlockSpec((None, n, 1, block), lambda b, h, i: (b, 0, 0, 0), _whole(plan))


@dataclasses.dataclass(frozen=True)
class _Meta:
  """Per-call token metadata in the layouts the kernels read (built once in the wrapper)."""

  visits: jax.Array  # int32 [B, nq, 1 + nk]
  visits_t: jax.Array  # int32 [B, nk, 1 + nq]
  q_code: jax.Array  # int32 [B, Lq]
  q_time: jax.Array  # float32 [B, Lq]
  kv_code: jax.Array  # int32 [B, Lk]
  kv_time: jax.Array  # float32 [B, Lk]


jax.tree_util.register_dataclass(_Meta, data_fields=[f.name for f in dataclasses.fields(_Meta)], meta_fields=[])


def _rows(x, block: int):
  b, length = x.shape
  return x.reshape(b, length // block, 1, block)


def _forward(plan: _Plan, q, k, v, meta: _Meta):
  """q [B, H, Lq, D], k / v [B, H, Lk, D] (block multiples) -> out [B, H, Lq, D], lse [B, H, nq, 1, bq]."""
  b, h, lq, d = q.shape
  lk = k.shape[2]
  bq, bk = plan.block_q, plan.block_k
  nq, nk = lq // bq, lk // bk
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, nq, 1, bq), jnp.float32)]
  out_specs = [_own(bq, d), _own_row(bq)]
  if plan.count_visits:
    out_shape.append(jax.ShapeDtypeStruct((b, h, nq, nk), jnp.int32))
    out_specs.append(pl.BlockSpec((None, None, None, nk), lambda b, h, i: (b, h, i, 0)))
  return pl.pallas_call(
    functools.partial(_forward_kernel, plan=plan),
    grid=(b, h, nq),
    in_specs=[
      _visits_spec(plan, nq, nk),
      _own(bq, d),
      _all(plan, nk, bk, d),
      _all(plan, nk, bk, d),
      _own_meta(bq),
      _own_meta(bq),
      _all_meta(plan, nk, bk),
      _all_meta(plan, nk, bk),
    ],
    out_specs=out_specs,
    out_shape=out_shape,
    name="joint_attention_fwd",
    **_call_options(plan, d),
    cost_estimate=_cost(q, k, 2, True, q, k, v, q),
  )(
    meta.visits,
    q,
    k.reshape(b, h, nk, bk, d),
    v.reshape(b, h, nk, bk, d),
    _rows(meta.q_code, bq),
    _rows(meta.q_time, bq),
    _rows(meta.kv_code, bk),
    _rows(meta.kv_time, bk),
  )


def _backward(plan: _Plan, q, k, v, o, lse, do, meta: _Meta):
  b, h, lq, d = q.shape
  lk = k.shape[2]
  bq, bk = plan.block_q, plan.block_k
  nq, nk = lq // bq, lk // bk
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1).reshape(b, h, nq, 1, bq)
  options = _call_options(plan, d)
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, plan=plan),
    grid=(b, h, nq),
    in_specs=[
      _visits_spec(plan, nq, nk),
      _own(bq, d),
      _all(plan, nk, bk, d),
      _all(plan, nk, bk, d),
      _own(bq, d),
      _own_row(bq),
      _own_row(bq),
      _own_meta(bq),
      _own_meta(bq),
      _all_meta(plan, nk, bk),
      _all_meta(plan, nk, bk),
    ],
    out_specs=_own(bq, d),
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    name="joint_attention_dq",
    cost_estimate=_cost(q, k, 3, True, q, k, v, do, q),
    **options,
  )(
    meta.visits,
    q,
    k.reshape(b, h, nk, bk, d),
    v.reshape(b, h, nk, bk, d),
    do,
    lse,
    delta,
    _rows(meta.q_code, bq),
    _rows(meta.q_time, bq),
    _rows(meta.kv_code, bk),
    _rows(meta.kv_time, bk),
  )
  dk, dv = pl.pallas_call(
    functools.partial(_dkv_kernel, plan=plan),
    grid=(b, h, nk),
    in_specs=[
      _visits_spec(plan, nk, nq),
      _all(plan, nq, bq, d),
      _own(bk, d),
      _own(bk, d),
      _all(plan, nq, bq, d),
      _all(plan, nq, 1, bq),
      _all(plan, nq, 1, bq),
      _all_meta(plan, nq, bq),
      _all_meta(plan, nq, bq),
      _own_meta(bk),
      _own_meta(bk),
    ],
    out_specs=[_own(bk, d), _own(bk, d)],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    name="joint_attention_dkv",
    cost_estimate=_cost(q, k, 4, True, q, k, v, do, k, v),
    **options,
  )(
    meta.visits_t,
    q.reshape(b, h, nq, bq, d),
    k,
    v,
    do.reshape(b, h, nq, bq, d),
    lse,
    delta,
    _rows(meta.q_code, bq),
    _rows(meta.q_time, bq),
    _rows(meta.kv_code, bk),
    _rows(meta.kv_time, bk),
  )
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(plan: _Plan, q, k, v, meta: _Meta):
  return _forward(plan, q, k, v, meta)[0]


def _attention_fwd(plan, q, k, v, meta):
  o, lse = _forward(plan, q, k, v, meta)
  return o, (q, k, v, o, lse, meta)


def _attention_bwd(plan, residuals, do):
  q, k, v, o, lse, meta = residuals
  dq, dk, dv = _backward(plan, q, k, v, o, lse, do, meta)
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _prepare(
  q, k, q_mod, kv_mod, q_time, kv_time, q_valid, kv_valid, *, window, block_q, block_k, backend, count_visits=False
):
  """Static plan, padded lengths / head_dim, and the metadata (codes, times, visit lists)."""
  backend = resolve_backend(backend)
  lq, lk, d = q.shape[1], k.shape[1], q.shape[3]
  default_q, default_k = DEFAULT_BLOCKS[backend]
  # Short sequences: one block of the (power-of-two) padded length rather than a mostly empty one.
  bq = min(block_q or default_q, _pow2_at_least(lq))
  bk = min(block_k or default_k, _pow2_at_least(lk))
  plan = _Plan(float(window), 1.0 / math.sqrt(d), bq, bk, backend, count_visits)
  # Triton tiles need power-of-two extents: zero columns change neither logits nor outputs.
  d_pad = _pow2_at_least(d) if backend == "triton" else d
  lq_pad, lk_pad = _round_up(lq, bq), _round_up(lk, bk)

  def codes_times(mod, time, valid, pad):
    codes = jnp.pad(block_mask.token_codes(mod, valid), ((0, 0), (0, pad)), constant_values=-1)
    return codes, jnp.pad(time.astype(jnp.float32), ((0, 0), (0, pad)))

  q_code, q_time = codes_times(q_mod, q_time, q_valid, lq_pad - lq)
  kv_code, kv_time = codes_times(kv_mod, kv_time, kv_valid, lk_pad - lk)
  allowed = block_mask.allowed_blocks(
    block_mask.block_summaries(q_code, q_time, bq), block_mask.block_summaries(kv_code, kv_time, bk), plan.window
  )
  meta = _Meta(
    block_mask.visit_lists(allowed),
    block_mask.visit_lists(allowed.transpose(0, 2, 1)),
    q_code,
    q_time,
    kv_code,
    kv_time,
  )
  return plan, meta, (lq_pad, lk_pad, d_pad), allowed


def _to_kernel_layout(x, length, d_pad):
  """[B, L, H, D] -> [B, H, length, d_pad], zero-padded."""
  x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, d_pad - x.shape[3])))
  return einops.rearrange(x, "b l h d -> b h l d")


def flash_joint_attention(
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
  block_q: int = 0,
  block_k: int = 0,
  backend: str = "auto",
) -> jax.Array:
  """Attention under the local joint mask, block-sparse (`joint_attention(impl="pallas")`).

  Args:
    q: [B, Lq, H, D]; k, v: [B, Lk, H, D] (f32 or bf16; any lengths, any head_dim).
    q_mod, kv_mod: int32 [B, L] modality ids in {AUDIO, MOTION}; q_time, kv_time float32 [B, L];
    q_valid, kv_valid: bool [B, L]; window: float, mel frames (inf = no locality).
    block_q, block_k: 0 = the backend's default (capped at the padded sequence length).
    backend: "auto" | "triton" | "mosaic_tpu" | "interpret".
  Returns:
    [B, Lq, H, D] in v's dtype; rows with no allowed key are 0 (zero gradient).
  """
  plan, meta, (lq_pad, lk_pad, d_pad), _ = _prepare(
    q,
    k,
    q_mod,
    kv_mod,
    q_time,
    kv_time,
    q_valid,
    kv_valid,
    window=window,
    block_q=block_q,
    block_k=block_k,
    backend=backend,
  )
  out = _attention(
    plan,
    _to_kernel_layout(q, lq_pad, d_pad),
    _to_kernel_layout(k, lk_pad, d_pad),
    _to_kernel_layout(v, lk_pad, d_pad),
    meta,
  )
  return einops.rearrange(out, "b h l d -> b l h d")[:, : q.shape[1], :, : q.shape[3]]


def block_plan(
  q,
  k,
  *,
  q_mod,
  kv_mod,
  q_time,
  kv_time,
  q_valid,
  kv_valid,
  window: float,
  block_q: int = 0,
  block_k: int = 0,
  backend: str = "auto",
) -> jax.Array:
  """bool [B, nq, nk]: the key blocks the kernel visits for each query block (no kernel runs)."""
  return _prepare(
    q,
    k,
    q_mod,
    kv_mod,
    q_time,
    kv_time,
    q_valid,
    kv_valid,
    window=window,
    block_q=block_q,
    block_k=block_k,
    backend=backend,
  )[3]


def block_visits(
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
  block_q: int = 0,
  block_k: int = 0,
  backend: str = "auto",
):
  """What the forward kernel does block by block, for tests and benchmarks.

  Returns (visits int32 [B, H, nq, nk]: how often each program loaded key block j,
           allowed bool [B, nq, nk]: the blocks the mask summary allows).
  """
  plan, meta, (lq_pad, lk_pad, d_pad), allowed = _prepare(
    q,
    k,
    q_mod,
    kv_mod,
    q_time,
    kv_time,
    q_valid,
    kv_valid,
    window=window,
    block_q=block_q,
    block_k=block_k,
    backend=backend,
    count_visits=True,
  )
  _, _, visits = _forward(
    plan,
    _to_kernel_layout(q, lq_pad, d_pad),
    _to_kernel_layout(k, lk_pad, d_pad),
    _to_kernel_layout(v, lk_pad, d_pad),
    meta,
  )
  return visits, allowed
