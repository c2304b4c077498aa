"""Builds a jamflow corpus (ArrayRecord shards + corpus.json) from audio, FLAME tracks and transcripts.

  python -m data_pipelines.preprocess --out=DIR --audio_dir=AUDIO --motion_dir=MOTION \\
      [--transcripts=TSV] [--motion_format=auto|emoca|vhap|jamflow] [--motion_fps=F] \\
      [--speaker=from_dir|from_prefix:SEP|NAME] [--split_by=utterance|speaker] \\
      [--validation_fraction=0.05] [--seed=0] [--records_per_shard=256] [--min_duration_s=0.5]

Inputs, matched by utterance id:

  AUDIO/<id>.wav or .flac   any rate, any channel count (averaged to mono, resampled to 24 kHz).
                            The id is the path below AUDIO without the extension, "/"-separated,
                            e.g. AUDIO/spk01/utt3.wav -> "spk01/utt3". If both <id>.flac and
                            <id>.wav exist, the first in sorted order (.flac) is used and the other
                            is reported as a duplicate.
  MOTION/<id>.npz or MOTION/<id>/tracked_flame_params.npz (the first wins if both exist):
                            one utterance of FLAME tracking, in one of the formats of
                            jamflow_jax/motion/trackers.py (our layout `motion` [T, 61]; VHAP /
                            GaussianAvatars; EMOCA / DECA / SPECTRE / SMIRK keys stacked over frames),
                            detected by its keys unless --motion_format names one.
  transcript                --transcripts TSV lines `id<TAB>text` (UTF-8; blank lines skipped),
                            else AUDIO/<id>.txt or AUDIO/<id>.lab beside the audio. The text is
                            normalised (jamflow_jax.text.normalize) and must be printable Latin-1.

Frame rate of the tracks: a scalar `fps` in the file if it has one, else --motion_fps (required
then: the run stops with an error naming the file). Tracks are converted to 25 fps (rotations by
quaternion slerp, other channels linearly), then their length is reconciled with the audio's
ceil(T_mel * 25 / 93.75) frames: a difference of up to max(2 frames, 4 percent) is trimmed or
edge-padded, a larger one is reported as a length mismatch.

Speakers: `from_dir` = the first directory of the id ("spk01/utt3" -> "spk01"); `from_prefix:SEP`
= the file name up to the first SEP ("M003_angry_001" with SEP "_" -> "M003"); anything else is one
speaker name for all. Splits: each utterance (or, with --split_by=speaker, each speaker, so the
validation speakers are unseen in training) goes to "validation" when a SHA-256 hash of
"<seed>/<id or speaker>" falls below --validation_fraction, else to "train"; the split of an item
does not depend on which other items exist.

Nothing about one utterance stops the run: missing audio / motion / transcript, unreadable files,
clips shorter than --min_duration_s, empty transcripts or ones with characters outside the
vocabulary, length mismatches are each skipped and REPORTED, counted by reason in
DIR/preprocess_report.json (with every skipped id and why) and summarised on stdout. Over the
written utterances the report also counts tracker formats, source frame rates and reader notes
(parts absent -> zeros, expression truncated or padded, lengths adjusted); corpus.json keeps the
same counts and the settings under "source". What does stop the run: a DIR that already holds a
corpus, a malformed TSV, a track without a frame rate and no --motion_fps, or no utterance reaching
the train split (the report is still written).
"""

import collections
import hashlib
import json
import math
import os
import sys

import numpy as np
import tqdm
from absl import app, flags

from data_pipelines import shards
from jamflow_jax import text as text_lib
from jamflow_jax.audio import mel as mel_lib, wav as wav_lib
from jamflow_jax.motion import trackers
from jamflow_jax.motion.spec import MOTION_SPEC, motion_frames_for

AUDIO_EXTENSIONS = (".flac", ".wav")
TRANSCRIPT_EXTENSIONS = (".txt", ".lab")
VHAP_FILE = "tracked_flame_params.npz"
REPORT_FILE = "preprocess_report.json"
SPLITS = ("train", "validation")

