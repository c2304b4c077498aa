"""The errors a user can cause, and the one line each ends as (`python -m jamflow_jax.main`).

A leaf module: every layer raises these without importing the layers above it. Each message
names what to fix (the config key, flag, file, record, step or input); `main` prints it after the
prefix of `PREFIXES` and exits non-zero, never with a traceback.
"""


class ConfigError(ValueError):
  """A config that cannot run; the message names the offending key."""


class TextError(ValueError):
  """A transcript that cannot be encoded (empty, or a character outside the vocabulary)."""


class InputError(ValueError):
  """A request the model cannot take (names the input and what is wrong)."""


class BadRecordError(ValueError):
  """A record that must not reach the model; the message names the file, record and reason."""


class CheckpointError(Exception):
  """A checkpoint that cannot be read, fails its integrity check, or could not be saved; the message
  names the step and the file or tensors."""


class WorkdirInUseError(Exception):
  """Another live run holds the workdir's lock; the message names it."""


class NonFiniteError(Exception):
  """A training step whose loss or gradient norm is NaN or inf; the message names the step."""


# error type -> the words before its message on stderr (first match wins: subclasses before bases).
PREFIXES: tuple[tuple[type[Exception], str], ...] = (
  (ConfigError, "config error"),
  (BadRecordError, "data error"),  # names the file and the record; see data.on_bad_record
  (InputError, "input error"),  # a sampling input the model cannot take
  (TextError, "input error"),
  (CheckpointError, "checkpoint error"),  # damaged, or not saved; names the step and file
  (WorkdirInUseError, "workdir error"),
  (NonFiniteError, "training stopped"),
)
USER_ERRORS = tuple(t for t, _ in PREFIXES)


def one_line(error: Exception) -> str:
  """`error` (one of USER_ERRORS) as the line main prints: 'config error: model.depth=0 must be >= 1'."""
  prefix = next(p for t, p in PREFIXES if isinstance(error, t))
  return f"{prefix}: {error}"
