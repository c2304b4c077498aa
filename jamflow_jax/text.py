"""Transcripts -> token ids for the F5-style text encoder.

Two tokenizers, chosen by `config.model.text_vocab` (see `tokenizer`):
- the built-in one (empty): Unicode code points 1..255 (Latin-1);
- an F5-TTS vocab.txt (a path): one token a line, id = line index + 1, transcripts split into
  characters, so that a pretrained F5-TTS text embedding sees the ids it was trained on.
Both read the transcript after NFC normalisation (composed accents) and a few typographic
replacements (curly quotes, dashes, ellipsis); id 0 is the filler that pads the ids to the mel
length (F5-TTS). Characters outside the vocabulary (and control characters) are refused, naming the
character and where it is, so a transcript is never silently altered.
"""

import unicodedata
from typing import Protocol

import ml_collections
import numpy as np
from etils import epath

from jamflow_jax.errors import ConfigError, TextError

FILLER_ID = 0
VOCAB_SIZE = 256
_REPLACEMENTS = str.maketrans(
  {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2026": "...",
    "\t": " ",
    "\n": " ",
  }
)


def normalize(text: str) -> str:
  """NFC, typographic quotes/dashes to ASCII, whitespace runs to one space, stripped."""
  text = unicodedata.normalize("NFC", text).translate(_REPLACEMENTS)
  return " ".join(text.split())


def _normalized(text: str, where: str) -> str:
  text = normalize(text)
  if not text:
    raise TextError(f"{where}: empty transcript")
  return text


def _refuse(text: str, i: int, where: str, vocabulary: str) -> TextError:
  return TextError(
    f"{where}: character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} of "
    f"{text!r} is outside the vocabulary ({vocabulary})"
  )


def encode(text: str, *, where: str = "text") -> np.ndarray:
  """Normalised transcript -> int32 ids [len] in 1..255; raises TextError naming `where`."""
  text = _normalized(text, where)
  ids = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int32)
  bad = np.flatnonzero((ids >= VOCAB_SIZE) | (ids < 32) | ((ids >= 127) & (ids < 160)))
  if bad.size:
    raise _refuse(text, int(bad[0]), where, "printable Latin-1")
  return ids


class Tokenizer(Protocol):
  """Transcript -> ids; `vocab_size` is the number of ids, the filler 0 included (embedding rows)."""

  vocab_size: int

  def encode(self, text: str, *, where: str = "text") -> np.ndarray:
    """-> int32 ids [n] in 1..vocab_size-1; raises TextError (empty text, unknown character)."""
    ...


class Latin1Tokenizer:
  """The built-in vocabulary: printable Latin-1 code points (`encode`)."""

  vocab_size = VOCAB_SIZE

  def encode(self, text: str, *, where: str = "text") -> np.ndarray:
    return encode(text, where=where)


class VocabTokenizer:
  """Character-level ids from an F5-TTS vocab.txt: token of line i (from 0) -> id i + 1.

  Lines are read as F5-TTS reads them (a later duplicate wins). Multi-character lines (pinyin
  syllables of F5's Chinese front-end) stay unused: transcripts are split into characters, and a
  character that is not a line of its own is refused (F5-TTS would read it as a space).
  """

  def __init__(self, path: str):
    self.path = path
    lines = epath.Path(path).read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":  # the newline that ends the last line
      lines.pop()
    if not lines:
      raise TextError(f"{path}: empty vocabulary")
    self.ids = {token: i + 1 for i, token in enumerate(lines)}
    self.vocab_size = len(lines) + 1

  def encode(self, text: str, *, where: str = "text") -> np.ndarray:
    text = _normalized(text, where)
    ids = np.array([self.ids.get(c, FILLER_ID) for c in text], np.int32)
    bad = np.flatnonzero(ids == FILLER_ID)
    if bad.size:
      raise _refuse(text, int(bad[0]), where, self.path)
    return ids


def tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer of `config.model.text_vocab`: empty -> built-in Latin-1, else an F5 vocab.txt.

  Raises ConfigError when the file is missing, or when the preset requires one and none is given.
  """
  path = config.model.text_vocab
  if path is None:
    raise ConfigError(
      f"preset {config.preset!r} needs model.text_vocab: pass "
      "--config.model.text_vocab=/path/to/vocab.txt (F5-TTS's, one token a line)"
    )
  if not path:
    return Latin1Tokenizer()
  if not epath.Path(path).is_file():
    raise ConfigError(f"model.text_vocab={path!r}: no such file")
  try:
    return VocabTokenizer(path)
  except (TextError, UnicodeDecodeError) as e:
    raise ConfigError(f"model.text_vocab={path!r}: {e}") from None


def pad_to(ids: np.ndarray, length: int, *, where: str = "text") -> np.ndarray:
  """ids [n] -> [length] int32 padded with FILLER_ID; a transcript longer than `length` is an error."""
  if ids.shape[0] > length:
    raise TextError(f"{where}: transcript of {ids.shape[0]} characters is longer than its {length} mel frames")
  out = np.full((length,), FILLER_ID, np.int32)
  out[: ids.shape[0]] = ids
  return out
