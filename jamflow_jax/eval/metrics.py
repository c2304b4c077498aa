"""Objective metrics for generated facial motion and speech (numpy, one utterance per call).

Vertex metrics take vertex sequences [T, V, 3] (prediction and truth of the same length) and
vertex index arrays for the regions (lips, upper face), so they work for any mesh; their units are
the vertices' units (FLAME: metres; papers often report LVE in mm^2 or in units of 1e-5 m^2).
Parameter metrics read motion [T, D] in the `MotionSpec` layout. The audio metrics compare log mels
[T, n_mels] of `jamflow_jax.audio.mel`. The lip-sync score is a plain correlation between mouth
opening and speech energy over a small range of time offsets, with no pretrained network.

Pooling across a test set follows the reference code: LVE and MVE average over all frames (so
concatenate utterances along T, or weight per-utterance values by T); FDD averages per-utterance
values.
"""

import math

import numpy as np
import scipy.fft

from jamflow_jax.audio.loudness import frame_rms
from jamflow_jax.motion.spec import EXPRESSION_COMPONENTS, MOTION_SPEC, MotionSpec

# Expression components that shape the lips (indices 0-4 of the built-in corpus's layout).
LIP_COMPONENTS = tuple(
  EXPRESSION_COMPONENTS[name] for name in ("lip_closure", "lip_rounding", "lip_spreading", "labiodental", "tongue_tip")
)


