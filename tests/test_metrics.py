"""Evaluation metrics against hand-computed cases, lip-sync offsets and their sign, degenerate inputs."""

import math

import numpy as np
import pytest

from jamflow_jax.audio import loudness
from jamflow_jax.eval import metrics
from jamflow_jax.motion.spec import MOTION_SPEC


def _vertex_case():
  """T = 2 frames of V = 3 vertices; the errors per vertex are chosen by hand."""
  truth = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
  error = np.zeros_like(truth)
  error[0, 0] = [1, 0, 0]  # |e|^2 = 1
  error[0, 1] = [10, 0, 0]  # |e|^2 = 100, not a lip vertex
  error[0, 2] = [0, 2, 0]  # |e|^2 = 4
  error[1, 0] = [1, 1, 1]  # |e|^2 = 3
  return truth + error, truth


def test_lve_is_mean_over_frames_of_max_squared_lip_error():
  pred, truth = _vertex_case()
  assert metrics.lve(pred, truth, lip_vertices=np.array([0, 2])) == pytest.approx((4 + 3) / 2)
  assert metrics.lve(pred, truth, lip_vertices=np.array([1])) == pytest.approx((100 + 0) / 2)


def test_mve_is_mean_euclidean_distance():
  pred, truth = _vertex_case()
  assert metrics.mve(pred, truth) == pytest.approx(((1 + 10 + 2) / 3 + math.sqrt(3) / 3) / 2)
  assert metrics.mve(truth, truth) == 0.0


def test_fdd_hand_computed():
  template = np.zeros((3, 3))
  truth = np.zeros((2, 3, 3))
  truth[:, 0, 0] = [1, 3]  # |m|^2 = 1, 9 -> std 4
  truth[:, 1, 1] = [0, 2]  # |m|^2 = 0, 4 -> std 2
  truth[:, 2, 2] = [5, -7]  # not upper face
  pred = np.zeros((2, 3, 3))
  pred[:, 0, 0] = 1  # constant -> std 0
  pred[:, 1, 1] = [0, math.sqrt(2)]  # |m|^2 = 0, 2 -> std 1
  upper = np.array([0, 1])
  assert metrics.fdd(pred, truth, template, upper) == pytest.approx((4 + 2) / 2 - (0 + 1) / 2)
  assert metrics.fdd(truth, pred, template, upper) == pytest.approx(-2.5)  # signed: truth - pred
  shift = np.random.default_rng(0).normal(size=(3, 3))  # displacements are taken from the template
  assert metrics.fdd(pred + shift, truth + shift, template + shift, upper) == pytest.approx(2.5)


def test_vertex_metric_errors_name_shapes():
  pred, truth = _vertex_case()
  with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(1, 3, 3\)"):
    metrics.lve(pred, truth[:1], lip_vertices=[0])
  with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(2, 2, 3\)"):
    metrics.mve(pred, truth[:, :2])
  with pytest.raises(ValueError, match=r"template must be \[V, 3\] = \(3, 3\), got \(4, 3\)"):
    metrics.fdd(pred, truth, np.zeros((4, 3)), [0])
  with pytest.raises(ValueError, match="outside a mesh of 3 vertices"):
    metrics.lve(pred, truth, lip_vertices=[0, 3])


def test_parameter_errors():
  truth = np.zeros((2, MOTION_SPEC.dim))
  pred = MOTION_SPEC.join(
    {
      "jaw": [[0.1, -0.2, 0.3], [0, 0, 0]],
      "expression": np.pad(np.ones((2, 5)), ((0, 0), (0, 45))),
      "neck": np.full((2, 3), 9.0),
    },
    2,
  )
  assert metrics.jaw_error(pred, truth) == pytest.approx(0.6 / 6)
  assert metrics.expression_error(pred, truth) == pytest.approx(10 / 100)
  assert metrics.lip_error(pred, truth) == pytest.approx(1.0)
  assert metrics.expression_error(pred, truth, components=[5, 6]) == 0.0
  assert metrics.LIP_COMPONENTS == (0, 1, 2, 3, 4)
  with pytest.raises(ValueError, match=r"\(2, 61\).*\(3, 61\)"):
    metrics.jaw_error(pred, np.zeros((3, 61)))
  with pytest.raises(ValueError, match="60 dims per frame"):
    metrics.jaw_error(pred[:, :60], truth[:, :60])


def test_correlation():
  a, b = np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])
  assert metrics.correlation(a, b) == pytest.approx(4 / 5)  # sum da*db = 4, sum da^2 = sum db^2 = 5
  assert metrics.correlation(a, 2 * a + 7) == pytest.approx(1.0)
  assert metrics.correlation(a, -a) == pytest.approx(-1.0)
  per_channel = metrics.correlation(np.stack([a, a, a], 1), np.stack([b, -a, np.full(4, 0.1)], 1))
  np.testing.assert_allclose(per_channel, [0.8, -1.0, 0.0])
  # Constant inputs give 0, also when rounding in the mean leaves a residue (0.1 is inexact).
  constant = np.full(7, 0.1)
  assert np.any(constant - constant.mean() != 0)
  assert metrics.correlation(constant, np.arange(7.0)) == 0.0
  assert metrics.correlation(np.zeros(5), np.zeros(5)) == 0.0
  with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
    metrics.correlation(a, b[:3])


