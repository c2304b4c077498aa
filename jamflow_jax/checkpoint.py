"""Orbax checkpoints of the train state, the data iterator's state and the config, verified on restore.

Layout: DIR/checkpoints/<step>/{state, data, config, integrity}, DIR local or a URL such as
gs://bucket/run (one shared location for every process; Orbax writes it through epath and
tensorstore). Saves are asynchronous and reported once committed; restoring takes abstract targets
that carry the *current* shardings, so a run can resume on a different mesh.

Integrity: `integrity` holds a 64-bit fingerprint of every array of the state and digests of the
JSON items, computed when saving. A restore recomputes them on the restored values and checks the
floats are finite, so a damaged file is found instead of trained on; without an explicit step the
newest checkpoint that verifies is used and the damaged newer ones are moved to
checkpoints/corrupt-<step>/ (never deleted).

Layer layout: a checkpoint saved with the layers unrolled restores into a scanned model and the
other way round (`model.scan_layers`): it is read in the layout it was saved in, verified, then
converted (layer_stack.convert) onto the current shardings.
"""

import hashlib
import json
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jamflow_jax import paths, sharding
from jamflow_jax.errors import CheckpointError, ConfigError, InputError
from jamflow_jax.model import layer_stack

ITEMS = ("state", "data", "config", "integrity")


