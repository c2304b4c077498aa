"""The layout of one FLAME motion frame, in one place (DESIGN "Motion layout").

A frame is `expression[50] | jaw[3] | neck[3] | global_rot[3] | eyelids[2]` (D = 61) at 25 fps;
rotations are axis-angle (radians), eyelids are FLAME 2023 eyelid blendshape weights
(0 open, 1 closed). Identity (shape) is not part of motion.

The built-in corpus gives the first expression components documented meanings
(`EXPRESSION_COMPONENTS`), which the stand-in face reproduces; for a real FLAME model they are
simply its first PCA components.
"""

import dataclasses
import math

import numpy as np

# Expression components the built-in corpus drives, by index into `expression`.
EXPRESSION_COMPONENTS = {
  "lip_closure": 0,  # lips pressed together (p, b, m)
  "lip_rounding": 1,  # lips rounded and protruded (o, u, w, sh)
  "lip_spreading": 2,  # lip corners pulled wide (i, e)
  "labiodental": 3,  # lower lip tucked under the upper teeth (f, v)
  "tongue_tip": 4,  # tongue tip visible between the teeth (th)
  "brow_raise": 5,  # brows lifted with pitch accents
}


@dataclasses.dataclass(frozen=True)
class MotionSpec:
  """Names, sizes and order of the parts of a motion frame."""

  parts: tuple[tuple[str, int], ...] = (("expression", 50), ("jaw", 3), ("neck", 3), ("global_rot", 3), ("eyelids", 2))
  fps: float = 25.0
  rotations: tuple[str, ...] = ("jaw", "neck", "global_rot")

  @property
  def dim(self) -> int:
    return sum(size for _, size in self.parts)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.parts)

  def slice(self, name: str) -> slice:
    start = 0
    for part, size in self.parts:
      if part == name:
        return slice(start, start + size)
      start += size
    raise KeyError(f"motion part {name!r}; the layout has {', '.join(self.names)}")

  def split(self, motion: np.ndarray) -> dict[str, np.ndarray]:
    """[..., D] -> {part: [..., size]}."""
    if motion.shape[-1] != self.dim:
      raise ValueError(f"motion has {motion.shape[-1]} dims per frame; the layout has {self.dim}")
    return {name: motion[..., self.slice(name)] for name in self.names}

  def join(self, parts: dict[str, np.ndarray], num_frames: int) -> np.ndarray:
    """{part: [T, size]} -> [T, D] float32; parts left out are zero (rest pose, eyes open)."""
    unknown = set(parts) - set(self.names)
    if unknown:
      raise KeyError(f"unknown motion parts {sorted(unknown)}; the layout has {', '.join(self.names)}")
    out = np.zeros((num_frames, self.dim), np.float32)
    for name, value in parts.items():
      out[:, self.slice(name)] = value
    return out

  def to_json(self) -> dict:
    return {"parts": [list(p) for p in self.parts], "fps": self.fps, "rotations": list(self.rotations)}

  @classmethod
  def from_json(cls, description: dict) -> "MotionSpec":
    """Inverse of `to_json` (extra keys, e.g. corpus.json's mean/std, are ignored)."""
    return cls(
      parts=tuple((str(n), int(s)) for n, s in description["parts"]),
      fps=float(description["fps"]),
      rotations=tuple(description["rotations"]),
    )


MOTION_SPEC = MotionSpec()


def motion_frames_for(
  mel_frames: int, *, motion_fps: float = 25.0, sample_rate: int = 24000, hop_length: int = 256
) -> int:
  """T_m = ceil(T_a * motion_fps / mel_fps): motion frames that cover `mel_frames` mel frames."""
  return math.ceil(mel_frames * motion_fps * hop_length / sample_rate - 1e-9)
