"""Block-sparse flash attention under the local joint mask, as Pallas kernels (forward and backward).

The mask is never stored. Each token carries a code (modality id, -1 = padding) and a time; the
kernels evaluate `valid_a & valid_b & (same modality | |t_a - t_b| <= window)` per block on the fly.
Before the kernels run, `block_mask` summarises every block and lists, per query block, the key
blocks that may hold an allowed pair (and per key block the query blocks, for dk/dv); only those
blocks are loaded and computed, so blocks the mask leaves empty cost neither loads nor FLOPs.

  forward   online softmax in f32 over the visited key blocks -> out, log-sum-exp
  dq        FlashAttention-2 backward over the same key blocks
  dk, dv    over the query blocks that visit key block j

Layout: kernels read the model's [B, L, H, D] as [B, L, H * D] (a free reshape: no transpose), a
program owning the lanes of `heads` consecutive heads. On TPU (and in the interpreter) head_dim 64
packs two heads per 128-lane vreg row, so no copy pays 2x lane padding; a head_dim that neither
divides nor is a multiple of 128 is zero-padded to one. Per-token vectors (codes, times) are rows
[B, n, 1, block]; per-head ones (log-sum-exp, delta) rows [B, H, n, 1, block].

Two program structures, by lowering:
  key grid  ("mosaic_tpu", "interpret"): splash-style grid (B, H / heads, n, m) whose last axis walks
            the visit list; the scalar-prefetched lists drive the other side's BlockSpec index_map,
            so only visited blocks are DMA'd into VMEM (one block each: the length is unbounded)
            and f32 accumulators live in VMEM scratch. Steps past a row's count repeat its last
            block index (no new DMA) and compute nothing.
  key loop  ("triton", "interpret_triton"): grid (B, H, n); each program loops over its visit list
            and loads the visited blocks from the whole-sequence operand (GPU reads them from HBM).
Rows without an allowed key return 0, with log-sum-exp 0 and zero gradient (their probabilities are
masked to 0, never computed from -inf).

`backend`: "triton" (GPU), "mosaic_tpu" (TPU), "interpret" (the TPU kernels in the Pallas
interpreter: CPU, tests), "interpret_triton" (the GPU kernels interpreted); "auto" picks from the
default backend. Block sizes default per backend (`DEFAULT_BLOCKS`).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jamflow_jax.choices import ATTENTION_BACKENDS, PLATFORM_BACKENDS
from jamflow_jax.kernels import block_mask

# (block_q, block_k) per lowering. GPU: 128 query rows keep a warpgroup busy while 64-key blocks keep
# the f32 logits in registers; TPU: 128 matches the MXU and the lane width.
DEFAULT_BLOCKS = {
  "triton": (128, 64),
  "interpret_triton": (128, 64),
  "mosaic_tpu": (128, 128),
  "interpret": (128, 128),
}
_LANES = 128  # TPU vreg lane count: the last block dimension is a multiple of it (or the whole axis)


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
  heads: int  # heads per program (their lanes are adjacent in [B, L, H * head_dim])
  head_dim: int  # per head in the kernel layout (zero-padded where the lowering needs it)
  count_visits: bool = False

  @property
  def key_grid(self) -> bool:
    return self.backend in ("mosaic_tpu", "interpret")


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _pow2_at_least(x: int, lo: int = 16) -> int:
  return max(lo, 1 << (max(x, 1) - 1).bit_length())


def _head_lanes(backend: str, heads: int, head_dim: int) -> tuple[int, int]:
  """(heads per program, padded head_dim). Triton tiles need power-of-two extents (zero columns change
  neither logits nor outputs); TPU blocks span whole 128-lane rows, so head_dim 64 (32, ...) packs
  128 // head_dim heads per program where the head count allows, and other widths pad to 128."""
  if backend in ("triton", "interpret_triton"):
    return 1, _pow2_at_least(head_dim)
  if head_dim % _LANES == 0:
    return 1, head_dim
  if _LANES % head_dim == 0 and heads % (_LANES // head_dim) == 0:
    return _LANES // head_dim, head_dim
  return 1, _round_up(head_dim, _LANES)


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

# The block math, shared by both program structures: one head, one (query block, key block) pair.


def _forward_update(q, k, v, mask, m, l, acc, scale: float):
  """Online softmax step. q [bq, D], k / v [bk, D], mask [bq, bk]; m, l [bq, 1], acc [bq, D] (f32)."""
  s = jnp.where(mask, _dot(q, k, trans_b=True) * scale, _NEG)
  m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
  p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
  alpha = jnp.exp(m - m_new)
  return m_new, alpha * l + p.sum(axis=1, keepdims=True), alpha * acc + _dot(p.astype(v.dtype), v)


def _forward_finish(m, l, acc):
  """-> (out [bq, D] f32, log-sum-exp [bq, 1]); 0 for rows without an allowed key."""
  has_key = l > 0
  l_safe = jnp.where(has_key, l, 1.0)
  return jnp.where(has_key, acc / l_safe, 0.0), jnp.where(has_key, m + jnp.log(l_safe), 0.0)


def _dq_update(q, do, lse, delta, k, v, mask, dq, scale: float):
  """q / do [bq, D], lse / delta [bq, 1], k / v [bk, D], mask [bq, bk]; dq [bq, D] f32 (unscaled)."""
  p = jnp.where(mask, jnp.exp(_dot(q, k, trans_b=True) * scale - lse), 0.0)
  ds = p * (_dot(do, v, trans_b=True) - delta)
  return dq + _dot(ds.astype(k.dtype), k)


def _dkv_update(k, v, q, do, lse, delta, mask, dk, dv, scale: float):
  """Transposed: k / v [bk, D] against q / do [bq, D], lse / delta rows [1, bq], mask [bk, bq];
  dk (unscaled), dv [bk, D] f32."""
  p = jnp.where(mask, jnp.exp(_dot(k, q, trans_b=True) * scale - lse), 0.0)
  dv = dv + _dot(p.astype(do.dtype), do)
  ds = p * (_dot(v, do, trans_b=True) - delta)
  return dk + _dot(ds.astype(q.dtype), q), dv


# Key grid (TPU): grid (B, H / heads, n, m); the visit lists [B, n, 1 + m] are scalar-prefetched.


def _lanes(plan: _Plan, t: int):
  return slice(t * plan.head_dim, (t + 1) * plan.head_dim)


def _steps(visits_ref, body, finish=None, init=None):
  """Runs init at the first step of the visit axis, body while it walks the row's list, finish last."""
  b, row, step = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  if init:
    pl.when(step == 0)(init)
  pl.when(step < visits_ref[b, row, 0])(lambda: body(visits_ref[b, row, 1 + step]))
  if finish:
    pl.when(step == pl.num_programs(3) - 1)(finish)


def _forward_grid_kernel(
  visits_ref, q_ref, k_ref, v_ref, qc_ref, qt_ref, kc_ref, kt_ref, o_ref, lse_ref, *refs, plan: _Plan
):
  *count_ref, m_ref, l_ref, acc_ref = refs

  def init():
    m_ref[...] = jnp.full(m_ref.shape, _NEG, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
    if count_ref:
      count_ref[0][...] = jnp.zeros(count_ref[0].shape, jnp.int32)

  def body(j):
    mask = _allowed(_to_column(qc_ref[...]), _to_column(qt_ref[...]), kc_ref[...], kt_ref[...], plan.window)
    for t in range(plan.heads):
      lanes = _lanes(plan, t)
      m_ref[t], l_ref[t], acc_ref[t] = _forward_update(
        q_ref[:, lanes], k_ref[:, lanes], v_ref[:, lanes], mask, m_ref[t], l_ref[t], acc_ref[t], plan.scale
      )
    if count_ref:
      count_ref[0][j] += 1

  def finish():
    for t in range(plan.heads):
      out, lse = _forward_finish(m_ref[t], l_ref[t], acc_ref[t])
      o_ref[:, _lanes(plan, t)] = out.astype(o_ref.dtype)
      lse_ref[t] = _to_row(lse)

  _steps(visits_ref, body, finish, init)


def _dq_grid_kernel(
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
  dq_ref,
  acc_ref,
  *,
  plan: _Plan,
):
  def init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  def body(j):
    del j
    mask = _allowed(_to_column(qc_ref[...]), _to_column(qt_ref[...]), kc_ref[...], kt_ref[...], plan.window)
    for t in range(plan.heads):
      lanes = _lanes(plan, t)
      acc_ref[t] = _dq_update(
        q_ref[:, lanes],
        do_ref[:, lanes],
        _to_column(lse_ref[t]),
        _to_column(delta_ref[t]),
        k_ref[:, lanes],
        v_ref[:, lanes],
        mask,
        acc_ref[t],
        plan.scale,
      )

  def finish():
    for t in range(plan.heads):
      dq_ref[:, _lanes(plan, t)] = (acc_ref[t] * plan.scale).astype(dq_ref.dtype)

  _steps(visits_ref, body, finish, init)


def _dkv_grid_kernel(
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
  dk_acc,
  dv_acc,
  *,
  plan: _Plan,
):
  # Program row = key block; the visit axis walks the query blocks that visit it.
  def init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  def body(i):
    del i
    mask = _allowed(_to_column(kc_ref[...]), _to_column(kt_ref[...]), qc_ref[...], qt_ref[...], plan.window)
    for t in range(plan.heads):
      lanes = _lanes(plan, t)
      dk_acc[t], dv_acc[t] = _dkv_update(
        k_ref[:, lanes],
        v_ref[:, lanes],
        q_ref[:, lanes],
        do_ref[:, lanes],
        lse_ref[t],
        delta_ref[t],
        mask,
        dk_acc[t],
        dv_acc[t],
        plan.scale,
      )

  def finish():
    for t in range(plan.heads):
      dk_ref[:, _lanes(plan, t)] = (dk_acc[t] * plan.scale).astype(dk_ref.dtype)
      dv_ref[:, _lanes(plan, t)] = dv_acc[t].astype(dv_ref.dtype)

  _steps(visits_ref, body, finish, init)


# Key loop (GPU): grid (B, H, n), one head per program; visits_ref is the batch row's lists [n, 1 + m].


def _forward_loop_kernel(
  visits_ref, q_ref, k_ref, v_ref, qc_ref, qt_ref, kc_ref, kt_ref, o_ref, lse_ref, *count_ref, plan: _Plan
):
  row = pl.program_id(2)
  q, q_code, q_time = q_ref[...], _to_column(qc_ref[...]), _to_column(qt_ref[...])  # [bq, D], [bq, 1] x 2
  bq, d = q.shape

  def visit(i, carry):
    j = visits_ref[row, 1 + i]
    if count_ref:
      count_ref[0][j] += 1
    mask = _allowed(q_code, q_time, kc_ref[j], kt_ref[j], plan.window)  # [bq, bk]
    return _forward_update(q, k_ref[j], v_ref[j], mask, *carry, plan.scale)

  if count_ref:
    count_ref[0][...] = jnp.zeros(count_ref[0].shape, jnp.int32)
  init = (jnp.full((bq, 1), _NEG, jnp.float32), jnp.zeros((bq, 1), jnp.float32), jnp.zeros((bq, d), jnp.float32))
  out, lse = _forward_finish(*jax.lax.fori_loop(0, visits_ref[row, 0], visit, init))
  o_ref[...] = out.astype(o_ref.dtype)
  lse_ref[0] = _to_row(lse)


def _dq_loop_kernel(
  visits_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qc_ref, qt_ref, kc_ref, kt_ref, dq_ref, *, plan: _Plan
):
  row = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]
  lse, delta = _to_column(lse_ref[0]), _to_column(delta_ref[0])
  q_code, q_time = _to_column(qc_ref[...]), _to_column(qt_ref[...])

  def visit(i, dq):
    j = visits_ref[row, 1 + i]
    mask = _allowed(q_code, q_time, kc_ref[j], kt_ref[j], plan.window)
    return _dq_update(q, do, lse, delta, k_ref[j], v_ref[j], mask, dq, plan.scale)

  dq = jax.lax.fori_loop(0, visits_ref[row, 0], visit, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)


def _dkv_loop_kernel(
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
  row = pl.program_id(2)
  k, v, k_code, k_time = k_ref[...], v_ref[...], _to_column(kc_ref[...]), _to_column(kt_ref[...])

  def visit(idx, carry):
    i = visits_ref[row, 1 + idx]
    mask = _allowed(k_code, k_time, qc_ref[i], qt_ref[i], plan.window)  # [bk, bq]
    return _dkv_update(k, v, q_ref[i], do_ref[i], lse_ref[0, i], delta_ref[0, i], mask, *carry, plan.scale)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, visits_ref[row, 0], visit, (zeros, zeros))
  dk_ref[...] = (dk * plan.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# BlockSpecs. Arrays: tokens [B, n, block, H * D], token codes / times [B, n, 1, block], per-head rows
# (lse, delta) [B, H, n, 1, block]. Index maps take (b, h, row[, step, visits]); h counts programs'
# head groups. "Own" blocks follow the program's row; "visited" ones the visit list (key grid: one
# block per step, picked by the prefetched list; key loop: all n blocks of the row's (b, h)).


def _visited_block(visits, b, row, step):
  """The block a key-grid step loads: the row's step-th visit, or its last one once the list is done
  (an unchanged block index: no DMA). A row without visits loads its first listed block, unused."""
  return visits[b, row, 1 + jnp.minimum(step, jnp.maximum(visits[b, row, 0] - 1, 0))]


def _row(i, rest):
  """The program's row in the whole array: key-grid index maps also get (step, visits, first row)."""
  return i + rest[2][0] if rest else i


def _own(plan: _Plan, block: int) -> pl.BlockSpec:
  return pl.BlockSpec((None, None, block, plan.heads * plan.head_dim), lambda b, h, i, *r: (b, _row(i, r), 0, h))


def _visited(plan: _Plan, n: int, block: int) -> pl.BlockSpec:
  width = plan.heads * plan.head_dim
  if plan.key_grid:
    return pl.BlockSpec((None, None, block, width), lambda b, h, i, s, v, _: (b, _visited_block(v, b, i, s), 0, h))
  return pl.BlockSpec((None, n, block, width), lambda b, h, i: (b, 0, 0, h))


def _own_meta(block: int) -> pl.BlockSpec:
  return pl.BlockSpec((None, None, 1, block), lambda b, h, i, *r: (b, _row(i, r), 0, 0))


def _visited_meta(plan: _Plan, n: int, block: int) -> pl.BlockSpec:
  if plan.key_grid:
    return pl.BlockSpec((None, None, 1, block), lambda b, h, i, s, v, _: (b, _visited_block(v, b, i, s), 0, 0))
  return pl.BlockSpec((None, n, 1, block), lambda b, h, i: (b, 0, 0, 0))


def _own_row(plan: _Plan, block: int) -> pl.BlockSpec:
  return pl.BlockSpec((None, plan.heads, None, 1, block), lambda b, h, i, *r: (b, h, _row(i, r), 0, 0))


def _visited_row(plan: _Plan, n: int, block: int) -> pl.BlockSpec:
  if plan.key_grid:
    return pl.BlockSpec(
      (None, plan.heads, None, 1, block), lambda b, h, i, s, v, _: (b, h, _visited_block(v, b, i, s), 0, 0)
    )
  return pl.BlockSpec((None, plan.heads, n, 1, block), lambda b, h, i: (b, h, 0, 0, 0))


# Scalar-prefetched operands live whole in SMEM (1 MiB per v5p core; the visit lists of one 64k-token
# sequence in 128-token blocks take 1.3 MiB): the key grid runs over chunks of rows, one call each
# holding at most this many bytes of lists (rows padded to 128 lanes), all writing the same outputs.
_SMEM_LIST_BYTES = 256 * 2**10


def _call(plan: _Plan, kernels, visits, args, *, in_specs, out_specs, out_shape, scratch, name, cost):
  """pallas_call of kernels[plan.key_grid] over programs (B, head groups, rows[, visit steps]).

  visits: int32 [B, n, 1 + m]; args[0]: q [B, nq, bq, H * D]; scratch: f32 VMEM shapes of the key
  grid's accumulators. Returns what out_shape describes (one array or a list).
  """
  b, n, width = visits.shape
  grid = (b, args[0].shape[-1] // (plan.heads * plan.head_dim))
  interpret = plan.backend.startswith("interpret")
  single = not isinstance(out_shape, (list, tuple))
  out_shape, out_specs = ([out_shape], [out_specs]) if single else (list(out_shape), list(out_specs))
  if plan.key_grid:
    from jax.experimental.pallas import tpu as pltpu

    rows = max(1, min(n, _SMEM_LIST_BYTES // (b * _round_up(width, _LANES) * 4)))
    options = {"interpret": True} if interpret else {}
    if not interpret:
      semantics = ("parallel", "parallel", "parallel", "arbitrary")
      options["compiler_params"] = pltpu.CompilerParams(dimension_semantics=semantics)
    outs = None
    for first in range(0, n, rows):
      # Calls after the first take the outputs so far (in HBM, untouched) and write their rows in place.
      carried = [] if outs is None else outs
      count = min(rows, n - first)
      kernel = functools.partial(_grid_program, kernels[True], len(args), len(carried), plan)
      grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(*grid, count, width - 1),
        in_specs=[*in_specs, *[pl.BlockSpec(memory_space=pl.ANY)] * len(carried)],
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch],
      )
      outs = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=out_shape,
        input_output_aliases={2 + len(args) + k: k for k in range(len(carried))},
        name=name,
        cost_estimate=pl.CostEstimate(  # this call's share of the rows
          flops=cost.flops * count // n,
          transcendentals=cost.transcendentals * count // n,
          bytes_accessed=cost.bytes_accessed,
        ),
        **options,
      )(visits[:, first : first + rows], jnp.full((1,), first, jnp.int32), *args, *carried)
  else:
    options = {"interpret": True}
    if not interpret:
      from jax.experimental.pallas import triton as pl_triton

      warps = 4 if plan.head_dim <= 64 else 8
      options = {"compiler_params": pl_triton.CompilerParams(num_warps=warps, num_stages=2)}
    visits_spec = pl.BlockSpec((None, n, width), lambda b, h, i: (b, 0, 0))
    outs = pl.pallas_call(
      functools.partial(kernels[False], plan=plan),
      grid=(*grid, n),
      in_specs=[visits_spec, *in_specs],
      out_specs=out_specs,
      out_shape=out_shape,
      name=name,
      cost_estimate=cost,
      **options,
    )(visits, *args)
  return outs[0] if single else outs


def _grid_program(kernel, num_args: int, num_carried: int, plan: _Plan, visits_ref, first_ref, *refs):
  """A key-grid kernel without the chunk's first row (index maps only) and the carried outputs."""
  del first_ref
  kernel(visits_ref, *refs[:num_args], *refs[num_args + num_carried :], plan=plan)


def _cost(plan: _Plan, q, k, matmuls: int, *arrays) -> pl.CostEstimate:
  """XLA's view of a kernel (scheduling, cost analysis): dense FLOPs and exps, upper bounds under
  skipping. q [B, nq, bq, H * D], k [B, nk, bk, H * D]."""
  b, nq, bq, width = q.shape
  pairs = b * nq * bq * k.shape[1] * k.shape[2]
  return pl.CostEstimate(
    flops=2 * matmuls * pairs * width,
    transcendentals=pairs * (width // plan.head_dim),
    bytes_accessed=sum(x.size * x.dtype.itemsize for x in arrays),
  )


@dataclasses.dataclass(frozen=True)
class _Meta:
  """Per-call token metadata in the layouts the kernels read (built once in the wrapper)."""

  visits: jax.Array  # int32 [B, nq, 1 + nk]
  visits_t: jax.Array  # int32 [B, nk, 1 + nq]
  q_code: jax.Array  # int32 [B, nq, 1, bq]
  q_time: jax.Array  # float32 [B, nq, 1, bq]
  kv_code: jax.Array  # int32 [B, nk, 1, bk]
  kv_time: jax.Array  # float32 [B, nk, 1, bk]


jax.tree_util.register_dataclass(_Meta, data_fields=[f.name for f in dataclasses.fields(_Meta)], meta_fields=[])


def _kernels(grid_kernel, loop_kernel) -> dict:
  return {True: grid_kernel, False: loop_kernel}


def _forward(plan: _Plan, q, k, v, meta: _Meta):
  """q [B, nq, bq, H * D], k / v [B, nk, bk, H * D] -> out like q, lse float32 [B, H, nq, 1, bq]
  (and with plan.count_visits, int32 [B, H / heads, nq, nk]: the loads of each key block)."""
  b, nq, bq, width = q.shape
  nk, bk = k.shape[1], k.shape[2]
  g, d = plan.heads, plan.head_dim
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, width // d, nq, 1, bq), jnp.float32)]
  out_specs = [_own(plan, bq), _own_row(plan, bq)]
  if plan.count_visits:
    out_shape.append(jax.ShapeDtypeStruct((b, width // (g * d), nq, nk), jnp.int32))
    out_specs.append(pl.BlockSpec((None, None, None, nk), lambda b, h, i, *r: (b, h, _row(i, r), 0)))
  return _call(
    plan,
    _kernels(_forward_grid_kernel, _forward_loop_kernel),
    meta.visits,
    (q, k, v, meta.q_code, meta.q_time, meta.kv_code, meta.kv_time),
    in_specs=[
      _own(plan, bq),
      _visited(plan, nk, bk),
      _visited(plan, nk, bk),
      _own_meta(bq),
      _own_meta(bq),
      _visited_meta(plan, nk, bk),
      _visited_meta(plan, nk, bk),
    ],
    out_specs=out_specs,
    out_shape=out_shape,
    scratch=[(g, bq, 1), (g, bq, 1), (g, bq, d)],
    name="joint_attention_fwd",
    cost=_cost(plan, q, k, 2, q, k, v, q),
  )


def _backward(plan: _Plan, q, k, v, o, lse, do, meta: _Meta):
  """Shapes as _forward; do like q -> dq, dk, dv like q, k, v."""
  b, nq, bq, width = q.shape
  nk, bk = k.shape[1], k.shape[2]
  g, d = plan.heads, plan.head_dim
  delta = jnp.sum((o.astype(jnp.float32) * do.astype(jnp.float32)).reshape(b, nq, bq, width // d, d), axis=-1)
  delta = jnp.transpose(delta, (0, 3, 1, 2))[:, :, :, None, :]  # [B, H, nq, 1, bq]
  dq = _call(
    plan,
    _kernels(_dq_grid_kernel, _dq_loop_kernel),
    meta.visits,
    (q, k, v, do, lse, delta, meta.q_code, meta.q_time, meta.kv_code, meta.kv_time),
    in_specs=[
      _own(plan, bq),
      _visited(plan, nk, bk),
      _visited(plan, nk, bk),
      _own(plan, bq),
      _own_row(plan, bq),
      _own_row(plan, bq),
      _own_meta(bq),
      _own_meta(bq),
      _visited_meta(plan, nk, bk),
      _visited_meta(plan, nk, bk),
    ],
    out_specs=_own(plan, bq),
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    scratch=[(g, bq, d)],
    name="joint_attention_dq",
    cost=_cost(plan, q, k, 3, q, k, v, do, q),
  )
  dk, dv = _call(
    plan,
    _kernels(_dkv_grid_kernel, _dkv_loop_kernel),
    meta.visits_t,
    (q, k, v, do, lse, delta, meta.q_code, meta.q_time, meta.kv_code, meta.kv_time),
    in_specs=[
      _visited(plan, nq, bq),
      _own(plan, bk),
      _own(plan, bk),
      _visited(plan, nq, bq),
      _visited_row(plan, nq, bq),
      _visited_row(plan, nq, bq),
      _visited_meta(plan, nq, bq),
      _visited_meta(plan, nq, bq),
      _own_meta(bk),
      _own_meta(bk),
    ],
    out_specs=[_own(plan, bk), _own(plan, bk)],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    scratch=[(g, bk, d), (g, bk, d)],
    name="joint_attention_dkv",
    cost=_cost(plan, q, k, 4, q, k, v, do, k, v),
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
  """Static plan, the metadata (codes, times, visit lists) and the allowed blocks bool [B, nq, nk]."""
  backend = resolve_backend(backend)
  lq, lk, h, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
  default_q, default_k = DEFAULT_BLOCKS[backend]
  # Short sequences: one block of the (power-of-two) padded length rather than a mostly empty one.
  bq = min(block_q or default_q, _pow2_at_least(lq))
  bk = min(block_k or default_k, _pow2_at_least(lk))
  plan = _Plan(float(window), 1.0 / math.sqrt(d), bq, bk, backend, *_head_lanes(backend, h, d), count_visits)

  def codes_times(mod, time, valid, block):
    pad = ((0, 0), (0, _round_up(mod.shape[1], block) - mod.shape[1]))
    codes = jnp.pad(block_mask.token_codes(mod, valid), pad, constant_values=-1)
    return codes, jnp.pad(time.astype(jnp.float32), pad)

  q_code, q_time = codes_times(q_mod, q_time, q_valid, bq)
  kv_code, kv_time = codes_times(kv_mod, kv_time, kv_valid, bk)
  allowed = block_mask.allowed_blocks(
    block_mask.block_summaries(q_code, q_time, bq), block_mask.block_summaries(kv_code, kv_time, bk), plan.window
  )
  rows = lambda x, block: x.reshape(x.shape[0], -1, 1, block)
  meta = _Meta(
    block_mask.visit_lists(allowed),
    block_mask.visit_lists(allowed.transpose(0, 2, 1)),
    rows(q_code, bq),
    rows(q_time, bq),
    rows(kv_code, bk),
    rows(kv_time, bk),
  )
  return plan, meta, allowed


def _to_kernel_layout(plan: _Plan, x, block: int):
  """[B, L, H, D] -> [B, n, block, H * plan.head_dim], zero-padded (a reshape where nothing pads)."""
  b, length, h, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, _round_up(length, block) - length), (0, 0), (0, plan.head_dim - d)))
  return x.reshape(b, -1, block, h * plan.head_dim)


def _run(plan: _Plan, meta: _Meta, q, k, v):
  """The kernel-layout inputs of the model's q [B, Lq, H, D], k, v [B, Lk, H, D]."""
  return (
    _to_kernel_layout(plan, q, plan.block_q),
    _to_kernel_layout(plan, k, plan.block_k),
    _to_kernel_layout(plan, v, plan.block_k),
    meta,
  )


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
    backend: "auto" | "triton" | "mosaic_tpu" | "interpret" | "interpret_triton".
  Returns:
    [B, Lq, H, D] in v's dtype; rows with no allowed key are 0 (zero gradient).
  """
  plan, meta, _ = _prepare(
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
  b, lq, h, d = q.shape
  out = _attention(plan, *_run(plan, meta, q, k, v))
  return out.reshape(b, -1, h, plan.head_dim)[:, :lq, :, :d]


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
  )[2]


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
  plan, meta, allowed = _prepare(
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
  visits = _forward(plan, *_run(plan, meta, q, k, v))[2]
  return jnp.repeat(visits, plan.heads, axis=1), allowed
