"""The built-in corpus: eSpeak NG speech with FLAME motion derived from its phoneme timeline.

    python -m data_pipelines.synth_corpus --out=DIR --num_utterances=N --seed=S [--sentences=FILE]
        [--validation_fraction=0.05] [--max_seconds=SECONDS]

Utterance i is a pure function of (seed, i, the sentence list): sentence `order[i % S]` of a seeded
permutation of the S sentences (so every sentence is used before any repeats) and a seeded speaker
from SPEAKERS; eSpeak synthesises it at 22050 Hz (its random generators seeded per utterance), the
audio is resampled to 24 kHz, leading and trailing silence is trimmed (phoneme times shifted with
it), then log mel (`jamflow_jax.audio.mel.log_mel`) and motion (`synth_motion.synth_motion`, whose
docstring is the truth of the motion) are computed. Utterances longer than `max_seconds` after
trimming are dropped and counted.

Train/validation are split by sentence: every 1/validation_fraction-th sentence of the permutation is
a validation sentence, so a sentence's utterances all land in one split, and since utterances walk
the same permutation, about validation_fraction of any N >= 1/validation_fraction utterances are
validation. The corpus is written to a temporary sibling directory and renamed into place
when complete, so an interrupted build never leaves a directory that looks like a corpus. The same
arguments give byte-identical shards and corpus.json.
"""

import dataclasses
import hashlib
import math
import os
import shutil
import time
import uuid

import numpy as np
import tqdm
from absl import app, flags, logging

from data_pipelines import espeak as espeak_lib, shards
from data_pipelines.synth_motion import synth_motion
from jamflow_jax import text as text_lib
from jamflow_jax.audio import mel as mel_lib, wav as wav_lib

DEFAULT_SENTENCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sentences.txt")
GENERATOR = "data_pipelines.synth_corpus"
GENERATOR_VERSION = 1  # bump when the audio or motion an utterance gets changes

# Eight (voice+variant, rate, pitch, range) combinations: five accents, male and female variants.
SPEAKERS: dict[str, espeak_lib.Voice] = {
  "espeak-00": espeak_lib.Voice("en-us+m3", rate=170, pitch=45, range=60),
  "espeak-01": espeak_lib.Voice("en-us+f2", rate=165, pitch=60, range=70),
  "espeak-02": espeak_lib.Voice("en+m1", rate=160, pitch=40, range=50),
  "espeak-03": espeak_lib.Voice("en+f1", rate=175, pitch=55, range=60),
  "espeak-04": espeak_lib.Voice("en-gb-scotland+m4", rate=155, pitch=50, range=45),
  "espeak-05": espeak_lib.Voice("en-us+f4", rate=180, pitch=65, range=55),
  "espeak-06": espeak_lib.Voice("en-gb-x-rp+m7", rate=165, pitch=35, range=40),
  "espeak-07": espeak_lib.Voice("en-029+f3", rate=170, pitch=58, range=65),
}

TRIM_WINDOW = 0.025  # s, RMS window for silence detection
TRIM_HOP = 0.010  # s
TRIM_BELOW_PEAK_DB = 45.0  # quieter than this below the loudest window counts as silence
TRIM_KEEP = (0.05, 0.10)  # s of silence kept before the first and after the last sound


def load_sentences(path: str | os.PathLike) -> list[str]:
  """One sentence a line (blank lines skipped), normalised and checked against the text vocabulary.

  Duplicates (after normalisation) are dropped, keeping the first, so a sentence has one split.
  """
  sentences, seen = [], set()
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      sentence = text_lib.normalize(line)
      if not sentence:
        continue
      text_lib.encode(sentence, where=f"{path}:{number}")
      if sentence not in seen:
        seen.add(sentence)
        sentences.append(sentence)
  if not sentences:
    raise ValueError(f"{path}: no sentences")
  return sentences


