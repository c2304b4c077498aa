"""Ahead-of-time compiles for Cloud TPU topologies on any host (MaxText's train_compile idea).

With the `tpu` extra installed (`jax[tpu]` at the installed jax version, which pins libtpu) and
`JAX_PLATFORMS=cpu`, `jax.experimental.topologies` describes a TPU slice whose devices can carry a
mesh; `jit(...).lower(ShapeDtypeStructs with shardings).compile()` then runs the real TPU compiler
(Mosaic for Pallas kernels included). Out-of-HBM shows up here as RESOURCE_EXHAUSTED.
"""

import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jamflow_jax import sharding, train
from jamflow_jax.axes import ACT_HEADS, BATCH, DATA, LENGTH
from jamflow_jax.errors import ConfigError
from jamflow_jax.model.attention import AUDIO, MOTION, joint_attention

# Cloud TPU names count TensorCores for v4 / v5p (2 per chip, 3-D torus) and chips for v5e / v6e (2-D).
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
# HBM per chip, GiB (Cloud TPU system architecture pages).
_HBM_GIB = {"v4": 32, "v5p": 95, "v5e": 16, "v6e": 32}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


def topology_name(name: str) -> str:
  """'v5p-64' -> 'v5p:2x4x4', 'v6e-16' -> 'v6e:4x4'; 'vN:AxB[xC]' is returned as it is."""
  if re.fullmatch(r"v\w+:\d+(x\d+)+", name):
    return name
  match = re.fullmatch(r"(v\w+?)-(\d+)", name)
  gen = match and _ALIASES.get(match.group(1), match.group(1))
  if not match or gen not in _CORES_PER_CHIP:
    raise ConfigError(
      f"TPU topology {name!r}: use vN:AxBxC (e.g. v5p:2x2x2) or a slice name like "
      f"v5p-64, v4-32, v5e-16, v6e-8 ({', '.join(_CORES_PER_CHIP)})"
    )
  chips, rem = divmod(int(match.group(2)), _CORES_PER_CHIP[gen])
  three_d = gen in ("v4", "v5p")
  if rem or chips < 1 or chips & (chips - 1) or (three_d and chips < 4):
    raise ConfigError(f"TPU topology {name!r}: {match.group(2)} is not a slice size of {gen}")
  # Slices grow by doubling their shortest side (ties: the last one): 2x2x1, 2x2x2, 2x2x4, 2x4x4, ...
  dims = [2, 2, 1] if three_d else [1, 1]
  while math.prod(dims) < chips:
    shortest = min(dims)
    i = max(j for j, s in enumerate(dims) if s == shortest)
    dims[i] *= 2
  return f"{gen}:{'x'.join(map(str, dims))}"


def topology_devices(name: str) -> list:
  # Compiling needs no TPU, so no exclusive hold on one either: several compiles may run at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off Cloud TPU VMs
  from jax.experimental import topologies

  name = topology_name(name)
  # v4 / v5p chips hold two TensorCores that run as one device ("megacore"), as on Cloud TPU.
  megacore = {"chip_config_name": "megacore"} if name.split(":")[0] in ("v4", "v5p") else {}
  return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **megacore).devices)


def hbm_gib(topology: str) -> float | None:
  """HBM of one chip of `topology` in GiB (None for a generation not in the table)."""
  return _HBM_GIB.get(topology_name(topology).split(":")[0])


def state_bytes_per_device(abstract_state: Any) -> tuple[int, float]:
  """(bytes of the state the first device holds, total bytes / devices: what perfect sharding would
  leave on each) of a tree of ShapeDtypeStructs with NamedShardings."""
  leaves = jax.tree.leaves(abstract_state)
  held = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
  total = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
  return held, total / leaves[0].sharding.mesh.size


# Report keys -> the names of the JSON rows (launch/tpu_compile.py --json), which other tools read.
_JSON_NAMES = {
  "mem_GiB/dev": "mem_gib_per_chip",
  "args_GiB": "args_gib_per_chip",
  "temp_GiB": "temp_gib_per_chip",
  "state_GiB": "state_gib_per_chip",
  "xla_TFLOP/dev": "xla_tflop_per_chip",
  "xla_GB_accessed/dev": "xla_gb_accessed_per_chip",
  "counted_TFLOP/dev": "counted_tflop_per_chip",
}


