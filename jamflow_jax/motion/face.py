"""The face a run shows and measures motion on: a FLAME-format model file, or the stand-in head.

Above both `flame` (the FLAME layer and its file readers) and `standin` (which builds its mesh in
FLAME's format), so neither imports the other's caller.
"""

import os
import pickle

from jamflow_jax.errors import ConfigError
from jamflow_jax.motion import flame, standin


def load_face(path: str | os.PathLike = "") -> flame.FlameModel:
  """The face to show and measure: the FLAME-format file at `path`, or the stand-in face if empty."""
  if path:
    return flame.load_flame_model(path)
  return standin.make_standin()


def load_configured_face(config) -> flame.FlameModel:
  """`load_face(config.render.face_model)`; a file it cannot read is a ConfigError naming the key."""
  try:
    return load_face(config.render.face_model)
  except (OSError, ValueError, pickle.UnpicklingError) as e:  # unsafe pickles are refused, never run
    raise ConfigError(f"render.face_model={config.render.face_model!r}: {e}") from None