def trim_silence(
  wav: np.ndarray, phonemes: tuple[espeak_lib.Phoneme, ...], sample_rate: int
) -> tuple[np.ndarray, tuple[espeak_lib.Phoneme, ...]]:
  """Cuts leading/trailing silence from wav [N], keeping TRIM_KEEP around the sound; phoneme times
  are shifted to the cut. A phoneme that starts before the cut starts at 0; those after the end go."""
  window, hop = round(TRIM_WINDOW * sample_rate), round(TRIM_HOP * sample_rate)
  power = np.concatenate([[0.0], np.cumsum(np.square(wav.astype(np.float64)))])
  starts = np.arange(0, max(1, wav.shape[0] - window + 1), hop)
  ends = np.minimum(starts + window, wav.shape[0])
  db = 10 * np.log10((power[ends] - power[starts]) / np.maximum(ends - starts, 1) + 1e-12)
  loud = np.flatnonzero(db > db.max() - TRIM_BELOW_PEAK_DB)
  first = max(0, starts[loud[0]] - round(TRIM_KEEP[0] * sample_rate))
  last = min(wav.shape[0], ends[loud[-1]] + round(TRIM_KEEP[1] * sample_rate))
  offset, duration = first / sample_rate, (last - first) / sample_rate
  shifted = [dataclasses.replace(p, start=p.start - offset) for p in phonemes]
  # The last phoneme starting before the cut is still sounding at it.
  begun = [i for i, p in enumerate(shifted) if p.start <= 0]
  keep = shifted[begun[-1] if begun else 0 :]
  keep = [dataclasses.replace(p, start=max(0.0, p.start)) for p in keep if p.start < duration]
  return wav[first:last], tuple(keep)


def utterance(
  index: int, seed: int, sentences: list[str], order: np.ndarray, engine: espeak_lib.Espeak
) -> tuple[int, dict]:
  """Utterance `index` -> (sentence index, record); a pure function of its arguments."""
  sentence_index = int(order[index % len(sentences)])
  sentence = sentences[sentence_index]
  rng = np.random.default_rng([seed, index])
  speaker = sorted(SPEAKERS)[int(rng.integers(len(SPEAKERS)))]
  espeak_seed, motion_seed = (int(x) for x in rng.integers(0, 2**31 - 1, size=2))
  synthesis = engine.synthesize(sentence, SPEAKERS[speaker], seed=espeak_seed)
  wav = wav_lib.resample(synthesis.float_audio(), synthesis.sample_rate, mel_lib.SAMPLE_RATE)
  wav, phonemes = trim_silence(wav, synthesis.phonemes, mel_lib.SAMPLE_RATE)
  record = {
    "id": f"utt-{index:06d}",
    "speaker": speaker,
    "text": sentence,
    "mel": mel_lib.log_mel(wav),
    "motion": synth_motion(phonemes, wav, seed=motion_seed),
  }
  return sentence_index, record


def validation_sentences(order: np.ndarray, fraction: float) -> set[int]:
  """Indices of the sentences in validation: positions p of `order` where floor(p * fraction) steps."""
  positions = np.arange(order.shape[0])
  steps = np.floor((positions + 1) * fraction) > np.floor(positions * fraction)
  return {int(i) for i in order[steps]}


