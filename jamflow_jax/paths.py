"""Workdir paths: local directories or URLs (gs://, s3://, ...), all handled through etils.epath.

Every path under --workdir goes through here, so a gs:// workdir is one shared bucket prefix on
every host, never a local ./gs:/... directory. Local paths resolve to absolute paths (as Orbax
requires); URLs are left as they are.
"""

import contextlib
import os
import tempfile
from typing import Iterator

from etils import epath

from jamflow_jax.errors import ConfigError


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names a non-local location (scheme://...)."""
  return "://" in os.fspath(path)


def workdir_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path: absolute when local, untouched when a URL.

  Raises ConfigError for a URL scheme that etils.epath does not handle.
  """
  path = os.fspath(path)
  if not is_url(path):
    return epath.Path(os.path.abspath(path))
  try:
    return epath.Path(path)
  except KeyError:  # epath's lookup of the scheme
    raise ConfigError(
      f"{path}: etils.epath reads and writes local paths and gs://, s3://, az://, hf:// URLs, not this scheme"
    ) from None


@contextlib.contextmanager
def local_file(destination: epath.Path) -> Iterator[str]:
  """A local file name for a writer that needs a real file (soundfile, ffmpeg, matplotlib).

  Local destinations are written in place; for a URL the writer gets a temporary file, copied to
  `destination` when the block ends without an error.
  """
  destination.parent.mkdir(parents=True, exist_ok=True)
  if not is_url(destination):
    yield os.fspath(destination)
    return
  with tempfile.TemporaryDirectory() as tmp:
    name = os.path.join(tmp, destination.name)
    yield name
    destination.write_bytes(epath.Path(name).read_bytes())
