"""The built-in corpus: eSpeak NG via ctypes, the phoneme-driven FLAME motion, and the corpus build."""

import os

import numpy as np
import pytest

from data_pipelines import espeak as espeak_lib, shards, synth_corpus
from data_pipelines.espeak import Phoneme
from data_pipelines.synth_motion import synth_motion
from jamflow_jax.audio import mel as mel_lib
from jamflow_jax.motion import spec as spec_lib

EXPRESSION_COMPONENTS, MOTION_SPEC = spec_lib.EXPRESSION_COMPONENTS, spec_lib.MOTION_SPEC
motion_frames_for = spec_lib.motion_frames_for
SR = mel_lib.SAMPLE_RATE
JAW = MOTION_SPEC.slice("jaw").start
LIDS = MOTION_SPEC.slice("eyelids")
HEAD = MOTION_SPEC.slice("global_rot")
NECK = MOTION_SPEC.slice("neck")
MOUTH = [
  EXPRESSION_COMPONENTS[k] for k in ("lip_closure", "lip_rounding", "lip_spreading", "labiodental", "tongue_tip")
]


# ---------------------------------------------------------------------------------------------- eSpeak


@pytest.fixture(scope="module")
def engine():
  return espeak_lib.Espeak()


def test_phoneme_events_are_monotone_and_inside_the_audio(engine):
  s = engine.synthesize("The quick brown fox jumps over the lazy dog.", synth_corpus.SPEAKERS["espeak-00"])
  starts = np.array([p.start for p in s.phonemes])
  assert s.sample_rate == 22050 and s.audio.dtype == np.int16 and s.duration > 1.0
  assert len(s.phonemes) > 25 and len(s.words) == 9
  assert np.all(np.diff(starts) >= 0) and starts[0] >= 0 and starts[-1] <= s.duration
  assert all(0 <= w.start <= s.duration for w in s.words)
  names = {p.name for p in s.phonemes}
  assert {"k", "w", "b", "f", "D", "z"} <= names and not any(n[:1] in "',%=" for n in names)
  assert any(p.stress == 2 for p in s.phonemes)


def test_stress_marks_are_split_off():
  assert Phoneme.parse("'aU", 0.5) == Phoneme("aU", 2, 0.5)
  assert Phoneme.parse(",oU", 0.1) == Phoneme("oU", 1, 0.1)
  assert Phoneme.parse("_:", 0.0) == Phoneme("_:", 0, 0.0)


def test_speakers_sound_different(engine):
  text = "Please bring two apples from the market."
  audio = [engine.synthesize(text, voice).audio for voice in synth_corpus.SPEAKERS.values()]
  for i in range(len(audio)):
    for j in range(i + 1, len(audio)):
      assert audio[i].shape != audio[j].shape or not np.array_equal(audio[i], audio[j]), (i, j)


def test_synthesis_does_not_depend_on_what_came_before(engine):
  voice, text = synth_corpus.SPEAKERS["espeak-01"], "She sells sea shells by the sea shore."
  first = engine.synthesize(text, voice, seed=7)
  engine.synthesize("Something else, in another voice.", synth_corpus.SPEAKERS["espeak-04"], seed=1)
  again = engine.synthesize(text, voice, seed=7)
  np.testing.assert_array_equal(first.audio, again.audio)
  assert first.phonemes == again.phonemes


def test_unknown_voice_is_an_error(engine):
  with pytest.raises(espeak_lib.EspeakError, match="no voice"):
    engine.synthesize("hello", espeak_lib.Voice("xx-no-such-voice"))


# ----------------------------------------------------------------------------------------------- motion


def _speech(segments: list[tuple[str, float, float]], total: float, *, stress: int = 2):
  """[(phoneme, seconds, amplitude)] -> (phonemes, 24 kHz wav): a 120 Hz buzz with those amplitudes."""
  phonemes, t, envelope = [], 0.0, np.zeros(round(total * SR))
  for name, length, amplitude in segments:
    phonemes.append(Phoneme(name, stress if name[0] in "aAiu" else 0, t))
    envelope[round(t * SR) : round((t + length) * SR)] = amplitude
    t += length
  phonemes.append(Phoneme("_", 0, t))
  time = np.arange(envelope.shape[0]) / SR
  buzz = sum(np.sin(2 * np.pi * 120 * k * time) / k for k in range(1, 8))
  return phonemes, (envelope * buzz).astype(np.float32)


def _frame(t: float) -> int:
  return round(t * MOTION_SPEC.fps)


