"""Long form: requests longer than the trained length, run as chunks that continue each other.

A request longer than `sample.max_frames` (default `data.max_mel_frames`) runs in chunks. Each
chunk's first `sample.overlap_s` seconds are the previous chunk's last frames, given as condition
(and, for text, the words the speaking rate puts in them), so the model picks up voice, prosody and
motion where they stopped; its last `sample.crossfade_s` of that overlap are rendered again and
cross-faded. Chunk boundaries fall where both clocks tick: 15 mel frames = 4 motion frames at
93.75 / 25 fps.
"""

import dataclasses
import fractions
import re

import ml_collections
import numpy as np

from jamflow_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class Chunking:
  """Chunk sizes in mel frames, every one a multiple of `align` (the shared clock tick)."""

  mel_fps: float
  motion_fps: float
  align: int  # mel frames per tick of both clocks (15)
  max_frames: int  # longest chunk
  overlap: int  # frames a chunk shares with the previous one
  crossfade: int  # of the overlap, frames rendered again and cross-faded (at least one tick stays given)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Chunking":
    mel_fps, motion_fps, s = config_lib.mel_fps(config), config.data.motion_fps, config.sample
    align = fractions.Fraction(mel_fps / motion_fps).limit_denominator(1000).numerator
    max_frames = int(s.max_frames or config.data.max_mel_frames) // align * align
    overlap = max(align, min(int(s.overlap_s * mel_fps), max_frames // 3)) // align * align
    crossfade = min(int(s.crossfade_s * mel_fps) // align * align, overlap - align)
    return cls(mel_fps, motion_fps, align, max_frames, overlap, crossfade)

  def ticks(self, frames: int) -> int:
    """`frames` rounded up to whole ticks."""
    return -(-frames // self.align) * self.align

  def audio_starts(self, frames: int) -> list[int]:
    """First mel frame of each chunk of a clip of `frames`: chunks of max_frames, each starting
    `overlap` frames before the previous one ended."""
    if frames <= self.max_frames:
      return [0]
    return list(range(0, frames - self.overlap, self.max_frames - self.overlap))

  def continuation(self, new: int, piece: str) -> tuple[int, str]:
    """Where the next text chunk picks up, after a chunk that spoke `piece` in its last `new` frames:
    (frames of the output it takes as its prefix, the words of `piece` in them)."""
    n = len(piece.encode("utf-8"))
    before = lambda w: len(piece[:w].encode("utf-8")) / n  # fraction of the piece before word w
    words = [m.start() for m in re.finditer(r"\S+", piece)]
    want = 1.0 - min(self.overlap, new) / new
    # The first word that starts inside the overlap (the last word if none does).
    start = next((w for w in words if before(w) >= want), words[-1])
    frames = int(round((1.0 - before(start)) * new)) // self.align * self.align
    return min(max(self.align, frames), self.overlap), piece[start:]


def split_text(text: str, max_bytes: int) -> list[str]:
  """Sentences (then clauses, then words) packed into pieces of at most ~max_bytes UTF-8 bytes."""
  units = []
  for sentence in re.split(r"(?<=[.!?;:])\s+", text.strip()):
    if len(sentence.encode("utf-8")) <= max_bytes:
      units.append(sentence)
      continue
    for clause in re.split(r"(?<=[,])\s+", sentence):
      units.extend([clause] if len(clause.encode("utf-8")) <= max_bytes else clause.split())
  pieces = []
  for unit in units:
    if pieces and len((pieces[-1] + " " + unit).encode("utf-8")) <= max_bytes:
      pieces[-1] += " " + unit
    else:
      pieces.append(unit)
  return pieces


def crossfade(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a -> b over their frames [F, C] with raised-cosine weights (sum 1, flat at both ends)."""
  w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(a.shape[0]) + 0.5) / a.shape[0]))[:, None]
  return ((1 - w) * a + w * b).astype(np.float32)


def fit(motion: np.ndarray, frames: int) -> np.ndarray:
  """Cuts or edge-pads motion [T, D] to `frames` frames (clips differ by a frame at their ends)."""
  if motion.shape[0] >= frames:
    return motion[:frames]
  return np.pad(motion, [(0, frames - motion.shape[0]), (0, 0)], mode="edge")