def test_frame_rms_windows_are_centred_on_frame_times():
  # 100 Hz at 25 fps: a 4-sample window centred on sample 4 j; frame 0 half outside the clip.
  wav = np.ones(12)
  np.testing.assert_allclose(loudness.frame_rms(wav, 100), [math.sqrt(0.5), 1.0, 1.0])
  wav = np.zeros(12)
  wav[4:6] = 2.0  # in frame 1's window [2, 6) only
  peak = math.sqrt((4 + 4) / 4)
  np.testing.assert_allclose(loudness.frame_rms(wav, 100, num_frames=4), [0.0, peak, 0.0, 0.0])
  log_energy = metrics.log_frame_energy(wav, 100, num_frames=4)
  np.testing.assert_allclose(log_energy, np.log([1e-3, 1, 1e-3, 1e-3]) + math.log(peak))  # floor: -60 dB


def _smooth_signal(length, seed=0):
  rng = np.random.default_rng(seed)
  return np.convolve(rng.normal(size=length + 8), np.ones(5) / 5, mode="valid")[:length]


@pytest.mark.parametrize("lag", [3, -2, 0])
def test_lip_sync_finds_known_offset(lag):
  frames, pad = 80, 5
  e = _smooth_signal(frames + 2 * pad)
  energy = e[pad : pad + frames]
  mouth = e[pad - lag : pad - lag + frames]  # mouth[t] = energy[t - lag]: the motion lags by `lag`
  r, offset = metrics.lip_sync(mouth, energy, max_offset=5)
  assert offset == lag and r == pytest.approx(1.0)


def test_lip_sync_from_wav():
  sample_rate, fps, frames, lag = 24000, 25, 100, 2
  envelope = np.exp(1.5 * _smooth_signal(frames + lag, seed=1))  # amplitude per frame
  period = sample_rate // fps
  samples = np.repeat(envelope[lag:], period)  # frame j covers [j - 1/2, j + 1/2) periods
  samples = np.roll(samples, -period // 2)
  wav = 0.1 * samples * np.random.default_rng(2).standard_normal(samples.size)
  mouth = np.log(envelope[:frames])  # mouth[t] = log energy[t - 2]
  r, offset = metrics.lip_sync(mouth, wav=wav, sample_rate=sample_rate, fps=fps)
  assert offset == lag and r > 0.9
  r, offset = metrics.lip_sync(-mouth, wav=wav, sample_rate=sample_rate, fps=fps)
  assert r < 0.5


def test_lip_sync_degenerate_and_bad_input():
  assert metrics.lip_sync(np.zeros(20), np.arange(20.0)) == (0.0, 0)
  with pytest.raises(ValueError, match="exactly one"):
    metrics.lip_sync(np.zeros(20))
  with pytest.raises(ValueError, match=r"audio_energy \(19,\) and mouth_opening \(20,\)"):
    metrics.lip_sync(np.zeros(20), np.zeros(19))
  with pytest.raises(ValueError, match="T >= max_offset \\+ 2"):
    metrics.lip_sync(np.zeros(6), np.zeros(6), max_offset=5)


def test_mel_l1_trims_to_shorter():
  assert metrics.mel_l1(np.zeros((10, 4)), np.ones((8, 4))) == pytest.approx(1.0)
  a = np.array([[0.0, 1.0], [2.0, 3.0]])
  assert metrics.mel_l1(a, a + [[0.5, -0.5], [1.0, 0.0]]) == pytest.approx(0.5)
  with pytest.raises(ValueError, match=r"\(10, 4\) and \(10, 5\)"):
    metrics.mel_l1(np.zeros((10, 4)), np.zeros((10, 5)))


def test_mel_cepstral_distortion():
  n_mels, frames = 100, 7
  a = np.random.default_rng(0).normal(-5, 2, (frames, n_mels))
  assert metrics.mel_cepstral_distortion(a, a + 3.0) == pytest.approx(0.0, abs=1e-9)  # level is c0 only
  eps, bins = 0.01, np.arange(n_mels)
  # One cosine of the orthonormal DCT-II basis, k = 1: c_1 = eps * sqrt(N / 2), so
  # MCD = 10 / ln 10 * sqrt(2 * eps^2 * N / 2) = 10 / ln 10 * eps * sqrt(N).
  b = a + eps * np.cos(np.pi * 1 * (bins + 0.5) / n_mels)
  expected = 10 / math.log(10) * eps * math.sqrt(n_mels)
  assert metrics.mel_cepstral_distortion(a, b) == pytest.approx(expected)
  assert metrics.mel_cepstral_distortion(a, b[:4]) == pytest.approx(expected)  # trims to 4 frames
  high = a + eps * np.cos(np.pi * 20 * (bins + 0.5) / n_mels)
  assert metrics.mel_cepstral_distortion(a, high) == pytest.approx(0.0, abs=1e-9)  # beyond c_12
  assert metrics.mel_cepstral_distortion(a, high, num_coefficients=21) == pytest.approx(expected)
  with pytest.raises(ValueError, match=r"\(7, 100\) and \(7, 80\)"):
    metrics.mel_cepstral_distortion(a, a[:, :80])