@pytest.mark.parametrize(
  "consonant, component",
  [("m", "lip_closure"), ("b", "lip_closure"), ("f", "labiodental"), ("T", "tongue_tip"), ("w", "lip_rounding")],
)
def test_consonant_visemes_between_open_vowels(consonant, component):
  phonemes, wav = _speech([("_", 0.1, 0.0), ("A:", 0.3, 0.3), (consonant, 0.16, 0.03), ("A:", 0.3, 0.3)], 1.4)
  motion = synth_motion(phonemes, wav, seed=0)
  vowel, middle, silence = _frame(0.24), _frame(0.48), _frame(1.3)
  index = EXPRESSION_COMPONENTS[component]
  assert motion[middle, index] > 2.0 and motion[vowel, index] < 0.5
  assert motion[vowel, JAW] > 0.15
  if component == "lip_closure":
    assert motion[middle, JAW] < 0.04  # lips meet: the jaw is (nearly) closed
  # Silence after speech returns the mouth to rest.
  assert abs(motion[silence, JAW]) < 0.01 and np.all(np.abs(motion[silence, MOUTH]) < 0.05)


def test_open_vowel_opens_the_jaw_more_than_a_close_vowel():
  jaw = {}
  for vowel in ("A:", "a", "i:", "u:"):
    phonemes, wav = _speech([("_", 0.1, 0.0), (vowel, 0.35, 0.3)], 0.8)
    motion = synth_motion(phonemes, wav, seed=0)
    jaw[vowel] = motion[_frame(0.28), JAW]
    if vowel == "i:":
      assert motion[_frame(0.28), EXPRESSION_COMPONENTS["lip_spreading"]] > 1.5
    if vowel == "u:":
      assert motion[_frame(0.28), EXPRESSION_COMPONENTS["lip_rounding"]] > 1.5
  assert min(jaw["A:"], jaw["a"]) > 0.18 and max(jaw["i:"], jaw["u:"]) < 0.13


