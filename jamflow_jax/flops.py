"""A counted FLOP model of JAM-Flow (matmuls and attention), and peak FLOP/s per device, for MFU.

Counts 2 * m * n * k for every matmul of one forward pass; training is 3x forward (the
rematerialised forward is not counted, as is the convention for MFU).
"""

import jax
import ml_collections

# Dense bf16 peak FLOP/s per chip, matched by substring of `device.device_kind`, first match wins.
PEAK_FLOPS = (
  ("v6 lite", 918e12),
  ("v6e", 918e12),
  ("v5 lite", 197e12),
  ("v5e", 197e12),
  ("v5p", 459e12),
  ("v5", 459e12),
  ("v4", 275e12),
  ("h200", 989e12),
  ("h100", 989e12),
  ("b200", 2250e12),
  ("a100", 312e12),
  ("l4", 121e12),
)


def forward_flops(config: ml_collections.ConfigDict, mel_frames: int, motion_frames: int) -> float:
  """Matmul FLOPs of one forward pass for one example with the given lengths."""
  m = config.model
  inner = m.heads * m.head_dim
  la, lm = mel_frames, motion_frames

  def stream_layer(length: int, width: int) -> float:
    proj = 2 * length * width * 4 * inner  # q, k, v, out
    ff = 2 * length * width * m.ff_mult * width * 2
    adaln = 2 * width * 6 * width
    return proj + ff + adaln

  def conv_pos(length: int, width: int) -> float:
    return 2 * (2 * length * m.conv_pos_kernel * width * width // m.conv_pos_groups)

  joint = set(m.joint_layers)
  total = 0.0
  for i in range(m.depth):
    total += stream_layer(la, m.audio_width) + stream_layer(lm, m.motion_width)
    pairs = (la + lm) ** 2 if i in joint else la * la + lm * lm
    total += 2 * 2 * pairs * inner  # QK^T and PV
  text = m.text_conv_layers * (2 * la * 7 * m.text_dim + 2 * 2 * la * m.text_dim * 2 * m.text_dim)
  inputs = 2 * la * (2 * m.mel_dim + m.text_dim) * m.audio_width + 2 * lm * 2 * m.motion_dim * m.motion_width
  heads = 2 * la * m.audio_width * m.mel_dim + 2 * lm * m.motion_width * m.motion_dim
  return total + text + inputs + heads + conv_pos(la, m.audio_width) + conv_pos(lm, m.motion_width)


def train_flops(config: ml_collections.ConfigDict, mel_frames: int, motion_frames: int) -> float:
  return 3.0 * forward_flops(config, mel_frames, motion_frames)


def peak_flops_per_device(config: ml_collections.ConfigDict, device: jax.Device | None = None) -> float:
  """From `train.peak_flops_per_device` if set, else the device kind; 0 when unknown (CPU)."""
  if config.train.peak_flops_per_device:
    return float(config.train.peak_flops_per_device)
  kind = (device or jax.devices()[0]).device_kind.lower()
  return next((flops for name, flops in PEAK_FLOPS if name in kind), 0.0)
