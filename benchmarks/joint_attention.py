"""Joint attention benchmark: forward and forward+backward time per implementation.

  python -m benchmarks.joint_attention [--lengths=1024,4096,16384] [--presets=demo,base]
      [--impls=xla,pallas,cudnn,cudnn_full] [--batch=2] [--runs=10] [--json=rows.json]

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
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.common import preset_config, report, run
from jamflow_jax import aot, config as config_lib
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


def main(argv):
  del argv
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