@pytest.mark.parametrize("num_samples", [513, 600, 24000, 24001, 65535, 65536, 99999])
def test_length_is_exactly_the_motion_frames_of_the_mel(num_samples):
  wav = 0.1 * np.sin(np.arange(num_samples) * 0.05).astype(np.float32)
  phonemes = [Phoneme("h", 0, 0.0), Phoneme("@", 0, 0.3 * num_samples / SR)]
  motion = synth_motion(phonemes, wav, seed=1)
  assert motion.shape == (motion_frames_for(1 + num_samples // 256), MOTION_SPEC.dim)
  assert motion.dtype == np.float32 and np.all(np.isfinite(motion))
  assert motion.shape[0] == motion_frames_for(mel_lib.log_mel(wav).shape[0])


def test_blinks_head_and_determinism():
  phonemes, wav = _speech([("_", 0.2, 0.0)] + [("a", 0.25, 0.3), ("t", 0.1, 0.02)] * 20, 9.0)
  motion = synth_motion(phonemes, wav, seed=5)
  lids = motion[:, LIDS]
  np.testing.assert_array_equal(lids[:, 0], lids[:, 1])
  assert lids.min() >= 0.0 and lids.max() <= 1.0
  closed = lids[:, 0] > 0.5
  onsets = np.flatnonzero(closed[1:] & ~closed[:-1])
  assert 1 <= len(onsets) <= 5 and closed.mean() < 0.1  # every 2-6 s, each ~0.2 s
  assert np.abs(motion[:, HEAD]).max() <= 0.15 and np.abs(motion[:, HEAD]).max() > 0.01
  np.testing.assert_allclose(motion[:, NECK], 0.3 * motion[:, HEAD], atol=1e-6)
  assert motion[:, EXPRESSION_COMPONENTS["brow_raise"]].max() > 0.5

  np.testing.assert_array_equal(motion, synth_motion(phonemes, wav, seed=5))
  other = synth_motion(phonemes, wav, seed=6)
  assert not np.array_equal(other[:, LIDS], lids) and not np.array_equal(other[:, HEAD], motion[:, HEAD])
  np.testing.assert_array_equal(other[:, JAW], motion[:, JAW])  # the mouth depends on speech only


def test_unknown_mnemonics_fall_back_without_crashing():
  names = ["", "Q9", "\u0283", "@@@", "_?", "12", "aI2", "O2", "t2", ";"]
  phonemes = [Phoneme(n, 0, 0.05 * i) for i, n in enumerate(names)]
  wav = 0.1 * np.sin(np.arange(SR) * 0.05).astype(np.float32)
  motion = synth_motion(phonemes, wav, seed=0)
  assert np.all(np.isfinite(motion)) and motion.shape == (motion_frames_for(1 + SR // 256), MOTION_SPEC.dim)


def test_silence_is_rest():
  motion = synth_motion([], np.zeros(SR, np.float32), seed=0)
  assert np.all(motion[:, JAW] == 0) and np.all(motion[:, MOUTH] == 0)


# ----------------------------------------------------------------------------------------------- corpus

BUILD = {"num_utterances": 16, "validation_fraction": 0.25, "progress": False}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  """Two builds with seed 3 and one with seed 4."""
  root = tmp_path_factory.mktemp("synth")
  dirs = {name: str(root / name) for name in ("a", "b", "c")}
  for name, seed in (("a", 3), ("b", 3), ("c", 4)):
    synth_corpus.build_corpus(dirs[name], seed=seed, **BUILD)
  return dirs


def _files(directory: str) -> dict[str, bytes]:
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


def _records(directory: str) -> list[dict]:
  corpus = shards.Corpus(directory)
  splits = [corpus.split(name) for name in corpus.splits]
  return [split[i] for split in splits for i in range(len(split))]


def test_same_seed_gives_identical_files_and_another_seed_differs(corpora):
  a, b, c = (_files(corpora[k]) for k in "abc")
  assert a == b
  assert "corpus.json" in a and any(n.startswith("validation-") for n in a)
  assert a.keys() & c.keys() and all(a[n] != c[n] for n in a.keys() & c.keys())


def test_records_follow_the_contract_and_split_by_sentence(corpora):
  corpus = shards.Corpus(corpora["a"])
  source = corpus.metadata["source"]
  assert source["seed"] == 3 and source["espeak_version"] and len(source["sentences_sha256"]) == 64
  assert set(source["speakers"]) == set(synth_corpus.SPEAKERS) and source["num_dropped_too_long"] == 0
  texts = {}
  for split in ("train", "validation"):
    records = [corpus.split(split)[i] for i in range(len(corpus.split(split)))]
    texts[split] = {r["text"] for r in records}
    for r in records:
      assert r["speaker"] in synth_corpus.SPEAKERS and r["id"].startswith("utt-")
      assert r["motion"].shape == (motion_frames_for(r["mel"].shape[0]), MOTION_SPEC.dim)
  assert texts["train"] and texts["validation"] and not texts["train"] & texts["validation"]
  assert sum(corpus.metadata["splits"][s]["num_records"] for s in ("train", "validation")) == 16


def _energy_at_frames(mel: np.ndarray, num_frames: int) -> np.ndarray:
  """Mean mel magnitude, resampled from the mel clock to the 25 fps motion clock."""
  mel_times = np.arange(mel.shape[0]) * mel_lib.HOP_LENGTH / SR
  return np.interp(np.arange(num_frames) / MOTION_SPEC.fps, mel_times, np.exp(mel.astype(np.float32)).mean(1))


def test_jaw_opening_follows_speech_energy(corpora):
  records = _records(corpora["a"])
  matched = [np.corrcoef(r["motion"][:, JAW], _energy_at_frames(r["mel"], r["motion"].shape[0]))[0, 1] for r in records]
  # Control: jaw of one utterance against the energy of another (same lengths) is unrelated.
  shuffled = []
  for r, other in zip(records, records[1:] + records[:1], strict=True):
    n = min(r["motion"].shape[0], other["motion"].shape[0])
    energy = _energy_at_frames(other["mel"], other["motion"].shape[0])[:n]
    shuffled.append(np.corrcoef(r["motion"][:n, JAW], energy)[0, 1])
  assert np.median(matched) > 0.6 and min(matched) > 0.3, matched
  assert np.median(shuffled) < 0.4, shuffled


def test_max_seconds_drops_long_utterances(corpora, tmp_path):
  limit = 1.6
  out = synth_corpus.build_corpus(tmp_path / "short", seed=3, max_seconds=limit, **BUILD)
  full = {r["id"]: r for r in _records(corpora["a"])}
  too_long = {i for i, r in full.items() if r["mel"].shape[0] > mel_lib.num_frames(round(limit * SR))}
  kept = {r["id"]: r for r in _records(tmp_path / "short")}
  assert too_long and out["source"]["num_dropped_too_long"] == len(too_long)
  assert set(kept) == set(full) - too_long
  for i, r in kept.items():
    np.testing.assert_array_equal(r["motion"], full[i]["motion"])


def test_interrupted_build_leaves_nothing_that_looks_like_a_corpus(tmp_path, monkeypatch):
  real, calls = synth_corpus.utterance, []

  def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) > 3:
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(synth_corpus, "utterance", interrupted)
  with pytest.raises(KeyboardInterrupt):
    synth_corpus.build_corpus(tmp_path / "corpus", seed=0, **BUILD)
  assert os.listdir(tmp_path) == []


def test_refuses_a_non_empty_output_directory(tmp_path):
  (tmp_path / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError):
    synth_corpus.build_corpus(tmp_path, seed=0, **BUILD)
  assert os.listdir(tmp_path) == ["keep.txt"]


def test_shipped_sentences_are_short_plain_and_unique():
  sentences = synth_corpus.load_sentences(synth_corpus.DEFAULT_SENTENCES)
  with open(synth_corpus.DEFAULT_SENTENCES, encoding="ascii") as f:
    lines = [line.strip() for line in f if line.strip()]
  assert len(sentences) == len(lines) >= 500
  assert all(4 <= len(s.split()) <= 10 for s in sentences)