def json_row(row: dict[str, Any]) -> dict[str, Any]:
  """A report row with JSON names (mem_gib_per_chip, ...); benchmarks.common.write_json writes NaN as null."""
  return {_JSON_NAMES.get(k, k): v for k, v in row.items()}


def report(compiled, seconds: float) -> dict[str, Any]:
  """Per-device memory (GiB) and XLA's FLOP count of a compiled executable."""
  row = {"compile_s": seconds}
  mem = compiled.memory_analysis()
  if mem is not None:
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    row.update(
      {
        "mem_GiB/dev": total / 2**30,
        "args_GiB": mem.argument_size_in_bytes / 2**30,
        "temp_GiB": mem.temp_size_in_bytes / 2**30,
      }
    )
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # Pallas kernels count by their CostEstimate: dense attention FLOPs, an upper bound under skipping.
  row["xla_TFLOP/dev"] = (cost or {}).get("flops", float("nan")) / 1e12
  row["xla_GB_accessed/dev"] = (cost or {}).get("bytes accessed", float("nan")) / 1e9
  return row


def joint_tokens(batch: int, length: int, motion_step: float = 3.75) -> dict[str, jax.Array]:
  """The token metadata of a joint layer as the model lays it out: `length` tokens, the audio frames
  (times 0, 1, ...) then the motion frames (times 0, step, ...) in proportion, all valid."""
  la = int(round(length * motion_step / (motion_step + 1)))
  i = jnp.arange(length)
  mod = jnp.broadcast_to(jnp.where(i < la, AUDIO, MOTION), (batch, length)).astype(jnp.int32)
  time = jnp.broadcast_to(jnp.where(i < la, i, (i - la) * motion_step), (batch, length)).astype(jnp.float32)
  valid = jnp.ones((batch, length), bool)
  return dict(q_mod=mod, kv_mod=mod, q_time=time, kv_time=time, q_valid=valid, kv_valid=valid)


def compile_attention(
  topology: str,
  *,
  batch_per_chip: int,
  length: int,
  heads: int,
  head_dim: int,
  window: float,
  impl: str,
  dtype=jnp.bfloat16,
  attend=None,
) -> dict[str, Any]:
  """Compiles joint attention forward + backward (the model's audio-then-motion joint tokens) with
  the batch over all chips of `topology`; returns the report plus devices and device kind.

  attend: (q, k, v) [B, length, heads, head_dim] -> out, under the mesh over the batch (axis DATA),
  in place of `joint_attention(impl=impl)` (e.g. another kernel to compare with).
  """
  devices = topology_devices(topology)
  mesh = jax.make_mesh((len(devices),), (DATA,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
  b = batch_per_chip * len(devices)

  def loss(q, k, v):
    if attend:
      out = attend(q, k, v)
    else:
      out = joint_attention(q, k, v, **joint_tokens(b, length), window=window, impl=impl, backend="mosaic_tpu")
    return jnp.sum(out.astype(jnp.float32) ** 2)

  x = jax.ShapeDtypeStruct((b, length, heads, head_dim), dtype, sharding=NamedSharding(mesh, P(DATA)))
  start = time.perf_counter()
  with jax.set_mesh(mesh), nnx.logical_axis_rules(((BATCH, DATA), (LENGTH, None), (ACT_HEADS, None))):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
  return {"devices": len(devices), "kind": devices[0].device_kind, **report(compiled, time.perf_counter() - start)}


def compile_train_step(config: ml_collections.ConfigDict, devices: list, batch: dict[str, Any]):
  """(Trainer, report of its compiled step) for `config` on a mesh over `devices`; `batch` gives shapes."""
  mesh = sharding.make_mesh(config, devices)
  trainer = train.Trainer(config, mesh)
  abstract_batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k]) for k, v in batch.items()
  }
  start = time.perf_counter()
  compiled = trainer.lower_step(abstract_batch).compile()
  return trainer, {
    "mesh": "x".join(str(s) for s in mesh.shape.values()),
    **report(compiled, time.perf_counter() - start),
  }
