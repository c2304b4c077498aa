"""The F5-TTS vocos mel against librosa (an independent implementation), resampling and wav I/O."""

import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from jamflow_jax.audio import mel, wav


def _signal(seconds=1.5, sr=24000, seed=0):
  t = np.arange(int(seconds * sr)) / sr
  rng = np.random.default_rng(seed)
  chirp = 0.4 * np.sin(2 * np.pi * (150 * t + 1500 * t**2))
  return (chirp * np.exp(-t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _librosa_log_mel(y):
  spec = librosa.feature.melspectrogram(
    y=y,
    sr=24000,
    n_fft=1024,
    hop_length=256,
    win_length=1024,
    window="hann",
    center=True,
    pad_mode="reflect",
    power=1.0,
    n_mels=100,
    fmin=0.0,
    fmax=12000.0,
    htk=True,
    norm=None,
  )
  return np.log(np.maximum(spec, 1e-5)).T


@pytest.mark.parametrize("num_samples", [36000, 24000 + 77])
def test_log_mel_matches_librosa(num_samples):
  y = _signal()[:num_samples]
  ours = mel.log_mel(y)
  assert ours.shape == (1 + num_samples // 256, 100) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, _librosa_log_mel(y), atol=2e-4)
  np.testing.assert_allclose(np.asarray(mel.log_mel(jnp.asarray(y), xp=jnp)), ours, atol=2e-4)


def test_log_mel_floor_and_bad_input():
  silent = mel.log_mel(np.zeros(4800, np.float32))
  np.testing.assert_allclose(silent, np.log(1e-5))
  with pytest.raises(ValueError, match="expects 24000 Hz"):
    mel.log_mel(np.zeros(4800), sample_rate=22050)
  with pytest.raises(ValueError, match="mono"):
    mel.log_mel(np.zeros((2, 4800)))
  with pytest.raises(ValueError, match="too short"):
    mel.log_mel(np.zeros(300))


@pytest.mark.parametrize("sr_in", [16000, 22050, 44100])
def test_resample_keeps_frequency_and_amplitude(sr_in):
  t = np.arange(sr_in) / sr_in
  y = wav.resample(0.5 * np.sin(2 * np.pi * 1000 * t), sr_in, 24000)
  assert y.shape == (24000,) and y.dtype == np.float32
  spectrum = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(20000)))
  assert np.argmax(spectrum) * 24000 / 20000 == pytest.approx(1000, abs=2)
  assert np.max(np.abs(y[2000:-2000])) == pytest.approx(0.5, abs=0.01)


def test_wav_round_trip(tmp_path):
  y = _signal(0.5, 22050)
  wav.write_wav(tmp_path / "a.wav", y, 22050)
  back, sr = wav.load_wav(tmp_path / "a.wav")
  assert sr == 22050 and back.shape == y.shape
  np.testing.assert_allclose(back, y, atol=1 / 32767)
  (tmp_path / "b.wav").write_bytes(b"RIFF not really")
  with pytest.raises(ValueError, match="b.wav: cannot read audio"):
    wav.load_wav(tmp_path / "b.wav")
