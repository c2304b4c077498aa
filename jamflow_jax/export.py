"""Exported checkpoints: one step of a run as a self-contained artifact to sample from anywhere.

`export` (--mode=export) writes DIR/export/<step>/ from the training run in DIR:

  params/            the weights alone (EMA by default: export.use_ema) cast to export.dtype, as a
                     params-only Orbax checkpoint in the run's layer layout; no optimizer state
  config.json        the run's config; model.text_vocab / sample.vocoder, when files, name the copies
                     beside it; render.face_model is cleared (a FLAME model is the user's licence)
  vocab.txt          the run's F5-TTS text vocabulary (runs with the built-in one have none)
  vocoder.*          the run's Vocos checkpoint (runs with Griffin-Lim have none)
  motion_stats.json  the motion normalisation, when the run has one
  fingerprints.json  a 64-bit fingerprint of every array (`checkpoint.fingerprint`)
  manifest.json      written last: format, step, weights, dtype, parameter count, checksum (of the
                     fingerprints) and the command that samples from it

With export.format=f5_safetensors the Audio-DiT goes to DIR/export/<step>-f5/audio_dit.safetensors
instead, in F5-TTS's DiT layout under `ema_model.transformer.` (what F5-TTS's `load_checkpoint` reads
with its default use_ema=True; the motion stream has no F5 counterpart), beside vocab.txt and the
manifest.

`load` restores an Orbax export onto any mesh, whatever mesh wrote it, and checks every array
against the fingerprints, so a damaged export is refused naming the array.
"""

import hashlib
import json
import os
import time
from typing import NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jamflow_jax import (
  checkpoint as checkpoint_lib,
  choices,
  model as model_lib,
  paths,
  presets,
  sharding,
  torch_checkpoint,
)
from jamflow_jax.audio import vocoder as vocoder_lib
from jamflow_jax.errors import CheckpointError, ConfigError, InputError
from jamflow_jax.model import f5tts, layer_stack
from jamflow_jax.motion.stats import MotionStats

MANIFEST = "manifest.json"
FORMAT = "jamflow-export/1"
VOCAB = "vocab.txt"
F5_FILE = "audio_dit.safetensors"


class Export(NamedTuple):
  """An Orbax export restored: its config, parameters (on the mesh asked for), motion statistics."""

  config: ml_collections.ConfigDict
  params: dict
  stats: MotionStats | None
  manifest: dict


def _checksum(leaves: dict[str, str]) -> str:
  return "sha256:" + hashlib.sha256(json.dumps(leaves, sort_keys=True).encode()).hexdigest()


def _vocoder_file(config: ml_collections.ConfigDict) -> epath.Path | None:
  """The run's Vocos checkpoint, when sample.vocoder names a file."""
  spec = config.sample.vocoder
  return epath.Path(spec) if spec != vocoder_lib.GRIFFIN_LIM and epath.Path(spec).is_file() else None


def _exported_config(config: ml_collections.ConfigDict, vocab: bool, vocoder: epath.Path | None) -> dict:
  """The run's config as the export holds it: no path of the training machine is carried."""
  saved = json.loads(config.to_json_best_effort())
  saved["model"]["text_vocab"] = VOCAB if vocab else ""
  saved["sample"]["vocoder"] = f"vocoder{vocoder.suffix}" if vocoder else vocoder_lib.GRIFFIN_LIM
  saved["train"]["init_from"] = ""  # the weights are the export's own
  saved["render"]["face_model"] = ""
  return saved


def _target(workdir: epath.Path, step: int, fmt: str) -> epath.Path:
  out = workdir / "export" / (str(step) if fmt == "orbax" else f"{step}-f5")
  if (out / MANIFEST).exists():
    raise InputError(f"{out} already holds an export; move it away to export step {step} again")
  if out.exists():  # an export that stopped before its manifest: nothing in it is usable
    logging.warning("%s holds an unfinished export: replacing it", out)
    if jax.process_index() == 0:
      out.rmtree()
  return out


