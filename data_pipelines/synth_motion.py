"""FLAME motion from a phoneme timeline and its audio: the known "truth" of the built-in corpus.

`synth_motion(phonemes, wav, seed=...)` returns [T_m, 61] float32 at 25 fps in the MOTION_SPEC layout
(`expression[50] | jaw[3] | neck[3] | global_rot[3] | eyelids[2]`, axis-angle radians), with
T_m = motion_frames_for(1 + N // 256) for N samples of 24 kHz audio, i.e. exactly the frames that
cover the audio's log-mel frames. It is pure numpy and a deterministic function of (phonemes,
audio, seed). Motion frame j shows time j / 25 s. Everything not listed below stays at rest (0).

Mouth (jaw[0] and the expression components of EXPRESSION_COMPONENTS):
  1. Viseme table. Each eSpeak phoneme mnemonic (stress marks removed) maps to targets for six
     channels: jaw opening (rotation about x, 0 closed .. 0.25 rad for open vowels), lip_closure,
     lip_rounding, lip_spreading, labiodental, tongue_tip (0 .. 3 units). Bilabials p b m close the
     lips (closure 3, jaw 0); f v tuck the lip (labiodental 3); T D show the tongue (tongue_tip 3);
     w and u: round, i: and j spread; open vowels (a A: aa V 0 ...) open the jaw most, close vowels
     (i: u: I U) least; pauses (`_`, `_:`, ...) are the rest pose. Diphthongs (aI aU eI oU OI e@ i@
     ...) split their segment evenly between their parts. A mnemonic not in the table falls back by
     its first character: `_` pause; a A V 0 open vowel; e E 3 @ mid vowel; i I y close spread vowel;
     u U o O rounded vowel; p b m bilabial; f v labiodental; T D dental; S Z postalveolar; w; j; r;
     k g N x velar; h ? glottal; anything else (t d n l s z, digits, symbols, empty) alveolar.
  2. Coarticulation by dominance functions (Cohen & Massaro). Phoneme i spans [start_i, start_i+1)
     (the last one runs to the end of the audio; the times before the first and after the end are
     pauses). Its dominance over channel c at time t is `strength_i,c * exp(-dist(t, span_i) / 35 ms)`;
     a channel a phoneme leaves free (lip shape for t k h ..., everything for h) has 1/10 of the
     strength, so neighbouring vowels carry through it (anticipatory rounding). Each channel is the
     dominance-weighted mean of the targets, evaluated every 5 ms, then smoothed by a Gaussian of
     sigma 15 ms.
  3. Loudness L: the audio's RMS in 25 ms windows, in dB relative to the utterance's 95th
     percentile (at least -70 dBFS), mapped from [-30 dB, 0 dB] to [0, 1], Gaussian-smoothed
     (sigma 20 ms). The jaw opening becomes `jaw * (0.3 + 0.7 L) + 0.05 L`: louder speech opens the
     mouth wider, and the jaw follows the speech energy (the correlation the corpus tests check);
     at most 0.30 rad.
Head (global_rot = (nod about x, yaw about y, roll about z), radians, clipped to +-0.15):
  nod = 0.05 * slow loudness (sigma 150 ms) + 0.03 * loudness-weighted Gaussian pulses (sigma
  120 ms) at the centres of primary-stressed vowels + drift; yaw = drift; roll = drift + 0.015 * slow
  loudness. Drift per axis is a sum of three sinusoids of 0.05 .. 0.4 Hz with seeded amplitudes
  (total at most 0.06, 0.06 and 0.025 rad) and phases. neck = 0.3 * global_rot.
Brows (brow_raise): 1.2 * loudness-weighted Gaussian pulses (sigma 90 ms) at primary-stressed vowels
  + 0.4 * slow loudness, clipped to [0, 3].
Blinks (eyelids, both eyes, 0 open .. 1 closed): the first at a seeded time in [0.2, 1.5] s, then
  every 2 .. 6 s (seeded); each lasts 150 .. 250 ms (seeded), closing in its first 40 % and opening
  in the rest with raised-cosine flanks, evaluated at the frame times.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipelines.espeak import Phoneme
from jamflow_jax.audio import mel as mel_lib
from jamflow_jax.motion import spec as spec_lib

CHANNELS = ("jaw", "lip_closure", "lip_rounding", "lip_spreading", "labiodental", "tongue_tip")
GRID_STEP = 0.005  # s, the rate at which targets are blended before sampling at 25 fps
DOMINANCE_TAU = 0.035  # s
FREE_STRENGTH = 0.1  # relative dominance of a channel a phoneme leaves free
MOUTH_SMOOTH = 0.015  # s, sigma of the Gaussian after blending
LOUD_FAST, LOUD_SLOW = 0.020, 0.150  # s, sigmas of the loudness envelopes
LOUD_WINDOW = 0.025  # s, RMS window
LOUD_RANGE_DB = 30.0
SILENCE_DBFS = -70.0  # the loudness reference never drops below this
JAW_LOUDNESS = 0.7  # share of the viseme jaw opening that scales with loudness
JAW_LOUDNESS_ADD = 0.05  # rad of extra opening at full loudness
MAX_HEAD = 0.15  # rad
NECK_FRACTION = 0.3


@dataclasses.dataclass(frozen=True)
class Viseme:
  """Targets [6] and dominance strengths [6] over CHANNELS."""

  target: tuple[float, ...]
  strength: tuple[float, ...]


def _viseme(
  jaw: float,
  *,
  closure: float = 0.0,
  rounding: float = 0.0,
  spreading: float = 0.0,
  labiodental: float = 0.0,
  tongue_tip: float = 0.0,
  strength: float = 1.0,
  free: Sequence[str] = (),
) -> Viseme:
  target = (jaw, closure, rounding, spreading, labiodental, tongue_tip)
  return Viseme(target, tuple(strength * (FREE_STRENGTH if c in free else 1.0) for c in CHANNELS))


_LIPS_FREE = ("lip_rounding", "lip_spreading")
_CLASSES = {
  "pause": _viseme(0.0, strength=1.2),
  "open": _viseme(0.24, spreading=0.5),
  "mid": _viseme(0.13),
  "close_spread": _viseme(0.06, spreading=2.0),
  "rounded": _viseme(0.12, rounding=2.2),
  "bilabial": _viseme(0.0, closure=3.0, strength=2.5, free=_LIPS_FREE),
  "labiodental": _viseme(0.03, labiodental=3.0, strength=2.0, free=_LIPS_FREE),
  "dental": _viseme(0.05, tongue_tip=3.0, strength=2.0, free=_LIPS_FREE),
  "postalveolar": _viseme(0.05, rounding=1.5, strength=1.2, free=("lip_spreading",)),
  "w": _viseme(0.03, rounding=3.0, strength=1.8),
  "j": _viseme(0.04, spreading=1.8),
  "r": _viseme(0.06, rounding=1.2),
  "velar": _viseme(0.07, strength=0.6, free=_LIPS_FREE),
  "glottal": _viseme(0.10, strength=0.3, free=CHANNELS),
  "alveolar": _viseme(0.04, tongue_tip=0.3, strength=0.8, free=_LIPS_FREE),
}

# English eSpeak mnemonics (en, en-us, en-gb variants) with their own targets.
VISEMES: dict[str, Viseme] = {
  **{p: _CLASSES["pause"] for p in ("_", "_:", "_!", "_|", "_^_", "_#", "||", "|")},
  **{p: _CLASSES["bilabial"] for p in ("p", "b", "m")},
  **{p: _CLASSES["labiodental"] for p in ("f", "v")},
  **{p: _CLASSES["dental"] for p in ("T", "D")},
  **{p: _CLASSES["postalveolar"] for p in ("S", "Z", "tS", "dZ")},
  **{p: _CLASSES["velar"] for p in ("k", "g", "N", "x")},
  **{p: _CLASSES["glottal"] for p in ("h", "?")},
  **{p: _CLASSES["alveolar"] for p in ("t", "d", "n", "s", "z", "t#", "d#", "n-", "z#", "s#")},
  "l": _viseme(0.06, tongue_tip=0.8, strength=0.8, free=_LIPS_FREE),
  "l/": _viseme(0.06, tongue_tip=0.8, strength=0.8, free=_LIPS_FREE),
  "w": _CLASSES["w"],
  "j": _CLASSES["j"],
  "r": _CLASSES["r"],
  "r-": _CLASSES["r"],
  # vowels: open
  "a": _viseme(0.24, spreading=0.6),
  "a#": _viseme(0.22, spreading=0.4),
  "aa": _viseme(0.24, spreading=0.4),
  "a2": _viseme(0.20, spreading=0.4),
  "A:": _viseme(0.25),
  "A": _viseme(0.24),
  "V": _viseme(0.20),
  "0": _viseme(0.21, rounding=0.8),
  # vowels: mid
  "E": _viseme(0.16, spreading=1.0),
  "e": _viseme(0.15, spreading=1.2),
  "3": _viseme(0.12, rounding=0.6),
  "3:": _viseme(0.12, rounding=0.8),
  "@": _viseme(0.11),
  "@2": _viseme(0.10),
  "@5": _viseme(0.10),
  "@L": _viseme(0.10, tongue_tip=0.6),
  "O:": _viseme(0.16, rounding=2.0),
  "O": _viseme(0.17, rounding=1.8),
  "o": _viseme(0.13, rounding=2.0),
  # vowels: close
  "i:": _viseme(0.05, spreading=2.5),
  "i": _viseme(0.06, spreading=2.0),
  "I": _viseme(0.07, spreading=1.5),
  "I#": _viseme(0.07, spreading=1.2),
  "I2": _viseme(0.07, spreading=1.2),
  "y": _viseme(0.06, rounding=2.0),
  "u:": _viseme(0.05, rounding=2.8),
  "U": _viseme(0.07, rounding=1.8),
  "u": _viseme(0.06, rounding=2.4),
}

# Diphthongs and r-coloured vowels: their segment is split evenly between these parts.
DIPHTHONGS: dict[str, tuple[str, ...]] = {
  "aI": ("a", "I"),
  "aI2": ("a", "I"),
  "aU": ("a", "U"),
  "eI": ("e", "I"),
  "oU": ("o", "U"),
  "OI": ("O:", "I"),
  "e@": ("e", "@"),
  "i@": ("i", "@"),
  "i@3": ("i", "@"),
  "U@": ("U", "@"),
  "u@": ("u", "@"),
  "aI@": ("a", "I", "@"),
  "aU@": ("a", "U", "@"),
  "aI3": ("a", "I", "3"),
  "A@": ("A:", "@"),
  "o@": ("O:", "@"),
  "O@": ("O:", "@"),
  "I@": ("I", "@"),
  "eI@": ("e", "I", "@"),
}

_FALLBACK = (
  ("_", "pause"),
  ("aAV0", "open"),
  ("eE3@", "mid"),
  ("iIy", "close_spread"),
  ("uUoO", "rounded"),
  ("pbm", "bilabial"),
  ("fv", "labiodental"),
  ("TD", "dental"),
  ("SZ", "postalveolar"),
  ("w", "w"),
  ("j", "j"),
  ("r", "r"),
  ("kgNx", "velar"),
  ("h?", "glottal"),
)
_VOWEL_START = "aAV0eE3@iIyuUoO"


def visemes_for(name: str) -> tuple[Viseme, ...]:
  """eSpeak mnemonic (no stress marks) -> its visemes in order (one, or a diphthong's parts)."""
  if name in DIPHTHONGS:
    return tuple(VISEMES[part] for part in DIPHTHONGS[name])
  if name in VISEMES:
    return (VISEMES[name],)
  for chars, cls in _FALLBACK:
    if name[:1] and name[0] in chars:
      return (_CLASSES[cls],)
  return (_CLASSES["alveolar"],)


def is_vowel(name: str) -> bool:
  return name[:1] != "" and name[0] in _VOWEL_START


def _gaussian_smooth(x: np.ndarray, sigma_steps: float) -> np.ndarray:
  """[G, ...] smoothed along axis 0 by a normalised Gaussian, edges extended (no fade to 0)."""
  radius = max(1, int(np.ceil(3 * sigma_steps)))
  kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_steps) ** 2)
  kernel /= kernel.sum()
  padded = np.pad(x, [(radius, radius)] + [(0, 0)] * (x.ndim - 1), mode="edge")
  flat = padded.reshape(padded.shape[0], -1)
  out = np.stack([np.convolve(flat[:, k], kernel, mode="valid") for k in range(flat.shape[1])], axis=1)
  return out.reshape(x.shape)