def sentences_digest(path: str | os.PathLike = DEFAULT_SENTENCES) -> str:
  """sha256 of a sentence list (part of the built-in corpus' cache key)."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def build_corpus(
  out_dir: str | os.PathLike,
  *,
  num_utterances: int,
  seed: int,
  sentences_path: str | os.PathLike | None = None,
  validation_fraction: float = 0.05,
  max_seconds: float | None = None,
  progress: bool = True,
) -> dict:
  """Builds the corpus into `out_dir` (which must not exist or be empty); returns its corpus.json dict."""
  if num_utterances < 1:
    raise ValueError(f"num_utterances must be positive, got {num_utterances}")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} already exists and is not empty; choose a new --out")
  sentences_path = DEFAULT_SENTENCES if sentences_path is None else os.fspath(sentences_path)
  sentences = load_sentences(sentences_path)
  order = np.random.default_rng([seed, 2**32 - 1]).permutation(len(sentences))
  validation = validation_sentences(order, validation_fraction)
  engine = espeak_lib.Espeak()
  metadata = {
    "generator": GENERATOR,
    "generator_version": GENERATOR_VERSION,
    "seed": seed,
    "num_utterances_requested": num_utterances,
    "validation_fraction": validation_fraction,
    "max_seconds": max_seconds,
    "espeak_version": engine.version,
    "sentences_file": os.path.basename(sentences_path),
    "sentences_sha256": sentences_digest(sentences_path),
    "num_sentences": len(sentences),
    "num_validation_sentences": len(validation),
    "speakers": {name: dataclasses.asdict(voice) for name, voice in SPEAKERS.items()},
    "motion": "data_pipelines.synth_motion.synth_motion (its docstring documents the truth)",
  }
  parent, name = os.path.split(out_dir)
  os.makedirs(parent, exist_ok=True)
  partial = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex}")  # unique across hosts too
  started = time.perf_counter()
  max_frames = math.inf if max_seconds is None else mel_lib.num_frames(round(max_seconds * mel_lib.SAMPLE_RATE))
  dropped = 0
  try:
    with shards.CorpusWriter(partial, metadata=metadata) as writer:
      for index in tqdm.trange(num_utterances, desc=f"building {name}", unit="utt", disable=not progress):
        try:
          sentence_index, record = utterance(index, seed, sentences, order, engine)
        except Exception as e:
          raise RuntimeError(f"utterance {index} (sentence {sentences[order[index % len(sentences)]]!r}): {e}") from e
        if record["mel"].shape[0] > max_frames:
          dropped += 1
          continue
        writer.add("validation" if sentence_index in validation else "train", record)
      if dropped == num_utterances:
        raise ValueError(f"all {num_utterances} utterances are longer than max_seconds={max_seconds}")
      writer.metadata = {**metadata, "num_dropped_too_long": dropped}  # written by close()
    try:
      if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked above)
      os.rename(partial, out_dir)
    except OSError:
      # Another process finished the same build first (same arguments, same bytes): keep its copy.
      if not os.path.exists(os.path.join(out_dir, shards.METADATA_FILE)):
        raise
      shutil.rmtree(partial, ignore_errors=True)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  logging.info(
    "built %s: %d utterances (%d dropped as longer than %s s) in %.1f s",
    out_dir,
    num_utterances - dropped,
    dropped,
    max_seconds,
    time.perf_counter() - started,
  )
  return shards.Corpus(out_dir).metadata


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing build_corpus adds none."""
  flags.DEFINE_string("out", None, "Directory to create (must not exist or be empty).")
  flags.DEFINE_integer("num_utterances", 2000, "Utterances to synthesise (before dropping long ones).")
  flags.DEFINE_integer("seed", 0, "Seed: same seed, same corpus (byte for byte).")
  flags.DEFINE_string("sentences", None, "Text file, one sentence a line (default: data_pipelines/sentences.txt).")
  flags.DEFINE_float("validation_fraction", 0.05, "Fraction of the sentences held out for validation.")
  flags.DEFINE_float("max_seconds", None, "Drop utterances longer than this after trimming silence.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.out is None:
    raise app.UsageError("--out is required")
  started = time.perf_counter()
  metadata = build_corpus(
    FLAGS.out,
    num_utterances=FLAGS.num_utterances,
    seed=FLAGS.seed,
    sentences_path=FLAGS.sentences,
    validation_fraction=FLAGS.validation_fraction,
    max_seconds=FLAGS.max_seconds,
  )
  for split, info in metadata["splits"].items():
    print(
      f"{split}: {info['num_records']} utterances, {info['hours'] * 60:.1f} min, "
      f"{info['num_speakers']} speakers, {len(info['shards'])} shards"
    )
  print(
    f"dropped as too long: {metadata['source']['num_dropped_too_long']}; "
    f"{time.perf_counter() - started:.1f} s -> {os.path.abspath(FLAGS.out)}"
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