def _leaf_name(path) -> str:
  """'ema_params/audio/blocks_0/...': the same for a TrainState field and a dict key of that name."""
  return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _digest(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(h1, h2, finite) of one array: two position-weighted sums of its bit patterns, mod 2**32.

  Modular sums are exact in any order, so the fingerprint does not depend on the sharding (no
  reshape, hence no resharding: the linear index is built from per-dimension iotas)."""
  x = jnp.asarray(x)
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.asarray(True)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  if x.dtype.itemsize >= 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte types gain a trailing dimension of 2
  else:
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
  index = jnp.zeros(bits.shape, jnp.uint32)
  for d, stride in enumerate(np.cumprod((1,) + bits.shape[:0:-1])[::-1] if bits.ndim else ()):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d) * np.uint32(stride % 2**32)
  h1 = jnp.sum(bits * (index * np.uint32(0x9E3779B1) + np.uint32(1)), dtype=jnp.uint32)
  h2 = jnp.sum((bits ^ (bits >> 15)) * (index * np.uint32(0x85EBCA77) + np.uint32(0xC2B2AE3D)), dtype=jnp.uint32)
  return h1, h2, finite


@jax.jit
def _fingerprints(leaves: list) -> tuple[jax.Array, jax.Array]:
  digests = [_digest(x) for x in leaves]
  return (jnp.stack([jnp.stack([h1, h2]) for h1, h2, _ in digests]), jnp.stack([finite for _, _, finite in digests]))


def fingerprint(tree: Any) -> tuple[dict[str, str], list[str]]:
  """({leaf name: 16 hex digits}, names of floating leaves holding NaN/inf) of every array in `tree`.

  One program over the tree's arrays wherever they live (a collective under several processes)."""
  named = jax.tree_util.tree_leaves_with_path(tree)
  if not named:
    return {}, []
  hashes, finite = sharding.to_host(_fingerprints([x for _, x in named]))
  names = [_leaf_name(path) for path, _ in named]
  return (
    {n: f"{int(a):08x}{int(b):08x}" for n, (a, b) in zip(names, hashes)},
    [n for n, ok in zip(names, finite) if not ok],
  )


def model_differences(saved: dict, current: dict) -> list[str]:
  """'key: saved -> current' for every model.* setting (JSON dicts) that changes what the weights
  compute. How it is computed may change (attention kernel, remat, layer layout); options newer than
  the save default to the behaviour it was made with, so only the saved keys are compared."""
  how = lambda k: k.startswith("attention_") or k in ("remat", "remat_policy", "scan_layers")
  return [
    f"{k}: {saved[k]!r} -> {current.get(k)!r}" for k in sorted(saved) if not how(k) and saved[k] != current.get(k)
  ]


def _json_digest(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process (one small collective under several processes)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def describe(error: BaseException) -> str:
  """The error on one line; a long one keeps its start (what failed) and its end (the OS's reason)."""
  text = " ".join(str(error).split())
  if len(text) > 500:
    text = f"{text[:200]} ... {text[-300:]}"
  return f"{type(error).__name__}: {text}"


def _ignore_late_io_callbacks() -> None:
  """A failed save or restore leaves tensorstore reads / writes in flight whose completions reach
  Orbax's event loop after it closed (RuntimeError 'Event loop is closed', reported as unraisable,
  one traceback each): harmless once the Checkpointer has reported the failure, so not printed."""
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_loop", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.ignores_closed_loop = True
  sys.unraisablehook = hook


def checkpoints_dir(workdir: epath.Path) -> epath.Path:
  """DIR/checkpoints of a run to read from; InputError when DIR has none (nothing is created)."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    raise InputError(f"{workdir}: no checkpoints/ directory; train into this --workdir first")
  return directory


class Checkpointer:
  def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict):
    self.directory = paths.workdir_path(workdir) / "checkpoints"  # epath.Path: absolute, or the URL
    self.config_json = json.loads(config.to_json_best_effort())
    self.scanned = bool(config.model.scan_layers)
    self.period = layer_stack.period(config.model.depth, config.model.joint_layers)
    self.every_steps = int(config.checkpoint.every_steps)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint.max_to_keep, enable_async_checkpointing=config.checkpoint.async_save, create=True
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self.pending: int | None = None  # the step whose save has started but not yet been committed
    _ignore_late_io_callbacks()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None) -> bool:
    """Starts saving `step` (the loop decides when: every checkpoint.every_steps, the last step, a
    preemption); returns whether Orbax started it. `committed()` says when it is on disk; a failed
    save raises CheckpointError there."""
    self.committed(wait=True)  # the previous save first: its failure must not pass unnoticed
    leaves, nonfinite = fingerprint(state)
    if nonfinite:
      raise CheckpointError(f"refusing to save step {step}: non-finite values in {', '.join(nonfinite[:3])}")
    data_state = data_state or {}
    integrity = {
      "format": 1,
      "leaves": leaves,
      "data": _json_digest(data_state),
      "config": _json_digest(self.config_json),
    }
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(self.config_json),
      integrity=ocp.args.JsonSave(integrity),
    )
    try:
      started = self.manager.save(step, args=args, force=True)
    except Exception as e:  # a synchronous save (checkpoint.async_save=False) fails here
      raise self._save_failed(step, e) from None
    self.pending = step if started else None
    if started and not self.manager.is_saving_in_progress():
      self.committed()
    return started

  def committed(self, wait: bool = False) -> int | None:
    """The step whose save has just been committed, logged as "checkpoint at step N" (once; None while
    it is in progress or when none is pending). `wait`: block until it is. A failed save raises
    CheckpointError naming the step and the error, and which earlier checkpoints are in place."""
    if self.pending is None:
      return None
    step, in_progress = self.pending, not wait and self.manager.is_saving_in_progress()
    try:
      if in_progress:
        self.manager.check_for_errors()  # a background write that already failed (not blocking)
        return None
      self.pending = None
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:
      self.pending = None
      raise self._save_failed(step, e) from None
    logging.info("checkpoint at step %d", step)
    return step

  def _save_failed(self, step: int, error: BaseException) -> CheckpointError:
    self.manager.reload()
    kept = [s for s in self.manager.all_steps() if s != step and (self.directory / str(s)).exists()]
    return CheckpointError(
      f"saving step {step} to {self.directory} failed ({describe(error)}); "
      + (f"checkpoints {', '.join(map(str, sorted(kept)))} are in place" if kept else "no earlier checkpoint")
      + "; fix the cause (e.g. free disk space) and re-run the same command to resume"
    )

  def _check_model(self, step: int) -> dict:
    """The config saved with `step`; ConfigError if it holds a model of other model.* settings."""
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    changed = model_differences(saved["model"], self.config_json["model"])
    if changed:
      raise ConfigError(
        f"{self.directory} holds a model trained with other model.* settings ("
        + ", ".join(changed)
        + "); use another --workdir or the saved settings"
      )
    return saved

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict | None] | None:
    """(state, data iterator state) of `step` (default: the newest intact checkpoint) onto the
    shardings of `abstract_state`; None if none is saved."""

    def read(s, scanned):
      restored = self.manager.restore(
        s,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(self._layout(abstract_state, scanned)), data=ocp.args.JsonRestore()
        ),
      )
      return restored["state"], restored["data"]

    found = self._first_intact(step, read, abstract_state)
    if found is None:
      return None
    (state, data), _ = found
    return state, data or None

  def restore_params(self, abstract_params: Any, step: int | None = None, *, ema: bool = True) -> tuple[Any, int]:
    """(parameters, step): the EMA (or raw) weights alone, without the optimizer state, of `step`
    (default: the newest intact checkpoint).

    Raises ConfigError when the workdir holds no checkpoint (or not `step`)."""
    key = "ema_params" if ema else "params"

    def read(s, scanned):
      target = self._layout(abstract_params, scanned)
      restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
      restored = self.manager.restore(
        s,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item={key: target}, restore_args={key: restore_args}, partial_restore=True)
        ),
      )
      return restored["state"], None

    found = self._first_intact(step, read, {key: abstract_params})
    if found is None:
      raise ConfigError(f"{self.directory} holds no checkpoint; train first")
    (state, _), found = found
    return state[key], found

  def _layout(self, tree: Any, scanned: bool) -> Any:
    return layer_stack.convert(tree, scanned, self.period)

  def _first_intact(self, step: int | None, read: Callable[[int, bool], tuple[Any, dict | None]], abstract: Any):
    """(read(s, scanned), s) for s = `step`, or else the newest step whose checkpoint reads and
    verifies; None when there is none. `read` restores in the layer layout the step was saved in
    (`scanned`); the tree is then converted to this model's, onto the shardings of `abstract`. Damaged
    checkpoints newer than the one used are moved aside. Raises
    CheckpointError for a damaged explicit `step`, or when no checkpoint is intact (then nothing moves:
    the same failure everywhere is more likely this program's than the files')."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if step is not None and step not in steps:
      raise ConfigError(
        f"{self.directory} holds no checkpoint at step {step}"
        + (f" (steps: {', '.join(map(str, sorted(steps)))})" if steps else "; train first")
      )
    damaged = []
    for s in [step] if step is not None else steps:
      try:
        value = self._read_verified(s, read, abstract)
      except CheckpointError as e:
        if step is not None:
          raise
        logging.warning("checkpoint %d is damaged: %s", s, e)
        damaged.append((s, e))
        continue
      for bad, _ in damaged:
        self._set_aside(bad, s)
      return value, s
    if damaged:
      raise CheckpointError(
        f"no checkpoint in {self.directory} is intact (steps "
        f"{', '.join(str(s) for s, _ in damaged)}); the newest: {damaged[0][1]}"
      )
    return None

  def _read_verified(self, step: int, read: Callable[[int, bool], tuple[Any, dict | None]], abstract: Any):
    """read(step, its layout), checked against the step's integrity record, in this model's layout;
    CheckpointError when it fails."""
    where = self.directory / str(step)
    failure = None
    try:
      saved_config = self._check_model(step)
      saved_scanned = bool(saved_config["model"].get("scan_layers", False))
      tree, data = read(step, saved_scanned)
      record = self._integrity(step)
    except ConfigError:
      raise
    except Exception as e:  # unreadable: truncated, missing or empty metadata, not Orbax's format
      failure = e
    # Every process agrees before the fingerprint, itself a collective.
    if not _everywhere(failure is None):
      raise CheckpointError(f"{where}: " + (describe(failure) if failure else "unreadable on another process"))
    leaves, nonfinite = fingerprint(tree)
    if nonfinite:
      raise CheckpointError(f"{where}/state: non-finite values in {', '.join(nonfinite[:3])}")
    if record is None:  # saved before checkpoints carried fingerprints: finiteness is all there is to check
      logging.warning("%s has no integrity record (saved by an older version): only checked finite", where)
      return self._converted(tree, saved_scanned, abstract, where), data
    differ = [n for n, h in leaves.items() if record["leaves"].get(n, h) != h]
    missing = [n for n in leaves if n not in record["leaves"]]
    if differ or missing:
      raise CheckpointError(
        f"{where}/state: contents differ from their fingerprint in "
        f"{', '.join((differ or missing)[:3])}" + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
      )
    if data is not None and _json_digest(data) != record["data"]:
      raise CheckpointError(f"{where}/data: the data iterator state differs from its digest")
    if _json_digest(saved_config) != record["config"]:
      raise CheckpointError(f"{where}/config: the saved config differs from its digest")
    return self._converted(tree, saved_scanned, abstract, where), data

  def _converted(self, tree: Any, saved_scanned: bool, abstract: Any, where) -> Any:
    """`tree` (read in the layout saved) in this model's layer layout, on the shardings of `abstract`."""
    if saved_scanned == self.scanned:
      return tree
    logging.info(
      "%s was saved with model.scan_layers=%s: converting its layers to scan_layers=%s",
      where,
      saved_scanned,
      self.scanned,
    )
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    return jax.jit(lambda t: self._layout(t, self.scanned), out_shardings=shardings)(tree)

  def _integrity(self, step: int) -> dict | None:
    if not (self.directory / str(step) / "integrity").exists():
      return None
    record = self.manager.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore()))["integrity"]
    if not isinstance(record, dict) or not isinstance(record.get("leaves"), dict):
      raise ValueError(f"integrity record is not a fingerprint table: {str(record)[:80]}")
    return record

  def _set_aside(self, step: int, used: int) -> None:
    """Moves the damaged checkpoint `step` to corrupt-<step>/ (process 0), so that later runs and
    Orbax's rotation skip it; nothing is deleted."""
    target = self.directory / f"corrupt-{step}"
    if jax.process_index() == 0:
      n = 1
      while target.exists():
        target, n = self.directory / f"corrupt-{step}.{n}", n + 1
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"jamflow_set_aside_{step}")
    self.manager.reload()
    logging.warning("skipped damaged checkpoint %d (moved to %s); using step %d", step, target, used)

  def wait(self) -> None:
    """Blocks until the pending save is committed (CheckpointError if it failed)."""
    self.committed(wait=True)

  def close(self) -> None:
    self.manager.close()
