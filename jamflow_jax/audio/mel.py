"""The F5-TTS "vocos" log-mel spectrogram, in numpy or jax.numpy.

24 kHz audio, STFT with n_fft 1024 / win 1024 (periodic Hann) / hop 256, centred with reflect
padding, magnitude (power 1), 100 HTK mel bins over 0..12 kHz without area normalisation, then
log(clamp(mel, 1e-5)). This is torchaudio's `MelSpectrogram(24000, 1024, 1024, 256, n_mels=100,
power=1, center=True, norm=None, mel_scale="htk")` as F5-TTS and Vocos use it, written once for
both array modules (`xp=np` for data pipelines, `xp=jnp` inside jit).
"""

import functools

import numpy as np

SAMPLE_RATE = 24000
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 256
N_MELS = 100
LOG_FLOOR = 1e-5


def num_frames(num_samples: int, hop_length: int = HOP_LENGTH) -> int:
  """Frames of a centred STFT of `num_samples` samples: 1 + N // hop."""
  return 1 + num_samples // hop_length


def _hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(
  sample_rate: int = SAMPLE_RATE,
  n_fft: int = N_FFT,
  n_mels: int = N_MELS,
  f_min: float = 0.0,
  f_max: float | None = None,
) -> np.ndarray:
  """[n_fft // 2 + 1, n_mels] float32 triangular HTK-mel filters, peak 1 (no area normalisation)."""
  f_max = sample_rate / 2 if f_max is None else f_max
  freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (freqs[:, None] - lower) / (centre - lower)
  falling = (upper - freqs[:, None]) / (upper - centre)
  return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def hann_window(win_length: int) -> np.ndarray:
  """Periodic Hann window (torch.hann_window's default)."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)).astype(np.float32)


def log_mel(wav, *, xp=np, sample_rate: int = SAMPLE_RATE):
  """wav [N] float (24 kHz, -1..1) -> log mel [1 + N // 256, 100] float32."""
  if sample_rate != SAMPLE_RATE:
    raise ValueError(f"log_mel expects {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample first")
  wav = xp.asarray(wav, xp.float32)
  if wav.ndim != 1:
    raise ValueError(f"log_mel expects mono audio [N], got shape {tuple(wav.shape)}")
  if wav.shape[0] <= N_FFT // 2:
    raise ValueError(f"audio of {wav.shape[0]} samples is too short for a centred STFT (needs more than {N_FFT // 2})")
  padded = xp.pad(wav, (N_FFT // 2, N_FFT // 2), mode="reflect")
  frames = num_frames(wav.shape[0])
  index = HOP_LENGTH * np.arange(frames)[:, None] + np.arange(N_FFT)[None, :]
  window = np.zeros(N_FFT, np.float32)
  offset = (N_FFT - WIN_LENGTH) // 2  # torch centres a shorter window inside n_fft
  window[offset : offset + WIN_LENGTH] = hann_window(WIN_LENGTH)
  spectrum = xp.abs(xp.fft.rfft(padded[index] * window, axis=-1)).astype(xp.float32)
  mel = spectrum @ mel_filterbank()
  return xp.log(xp.maximum(mel, LOG_FLOOR)).astype(xp.float32)