def _pair(pred, truth, *, ndim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Both as float64 arrays of one shape with `ndim` dimensions, or a ValueError naming the shapes."""
  pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
  if pred.shape != truth.shape or pred.ndim != ndim:
    raise ValueError(
      f"{what}: prediction and truth must have one shape with {ndim} dims; "
      f"got prediction {pred.shape} and truth {truth.shape}"
    )
  if pred.shape[0] == 0:
    raise ValueError(f"{what}: no frames (shape {pred.shape})")
  return pred, truth


def _vertex_pair(pred, truth, what: str) -> tuple[np.ndarray, np.ndarray]:
  pred, truth = _pair(pred, truth, ndim=3, what=what)
  if pred.shape[-1] != 3:
    raise ValueError(f"{what}: vertices must be [T, V, 3], got {pred.shape}")
  return pred, truth


def _region(indices, num_vertices: int, what: str) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(
      f"{what}: vertex indices must be a non-empty integer array [K], got {indices.dtype} {indices.shape}"
    )
  if indices.min() < -num_vertices or indices.max() >= num_vertices:
    raise ValueError(
      f"{what}: vertex indices {indices.min()}..{indices.max()} outside a mesh of {num_vertices} vertices"
    )
  return indices


def lve(pred, truth, lip_vertices) -> float:
  """Lip vertex error: mean over frames of the largest squared L2 lip-vertex error.

  LVE = 1/T sum_t max_{v in lips} ||pred[t, v] - truth[t, v]||^2, vertices [T, V, 3],
  lip_vertices int [K]. Squared distance, max per frame, mean over frames, as in CodeTalker
  (Xing et al., CVPR 2023; github.com/Doubiiu/CodeTalker main/cal_metric.py), following the lip
  error of MeshTalk (Richard et al., ICCV 2021) and FaceFormer (Fan et al., CVPR 2022) on VOCASET
  and BIWI; FaceDiffuser's evaluation reuses the same code.
  """
  pred, truth = _vertex_pair(pred, truth, "lve")
  lips = _region(lip_vertices, pred.shape[1], "lve")
  squared = np.sum((pred[:, lips] - truth[:, lips]) ** 2, axis=-1)  # [T, K]
  return float(np.mean(np.max(squared, axis=1)))


def mve(pred, truth) -> float:
  """Mean vertex error: the L2 distance (not squared) averaged over all vertices and frames.

  MVE = 1/(T V) sum_t sum_v ||pred[t, v] - truth[t, v]||, vertices [T, V, 3], as in FaceDiffuser
  (Stan et al., MIG 2023; github.com/uuembodiedsocialai/FaceDiffuser
  evaluation/compute_objective_metrics.py: `np.linalg.norm(gt - pred, axis=2)` then the mean).
  Some papers report a squared variant; this is the plain Euclidean one.
  """
  pred, truth = _vertex_pair(pred, truth, "mve")
  return float(np.mean(np.linalg.norm(pred - truth, axis=-1)))


def _upper_dynamics(vertices: np.ndarray, template: np.ndarray, upper: np.ndarray) -> float:
  squared = np.sum((vertices[:, upper] - template[upper]) ** 2, axis=-1)  # [T, K]
  return float(np.mean(np.std(squared, axis=0)))


def fdd(pred, truth, template, upper_face_vertices) -> float:
  """Upper-face dynamics deviation (CodeTalker): how much less the upper face moves than the truth.

  With the displacement m[t, v] = x[t, v] - template[v] and d[t, v] = ||m[t, v]||^2,
  dyn(x) = 1/K sum_{v in upper} std_t(d[t, v]) (population std over the T frames), and
  FDD = dyn(truth) - dyn(pred), signed: positive when the prediction is too still. This is the code
  of CodeTalker (Xing et al., CVPR 2023; github.com/Doubiiu/CodeTalker main/cal_metric.py), which
  takes the std of the *squared* displacement norm. vertices [T, V, 3], template [V, 3] (the
  neutral face of the speaker), upper_face_vertices int [K]. Units: squared vertex units.
  """
  pred, truth = _vertex_pair(pred, truth, "fdd")
  template = np.asarray(template, np.float64)
  if template.shape != pred.shape[1:]:
    raise ValueError(f"fdd: template must be [V, 3] = {pred.shape[1:]}, got {template.shape}")
  upper = _region(upper_face_vertices, pred.shape[1], "fdd")
  return _upper_dynamics(truth, template, upper) - _upper_dynamics(pred, template, upper)


def _motion_pair(pred, truth, spec: MotionSpec, what: str) -> tuple[dict, dict]:
  pred, truth = _pair(pred, truth, ndim=2, what=what)
  return spec.split(pred), spec.split(truth)


def jaw_error(pred, truth, spec: MotionSpec = MOTION_SPEC) -> float:
  """Mean absolute error of the jaw axis-angle (radians): 1/(3T) sum_t sum_i |pred - truth|.

  motion [T, D] in the `spec` layout. A plain L1 in the parameter space of FLAME (Li et al.,
  "Learning a model of facial shape and expression from 4D scans", SIGGRAPH Asia 2017); no paper's
  protocol is copied, so compare within this project. For small angles it is close to the angle
  between the two jaw rotations.
  """
  p, t = _motion_pair(pred, truth, spec, "jaw_error")
  return float(np.mean(np.abs(p["jaw"] - t["jaw"])))


def expression_error(pred, truth, components=None, spec: MotionSpec = MOTION_SPEC) -> float:
  """Mean absolute error of FLAME expression coefficients: mean over frames and components.

  motion [T, D]; components: indices into the expression vector (default all). A plain L1 over
  FLAME expression coefficients (Li et al., SIGGRAPH Asia 2017), compared within this project;
  vertex errors weigh components by their geometric effect, this weighs them equally.
  """
  p, t = _motion_pair(pred, truth, spec, "expression_error")
  index = slice(None) if components is None else np.asarray(components)
  return float(np.mean(np.abs(p["expression"][:, index] - t["expression"][:, index])))


def lip_error(pred, truth, spec: MotionSpec = MOTION_SPEC) -> float:
  """`expression_error` over the lip components `LIP_COMPONENTS` (0-4: closure, rounding,
  spreading, labiodental, tongue tip)."""
  return expression_error(pred, truth, LIP_COMPONENTS, spec)


def correlation(a, b):
  """Pearson correlation along axis 0: [T] -> float, [T, C] -> [C] (one per channel).

  r = sum_t (a_t - mean a)(b_t - mean b) / sqrt(sum_t (a_t - mean a)^2 sum_t (b_t - mean b)^2)
  (Pearson 1895). A constant input has no defined correlation (0/0); it gives 0 here, "no linear
  relation", so averages over channels or clips stay finite. Constancy is judged relative to the
  values' magnitude, so rounding in the mean does not make a constant channel look varying.
  """
  a, b = _pair(a, b, ndim=np.ndim(a), what="correlation")
  if a.ndim not in (1, 2):
    raise ValueError(f"correlation takes [T] or [T, C], got shape {a.shape}")
  da, db = a - a.mean(axis=0), b - b.mean(axis=0)
  ssa, ssb = np.sum(da * da, axis=0), np.sum(db * db, axis=0)
  # float64 mean subtraction leaves at most ~1e-16 relative residue; 1e-12 is well clear of it.
  tiny_a = (1e-12 * np.max(np.abs(a), axis=0)) ** 2 * a.shape[0]
  tiny_b = (1e-12 * np.max(np.abs(b), axis=0)) ** 2 * b.shape[0]
  valid = (ssa > tiny_a) & (ssb > tiny_b)
  r = np.where(valid, np.sum(da * db, axis=0) / np.sqrt(np.where(valid, ssa * ssb, 1.0)), 0.0)
  r = np.clip(r, -1.0, 1.0)
  return float(r) if r.ndim == 0 else r


def log_frame_energy(
  wav, sample_rate: int, *, fps: float = 25.0, num_frames: int | None = None, floor_db: float = -60.0
) -> np.ndarray:
  """log RMS per motion frame ([N] -> [T]), floored `floor_db` below the clip's loudest frame.

  The floor keeps digital silence finite and stops the noise level in pauses from deciding the
  correlation; relative to the loudest frame, it does not depend on the recording level.
  """
  rms = frame_rms(wav, sample_rate, fps=fps, num_frames=num_frames)
  floor = max(float(rms.max(initial=0.0)) * 10.0 ** (floor_db / 20.0), 1e-12)
  return np.log(np.maximum(rms, floor))


def lip_sync(
  mouth_opening, audio_energy=None, *, wav=None, sample_rate: int = 24000, fps: float = 25.0, max_offset: int = 5
) -> tuple[float, int]:
  """Best Pearson correlation of mouth opening and speech energy over time offsets.

  mouth_opening [T] (e.g. the jaw axis-angle x, or the lip gap of the mesh); the energy is either
  `audio_energy` [T] (used as given) or computed from `wav` [N] at `sample_rate` as
  `log_frame_energy` on the same 25-fps clock. Log rather than linear energy: loudness is roughly
  logarithmic, and in the linear domain a few loud vowels dominate the correlation while the
  speech/pause contrast -- the mouth opening as speech starts and closing as it stops, the main
  visible sync cue -- is squashed near zero.

  For every offset d in [-max_offset, max_offset] the correlation is taken over the overlap of
  mouth[t + d] and energy[t]: a positive d means the motion lags the audio by d frames (the mouth
  moves d / fps seconds after the sound), negative means it leads. Returns (r, d) of the best r;
  ties go to the smallest |d|. Audio-visual synchrony as linear correlation follows Hershey and
  Movellan, "Audio Vision" (NIPS 1999) and Slaney and Covell, "FaceSync" (NIPS 2000); unlike
  SyncNet's LSE-C/D (Prajwal et al., ACM MM 2020) it needs no pretrained network and reads the
  motion directly, so it is comparable within this project only.
  """
  mouth = np.asarray(mouth_opening, np.float64)
  if mouth.ndim != 1:
    raise ValueError(f"lip_sync: mouth_opening must be [T], got shape {mouth.shape}")
  if (audio_energy is None) == (wav is None):
    raise ValueError("lip_sync: give exactly one of audio_energy and wav")
  if wav is not None:
    energy = log_frame_energy(wav, sample_rate, fps=fps, num_frames=mouth.size)
  else:
    energy = np.asarray(audio_energy, np.float64)
    if energy.shape != mouth.shape:
      raise ValueError(
        f"lip_sync: audio_energy must match mouth_opening; got audio_energy {energy.shape} "
        f"and mouth_opening {mouth.shape}"
      )
  if max_offset < 0 or mouth.size - max_offset < 2:
    raise ValueError(f"lip_sync: max_offset {max_offset} needs T >= max_offset + 2 frames, got T = {mouth.size}")
  best = (-math.inf, 0)
  for d in sorted(range(-max_offset, max_offset + 1), key=abs):  # smallest |d| first wins ties
    r = correlation(mouth[d:], energy[: mouth.size - d]) if d >= 0 else correlation(mouth[:d], energy[-d:])
    if r > best[0]:
      best = (r, d)
  return best


def _mel_pair(mel_a, mel_b, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Both [T, n_mels] with the same n_mels, trimmed to the shorter T."""
  a, b = np.asarray(mel_a, np.float64), np.asarray(mel_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"{what}: mels must be [T, n_mels] with one n_mels; got {a.shape} and {b.shape}")
  frames = min(a.shape[0], b.shape[0])
  if frames == 0:
    raise ValueError(f"{what}: no frames to compare (shapes {a.shape} and {b.shape})")
  return a[:frames], b[:frames]


def mel_l1(mel_a, mel_b) -> float:
  """Mean absolute difference of two log mels [T, n_mels] (natural log), over the shorter T.

  L1 = 1/(T M) sum_t sum_m |a[t, m] - b[t, m]|: the mel-spectrogram L1 that HiFi-GAN (Kong et
  al., NeurIPS 2020) trains with and reports as its validation error.
  """
  a, b = _mel_pair(mel_a, mel_b, "mel_l1")
  return float(np.mean(np.abs(a - b)))


def mel_cepstral_distortion(mel_a, mel_b, num_coefficients: int = 13) -> float:
  """Mel-cepstral distortion (dB) between two log mels [T, n_mels] (natural log of magnitude).

  Cepstra c = DCT-II (orthonormal) of each frame's log mel; coefficients c_1 .. c_{K-1} with
  K = num_coefficients (c_0, the level, is left out);
  MCD = 1/T sum_t (10 / ln 10) sqrt(2 sum_{k=1}^{K-1} (c_a[t, k] - c_b[t, k])^2), over the shorter T,
  the constant of Kubichek, "Mel-cepstral distance measure for objective speech quality
  assessment" (1993). K = 13 is the usual MFCC order.

  These are mel-frequency cepstra of the 100-band log mel, not the all-pass-warped mel-cepstra of
  SPTK / WORLD analysis (`mcep`) that published MCD numbers use, and the orthonormal DCT scales
  them differently; values are comparable only within this project. Frames are paired one to one
  (no dynamic time warping), which suits outputs generated at the reference's length.
  """
  a, b = _mel_pair(mel_a, mel_b, "mel_cepstral_distortion")
  if not 2 <= num_coefficients <= a.shape[1]:
    raise ValueError(f"mel_cepstral_distortion: num_coefficients must be in 2..{a.shape[1]}, got {num_coefficients}")
  diff = scipy.fft.dct(a - b, type=2, norm="ortho", axis=-1)[:, 1:num_coefficients]  # the DCT is linear
  return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(diff * diff, axis=-1))))