def loudness(wav: np.ndarray, times: np.ndarray, sample_rate: int) -> np.ndarray:
  """wav [N], times [G] s -> [G] in [0, 1]: RMS dB in a 25 ms window, 0 dB at the 95th percentile (or at
  -70 dBFS for near-silent audio, so silence stays 0), LOUD_RANGE_DB below it at 0."""
  power = np.concatenate([[0.0], np.cumsum(np.square(wav.astype(np.float64)))])
  half = round(LOUD_WINDOW * sample_rate / 2)
  centre = np.round(times * sample_rate).astype(np.int64)
  lo, hi = np.clip(centre - half, 0, wav.shape[0]), np.clip(centre + half, 0, wav.shape[0])
  rms = np.sqrt((power[hi] - power[lo]) / np.maximum(hi - lo, 1))
  db = 20 * np.log10(rms + 1e-5)
  reference = max(np.percentile(db, 95), SILENCE_DBFS)
  return np.clip(1.0 + (db - reference) / LOUD_RANGE_DB, 0.0, 1.0)


def mouth_channels(phonemes: Sequence[Phoneme], duration: float, times: np.ndarray) -> np.ndarray:
  """Dominance-blended viseme targets [G, 6] over CHANNELS at `times` (before smoothing)."""
  spans: list[tuple[float, float, Viseme]] = [(-np.inf, phonemes[0].start if phonemes else np.inf, _CLASSES["pause"])]
  for i, phoneme in enumerate(phonemes):
    start = phoneme.start
    end = phonemes[i + 1].start if i + 1 < len(phonemes) else max(duration, start)
    parts = visemes_for(phoneme.name)
    edges = np.linspace(start, end, len(parts) + 1)
    spans.extend((float(a), float(b), v) for a, b, v in zip(edges[:-1], edges[1:], parts, strict=True))
  spans.append((max(duration, spans[-1][1]), np.inf, _CLASSES["pause"]))
  starts = np.array([s for s, _, _ in spans])[:, None]
  ends = np.array([e for _, e, _ in spans])[:, None]
  dist = np.maximum(0.0, np.maximum(starts - times[None], times[None] - ends))  # [S, G]
  decay = np.exp(-dist / DOMINANCE_TAU)[:, :, None]
  strength = np.array([v.strength for _, _, v in spans])[:, None, :]  # [S, 1, 6]
  target = np.array([v.target for _, _, v in spans])[:, None, :]
  dominance = strength * decay  # [S, G, 6]
  return (dominance * target).sum(0) / np.maximum(dominance.sum(0), 1e-12)


