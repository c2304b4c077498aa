"""Train-step benchmark: parameters, compiled memory per device, step time, examples/s and MFU.

  python -m benchmarks.train_step --presets=tiny,demo [--impls=xla,pallas,cudnn] [--steps=20]
      [--compile_only] [--json=rows.json] [--config=configs/base.py --config.model.remat_policy=full]
  JAX_PLATFORMS=cpu python -m benchmarks.train_step --presets=base --topology=v5p:2x2x2  # needs jax[tpu]

One row per preset and attention implementation (default: the preset's), on whatever backend JAX
finds (CPU, GPU, TPU), with the whole mesh over all local devices as configs/base.py sets it.
Batches are the SYNTHETIC source (shapes and padding of the data contract; the step does not care
what the numbers mean). The parameter count comes from eval_shape (nothing allocated); memory from
the compiled executable's memory analysis. A row that cannot run here (cuDNN without a GPU) says
why in `note`.
"""

import statistics
import time

import jax
from absl import flags

from benchmarks.common import preset_config, report, run
from data_pipelines.synthetic import SyntheticBatches
from jamflow_jax import aot, config as config_lib, flops, model as model_lib

_PRESETS = flags.DEFINE_list("presets", ["tiny", "demo"], "presets of configs/base.py to measure")
_IMPLS = flags.DEFINE_list("impls", [], "model.attention_impl values to measure (default: the preset's)")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per preset (after 2 warm-up steps)")
_BATCH = flags.DEFINE_integer("batch_size", 0, "global batch size (0 = the preset's)")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "report parameters and memory only")
_TOPOLOGY = flags.DEFINE_string(
  "topology",
  "",
  "compile ahead of time for a Cloud TPU topology instead of running, e.g. v5p:2x2x2 or v5p-64 "
  "(needs `pip install jax[tpu]` at the installed jax version; run with JAX_PLATFORMS=cpu)",
)


def measure(preset: str, impl: str) -> dict:
  config = preset_config(preset)
  config.data.source = "synthetic"
  config.model.attention_impl = impl or config.model.attention_impl
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  devices = aot.topology_devices(_TOPOLOGY.value) if _TOPOLOGY.value else jax.devices()
  row = {
    "preset": preset,
    "impl": config.model.attention_impl,
    "dtype": config.model.dtype,
    "remat": config.model.remat_policy,
    "params_M": model_lib.count_params(model_lib.abstract_params(config)) / 1e6,
    "batch": config.train.batch_size,
    "frames": config.data.max_mel_frames,
  }
  try:
    config_lib.validate(config, len(devices), platform=devices[0].platform)
  except config_lib.ConfigError as e:  # e.g. cuDNN on a CPU: the row says so, the others run
    return {**row, "note": str(e)}
  batch = SyntheticBatches(config).make_batch(0)
  trainer, compiled = aot.compile_train_step(config, devices, batch)
  row["mesh"] = compiled["mesh"]
  row.update({k: compiled[k] for k in ("mem_GiB/dev", "args_GiB", "temp_GiB") if k in compiled})
  if _COMPILE_ONLY.value or _TOPOLOGY.value:
    return row
  source = SyntheticBatches(config)
  batches = [trainer.global_batch(next(source)) for _ in range(4)]
  state = trainer.init(config.train.seed)
  times = []
  for i in range(_STEPS.value + 2):
    start = time.perf_counter()
    state, metrics = trainer.step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times[2:])
  mel = config.data.max_mel_frames
  step_flops = flops.train_flops(config, mel, config_lib.motion_frames(config, mel)) * config.train.batch_size
  peak = flops.peak_flops_per_device(config) * len(devices)
  row.update(
    {
      "step_ms": step_s * 1e3,
      "examples/s": config.train.batch_size / step_s,
      "TFLOP/s": step_flops / step_s / 1e12,
      "MFU": step_flops / step_s / peak if peak else float("nan"),
    }
  )
  return row


def main(argv):
  del argv
  if _TOPOLOGY.value:
    header = f"ahead-of-time compile for TPU topology {_TOPOLOGY.value} on {jax.default_backend()}"
    header += f", jax {jax.__version__}"
  else:
    dev = jax.devices()[0]
    header = f"backend {jax.default_backend()}, {jax.device_count()} x {dev.device_kind}, jax {jax.__version__}"
  report([measure(p, impl) for p in _PRESETS.value for impl in _IMPLS.value or [""]], header)


if __name__ == "__main__":
  run(main)
