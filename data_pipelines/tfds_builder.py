"""A jamflow shard corpus as the TFDS dataset `jamflow_corpus`, and the adapter that feeds it to the pipeline.

Preparing (no TensorFlow needed; writes ArrayRecord files under DATA_DIR/jamflow_corpus/1.0.0/):

    python -m data_pipelines.tfds_builder --corpus=CORPUS_DIR --data_dir=TFDS_DIR [--overwrite]

where CORPUS_DIR is a corpus from `data_pipelines.synth_corpus` or `data_pipelines.preprocess`.
Training then reads it with `--config.data.source=tfds --config.data.path=TFDS_DIR`, through
`TfdsSplit`, which serves the same record dicts as the shard reader (`shards.ShardedSplit`), so the
grain pipeline, its batch plan and its motion normalisation are the same for both.

Every feature is stored as is (strings as UTF-8, arrays as raw little-endian bytes, so float16 mel
is not widened), records keep their corpus order (`disable_shuffling`), and the dataset's
metadata.json carries what the pipeline needs without a pass over the data: the motion
description of corpus.json (parts, fps, rotations, mean, std) and every record's mel length.
"""

import hashlib
import os
import shutil
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from google.protobuf import message as protobuf_message

from data_pipelines import shards
from jamflow_jax.audio import mel as mel_lib
from jamflow_jax.motion.spec import MOTION_SPEC, MotionSpec

NAME = "jamflow_corpus"
FILE_FORMAT = "array_record"  # random access for grain; needs no TensorFlow to write or read
_PREPARE_COMMAND = "python -m data_pipelines.tfds_builder --corpus=CORPUS_DIR --data_dir={data_dir}"


def _fingerprint(corpus_dir: str) -> str:
  """sha256 of corpus.json: it lists every shard, record count and length, so it names the corpus' content."""
  with open(os.path.join(corpus_dir, shards.METADATA_FILE), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


class JamflowCorpus(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over an existing jamflow shard corpus (given as the manual dir).

  Features per example: id, speaker, text (Text), mel (float16 [T_a, 100]), motion (float32
  [T_m, 61], the default layout); splits are the corpus' splits, in corpus order. `info.metadata`
  holds "motion" (corpus.json's parts, fps, rotations, mean, std), "mel_frames" ({split: [N] mel
  lengths}), "audio" and "source" (from corpus.json), and "corpus" (its directory and the sha256
  of its corpus.json).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "First release: the shard schema (id, speaker, text, mel f16, motion f32) in corpus "
    "order, motion statistics and mel lengths in the metadata.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  The manual dir is a jamflow shard corpus directory (`<split>-NNNNN.array_record` shards and
  corpus.json), built with `python -m data_pipelines.synth_corpus --out=DIR ...` or
  `python -m data_pipelines.preprocess --out=DIR ...`. Prepare with
  `python -m data_pipelines.tfds_builder --corpus=DIR --data_dir=TFDS_DIR`, or in Python with
  `download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=DIR),
  file_format="array_record")`. Every record is validated on the way in.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly (not dataset_info_from_configs): that one reads README/CITATIONS files
    # from this module's folder, which belongs to the whole data_pipelines package.
    return tfds.core.DatasetInfo(
      builder=self,
      description="Utterances of a jamflow corpus: transcript, log mel (F5-TTS vocos, 24 kHz, hop 256) "
      "and FLAME motion at 25 fps, for JAM-Flow joint speech + facial motion training.",
      features=tfds.features.FeaturesDict(
        {
          "id": tfds.features.Text(),
          "speaker": tfds.features.Text(),
          "text": tfds.features.Text(),
          # Raw bytes: float16 mel is not widened, arrays come back bit-exact.
          "mel": tfds.features.Tensor(shape=(None, mel_lib.N_MELS), dtype=np.float16, encoding="bytes"),
          "motion": tfds.features.Tensor(shape=(None, MOTION_SPEC.dim), dtype=np.float32, encoding="bytes"),
        }
      ),
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # keys are record indices: the corpus order is kept
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    corpus_dir = os.path.abspath(os.fspath(dl_manager.manual_dir))
    corpus = shards.Corpus(corpus_dir)
    if corpus.spec.dim != MOTION_SPEC.dim:
      raise ValueError(
        f"{corpus_dir}: motion frames have {corpus.spec.dim} dims ({corpus.spec.names}); "
        f"{NAME} {self.VERSION} stores the {MOTION_SPEC.dim}-dim layout"
      )
    splits = {name: corpus.split(name) for name in corpus.splits}  # opens every shard: counts checked
    self.info.metadata.update(
      {
        "motion": corpus.metadata["motion"],
        "mel_frames": {name: split.lengths.tolist() for name, split in splits.items()},
        "audio": corpus.metadata["audio"],
        "source": corpus.metadata["source"],
        "corpus": {"directory": corpus_dir, "sha256": _fingerprint(corpus_dir)},
      }
    )
    return {name: self._generate_examples(split) for name, split in splits.items()}

  def _generate_examples(self, split: shards.ShardedSplit) -> Iterator[tuple[int, dict]]:
    """(index, record) in corpus order; `split[i]` validates and checks the length against corpus.json."""
    for index in range(len(split)):
      record = split[index]
      yield index, {key: record[key] for key in (*shards.STRINGS, "mel", "motion")}


def prepare(
  corpus_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, *, overwrite: bool = False
) -> JamflowCorpus:
  """Prepares `jamflow_corpus` from the shard corpus at `corpus_dir` in `data_dir` (None: TFDS' default).

  An existing preparation of the same corpus (same corpus.json) is reused; one of a different corpus
  raises ValueError unless `overwrite`, which rebuilds it.
  """
  corpus_dir = os.path.abspath(os.fspath(corpus_dir))
  shards.Corpus(corpus_dir)  # a clear error before TFDS creates anything when this is not a corpus
  data_dir = os.fspath(data_dir) if data_dir else None
  builder = JamflowCorpus(data_dir=data_dir)
  if builder.is_prepared() and not overwrite:
    prepared = builder.info.metadata.get("corpus", {})
    if prepared.get("sha256") != _fingerprint(corpus_dir):
      raise ValueError(
        f"{builder.data_dir} was prepared from {prepared.get('directory', 'another corpus')}, "
        f"not from {corpus_dir} as it is now; rebuild it with --overwrite or use another "
        "--data_dir"
      )
    return builder
  if os.path.exists(builder.data_dir):
    # Start from scratch: TFDS would "reuse" a broken folder, and cannot re-prepare a builder whose
    # info was read from the old files.
    shutil.rmtree(builder.data_dir)
    builder = JamflowCorpus(data_dir=data_dir)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=corpus_dir), file_format=FILE_FORMAT
  )
  return builder


