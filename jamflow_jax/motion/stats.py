"""The motion normalisation: the model sees (motion - mean) / std per FLAME dimension.

The statistics are the corpus' (its corpus.json "motion": parts, fps, mean, std over the train split),
saved beside every run as DIR/motion_stats.json; the data pipeline normalises with them, inference
and evaluation un-normalise generated motion with them.
"""

import dataclasses

import numpy as np

from jamflow_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MotionStats:
  """Per-dimension mean and std, float32 [D]."""

  mean: np.ndarray
  std: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "mean", np.asarray(self.mean, np.float32))
    object.__setattr__(self, "std", np.asarray(self.std, np.float32))

  @classmethod
  def identity(cls, dim: int) -> "MotionStats":
    """No normalisation (mean 0, std 1): motion stays in the model's units."""
    return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

  @classmethod
  def from_json(cls, value: dict, dim: int | None = None, *, where: str = "motion statistics") -> "MotionStats":
    """From a motion description {"mean": [D], "std": [D], ...} (corpus.json "motion", motion_stats.json);
    ConfigError naming `where` when the statistics are missing, of the wrong size or not positive."""
    try:
      stats = cls(value["mean"], value["std"])
    except (KeyError, TypeError, ValueError) as e:
      raise ConfigError(f"{where}: need per-dimension lists 'mean' and 'std' ({e})") from None
    if stats.mean.ndim != 1 or stats.mean.shape != stats.std.shape or (dim is not None and stats.mean.size != dim):
      raise ConfigError(
        f"{where}: mean {stats.mean.shape} and std {stats.std.shape} must both be [{dim if dim is not None else 'D'}]"
      )
    if not (np.all(np.isfinite(stats.mean)) and np.all(stats.std > 0)):
      raise ConfigError(f"{where}: mean must be finite and std positive")
    return stats

  def normalise(self, motion: np.ndarray) -> np.ndarray:
    """motion [..., D] un-normalised -> the model's units."""
    return (motion - self.mean) / self.std

  def denormalise(self, motion: np.ndarray) -> np.ndarray:
    """motion [..., D] in the model's units -> FLAME parameters."""
    return motion * self.std + self.mean
