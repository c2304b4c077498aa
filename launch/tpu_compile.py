"""Compile the train step (and joint attention alone) for Cloud TPU slices, on this (CPU) host.

  pip install -e ".[tpu]"     # jax[tpu] at the installed jax version (pins the matching libtpu)
  JAX_PLATFORMS=cpu python -m launch.tpu_compile --topology=v5p-16 [--preset=base] [--impls=xla,pallas]
      [--batch_size=256] [--meshes=8x1x1,1x8x1] [--layouts=scanned,unrolled]
      [--config=configs/base.py --config.model.remat_policy=full] [--noattention] [--skip_train_step] [--json=rows.json]

One row per (preset, topology, mesh, layout, impl): per-chip memory of the compiled program
(arguments, temporaries, total; `headroom` is the share of the chip's HBM left), the train state
(params, EMA, optimizer moments) each chip holds against the ideal total / chips (`state_x_ideal`),
counted FLOPs (jamflow_jax.flops' model of the step) and XLA's, and the compile time. `--preset`,
`--topology` and `--meshes` take comma-separated lists; a mesh is AxBxC over (data, fsdp, tensor),
-1 filling, default each preset's mesh.shape. Joint attention alone (forward + backward, the preset's
longest joint sequence) gets its own rows unless --noattention. A program that does not fit in HBM
prints RESOURCE_EXHAUSTED in its row, and the table goes on.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import ml_collections
from absl import flags

from benchmarks.common import JSON, preset_config, print_table, run, write_json
from data_pipelines.synthetic import SyntheticBatches
from jamflow_jax import aot, config as config_lib, flops, model as model_lib

_TOPOLOGY = flags.DEFINE_list(
  "topology", ["v5p:2x2x2"], "vN:AxBxC or slice names (v5p-16, v6e-8, ...), comma-separated"
)
_PRESET = flags.DEFINE_list("preset", ["base"], "presets of configs/base.py, comma-separated")
_IMPLS = flags.DEFINE_list("impls", ["xla", "pallas"], "model.attention_impl values to compile")
_MESHES = flags.DEFINE_list("meshes", [], "mesh shapes AxBxC (data x fsdp x tensor, -1 fills); default the preset's")
_LAYOUTS = flags.DEFINE_list("layouts", [], "scanned and/or unrolled (model.scan_layers); default the preset's")
_BATCH = flags.DEFINE_integer("batch_size", 0, "global batch size (0 = the preset's)")
_ATTENTION = flags.DEFINE_bool("attention", True, "also compile joint attention forward + backward alone")
_SKIP_STEP = flags.DEFINE_bool("skip_train_step", False, "compile joint attention only")


def _compile(fields: dict, fn) -> dict:
  print(f"compiling {', '.join(f'{k}={v}' for k, v in fields.items())} ...", flush=True)
  row = dict(fields)
  try:
    row.update(fn())
  except Exception as e:  # noqa: BLE001  (a row per failure, e.g. RESOURCE_EXHAUSTED, is the point)
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    row["error"] = ("RESOURCE_EXHAUSTED: " if "RESOURCE_EXHAUSTED" in str(e) else "") + message[:160]
  return row


def _config(preset: str, mesh: str | None, layout: str | None) -> ml_collections.ConfigDict:
  config = preset_config(preset)
  config.data.source = "synthetic"
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  if mesh:
    try:
      config.mesh.shape = tuple(int(s) for s in mesh.split("x"))
    except ValueError:
      raise SystemExit(f"flag error: --meshes: {mesh!r} is not AxBxC (e.g. 1x8x1)") from None
  if layout:
    config.model.scan_layers = layout == "scanned"
  return config


def _step_row(config, devices, topology: str) -> dict:
  config_lib.validate(config, len(devices))
  trainer, report = aot.compile_train_step(config, devices, SyntheticBatches(config).make_batch(0))
  mel = config.data.max_mel_frames
  counted = flops.train_flops(config, mel, config_lib.motion_frames(config, mel)) * config.train.batch_size
  state, ideal = aot.state_bytes_per_device(trainer.abstract_state)
  hbm = aot.hbm_gib(topology)
  row = {
    **report,
    "state_GiB": state / 2**30,
    "state_x_ideal": state / ideal,
    "counted_TFLOP/dev": counted / len(devices) / 1e12,
  }
  if hbm and "mem_GiB/dev" in row:
    row["headroom"] = 1 - row["mem_GiB/dev"] / hbm
  return row


def main(argv):
  del argv
  try:
    _main()
  except config_lib.ConfigError as e:  # a preset, --config.*, --meshes or --topology that cannot run: one line
    raise SystemExit(f"config error: {e}") from None


def _main():
  for layout in _LAYOUTS.value:
    if layout not in ("scanned", "unrolled"):
      raise SystemExit(f"flag error: --layouts: {layout!r} is neither scanned nor unrolled")
  rows = []
  for topology in _TOPOLOGY.value:
    devices = aot.topology_devices(topology)
    name = aot.topology_name(topology)
    print(
      f"{name}: {len(devices)} x {devices[0].device_kind} ({aot.hbm_gib(name) or '?'} GiB HBM each); "
      f"jax {jax.__version__}",
      flush=True,
    )
    for preset in _PRESET.value:
      base = _config(preset, None, None)
      config_lib.validate(base)
      m, mel = base.model, base.data.max_mel_frames
      joint = mel + config_lib.motion_frames(base, mel)
      params = model_lib.count_params(model_lib.abstract_params(base)) / 1e9
      print(
        f"  preset {preset}: {params:.3f}B parameters, global batch {base.train.batch_size}, {mel} mel + "
        f"{joint - mel} motion frames, window {config_lib.joint_window_frames(base):g} frames",
        flush=True,
      )
      if _ATTENTION.value:
        per_chip = max(1, base.train.batch_size // len(devices))
        for impl in _IMPLS.value:
          rows.append(
            _compile(
              {"preset": preset, "topology": name, "what": f"attention {per_chip}x{joint}", "impl": impl},
              lambda impl=impl: aot.compile_attention(
                name,
                batch_per_chip=per_chip,
                length=joint,
                heads=m.heads,
                head_dim=m.head_dim,
                window=config_lib.joint_window_frames(base),
                impl=impl,
              ),
            )
          )
      if _SKIP_STEP.value:
        continue
      for mesh in _MESHES.value or [None]:
        for layout in _LAYOUTS.value or [None]:
          for impl in _IMPLS.value:
            config = _config(preset, mesh, layout)
            config.model.attention_impl = impl
            shape = config_lib.mesh_shape(config, len(devices))
            fields = {
              "preset": preset,
              "topology": name,
              "what": "train step",
              "params_B": params,
              "mesh": "x".join(map(str, shape)),
              "layout": "scanned" if config.model.scan_layers else "unrolled",
              "remat": config.model.remat_policy,
              "batch": config.train.batch_size,
              "impl": impl,
            }
            rows.append(_compile(fields, lambda c=config: _step_row(c, devices, name)))
  print_table([{k: v for k, v in row.items() if k not in ("devices", "kind")} for row in rows])
  if JSON.value:
    write_json(JSON.value, [aot.json_row(row) for row in rows])
    print(f"wrote {len(rows)} rows to {JSON.value}")


if __name__ == "__main__":
  run(main)
