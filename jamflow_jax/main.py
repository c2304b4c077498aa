"""Entry point: python -m jamflow_jax.main --config=configs/base.py[:PRESET] --workdir=DIR --mode=train

Overrides: --config.a.b=value. Re-running the same command with the same --workdir resumes.
"""

import logging as pylogging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines.shards import BadRecordError
from jamflow_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/base.py[:PRESET]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, TensorBoard logs and config.json go")
_MODE = flags.DEFINE_enum("mode", "train", ["train"], "what to run")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): auto = when launched as several processes (SLURM, TPU pod, "
    "JAX_COORDINATOR_ADDRESS)")


def _launched_multiprocess() -> bool:
  env = os.environ
  return (bool(env.get("JAX_COORDINATOR_ADDRESS")) or int(env.get("SLURM_NTASKS", "1")) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


class _QuietOrbax:
  """Keeps Orbax's per-save INFO chatter off the console; its warnings still show."""

  def filter(self, record) -> bool:
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  logging.get_absl_logger().addFilter(_QuietOrbax())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and _launched_multiprocess()):
    jax.distributed.initialize()
  config = _CONFIG.value
  logging.info("process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
  if _MODE.value == "train":
    from jamflow_jax import train
    train.train(config, _WORKDIR.value)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, except that a ConfigError raised while loading the config stays itself."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # config_flags re-raises the config file's exception wrapped with its traceback; the innermost
    # ConfigError carries the one-line message.
    root, cause = None, e.__cause__ or e.__context__
    while cause is not None:
      root = cause if isinstance(cause, config_lib.ConfigError) else root
      cause = cause.__cause__ or cause.__context__
    if root is None:
      raise
    raise root from None


def run() -> None:
  flags.mark_flags_as_required(["config", "workdir"])
  try:
    app.run(main, flags_parser=_parse_flags)
  except config_lib.ConfigError as e:
    sys.exit(f"config error: {e}")
  except BadRecordError as e:  # names the file and the record; see data.on_bad_record
    sys.exit(f"data error: {e}")


if __name__ == "__main__":
  run()
