"""Joint attention benchmark: forward and forward+backward time per implementation.

  python -m benchmarks.joint_attention [--lengths=1024,4096,16384] [--presets=demo,base]
      [--impls=xla,pallas,cudnn,cudnn_full] [--batch=2] [--runs=10] [--json=rows.json]
  JAX_PLATFORMS=cpu python -m benchmarks.joint_attention --topology=v5p:2x2x2 --presets=base --lengths=1298
      --batch=32 --impls=xla,pallas,splash      # ahead-of-time TPU compiles instead (needs jax[tpu])

Tokens are laid out as the model makes them (the audio frames, then the motion frames at 3.75 mel
frames per motion frame, all valid) with the preset's heads, head_dim, window and compute dtype.
Columns: time of the forward and of forward+backward (median of --runs after a warm-up), the
fraction of key blocks the Pallas kernel visits, and useful TFLOP/s counting allowed (query, key)
pairs only (4 * head_dim FLOPs per pair forward, 2.5x that backward). `x_xla` is the
forward+backward speed-up over the XLA reference of the same row group. `cudnn_full` is cuDNN
flash attention with no mask at all: the ceiling the masked kernels are compared with (its useful
FLOPs count every pair); `x_cudnn_full` is a row's useful fwd+bwd TFLOP/s over that ceiling's.
Rows that cannot run here say why (no GPU for cuDNN; the XLA reference's dense B x H x L^2 logits
over the memory budget).

With --topology nothing runs: forward+backward is compiled for that Cloud TPU slice with --batch per
chip, and each row gives the per-chip memory of the program (arguments, temporaries) and XLA's cost
analysis (FLOPs and bytes accessed; Pallas kernels count by their cost estimates). `splash` is JAX's
splash attention (jax.experimental.pallas.ops.tpu.splash_attention, 128 blocks like ours) with a static
mask: the joint mask of this layout at this one length, padded to a multiple of 128 (the kernel
needs whole blocks; padded rows and columns are masked), heads-major [H, L, D] per example (vmap).
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import PartitionSpec as P

from benchmarks.common import preset_config, report, run
from jamflow_jax import aot, cli, config as config_lib
from jamflow_jax.axes import DATA
from jamflow_jax.kernels import joint_attention as kernel
from jamflow_jax.model.attention import joint_attention, joint_mask

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "4096", "16384"], "joint tokens (audio + motion)")
_PRESETS = flags.DEFINE_list("presets", ["demo", "base"], "presets giving heads, head_dim, window, dtype")
_IMPLS = flags.DEFINE_list("impls", ["xla", "pallas", "cudnn", "cudnn_full"], "implementations")
_BATCH = flags.DEFINE_integer("batch", 2, "batch size")
_RUNS = flags.DEFINE_integer("runs", 10, "timed runs per cell (median)")
_DENSE_GIB = flags.DEFINE_float(
  "dense_budget_gib",
  0.0,
  "skip xla beyond this many GiB of dense logits (0 = a quarter of the device memory, or 4 GiB on CPU)",
)
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "q, k, v dtype (cuDNN needs bfloat16)")
_BLOCKS = flags.DEFINE_list("blocks", [], "pallas block_q,block_k (default: the backend's)")
_TOPOLOGY = flags.DEFINE_string(
  "topology", "", "compile for this Cloud TPU slice (v5p:2x2x2, v5p-16, ...) instead of running; --batch per chip"
)
_COMPILED_IMPLS = ("xla", "pallas", "splash")


def _median_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(_RUNS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _dense_budget() -> float:
  if _DENSE_GIB.value:
    return _DENSE_GIB.value
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("bytes_limit", 16 * 2**30) / 4 / 2**30


def _cell(impl: str, q, k, v, tokens, window, options) -> dict:
  b, length, h, d = q.shape
  if impl in ("cudnn", "cudnn_full") and jax.default_backend() != "gpu":
    return {"note": "needs a GPU"}
  if impl == "xla" and b * h * length * length * 4 * 3 / 2**30 > _dense_budget():
    return {"note": f"dense logits {b * h * length * length * 4 / 2**30:.1f} GiB over budget"}
  if impl == "cudnn_full":
    attend = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  else:
    attend = lambda q, k, v: joint_attention(
      q, k, v, window=window, impl=impl, **tokens, **(options if impl == "pallas" else {})
    )
  fwd = jax.jit(attend)
  fwd_bwd = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))
  return {"fwd_ms": _median_seconds(fwd, q, k, v) * 1e3, "fwd+bwd_ms": _median_seconds(fwd_bwd, q, k, v) * 1e3}


def _splash(length: int, heads: int, window: float):
  """(q, k, v) [B, length, H, D] -> out: JAX's splash attention per example under the joint mask of the
  model's layout at `length`, run per batch shard of the ambient mesh."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as splash,
    splash_attention_mask as splash_mask,
  )

  padded = -(-length // 128) * 128
  mask = np.zeros((padded, padded), bool)
  mask[:length, :length] = np.asarray(joint_mask(window=window, **aot.joint_tokens(1, length))[0])
  blocks = splash.BlockSizes(*(128,) * 8)
  kernel = splash.make_splash_mha_single_device(
    splash_mask.MultiHeadMask([splash_mask.NumpyMask(mask)] * heads), block_sizes=blocks
  )

  def per_shard(q, k, v):
    pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    out = jax.vmap(kernel)(pad(q * (q.shape[-1] ** -0.5)), pad(k), pad(v))  # [B, H, padded, D]
    return out.transpose(0, 2, 1, 3)[:, :length]

  return jax.shard_map(per_shard, in_specs=P(DATA), out_specs=P(DATA), check_vma=False)


def _compiled_rows() -> list[dict]:
  for impl in _IMPLS.value:
    if impl not in _COMPILED_IMPLS:
      raise cli.FlagError(f"--impls: {impl!r} does not compile for a topology ({', '.join(_COMPILED_IMPLS)})")
  rows = []
  for preset in _PRESETS.value:
    config = preset_config(preset)
    h, d = config.model.heads, config.model.head_dim
    window = config_lib.joint_window_frames(config)
    for length in (int(x) for x in _LENGTHS.value):
      for impl in _IMPLS.value:
        shape = dict(batch_per_chip=_BATCH.value, length=length, heads=h, head_dim=d, window=window, impl=impl)
        attend = _splash(length, h, window) if impl == "splash" else None
        row = {"preset": preset, "heads x dim": f"{h}x{d}", "L": length, "impl": impl}
        try:
          row.update(aot.compile_attention(_TOPOLOGY.value, **shape, dtype=jnp.dtype(_DTYPE.value), attend=attend))
        except jax.errors.JaxRuntimeError as e:
          row["error"] = str(e).strip().splitlines()[0][:120]
        rows.append(row)
  return rows


def main(argv):
  del argv
  if _TOPOLOGY.value:
    header = f"ahead-of-time compiles for {aot.topology_name(_TOPOLOGY.value)}, jax {jax.__version__}; "
    report(_compiled_rows(), header + f"batch {_BATCH.value} per chip")
    return
  dev = jax.devices()[0]
  backend = kernel.resolve_backend("auto")
  header = (
    f"backend {jax.default_backend()} ({dev.device_kind}), pallas lowering {backend}, jax {jax.__version__}; "
    f"batch {_BATCH.value}, median of {_RUNS.value} runs"
  )
  options = {}
  if _BLOCKS.value:
    options = {"block_q": int(_BLOCKS.value[0]), "block_k": int(_BLOCKS.value[1])}
  rows = []
  for preset in _PRESETS.value:
    config = preset_config(preset)
    h, d, dtype = config.model.heads, config.model.head_dim, jnp.dtype(_DTYPE.value)
    window = config_lib.joint_window_frames(config)
    for length in (int(x) for x in _LENGTHS.value):
      tokens = aot.joint_tokens(_BATCH.value, length)
      rng = np.random.default_rng(0)
      q, k, v = (jnp.asarray(rng.normal(size=(_BATCH.value, length, h, d)), dtype) for _ in range(3))
      allowed_pairs = float(jnp.sum(joint_mask(window=window, **tokens)))
      blocks = kernel.block_plan(q, k, window=window, backend=backend, **tokens, **options)
      group = []
      for impl in _IMPLS.value:
        row = {
          "preset": preset,
          "heads x dim": f"{h}x{d}",
          "window": window,
          "L": length,
          "impl": impl,
          **_cell(impl, q, k, v, tokens, window, options),
        }
        pairs = _BATCH.value * length * length if impl == "cudnn_full" else allowed_pairs
        if impl == "pallas":
          row["blocks_visited"] = float(blocks.mean())
        if "fwd_ms" in row:
          useful = 4.0 * pairs * h * d
          row["fwd_TFLOP/s"] = useful / (row["fwd_ms"] / 1e3) / 1e12
          row["fwd+bwd_TFLOP/s"] = 3.5 * useful / (row["fwd+bwd_ms"] / 1e3) / 1e12
        group.append(row)
      xla = next((r for r in group if r["impl"] == "xla" and "fwd+bwd_ms" in r), None)
      ceiling = next((r for r in group if r["impl"] == "cudnn_full" and "fwd+bwd_ms" in r), None)
      for row in group:
        if xla and "fwd+bwd_ms" in row:
          row["x_xla"] = xla["fwd+bwd_ms"] / row["fwd+bwd_ms"]
        if ceiling and "fwd+bwd_ms" in row:
          row["x_cudnn_full"] = row["fwd+bwd_TFLOP/s"] / ceiling["fwd+bwd_TFLOP/s"]
      rows += group
  report(rows, header)


if __name__ == "__main__":
  run(main)