def _accents(
  phonemes: Sequence[Phoneme], duration: float, times: np.ndarray, loud: np.ndarray, sigma: float
) -> np.ndarray:
  """[G] sum of Gaussian pulses at primary-stressed vowel centres, each scaled by the loudness there."""
  out = np.zeros_like(times)
  for i, phoneme in enumerate(phonemes):
    if phoneme.stress == 2 and is_vowel(phoneme.name):
      end = phonemes[i + 1].start if i + 1 < len(phonemes) else duration
      centre = 0.5 * (phoneme.start + end)
      weight = np.interp(centre, times, loud)
      out += weight * np.exp(-0.5 * ((times - centre) / sigma) ** 2)
  return out


def _drift(rng: np.random.Generator, times: np.ndarray, total_amplitude: float) -> np.ndarray:
  """[G] sum of three slow sinusoids (0.05 .. 0.4 Hz), amplitudes summing to at most `total_amplitude`."""
  weights = rng.dirichlet(np.ones(3)) * total_amplitude * rng.uniform(0.5, 1.0)
  freqs = rng.uniform(0.05, 0.4, size=3)
  phases = rng.uniform(0, 2 * np.pi, size=3)
  return (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * times[None] + phases[:, None])).sum(0)


def blinks(rng: np.random.Generator, frame_times: np.ndarray) -> np.ndarray:
  """[T] eyelid closure in [0, 1] at `frame_times` (see the module docstring)."""
  out = np.zeros_like(frame_times)
  end = frame_times[-1] if frame_times.size else 0.0
  start = rng.uniform(0.2, 1.5)
  while start <= end:
    length = rng.uniform(0.15, 0.25)
    closing = 0.4
    u = (frame_times - start) / length
    rising = 0.5 - 0.5 * np.cos(np.pi * np.clip(u / closing, 0, 1))
    falling = 0.5 + 0.5 * np.cos(np.pi * np.clip((u - closing) / (1 - closing), 0, 1))
    pulse = np.where(u < closing, rising, falling) * ((u >= 0) & (u <= 1))
    out = np.maximum(out, pulse)
    start += length + rng.uniform(2.0, 6.0)
  return out


