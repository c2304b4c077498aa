"""Compile joint attention and the whole train step for a Cloud TPU slice, on this (CPU) host.

  pip install -e ".[tpu]"     # jax[tpu] at the installed jax version (pins the matching libtpu)
  JAX_PLATFORMS=cpu python launch/tpu_compile.py --topology=v5p-16 [--preset=base] [--impls=xla,pallas]
      [--batch_size=256] [--set=mesh.shape=(1,-1,1)] [--skip_train_step]

Prints per-device memory (arguments, temporaries, total) and FLOPs for each attention impl: first
the joint attention forward + backward alone (the preset's longest joint sequence, its heads,
head_dim and window, the batch split over the chips), then the train step. `xla_TFLOP/dev` is
XLA's cost analysis (Pallas kernels by their cost estimate: dense attention, an upper bound where
blocks are skipped); `counted_TFLOP/dev` is jamflow_jax.flops' model of the whole step. A program
that does not fit in HBM prints RESOURCE_EXHAUSTED in its row.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.common import override, print_table  # noqa: E402
from configs.base import get_config  # noqa: E402
from data_pipelines.synthetic import SyntheticBatches  # noqa: E402
from jamflow_jax import aot, config as config_lib, flops  # noqa: E402

_TOPOLOGY = flags.DEFINE_string("topology", "v5p:2x2x2", "vN:AxBxC or a slice name (v5p-16, v6e-8, ...)")
_PRESET = flags.DEFINE_string("preset", "base", "preset of configs/base.py")
_IMPLS = flags.DEFINE_list("impls", ["xla", "pallas"], "model.attention_impl values to compile")
_BATCH = flags.DEFINE_integer("batch_size", 0, "global batch size (0 = the preset's)")
_SKIP_STEP = flags.DEFINE_bool("skip_train_step", False, "compile joint attention only")
_SET = flags.DEFINE_multi_string("set", [], "config override a.b=value (Python literal), repeatable")


def _compile(what: str, impl: str, fn) -> dict:
  print(f"compiling {what} with impl={impl} ...", flush=True)
  row = {"what": what, "impl": impl}
  try:
    row.update(fn())
  except Exception as e:  # noqa: BLE001  (a row per failure, e.g. RESOURCE_EXHAUSTED, is the point)
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    row["error"] = ("RESOURCE_EXHAUSTED: " if "RESOURCE_EXHAUSTED" in str(e) else "") + message[:120]
  return row


def main(argv):
  del argv
  config = get_config(_PRESET.value)
  config.data.source = "synthetic"
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  for assignment in _SET.value:
    override(config, assignment)
  devices = aot.topology_devices(_TOPOLOGY.value)
  config_lib.validate(config, len(devices))
  m = config.model
  mel = config.data.max_mel_frames
  joint = mel + config_lib.motion_frames(config, mel)
  per_chip = max(1, config.train.batch_size // len(devices))
  print(f"{aot.topology_name(_TOPOLOGY.value)}: {len(devices)} x {devices[0].device_kind}; preset "
        f"{_PRESET.value}, global batch {config.train.batch_size}, {mel} mel + {joint - mel} motion frames, "
        f"window {config_lib.joint_window_frames(config):g} frames; jax {jax.__version__}")
  rows = [_compile(f"joint attention fwd+bwd, {per_chip} x {joint} tokens/chip", impl, lambda impl=impl: aot.compile_attention(
      _TOPOLOGY.value, batch_per_chip=per_chip, length=joint, heads=m.heads, head_dim=m.head_dim,
      window=config_lib.joint_window_frames(config), impl=impl)) for impl in _IMPLS.value]
  if not _SKIP_STEP.value:
    batch = SyntheticBatches(config).make_batch(0)
    counted = flops.train_flops(config, mel, joint - mel) * config.train.batch_size / len(devices) / 1e12
    for impl in _IMPLS.value:
      step_config = config.copy_and_resolve_references()
      step_config.model.attention_impl = impl
      rows.append(_compile("train step", impl, lambda c=step_config: {
          **aot.compile_train_step(c, devices, batch)[1], "counted_TFLOP/dev": counted}))
  print_table([{k: v for k, v in row.items() if k not in ("devices", "kind")} for row in rows])


if __name__ == "__main__":
  app.run(main)