class TfdsSplit:
  """One split of a prepared `jamflow_corpus` as the pipeline's RecordSource.

  `len`, `[i]` -> record dict (id/speaker/text str, mel float16 [T_a, 100], motion float32 [T_m, D]),
  validated like shard records (`shards.BadRecordError` naming dataset, split and index);
  `lengths` int32 [N] mel frames and `motion` (corpus.json's "motion": parts, fps, rotations, mean,
  std) come from the dataset's metadata, so opening reads no records. `data_dir` empty or None
  means TFDS' default data dir.
  """

  def __init__(self, name: str = NAME, data_dir: str | os.PathLike | None = None, split: str = "train"):
    self.name, self.split = name, split
    self.data_dir = os.fspath(data_dir) if data_dir else None
    prepare_hint = _PREPARE_COMMAND.format(data_dir=self.data_dir or "TFDS_DIR")
    try:
      builder = tfds.builder(name, data_dir=self.data_dir)
    except tfds.core.DatasetNotFoundError as e:
      raise FileNotFoundError(
        f"no TFDS dataset {name!r} in {self.data_dir or 'the default TFDS data dir'}; prepare one with `{prepare_hint}`"
      ) from e
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"TFDS dataset {name} {builder.version} is not prepared in {builder.data_dir}; prepare it with `{prepare_hint}`"
      )
    self._where = f"TFDS {name} {builder.version} ({builder.data_dir}) split {split!r}"
    if split not in builder.info.splits:
      raise KeyError(
        f"{self._where}: no such split; it has {', '.join(builder.info.splits)} "
        "(whole splits only: mel lengths are kept per split)"
      )
    metadata = builder.info.metadata or {}
    if "motion" not in metadata or split not in metadata.get("mel_frames", {}):
      raise ValueError(
        f"{self._where}: the metadata has no motion description or mel lengths; "
        f"is it a jamflow corpus? (prepare one with `{prepare_hint}`)"
      )
    self.motion, self.audio = dict(metadata["motion"]), dict(metadata["audio"])
    self.spec = MotionSpec.from_json(self.motion)
    self.lengths = np.asarray(metadata["mel_frames"][split], np.int32)
    self._source = builder.as_data_source(split=split)  # what tfds.data_source(name, ...) returns
    if len(self._source) != self.lengths.size:
      raise ValueError(
        f"{self._where}: holds {len(self._source)} records but its metadata lists {self.lengths.size} mel lengths"
      )

  def __len__(self) -> int:
    return int(self.lengths.size)

  def describe(self, index: int) -> str:
    """Index -> "TFDS name version (dir) split 'x': record i" (for messages)."""
    return f"{self._where}: record {index}"

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of a split with {len(self)} records")
    try:
      example = self._source[index]
      record = {key: example[key].decode("utf-8") for key in shards.STRINGS}
      record["mel"], record["motion"] = example["mel"], example["motion"]
      shards.validate(record, self.spec)
    except (ValueError, protobuf_message.DecodeError) as e:  # UnicodeDecodeError is a ValueError
      raise shards.BadRecordError(f"{self.describe(index)}: {e}") from e
    if record["mel"].shape[0] != self.lengths[index]:
      raise shards.BadRecordError(
        f"{self.describe(index)} ({record['id']!r}) has {record['mel'].shape[0]} "
        f"mel frames but the metadata lists {self.lengths[index]}"
      )
    return record


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program (main imports this module for data.source=tfds)."""
  flags.DEFINE_string("corpus", None, "jamflow shard corpus directory (with corpus.json)", required=True)
  flags.DEFINE_string(
    "data_dir", None, "TFDS data dir to prepare into (default: TFDS' own, $TFDS_DATA_DIR or ~/tensorflow_datasets)"
  )
  flags.DEFINE_bool("overwrite", False, "rebuild the dataset if data_dir already holds one")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  FLAGS = flags.FLAGS
  builder = prepare(FLAGS.corpus, FLAGS.data_dir, overwrite=FLAGS.overwrite)
  counts = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
  print(f"{NAME} {builder.version} is prepared in {builder.data_dir} ({counts} records)")
  print(f"train on it with --config.data.source=tfds --config.data.path={builder.data_dir_root}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
