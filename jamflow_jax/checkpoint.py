"""Orbax checkpoints of the train state, the data iterator's state and the config.

Layout: DIR/checkpoints/<step>/{state, data, config}, DIR local or a URL such as gs://bucket/run (one
shared location for every process; Orbax writes it through epath and tensorstore). Saves are
asynchronous; restoring takes abstract targets that carry the *current* shardings, so a run can
resume on a different mesh.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from jamflow_jax import paths
from jamflow_jax.config import ConfigError


class Checkpointer:
  def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict):
    self.directory = paths.workdir_path(workdir) / "checkpoints"  # epath.Path: absolute, or the URL
    self.config_json = json.loads(config.to_json_best_effort())
    self.every_steps = int(config.checkpoint.every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.checkpoint.max_to_keep, enable_async_checkpointing=config.checkpoint.async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None, *, force: bool = False) -> bool:
    """Saves when `step` is a multiple of checkpoint.every_steps (or `force`); returns whether it did."""
    if not force and step % self.every_steps:
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}),
                              config=ocp.args.JsonSave(self.config_json))
    return self.manager.save(step, args=args, force=True)

  def _check_model(self, step: int) -> None:
    """ConfigError if the checkpoint at `step` holds a model of other model.* settings."""
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    # attention_* say how attention is computed, not what: a run may resume with another kernel.
    # Options newer than the checkpoint default to the behaviour it was trained with.
    changed = sorted(k for k in saved["model"]
                     if not k.startswith("attention_") and saved["model"][k] != self.config_json["model"].get(k))
    if changed:
      raise ConfigError(f"{self.directory} holds a model trained with other model.* settings ("
                        + ", ".join(f"{k}: {saved['model'].get(k)!r} -> {self.config_json['model'].get(k)!r}"
                                    for k in changed) + "); use another --workdir or the saved settings")

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict | None] | None:
    """Restores `step` (default latest) onto the shardings of `abstract_state`; None if none saved."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    self._check_model(step)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"] or None

  def restore_params(self, abstract_params: Any, step: int | None = None, *, ema: bool = True) -> tuple[Any, int]:
    """(parameters, step): the EMA (or raw) weights alone, without the optimizer state.

    Raises ConfigError when the workdir holds no checkpoint (or not `step`).
    """
    steps = self.manager.all_steps()
    step = self.latest_step() if step is None else step
    if step is None or step not in steps:
      raise ConfigError(f"{self.directory} holds no checkpoint" + (f" at step {step}" if step else "")
                        + (f" (steps: {', '.join(map(str, sorted(steps)))})" if steps else "; train first"))
    self._check_model(step)
    key = "ema_params" if ema else "params"
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract_params)
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={key: abstract_params}, restore_args={key: restore_args}, partial_restore=True)))
    return restored["state"][key], step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
