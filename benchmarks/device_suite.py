"""The device suite: every speed figure the project tracks, in one command and one table.

  python -m benchmarks.device_suite [--json=suite.json] [--sections=train,f5,attention,sampling]
      [--quick] [--f5_python=PATH | --f5_install [--f5_wheels=DIR]] [--train_batch=32]
      [--f5_set=KEY=VALUE ... --f5_shape=BATCHxFRAMES] [--vocoder=griffin_lim|PATH] [--timeout_s=300]

Sections (each runs the benchmark script named, in its own process, so a section that crashes or
runs out of memory is a row saying why and the suite goes on):

  train      benchmarks.train_step: the base preset in bf16 with its remat policy, attention
             xla / pallas / cudnn: step ms, TFLOP/s, MFU (peak from the device kind), memory.
  f5         ours vs F5-TTS's own PyTorch train step at the same config (the f5 preset's Audio-DiT,
             the tts task only, same batch and frames): benchmarks.train_step beside
             benchmarks.f5_train_step run by a Python that has torch and f5-tts; ours / theirs.
             --f5_set / --f5_shape set another config for both sides, e.g. on a CPU:
             --sections=f5 --f5_set=audio_width=256 --f5_set=depth=4 --f5_set=heads=4 ...
  attention  benchmarks.joint_attention: L 1k / 4k / 16k, demo and base heads, xla / pallas /
             cudnn / cudnn_full (no mask: the ceiling), with x_xla and x_cudnn_full.
  sampling   benchmarks.sampling: 10 s of speech + motion at NFE 32, guidance none / text / all
             three, pallas attention, and the vocoder.

The goals table at the end compares the measured figures with the project's targets (base MFU >=
0.45, ours / F5-TTS <= 0.7, pallas >= 2x xla and >= 0.8x cudnn_full at L=4096, RTF <= 0.03).

Without a GPU or TPU (or with --quick) every section runs at small shapes in seconds and the rows
that need a GPU say so: that is how CI tests the suite. The F5-TTS side needs torch and f5-tts,
never dependencies of this project: --f5_python names a Python that has them (default: the
JAMFLOW_F5_PYTHON variable, else the side environment below, else this Python if it has them);
--f5_install makes that side environment (a venv over this Python's packages, so an installed torch
is reused) under $JAMFLOW_CACHE or ~/.cache/jamflow_jax, from the package index or, offline, from
wheels in --f5_wheels (`pip download f5-tts==1.1.22 -d DIR` on a machine that has the index).
Compiled programs are cached under the same directory, so a rerun skips the compiles.
"""

import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from benchmarks.common import JSON, print_table, run, write_json
from jamflow_jax import cli, presets

SECTIONS = ("train", "f5", "attention", "sampling")
F5_TTS = "f5-tts==1.1.22"

_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), f"which of {', '.join(SECTIONS)} to run")
_QUICK = flags.DEFINE_bool("quick", None, "small shapes (default: on when JAX finds no GPU or TPU)")
_F5_PYTHON = flags.DEFINE_string("f5_python", "", "a Python with torch and f5-tts for the F5-TTS row")
_F5_INSTALL = flags.DEFINE_bool("f5_install", False, "make the side environment with torch and f5-tts if missing")
_F5_WHEELS = flags.DEFINE_string("f5_wheels", "", "install f5-tts offline from the wheels in this directory")
_F5_SET = flags.DEFINE_multi_string(
  "f5_set", [], "KEY=VALUE model setting of the f5 row over the f5 preset, e.g. --f5_set=depth=4 (both sides)"
)
_F5_SHAPE = flags.DEFINE_string("f5_shape", "", "BATCHxFRAMES of the f5 row, e.g. 8x256")
_F5_STEPS = flags.DEFINE_integer("f5_steps", 0, "timed steps of each f5 row (0: 10, 2 in quick mode)")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 32, "global batch of the train and f5 rows (full mode)")
_VOCODER = flags.DEFINE_string("vocoder", "griffin_lim", "the sampling section's vocoder (a Vocos checkpoint path)")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 300, "seconds a section may run before it is stopped")

# The F5-TTS comparison in quick mode: the f5 preset's layout at a size a CPU steps in a second.
_QUICK_F5 = {
  "audio_width": 64,
  "motion_width": 32,
  "depth": 2,
  "heads": 2,
  "head_dim": 32,
  "text_dim": 32,
  "text_conv_layers": 1,
}

