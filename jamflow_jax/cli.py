"""Command lines that end in one line: absl flags with an ml_collections `--config` flag.

Every failure a user can cause (a flag, a config override, the config file, a config value, a file,
a job) ends as ONE line on stderr and a non-zero exit: `flag error: ...`, or the line of
`errors.one_line`. Used by `python -m jamflow_jax.main` and the `benchmarks` / `launch` scripts.
"""

import sys
from typing import Callable

from absl import app, flags

from jamflow_jax import errors


class FlagError(Exception):
  """A command line that cannot run; the message names the flag."""


def parse_flags(argv: list[str], *configs) -> list[str]:
  """absl flag parsing with one-line errors, loading the config flags `configs` (FlagHolders of
  config_flags.DEFINE_config_file) too: a ConfigError raised while loading a config stays itself;
  any other bad flag (an unknown --config.a.b override among them) is a FlagError."""
  try:
    rest = flags.FLAGS(argv)
    for config in configs:  # config_flags defers a failed load of the file to the first attribute read
      if config.value is not None:
        _ = config.value.keys()
    return rest
  except flags.Error as e:
    # config_flags re-raises the config file's exception wrapped with its traceback; the innermost
    # ConfigError carries the one-line message.
    root, cause = None, e.__cause__ or e.__context__
    while cause is not None:
      root = cause if isinstance(cause, errors.ConfigError) else root
      cause = cause.__cause__ or cause.__context__
    if root is not None:
      raise root from None
    raise FlagError(" ".join(str(e).removeprefix("flag ").split())) from None
  except (AttributeError, KeyError) as e:
    # config_flags resolves --config.a.b overrides with getattr and names only the missing field.
    missing = str(e).strip("'\"")
    override = next(
      (a.split("=", 1)[0] for a in argv if a.startswith("--config.") and missing in a.split("=", 1)[0].split(".")[1:]),
      None,
    )
    if override is None:  # not an override: an error inside the config file
      raise
    raise FlagError(f"{override}: the config has no field {override.removeprefix('--config.')}") from None
  except OSError as e:  # the --config file did not load, and an override touched it
    raise _config_file_error(e) from None


def loaded(config_flag, check: Callable | None = None):
  """The value of a config flag (config_flags defers loading the file to the first access), passed
  to `check` if given; a file that does not load is a FlagError."""
  try:
    config = config_flag.value
    if check is not None:
      check(config)
    return config
  except OSError as e:
    raise _config_file_error(e) from None


def _config_file_error(error: OSError) -> FlagError:
  # config_flags' error wraps the load's, whose last line says why (e.g. "[Errno 2] No such file ...").
  return FlagError(f"--config: {str(error.__cause__ or error).strip().splitlines()[-1].strip()}")


def run(main: Callable, flags_parser: Callable) -> None:
  """app.run(main) where a usage error, a bad flag or a user error ends as one line and exit 1."""

  def one_line_usage(argv):  # absl answers a UsageError with the whole usage text; one line says it
    try:
      return main(argv)
    except app.UsageError as e:
      raise FlagError(str(e)) from None

  try:
    app.run(one_line_usage, flags_parser=flags_parser)
  except FlagError as e:
    sys.exit(f"flag error: {e}")
  except errors.USER_ERRORS as e:  # each names what to fix (key, file, record, input, step)
    sys.exit(errors.one_line(e))