# Skip reasons: the first two come from matching files by id; the others are checked per utterance
# in this order, and the first that applies is reported.
MISSING_AUDIO = "missing_audio"
DUPLICATE_ID = "duplicate_id"
NO_SPEAKER = "no_speaker"
MISSING_TRANSCRIPT = "missing_transcript"
EMPTY_TRANSCRIPT = "empty_transcript"
BAD_TRANSCRIPT = "bad_transcript"
MISSING_MOTION = "missing_motion"
UNREADABLE_AUDIO = "unreadable_audio"
TOO_SHORT = "too_short"
TEXT_LONGER_THAN_AUDIO = "text_longer_than_audio"
BAD_MOTION = "bad_motion"
LENGTH_MISMATCH = "length_mismatch"
BAD_RECORD = "bad_record"
UNEXPECTED = "unexpected_error"  # anything else one utterance raises: reported with its type, never fatal


class Skip(Exception):
  """One utterance is left out: `reason` (one of the constants above) and a human-readable detail."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


def _relative_id(root: str, path: str) -> str:
  return os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")


def find_audio(audio_dir: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
  """{id: audio path} over AUDIO_EXTENSIONS below audio_dir, and [(id, path)] of duplicate ids."""
  found, duplicates = {}, []
  for root, dirs, files in os.walk(audio_dir):
    dirs.sort()
    for name in sorted(files):
      if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
        path = os.path.join(root, name)
        uid = _relative_id(audio_dir, path)
        if uid in found:
          duplicates.append((uid, path))
        else:
          found[uid] = path
  return found, duplicates


def find_motion(motion_dir: str) -> dict[str, str]:
  """{id: track path}: MOTION/<id>.npz, or MOTION/<id>/tracked_flame_params.npz (not searched below)."""
  found = {}
  for root, dirs, files in os.walk(motion_dir):
    dirs.sort()
    if VHAP_FILE in files:
      # A VHAP output folder: its own per-frame exports (flame_param/00000.npz, ...) are not utterances.
      uid = os.path.relpath(root, motion_dir).replace(os.sep, "/")
      found.setdefault(uid, os.path.join(root, VHAP_FILE))
      dirs.clear()
      continue
    for name in sorted(files):
      if name.lower().endswith(".npz"):
        path = os.path.join(root, name)
        found[_relative_id(motion_dir, path)] = path  # <id>.npz wins over <id>/tracked_flame_params.npz
  return found


def read_transcript_tsv(path: str) -> dict[str, str]:
  """`id<TAB>text` lines -> {id: text}; ValueError naming the line if it has no tab or repeats an id."""
  out, lines = {}, {}
  with open(path, encoding="utf-8-sig") as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      if "\t" not in line:
        raise ValueError(f"{path}:{number}: expected `id<TAB>text`, got {line[:80]!r}")
      uid, text = line.split("\t", 1)
      uid = uid.strip()
      if uid in out:
        raise ValueError(f"{path}:{number}: id {uid!r} repeats line {lines[uid]}")
      out[uid], lines[uid] = text, number
  return out


def speaker_of(uid: str, rule: str) -> str | None:
  """The speaker of `uid` by `rule` (from_dir | from_prefix:SEP | a fixed name); None if it finds none."""
  if rule == "from_dir":
    return uid.split("/", 1)[0] if "/" in uid else None
  if rule.startswith("from_prefix:"):
    sep, name = rule[len("from_prefix:") :], uid.rsplit("/", 1)[-1]
    if not sep:
      raise ValueError("--speaker=from_prefix:SEP needs a separator, e.g. from_prefix:_")
    return name.split(sep, 1)[0] if sep in name and name.split(sep, 1)[0] else None
  return rule


def split_of(key: str, seed: int, validation_fraction: float) -> str:
  """The split of `key`: validation if sha256("<seed>/<key>") / 2^64 < validation_fraction, else train."""
  digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
  return SPLITS[1] if int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction else SPLITS[0]


def reconcile_length(motion: np.ndarray, target: int) -> tuple[np.ndarray, int]:
  """Trims or edge-pads motion [T, D] to `target` frames if |T - target| <= max(2, 4 percent of target).

  Returns (motion [target, D], T - target); Skip(LENGTH_MISMATCH) if the difference is larger, since
  then audio and track are unlikely to be the same take.
  """
  diff = motion.shape[0] - target
  tolerance = max(2, math.ceil(0.04 * target))
  if abs(diff) > tolerance:
    fps = MOTION_SPEC.fps
    raise Skip(
      LENGTH_MISMATCH,
      f"motion lasts {motion.shape[0] / fps:.2f} s ({motion.shape[0]} frames at "
      f"{fps:g} fps) but the audio needs {target} frames ({target / fps:.2f} s); "
      f"at most {tolerance} frames of difference are adjusted",
    )
  if diff > 0:
    return motion[:target], diff
  return np.pad(motion, ((0, -diff), (0, 0)), mode="edge"), diff


class _Builder:
  """Turns one id into a record (or a Skip); counts formats, frame rates and notes of the records built."""

  def __init__(
    self,
    audio: dict[str, str],
    motion: dict[str, str],
    tsv: dict[str, str],
    *,
    motion_format: str,
    motion_fps: float | None,
    speaker: str,
    min_duration_s: float,
  ):
    self.audio, self.motion, self.tsv = audio, motion, tsv
    self.motion_format, self.motion_fps = motion_format, motion_fps
    self.speaker, self.min_duration_s = speaker, min_duration_s
    self.formats, self.source_fps, self.notes = (collections.Counter() for _ in range(3))

  def transcript(self, uid: str) -> str:
    if uid in self.tsv:
      return self.tsv[uid]
    stem = os.path.splitext(self.audio[uid])[0]
    for ext in TRANSCRIPT_EXTENSIONS:
      if os.path.exists(stem + ext):
        try:
          with open(stem + ext, encoding="utf-8-sig") as f:
            return f.read()
        except (OSError, UnicodeDecodeError) as e:
          raise Skip(BAD_TRANSCRIPT, f"{stem + ext}: cannot read as UTF-8 text ({e})") from e
    sidecars = " or ".join(stem + ext for ext in TRANSCRIPT_EXTENSIONS)
    raise Skip(MISSING_TRANSCRIPT, f"no {sidecars} and no line in the transcripts TSV")

  def build(self, uid: str) -> dict:
    """uid -> record dict of the shard schema; raises Skip."""
    speaker = speaker_of(uid, self.speaker)
    if speaker is None:
      raise Skip(
        NO_SPEAKER,
        f"--speaker={self.speaker} finds no speaker in {uid!r}; "
        "give --speaker=from_prefix:SEP or a fixed --speaker=NAME",
      )
    text = text_lib.normalize(self.transcript(uid))
    try:
      ids = text_lib.encode(text, where=uid)
    except text_lib.TextError as e:
      raise Skip(EMPTY_TRANSCRIPT if not text else BAD_TRANSCRIPT, str(e)) from e
    if uid not in self.motion:
      raise Skip(MISSING_MOTION, f"no {uid}.npz or {uid}/{VHAP_FILE} in the motion directory")
    try:
      wav, sr = wav_lib.load_wav(self.audio[uid])
    except ValueError as e:
      raise Skip(UNREADABLE_AUDIO, str(e)) from e
    wav = wav_lib.resample(wav, sr, mel_lib.SAMPLE_RATE)
    seconds = wav.shape[0] / mel_lib.SAMPLE_RATE
    if seconds < self.min_duration_s or wav.shape[0] <= mel_lib.N_FFT // 2:
      raise Skip(TOO_SHORT, f"{seconds:.3f} s of audio, less than {self.min_duration_s} s")
    mel = mel_lib.log_mel(wav)
    if ids.shape[0] > mel.shape[0]:
      raise Skip(TEXT_LONGER_THAN_AUDIO, f"{ids.shape[0]} characters for {mel.shape[0]} mel frames ({seconds:.2f} s)")
    try:
      motion, track = trackers.load_motion(self.motion[uid], self.motion_format, self.motion_fps)
    except trackers.MissingFrameRateError:
      raise  # a missing flag, not a bad utterance: stop the run
    except trackers.TrackError as e:
      raise Skip(BAD_MOTION, str(e)) from e
    motion, diff = reconcile_length(motion, motion_frames_for(mel.shape[0], motion_fps=MOTION_SPEC.fps))
    self.formats[track.format] += 1
    self.source_fps[f"{track.fps if track.fps is not None else self.motion_fps:g}"] += 1
    self.notes.update(track.notes)
    if diff:
      self.notes[f"motion {'trimmed' if diff > 0 else 'edge-padded'} to the audio length"] += 1
    return {"id": uid, "speaker": speaker, "text": text, "mel": mel, "motion": motion}


def preprocess(
  out: str,
  audio_dir: str,
  motion_dir: str,
  *,
  transcripts: str | None = None,
  motion_format: str = "auto",
  motion_fps: float | None = None,
  speaker: str = "from_dir",
  split_by: str = "utterance",
  validation_fraction: float = 0.05,
  seed: int = 0,
  records_per_shard: int = 256,
  min_duration_s: float = 0.5,
  progress: bool = True,
) -> dict:
  """Writes the corpus to `out` (see the module docstring) and returns the report it also saves there."""
  for name, path in (("audio_dir", audio_dir), ("motion_dir", motion_dir)):
    if not os.path.isdir(path):
      raise ValueError(f"--{name}={path} is not a directory")
  if transcripts and not os.path.isfile(transcripts):
    raise ValueError(f"--transcripts={transcripts} is not a file")
  if motion_format not in trackers.FORMATS:
    raise ValueError(f"--motion_format={motion_format}; choose one of {trackers.FORMATS}")
  if motion_fps is not None and not motion_fps > 0:
    raise ValueError(f"--motion_fps={motion_fps} must be positive")
  if split_by not in ("utterance", "speaker"):
    raise ValueError(f"--split_by={split_by}; choose utterance or speaker")
  if not 0 <= validation_fraction < 1:
    raise ValueError(f"--validation_fraction={validation_fraction} must be in [0, 1)")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out={out} is a file; give an empty or new directory")
  if os.path.isdir(out) and any(n == shards.METADATA_FILE or n.endswith(".array_record") for n in os.listdir(out)):
    raise ValueError(f"--out={out} already holds a corpus; give an empty or new directory")
  speaker_of("x", speaker)  # validates the rule up front

  audio, duplicates = find_audio(audio_dir)
  motion = find_motion(motion_dir)
  tsv = read_transcript_tsv(transcripts) if transcripts else {}
  builder = _Builder(
    audio,
    motion,
    tsv,
    motion_format=motion_format,
    motion_fps=motion_fps,
    speaker=speaker,
    min_duration_s=min_duration_s,
  )
  problems = [
    {"id": uid, "reason": DUPLICATE_ID, "detail": f"{path} repeats the id of {audio[uid]}"} for uid, path in duplicates
  ]
  problems += [
    {"id": uid, "reason": MISSING_AUDIO, "detail": f"{motion[uid]} has no .wav/.flac in the audio directory"}
    for uid in sorted(set(motion) - set(audio))
  ]
  settings = {
    "audio_dir": os.path.abspath(audio_dir),
    "motion_dir": os.path.abspath(motion_dir),
    "transcripts": os.path.abspath(transcripts) if transcripts else None,
    "motion_format": motion_format,
    "motion_fps": motion_fps,
    "speaker": speaker,
    "split_by": split_by,
    "validation_fraction": validation_fraction,
    "seed": seed,
    "min_duration_s": min_duration_s,
  }
  try:
    report = _write(
      out,
      builder,
      sorted(audio),
      problems,
      settings,
      found=len(set(audio) | set(motion)),
      split_by=split_by,
      seed=seed,
      validation_fraction=validation_fraction,
      records_per_shard=records_per_shard,
      progress=progress,
    )
  except BaseException:
    # No half corpus is left behind (the report stays): the same command can simply be run again.
    for name in os.listdir(out) if os.path.isdir(out) else ():
      if name == shards.METADATA_FILE or name.endswith(".array_record"):
        os.remove(os.path.join(out, name))
    raise
  return report


def _write(
  out: str,
  builder: "_Builder",
  ids: list[str],
  problems: list[dict],
  settings: dict,
  *,
  found: int,
  split_by: str,
  seed: int,
  validation_fraction: float,
  records_per_shard: int,
  progress: bool,
) -> dict:
  """Builds and writes every utterance of `ids`, appending what is skipped to `problems`; -> the report."""
  written = collections.Counter()
  # CorpusWriter stores this dict under "source" when it closes; the counts are added before that.
  source = {"tool": "data_pipelines.preprocess", **settings}
  # Leaving the `with` by an exception closes the shard files without writing corpus.json.
  with shards.CorpusWriter(out, records_per_shard=records_per_shard, metadata=source) as writer:
    try:
      for uid in tqdm.tqdm(ids, desc="preprocess", unit="utt", disable=not progress):
        try:
          record = builder.build(uid)
          split = split_of(uid if split_by == "utterance" else record["speaker"], seed, validation_fraction)
          try:
            writer.add(split, record)
          except shards.BadRecordError as e:
            raise Skip(BAD_RECORD, str(e)) from e
          written[split] += 1
        except Skip as skip:
          problems.append({"id": uid, "reason": skip.reason, "detail": skip.detail})
        except trackers.MissingFrameRateError:  # a run-level setting is missing: every track would fail
          raise
        except Exception as e:  # noqa: BLE001  (one odd file must not end a long run)
          problems.append({"id": uid, "reason": UNEXPECTED, "detail": f"{type(e).__name__}: {e}"})
    finally:  # the report is written however the loop ends
      report = {
        "utterances_found": found,
        "written": dict(sorted(written.items())),
        "skipped": dict(sorted(collections.Counter(p["reason"] for p in problems).items())),
        "motion_formats": dict(builder.formats),
        "motion_source_fps": dict(builder.source_fps),
        "notes": dict(builder.notes.most_common()),
      }
      source.update(report)
      with open(os.path.join(out, REPORT_FILE), "w") as f:
        json.dump({**report, "settings": settings, "problems": problems}, f, indent=1)
    if not written[SPLITS[0]]:
      raise ValueError(f"no utterance reached the train split; see {os.path.join(out, REPORT_FILE)}")
  return report


def summary(report: dict, out: str) -> str:
  """A few lines for stdout: what was written, and skip counts by reason."""
  lines = [
    f"{report['utterances_found']} utterance ids found (audio or motion); written: "
    + (", ".join(f"{split} {n}" for split, n in report["written"].items()) or "none")
  ]
  for reason, n in sorted(report["skipped"].items(), key=lambda kv: -kv[1]):
    lines.append(f"  skipped {n:6d}  {reason}")
  for note, n in report["notes"].items():
    lines.append(f"  note    {n:6d}  {note}")
  lines.append(f"details: {os.path.join(out, REPORT_FILE)}")
  return "\n".join(lines)


_OUT = flags.DEFINE_string("out", None, "corpus directory to create (shards, corpus.json, preprocess_report.json)")
_AUDIO_DIR = flags.DEFINE_string("audio_dir", None, "root of <id>.wav / <id>.flac (and <id>.txt / .lab transcripts)")
_MOTION_DIR = flags.DEFINE_string("motion_dir", None, "root of <id>.npz or <id>/tracked_flame_params.npz")
_TRANSCRIPTS = flags.DEFINE_string("transcripts", None, "optional TSV of `id<TAB>text`; wins over sidecar files")
_MOTION_FORMAT = flags.DEFINE_enum(
  "motion_format",
  "auto",
  list(trackers.FORMATS),
  "tracker format of the motion files; auto detects each file by its keys",
)
_MOTION_FPS = flags.DEFINE_float(
  "motion_fps", None, "frame rate of tracks that store none (required for VHAP, EMOCA, SPECTRE, SMIRK outputs)"
)
_SPEAKER = flags.DEFINE_string("speaker", "from_dir", "from_dir | from_prefix:SEP | a fixed speaker NAME")
_SPLIT_BY = flags.DEFINE_enum(
  "split_by",
  "utterance",
  ["utterance", "speaker"],
  "hash utterance ids, or speakers (validation speakers unseen in training)",
)
_VALIDATION_FRACTION = flags.DEFINE_float(
  "validation_fraction", 0.05, "share of utterances (or speakers) in the validation split"
)
_SEED = flags.DEFINE_integer("seed", 0, "salt of the split hash")
_RECORDS_PER_SHARD = flags.DEFINE_integer("records_per_shard", 256, "records per ArrayRecord shard")
_MIN_DURATION_S = flags.DEFINE_float("min_duration_s", 0.5, "shorter clips are skipped and reported")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    report = preprocess(
      _OUT.value,
      _AUDIO_DIR.value,
      _MOTION_DIR.value,
      transcripts=_TRANSCRIPTS.value,
      motion_format=_MOTION_FORMAT.value,
      motion_fps=_MOTION_FPS.value,
      speaker=_SPEAKER.value,
      split_by=_SPLIT_BY.value,
      validation_fraction=_VALIDATION_FRACTION.value,
      seed=_SEED.value,
      records_per_shard=_RECORDS_PER_SHARD.value,
      min_duration_s=_MIN_DURATION_S.value,
    )
  except ValueError as e:  # bad flags or inputs, a track without a frame rate, nothing written
    sys.exit(f"preprocess: {e}")
  print(summary(report, _OUT.value))


if __name__ == "__main__":
  flags.mark_flags_as_required(["out", "audio_dir", "motion_dir"])
  app.run(main)