def export(
  workdir: str | os.PathLike,
  config: ml_collections.ConfigDict | None = None,
  *,
  step: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> epath.Path:
  """Writes the export of `step` (default: the newest intact checkpoint) of the run in `workdir`
  as config.export says (use_ema, dtype, format); returns its directory.

  config: the run's (default: DIR/config.json). mesh: where the weights are gathered (default: the
  training mesh of `config` on all devices, so a model that needs its mesh to fit still exports).
  Every process takes part; process 0 writes the JSON files.
  """
  workdir = paths.workdir_path(workdir)
  checkpoints = checkpoint_lib.checkpoints_dir(workdir)
  if config is None:
    config = presets.from_saved(json.loads((workdir / "config.json").read_text()))
  x = config.export
  for key, value, options in (("dtype", x.dtype, choices.DTYPES), ("format", x.format, choices.EXPORT_FORMATS)):
    if value not in options:
      raise ConfigError(f"export.{key}={value!r}; choose one of {', '.join(options)}")
  mesh = sharding.make_mesh(config) if mesh is None else mesh
  with sharding.use_mesh(mesh, config):
    abstract = model_lib.abstract_params(config, mesh)
    params, step = checkpoint_lib.Checkpointer(workdir, config).restore_params(abstract, step, ema=x.use_ema)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    params = jax.jit(lambda p: jax.tree.map(lambda a: a.astype(x.dtype), p), out_shardings=shardings)(params)
  out = _target(workdir, step, x.format)
  writes = jax.process_index() == 0
  vocab = bool(config.model.text_vocab)
  leaves, _ = checkpoint_lib.fingerprint(params)
  manifest = {
    "format": FORMAT,
    "kind": x.format,
    "step": int(step),
    "weights": "ema" if x.use_ema else "raw",
    "dtype": x.dtype,
    "preset": config.get("preset", ""),
    "parameters": model_lib.count_params(params),
    "checksum": _checksum(leaves),
    "source": os.fspath(workdir),
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  if x.format == "orbax":
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    manifest["sample_command"] = (
      f"python -m jamflow_jax.main --mode=sample --export_dir={out} --task=tts --text='Hello.'"
    )
  else:
    state_dict = f5tts.to_f5(sharding.to_host(params), config)
    manifest["parameters"] = int(sum(a.size for a in state_dict.values()))
    manifest["checksum"] = _checksum({n: hashlib.sha256(a.tobytes()).hexdigest()[:16] for n, a in state_dict.items()})
    manifest["sample_command"] = (
      f"f5-tts_infer-cli --ckpt_file {out / F5_FILE}" + (f" --vocab_file {out / VOCAB}" if vocab else "") + " ..."
    )
  if writes:
    out.mkdir(parents=True, exist_ok=True)
    if vocab:
      (out / VOCAB).write_text(epath.Path(config.model.text_vocab).read_text(encoding="utf-8"), encoding="utf-8")
    if x.format == "orbax":
      vocoder = _vocoder_file(config)
      if vocoder is not None:
        (out / f"vocoder{vocoder.suffix}").write_bytes(vocoder.read_bytes())
      (out / "config.json").write_text(json.dumps(_exported_config(config, vocab, vocoder), indent=2))
      (out / "fingerprints.json").write_text(json.dumps(leaves, indent=0, sort_keys=True))
      if (workdir / "motion_stats.json").exists():
        (out / "motion_stats.json").write_text((workdir / "motion_stats.json").read_text())
    else:
      named = {f"ema_model.transformer.{n}": a for n, a in state_dict.items()}
      torch_checkpoint.save_safetensors(out / F5_FILE, named, {"format": "pt", "jamflow_step": str(step)})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"jamflow_export_{step}")
  logging.info(
    "exported step %d of %s (%s weights, %s, %s parameters) to %s",
    step,
    checkpoints,
    manifest["weights"],
    x.dtype,
    f"{manifest['parameters']:,}",
    out,
  )
  return out


def read_manifest(path: str | os.PathLike) -> dict:
  """DIR/manifest.json of an export; InputError when `path` is not a finished export."""
  path = paths.workdir_path(path)
  if not path.is_dir():
    raise InputError(f"{path}: no such export directory")
  try:
    manifest = json.loads((path / MANIFEST).read_text())
  except FileNotFoundError:
    raise InputError(f"{path}: no {MANIFEST}; not an export (--mode=export writes one) or an unfinished one") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path / MANIFEST}: unreadable ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise CheckpointError(f"{path / MANIFEST}: not a {FORMAT} manifest")
  return manifest


