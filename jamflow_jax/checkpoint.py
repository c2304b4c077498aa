"""Orbax checkpoints of the train state, the data iterator's state and the config.

Layout: DIR/checkpoints/<step>/{state, data, config}. Saves are asynchronous; restoring takes
abstract targets that carry the *current* shardings, so a run can resume on a different mesh.
"""

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from jamflow_jax.config import ConfigError


class Checkpointer:
  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
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

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict | None] | None:
    """Restores `step` (default latest) onto the shardings of `abstract_state`; None if none saved."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    # attention_* say how attention is computed, not what: a run may resume with another kernel.
    changed = sorted(k for k in set(saved["model"]) | set(self.config_json["model"])
                     if not k.startswith("attention_") and saved["model"].get(k) != self.config_json["model"].get(k))
    if changed:
      raise ConfigError(f"{self.directory} holds a model trained with other model.* settings ("
                        + ", ".join(f"{k}: {saved['model'].get(k)!r} -> {self.config_json['model'].get(k)!r}"
                                    for k in changed) + "); use another --workdir or the saved settings")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"] or None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
