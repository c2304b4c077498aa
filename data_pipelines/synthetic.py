"""SYNTHETIC batches: procedurally generated arrays in the batch contract, for tests and benchmarks.

This is not speech and not faces. It is used only when a config says `data.source="synthetic"`
explicitly, never as a silent fallback. The data are made learnable on purpose: the mel frames and
the motion frames are two fixed linear read-outs of one smooth latent trajectory on the shared
clock, so audio -> motion and motion -> audio have a known answer and a falling loss means learning.

Batch i is a pure function of (seed, i), and the iterator state is just i, so a restored iterator
reproduces exactly the batches an uninterrupted run would have seen.
"""

import ml_collections
import numpy as np

from jamflow_jax import config as config_lib

LATENT_DIM = 8


class SyntheticBatches:
  """Iterator of host-local batches: mel [b,Ta,mel_dim] f32, mel_valid [b,Ta], motion [b,Tm,D] f32,
  motion_valid [b,Tm], text [b,Ta] int32 (filler 0 after the transcript); b = len(rows), the
  positions of each global batch this process loads (default all)."""

  def __init__(self, config: ml_collections.ConfigDict, seed: int | None = None, rows: np.ndarray | None = None):
    self.config = config
    self.rows = np.arange(config.train.batch_size) if rows is None else np.asarray(rows, np.int64)
    self.seed = config.train.seed if seed is None else seed
    self.num_batches = int(config.data.synthetic_num_batches)
    self.mel_frames = int(config.data.max_mel_frames)
    self.motion_frames = config_lib.motion_frames(config, self.mel_frames)
    self.motion_step = config_lib.motion_step(config)
    readout = np.random.default_rng([self.seed, 2**31 - 1])
    self.mel_readout = readout.normal(size=(LATENT_DIM, config.model.mel_dim)) / np.sqrt(LATENT_DIM)
    self.motion_readout = readout.normal(size=(LATENT_DIM, config.model.motion_dim)) / np.sqrt(LATENT_DIM)
    self.index = 0

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.make_batch(self.index)
    self.index += 1
    return batch

  def make_batch(self, index: int) -> dict[str, np.ndarray]:
    key = index % self.num_batches if self.num_batches > 0 else index
    rng = np.random.default_rng([self.seed, key])
    b, ta, tm = self.config.train.batch_size, self.mel_frames, self.motion_frames
    lengths = rng.integers(max(1, ta // 2), ta + 1, size=b)
    # Smooth latent trajectory sampled on the mel clock: random walk, low-passed, normalised.
    walk = np.cumsum(rng.normal(size=(b, ta, LATENT_DIM)), axis=1)
    walk -= walk.mean(axis=1, keepdims=True)
    walk /= walk.std(axis=1, keepdims=True) + 1e-6
    mel = walk @ self.mel_readout * 2.0 - 4.0
    motion_idx = np.minimum(np.round(np.arange(tm) * self.motion_step).astype(int), ta - 1)
    motion = walk[:, motion_idx] @ self.motion_readout
    mel_valid = np.arange(ta)[None] < lengths[:, None]
    motion_valid = np.arange(tm)[None] * self.motion_step < lengths[:, None]
    text_len = np.maximum(lengths // 6, 1)
    text = rng.integers(1, self.config.model.text_vocab_size, size=(b, ta))
    text = np.where(np.arange(ta)[None] < text_len[:, None], text, 0).astype(np.int32)
    batch = {
      "mel": np.where(mel_valid[..., None], mel, 0.0).astype(np.float32),
      "mel_valid": mel_valid,
      "motion": np.where(motion_valid[..., None], motion, 0.0).astype(np.float32),
      "motion_valid": motion_valid,
      "text": text,
    }
    return {k: v[self.rows] for k, v in batch.items()}