def is_export(path: str | os.PathLike) -> bool:
  return (paths.workdir_path(path) / MANIFEST).exists()


def exported_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config an export was made with, its vocabulary resolved to the export's vocab.txt."""
  path = paths.workdir_path(path)
  read_manifest(path)  # a finished export, or InputError
  try:
    config = presets.from_saved(json.loads((path / "config.json").read_text()))
  except FileNotFoundError:
    raise CheckpointError(f"{path}: the export has no config.json") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path / 'config.json'}: unreadable ({e})") from None
  if config.model.text_vocab:
    config.model.text_vocab = os.fspath(path / VOCAB)
  if config.sample.vocoder != vocoder_lib.GRIFFIN_LIM:
    config.sample.vocoder = os.fspath(path / config.sample.vocoder)
  return config


def load(
  path: str | os.PathLike,
  config: ml_collections.ConfigDict | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> Export:
  """Restores the Orbax export at `path` onto `mesh` (default: this process' first device).

  config: the settings to use (default: the export's). Its model.* must be the export's, up to how
  the model is computed (attention kernel, remat, layer layout: converted). Parameters come back in
  the model's parameter dtype, verified against the export's fingerprints (CheckpointError naming
  the array that differs).
  """
  path = paths.workdir_path(path)
  manifest = read_manifest(path)
  if manifest.get("kind") != "orbax":
    raise InputError(f"{path}: a {manifest.get('kind')} export is for F5-TTS's own inference, not for sampling here")
  exported = exported_config(path)
  if config is None:
    config = exported
  else:
    changed = checkpoint_lib.model_differences(
      json.loads(exported.model.to_json_best_effort()), json.loads(config.model.to_json_best_effort())
    )
    changed = [c for c in changed if not c.startswith("text_vocab:")]  # the export's own copy
    if changed:
      raise ConfigError(f"{path} holds a model of other model.* settings ({', '.join(changed)}); drop --config")
    config = config.copy_and_resolve_references()
    config.model.text_vocab = exported.model.text_vocab
  mesh = sharding.single_device_mesh(config) if mesh is None else mesh
  with sharding.use_mesh(mesh, config):
    abstract = model_lib.abstract_params(config, mesh)
    # Read as stored (the export's layer layout and dtype), onto this mesh's shardings.
    stored = layer_stack.convert_for(
      jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, manifest["dtype"], sharding=a.sharding), abstract),
      exported,
    )
    try:
      params = ocp.StandardCheckpointer().restore(path / "params", stored)
    except Exception as e:  # truncated, missing or foreign files
      raise CheckpointError(f"{path}/params: cannot restore the export ({checkpoint_lib.describe(e)})") from None
    leaves, nonfinite = checkpoint_lib.fingerprint(params)
    try:
      want = json.loads((path / "fingerprints.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{path}/fingerprints.json: missing or unreadable ({e})") from None
    differ = sorted(n for n in set(leaves) | set(want) if leaves.get(n) != want.get(n))
    if differ or _checksum(want) != manifest.get("checksum"):
      raise CheckpointError(
        f"{path}: the export is damaged ("
        + (
          f"{', '.join(differ[:3])} differ from their fingerprints"
          if differ
          else "fingerprints differ from the manifest"
        )
        + "); export it again"
      )
    if nonfinite:
      raise CheckpointError(f"{path}: non-finite values in {', '.join(nonfinite[:3])}")
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    to_model = lambda p: jax.tree.map(lambda a, t: a.astype(t.dtype), layer_stack.convert_for(p, config), abstract)
    params = jax.jit(to_model, out_shardings=shardings)(params)
  stats = None
  if (path / "motion_stats.json").exists():
    where = os.fspath(path / "motion_stats.json")
    stats = MotionStats.from_json(
      json.loads((path / "motion_stats.json").read_text()), config.model.motion_dim, where=where
    )
  return Export(config, params, stats, manifest)