GOALS = (  # (what, target, comparison); the measured values come from `goals`
  ("base train step MFU (best attention impl)", 0.45, ">="),
  ("ours / F5-TTS train step time (best impl)", 0.7, "<="),
  ("pallas fwd+bwd speed-up over xla, base, L=4096", 2.0, ">="),
  ("pallas useful TFLOP/s over cudnn_full, base, L=4096", 0.8, ">="),
  ("sampling RTF, 10 s, NFE 32, text guidance", 0.03, "<="),
)


def cache_dir() -> Path:
  return Path(os.environ.get("JAMFLOW_CACHE") or Path.home() / ".cache" / "jamflow_jax")


def _device(env: dict) -> dict:
  """The platform and device kind, asked of JAX in a child process so this one holds no accelerator."""
  code = "import jax, json; d = jax.devices()[0]; print(json.dumps([d.platform, d.device_kind, jax.device_count()]))"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  if out.returncode:
    sys.exit(f"device suite: JAX could not start: {_last_line(out.stderr)}")
  platform, kind, count = json.loads(out.stdout.strip().splitlines()[-1])
  return {"platform": platform, "kind": kind, "count": count}


def _last_line(text: str) -> str:
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1][:300] if lines else "(no output)"


def _run_rows(argv: list[str], env: dict, timeout: float) -> list[dict]:
  """Run one benchmark process with --json into a temporary file -> its rows, or one row saying why not."""
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "rows.json"
    start = time.perf_counter()
    try:
      done = subprocess.run([*argv, f"--json={out}"], env=env, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
      return [{"note": f"stopped after {timeout:.0f} s (--timeout_s)"}]
    if done.returncode or not out.exists():
      return [{"note": f"failed (exit {done.returncode}): {_last_line(done.stderr or done.stdout)}"}]
    rows = json.loads(out.read_text())
    for row in rows:
      row["section_s"] = time.perf_counter() - start
    return rows


def f5_python() -> str | None:
  """The Python for the F5-TTS side: --f5_python, $JAMFLOW_F5_PYTHON, the side venv, or this one."""
  for candidate in (_F5_PYTHON.value, os.environ.get("JAMFLOW_F5_PYTHON", ""), str(_side_venv() / "bin" / "python")):
    if candidate and Path(candidate).exists():
      return candidate
  probe = subprocess.run([sys.executable, "-c", "import torch, f5_tts.model, ema_pytorch"], capture_output=True)
  return sys.executable if probe.returncode == 0 else None


def _side_venv() -> Path:
  return cache_dir() / "f5-venv"


def install_f5() -> str:
  """Make the side venv with torch and f5-tts (an installed torch is reused) -> its Python."""
  venv = _side_venv()
  python = venv / "bin" / "python"
  print(f"installing {F5_TTS} into {venv} ...", flush=True)
  if not python.exists():
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
  source = ["--no-index", f"--find-links={_F5_WHEELS.value}"] if _F5_WHEELS.value else []
  done = subprocess.run([str(python), "-m", "pip", "install", "-q", *source, F5_TTS], capture_output=True, text=True)
  if done.returncode:
    raise cli.FlagError(f"--f5_install: installing {F5_TTS} into {venv} failed: {_last_line(done.stderr)}")
  return str(python)


def _benchmark(name: str, *args: str) -> list[str]:
  return [sys.executable, "-m", f"benchmarks.{name}", *args]


def _train(quick: bool) -> list[str]:
  if quick:
    return _benchmark("train_step", "--presets=tiny", "--impls=xla,pallas,cudnn", "--steps=2")
  return _benchmark(
    "train_step", "--presets=base", "--impls=xla,pallas,cudnn", "--steps=10", f"--batch_size={_TRAIN_BATCH.value}"
  )


def _bench_vocab(size: int) -> Path:
  """A vocab.txt of `size` - 1 tokens (the filler is id 0) for the f5 preset: speed does not depend
  on which characters they are, and F5-TTS's own file is not needed."""
  path = cache_dir() / f"bench-vocab-{size}.txt"
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{chr(0x4E00 + i)}\n" for i in range(size - 1)), encoding="utf-8")
  return path


def _ours_f5(quick: bool, platform: str, impls: str) -> tuple[list[str], dict]:
  """Our train step on the f5 preset's Audio-DiT, tts only -> (argv, the shapes F5-TTS must match).

  Model settings: the f5 preset, a small one in quick mode, then --f5_set; batch and frames from
  --f5_shape (default: --train_batch x the preset's frames; 2 x 64 in quick mode)."""
  config = presets.get_config("f5")
  model = {**_QUICK_F5, "joint_layers": (1,)} if quick else {}
  for item in _F5_SET.value:
    key, _, value = item.partition("=")
    try:
      model[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise cli.FlagError(f"--f5_set={item}: give a model key and a Python literal, e.g. depth=4") from None
  try:
    config.model.update(model)
  except (KeyError, AttributeError, TypeError) as e:
    raise cli.FlagError(f"--f5_set: {e}") from None
  m = config.model
  batch, frames = (2, 64) if quick else (_TRAIN_BATCH.value, config.data.max_mel_frames)
  if _F5_SHAPE.value:
    try:
      batch, frames = (int(x) for x in _F5_SHAPE.value.lower().split("x"))
    except ValueError:
      raise cli.FlagError(f"--f5_shape={_F5_SHAPE.value}: give BATCHxFRAMES, e.g. 8x256") from None
  # F5-TTS's side autocasts to bf16 on a GPU and stays in f32 on a CPU: the same here.
  dtype = "float32" if platform == "cpu" else "bfloat16"
  overrides = {
    **{f"flow.task_mix.{task}": float(task == "tts") for task in config.flow.task_mix},
    "model.text_vocab": _bench_vocab(m.text_vocab_size),
    "data.max_mel_frames": frames,
    "model.dtype": dtype,
    **{f"model.{k}": v for k, v in model.items()},
  }
  shapes = {
    "dim": m.audio_width,
    "depth": m.depth,
    "heads": m.heads,
    "head_dim": m.head_dim,
    "ff_mult": m.ff_mult,
    "text_dim": m.text_dim,
    "conv_layers": m.text_conv_layers,
    "vocab_size": m.text_vocab_size,
    "batch": batch,
    "frames": frames,
    "dtype": dtype,
    "steps": _F5_STEPS.value or (2 if quick else 10),
  }
  argv = _benchmark(
    "train_step",
    "--presets=f5",
    f"--impls={impls}",
    f"--steps={shapes['steps']}",
    f"--batch_size={batch}",
    "--config=configs/base.py:f5",
    *(f"--config.{k}={v}" for k, v in overrides.items()),
  )
  return argv, shapes


def _attention(quick: bool) -> list[str]:
  if quick:
    return _benchmark("joint_attention", "--presets=demo", "--lengths=256", "--runs=2", "--batch=1")
  return _benchmark("joint_attention", "--presets=demo,base", "--lengths=1024,4096,16384", "--runs=10")


def _sampling(quick: bool) -> list[str]:
  if quick:
    return _benchmark(
      "sampling", "--preset=tiny", "--seconds=1", "--nfe=2", "--impls=xla", "--runs=1", f"--vocoder={_VOCODER.value}"
    )
  return _benchmark(
    "sampling", "--preset=base", "--seconds=10", "--nfe=32", "--impls=pallas", "--runs=3", f"--vocoder={_VOCODER.value}"
  )


def _summary(section: str, row: dict) -> dict:
  """A section's row in the suite's common columns (the JSON keeps every field)."""
  case = {
    "train": lambda r: (
      f"{r.get('preset')} {r.get('impl')} {r.get('dtype')} remat={r.get('remat')} {r.get('batch')}x{r.get('frames')}"
    ),
    "f5": lambda r: (
      f"{r.get('framework', 'ours')} {r.get('impl', 'torch')} {r.get('dtype')} {r.get('batch')}x{r.get('frames')}"
    ),
    "attention": lambda r: f"{r.get('preset')} {r.get('heads x dim')} L={r.get('L')} {r.get('impl')}",
    "sampling": lambda r: f"{r.get('preset')} {r.get('impl')} {r.get('guidance', '')}".strip(),
  }[section](row)
  ms = row.get("step_ms", row.get("fwd+bwd_ms"))
  if ms is None and row.get("wall_s") is not None:
    ms = row["wall_s"] * 1e3
  out = {"section": section, "case": case, "ms": ms}
  for key, name in (
    ("TFLOP/s", "TFLOP/s"),
    ("fwd+bwd_TFLOP/s", "TFLOP/s"),
    ("MFU", "MFU"),
    ("mem_GiB/dev", "GiB"),
    ("mem_GiB", "GiB"),
    ("rtf", "rtf"),
    ("x_xla", "x_xla"),
    ("x_cudnn_full", "x_cudnn_full"),
    ("ours/f5", "ours/f5"),
    ("note", "note"),
  ):
    if row.get(key) is not None:
      out[name] = row[key]
  return out


def goals(rows: list[dict], quick: bool) -> list[dict]:
  """The goals table from the rows of this run."""

  def best(values, larger: bool):
    values = [v for v in values if v is not None]
    return (max if larger else min)(values) if values else None

  by = lambda section: [r for r in rows if r["section"] == section]
  base_4k = [r for r in by("attention") if (r.get("preset"), r.get("L"), r.get("impl")) == ("base", 4096, "pallas")]
  measured = (
    best((r.get("MFU") for r in by("train") if r.get("preset") == "base"), True),
    best((r.get("ours/f5") for r in by("f5")), False),
    best((r.get("x_xla") for r in base_4k), True),
    best((r.get("x_cudnn_full") for r in base_4k), True),
    best((r.get("rtf") for r in by("sampling") if r.get("guidance") == "text" and r.get("nfe") == 32), False),
  )
  table = []
  for (what, target, op), value in zip(GOALS, measured, strict=True):
    met = "not measured" if value is None else str(value >= target if op == ">=" else value <= target).lower()
    table.append({"goal": what, "target": f"{op} {target}", "measured": value, "met": met})
  if quick:
    for row in table:
      row["met"] = "quick mode: shapes too small to judge"
  return table


def main(argv):
  del argv
  unknown = sorted(set(_SECTIONS.value) - set(SECTIONS))
  if unknown:
    raise cli.FlagError(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
  if _F5_PYTHON.value and not Path(_F5_PYTHON.value).is_file():
    raise cli.FlagError(f"--f5_python={_F5_PYTHON.value}: no such file")
  if _F5_WHEELS.value and not Path(_F5_WHEELS.value).is_dir():
    raise cli.FlagError(f"--f5_wheels={_F5_WHEELS.value}: no such directory")
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir() / "xla"))
  device = _device(env)
  quick = _QUICK.value if _QUICK.value is not None else device["platform"] not in ("gpu", "tpu")
  print(
    f"device suite on {device['count']} x {device['kind']} ({device['platform']}), "
    f"{'quick mode (small shapes)' if quick else 'full shapes'}; sections {', '.join(_SECTIONS.value)}",
    flush=True,
  )
  rows: list[dict] = []
  for section in (s for s in SECTIONS if s in _SECTIONS.value):
    print(f"[{section}] ...", flush=True)
    if section == "f5":
      # Interpreted Pallas (no GPU or TPU) is no speed figure: the CPU side by side is xla's.
      impls = {"gpu": "xla,pallas,cudnn", "tpu": "xla,pallas"}.get(device["platform"], "xla")
      ours_argv, shapes = _ours_f5(quick, device["platform"], impls)
      ours = [{**r, "framework": "ours"} for r in _run_rows(ours_argv, env, _TIMEOUT.value)]
      python = f5_python() or (install_f5() if _F5_INSTALL.value else None)
      if python is None:
        theirs = [{"note": "needs torch and f5-tts: --f5_python=PATH, or --f5_install for a side environment"}]
      else:
        args = [f"--{k}={v}" for k, v in shapes.items()]
        theirs = _run_rows([python, "-m", "benchmarks.f5_train_step", *args], env, _TIMEOUT.value)
      theirs = [{"framework": "f5-tts", **r} for r in theirs]
      f5_ms = next((r["step_ms"] for r in theirs if r.get("step_ms")), None)
      for row in ours:
        if f5_ms and row.get("step_ms"):
          row["ours/f5"] = row["step_ms"] / f5_ms
      section_rows = ours + theirs
    else:
      command = {"train": _train, "attention": _attention, "sampling": _sampling}[section](quick)
      section_rows = _run_rows(command, env, _TIMEOUT.value)
    rows += [{"section": section, **r} for r in section_rows]
  summary = [_summary(r["section"], r) for r in rows]
  table = goals(rows, quick)
  print()
  print_table(summary)
  print()
  print_table(table)
  if JSON.value:
    write_json(JSON.value, [{"device": device, "quick": quick}] + rows + table)
    print(f"wrote {len(rows) + len(table) + 1} rows to {JSON.value}")


if __name__ == "__main__":
  run(main)