def synth_motion(
  phonemes: Sequence[Phoneme],
  wav: np.ndarray,
  *,
  seed: int,
  sample_rate: int = mel_lib.SAMPLE_RATE,
  spec: spec_lib.MotionSpec = spec_lib.MOTION_SPEC,
) -> np.ndarray:
  """Phonemes (in time order, start times in s) and wav [N] at 24 kHz -> motion [T_m, 61] float32.

  T_m = motion_frames_for(1 + N // 256). Deterministic in (phonemes, wav, seed).
  """
  if sample_rate != mel_lib.SAMPLE_RATE:
    raise ValueError(f"synth_motion expects {mel_lib.SAMPLE_RATE} Hz audio (the mel clock), got {sample_rate} Hz")
  wav = np.asarray(wav, np.float32)
  num_frames = spec_lib.motion_frames_for(mel_lib.num_frames(wav.shape[0]), motion_fps=spec.fps)
  frame_times = np.arange(num_frames) / spec.fps
  duration = wav.shape[0] / sample_rate
  grid = np.arange(0.0, max(duration, frame_times[-1]) + 2 * GRID_STEP, GRID_STEP)
  rng = np.random.default_rng(seed)

  loud = loudness(wav, grid, sample_rate)
  loud_fast = _gaussian_smooth(loud, LOUD_FAST / GRID_STEP)
  loud_slow = _gaussian_smooth(loud, LOUD_SLOW / GRID_STEP)
  mouth = _gaussian_smooth(mouth_channels(phonemes, duration, grid), MOUTH_SMOOTH / GRID_STEP)
  mouth[:, 0] = mouth[:, 0] * (1.0 - JAW_LOUDNESS + JAW_LOUDNESS * loud_fast) + JAW_LOUDNESS_ADD * loud_fast

  head = np.stack(
    [
      0.05 * loud_slow + 0.03 * _accents(phonemes, duration, grid, loud, 0.120) + _drift(rng, grid, 0.06),
      _drift(rng, grid, 0.06),
      _drift(rng, grid, 0.025) + 0.015 * loud_slow,
    ],
    axis=1,
  )
  head = np.clip(head, -MAX_HEAD, MAX_HEAD)
  brow = np.clip(1.2 * _accents(phonemes, duration, grid, loud, 0.090) + 0.4 * loud_slow, 0.0, 3.0)

  def at_frames(x: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(frame_times, grid, x[:, k]) for k in range(x.shape[1])], axis=1)

  mouth, head = at_frames(mouth), at_frames(head)
  expression_slice = spec.slice("expression")
  expression = np.zeros((num_frames, expression_slice.stop - expression_slice.start))
  for k, name in enumerate(CHANNELS[1:], start=1):
    expression[:, spec_lib.EXPRESSION_COMPONENTS[name]] = mouth[:, k]
  expression[:, spec_lib.EXPRESSION_COMPONENTS["brow_raise"]] = np.interp(frame_times, grid, brow)
  jaw = np.zeros((num_frames, 3))
  jaw[:, 0] = mouth[:, 0]
  lids = blinks(rng, frame_times)
  return spec.join(
    {
      "expression": expression,
      "jaw": jaw,
      "neck": NECK_FRACTION * head,
      "global_rot": head,
      "eyelids": np.stack([lids, lids], axis=1),
    },
    num_frames,
  )
