"""Transcripts -> token ids for the F5-style text encoder.

The vocabulary is Unicode code points 1..255 (Latin-1) after NFC normalisation (composed accents)
and a few typographic replacements (curly quotes, dashes, ellipsis); id 0 is the filler that pads
the ids to the mel length (F5-TTS).
Characters outside it (and control characters) are refused, naming the character and where it is,
so a transcript is never silently altered.
"""

import unicodedata

import numpy as np

FILLER_ID = 0
VOCAB_SIZE = 256
_REPLACEMENTS = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                               "\u2013": "-", "\u2014": "-", "\u2026": "...", "\t": " ", "\n": " "})


class TextError(ValueError):
  """A transcript that cannot be encoded (empty, or a character outside the vocabulary)."""


def normalize(text: str) -> str:
  """NFC, typographic quotes/dashes to ASCII, whitespace runs to one space, stripped."""
  text = unicodedata.normalize("NFC", text).translate(_REPLACEMENTS)
  return " ".join(text.split())


def encode(text: str, *, where: str = "text") -> np.ndarray:
  """Normalised transcript -> int32 ids [len] in 1..255; raises TextError naming `where`."""
  text = normalize(text)
  if not text:
    raise TextError(f"{where}: empty transcript")
  ids = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int32)
  bad = np.flatnonzero((ids >= VOCAB_SIZE) | (ids < 32) | ((ids >= 127) & (ids < 160)))
  if bad.size:
    i = int(bad[0])
    raise TextError(f"{where}: character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} of "
                    f"{text!r} is outside the vocabulary (printable Latin-1)")
  return ids


def pad_to(ids: np.ndarray, length: int, *, where: str = "text") -> np.ndarray:
  """ids [n] -> [length] int32 padded with FILLER_ID; a transcript longer than `length` is an error."""
  if ids.shape[0] > length:
    raise TextError(f"{where}: transcript of {ids.shape[0]} characters is longer than its "
                    f"{length} mel frames")
  out = np.full((length,), FILLER_ID, np.int32)
  out[:ids.shape[0]] = ids
  return out
