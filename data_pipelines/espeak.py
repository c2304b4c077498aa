"""eSpeak NG speech synthesis through its C API (ctypes), with phoneme and word timings.

The `espeakng-loader` wheel ships `libespeak-ng.so` and its `espeak-ng-data`, so no system package
is needed. Each synthesis loads a private copy of the library afresh, initialises it in
synchronous retrieval mode (`AUDIO_OUTPUT_SYNCHRONOUS`) with phoneme events enabled, seeds its
random generators, and `espeak_Synth` calls our callback with 22050 Hz int16 audio chunks and event
lists until the message is done; then the library is unloaded. So the output is a pure function of
(text, voice, seed): nothing carries over from earlier calls (see `_Session`).

eSpeak's state is process-global, so every call holds one lock from loading to unloading.

Layouts and values below follow `src/include/espeak-ng/speak_lib.h` (API revision 12).
"""

import _ctypes
import atexit
import ctypes
import dataclasses
import os
import shutil
import tempfile
import threading

import numpy as np

SAMPLE_RATE = 22050

# espeak_AUDIO_OUTPUT: PLAYBACK, RETRIEVAL, SYNCHRONOUS, SYNCH_PLAYBACK.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
# espeak_PARAMETER
_RATE, _PITCH, _RANGE = 1, 3, 4
# espeak_EVENT_TYPE
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
# Stress marks eSpeak puts in front of a phoneme mnemonic: primary, secondary, unstressed.
_STRESS_MARKS = {"'": 2, ",": 1, "%": 0, "=": 0}


class _EventId(ctypes.Union):
  _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
  _fields_ = [
    ("type", ctypes.c_int),
    ("unique_identifier", ctypes.c_uint),
    ("text_position", ctypes.c_int),
    ("length", ctypes.c_int),
    ("audio_position", ctypes.c_int),
    ("sample", ctypes.c_int),
    ("user_data", ctypes.c_void_p),
    ("id", _EventId),
  ]


# int callback(short *wav, int numsamples, espeak_EVENT *events)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclasses.dataclass(frozen=True)
class Voice:
  """A speaker: an eSpeak voice name with optional `+variant` (e.g. "en-us+m3"), and its prosody.

  rate: words per minute (80..450, eSpeak default 175); pitch: base pitch 0..100 (50 normal);
  range: pitch range 0..100 (0 monotone, 50 normal).
  """

  name: str
  rate: int = 175
  pitch: int = 50
  range: int = 50


@dataclasses.dataclass(frozen=True)
class Phoneme:
  """One phoneme event: the eSpeak mnemonic without stress marks (e.g. "aU", "@2", "_:" for a pause),
  its stress (2 primary, 1 secondary, 0 none) and its start in seconds from the start of the audio."""

  name: str
  stress: int
  start: float

  @classmethod
  def parse(cls, mnemonic: str, start: float) -> "Phoneme":
    """Splits leading stress marks off a raw eSpeak mnemonic such as "'aU" or ",oU"."""
    stress = 0
    while mnemonic and mnemonic[0] in _STRESS_MARKS:
      stress = max(stress, _STRESS_MARKS[mnemonic[0]])
      mnemonic = mnemonic[1:]
    return cls(mnemonic, stress, start)


@dataclasses.dataclass(frozen=True)
class Word:
  """One word event: eSpeak's 1-based character position of the word in the text, its length in
  characters, and its start in seconds."""

  text_position: int
  length: int
  start: float


@dataclasses.dataclass(frozen=True)
class Synthesis:
  """audio: int16 [N] at `sample_rate`; phonemes and words in time order."""

  audio: np.ndarray
  sample_rate: int
  phonemes: tuple[Phoneme, ...]
  words: tuple[Word, ...]

  @property
  def duration(self) -> float:
    return self.audio.shape[0] / self.sample_rate

  def float_audio(self) -> np.ndarray:
    """audio as float32 [N] in -1..1."""
    return self.audio.astype(np.float32) / 32768.0


class EspeakError(RuntimeError):
  """eSpeak NG could not be loaded, initialised, or refused a voice or a text."""


def _remove_copy(directory: str, pid: int) -> None:
  if os.getpid() == pid:  # a forked child inherits the atexit hook but not the copy
    shutil.rmtree(directory, ignore_errors=True)


def _private_copy() -> str:
  """Path of this process's own copy of libespeak-ng (made once per process).

  Why a copy: a library already loaded elsewhere in the process (another user of espeakng-loader)
  would share the image, so unloading would not reset it; our copy has no other users.
  """
  global _COPY
  if _COPY is None or _COPY[0] != os.getpid():
    import espeakng_loader  # a runtime dependency only of the built-in corpus

    directory = tempfile.mkdtemp(prefix="jamflow-espeak-")
    path = os.path.join(directory, "libespeak-ng.so")
    shutil.copyfile(espeakng_loader.get_library_path(), path)
    atexit.register(_remove_copy, directory, os.getpid())
    _COPY = (os.getpid(), path, espeakng_loader.get_data_path())
  return _COPY[1]


class _Session:
  """One load of the library: initialise, synthesise, then `close` unloads it.

  Why load per synthesis: libespeak-ng keeps state across messages in C statics that no API call
  resets (the pitch-flutter phase, the roughness cycle count), so the audio for a text would depend
  on everything spoken before it in the process. Loading a fresh image costs ~3 ms.
  """

  def __init__(self):
    try:
      lib = ctypes.CDLL(_private_copy())
    except OSError as e:
      raise EspeakError(f"cannot load libespeak-ng from espeakng-loader: {e}") from e
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
      ctypes.c_char_p,
      ctypes.c_size_t,
      ctypes.c_uint,
      ctypes.c_int,
      ctypes.c_uint,
      ctypes.c_uint,
      ctypes.c_void_p,
      ctypes.c_void_p,
    ]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    self.lib = lib
    data_path = _COPY[2]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_PHONEME_EVENTS)
    if rate != SAMPLE_RATE:
      self.close()
      raise EspeakError(f"espeak_Initialize with data {data_path} returned {rate}, expected {SAMPLE_RATE} Hz")
    self.version = lib.espeak_Info(None).decode()
    self.chunks: list[np.ndarray] = []
    self.events: list[tuple[int, int, int, int, bytes]] = []
    self.callback = _CALLBACK(self._on_synth)  # kept referenced: eSpeak holds the raw pointer
    lib.espeak_SetSynthCallback(self.callback)

  def close(self) -> None:
    self.lib.espeak_Terminate()
    _ctypes.dlclose(self.lib._handle)

  def _on_synth(self, wav, num_samples, events) -> int:
    if wav and num_samples > 0:
      self.chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
    i = 0
    while events[i].type != _EVENT_LIST_TERMINATED:
      e = events[i]
      if e.type in (_EVENT_WORD, _EVENT_PHONEME):
        self.events.append(
          (e.type, e.audio_position, e.text_position, e.length, e.id.string if e.type == _EVENT_PHONEME else b"")
        )
      i += 1
    return 0  # continue

  def synthesize(self, text: str, voice: Voice, seed: int) -> Synthesis:
    if self.lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
      raise EspeakError(f"eSpeak has no voice {voice.name!r}")
    for parameter, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.range)):
      if self.lib.espeak_SetParameter(parameter, int(value), 0) != _EE_OK:
        raise EspeakError(f"eSpeak refused parameter {parameter}={value} for {voice}")
    # Two random sources: eSpeak's own generator, and libc rand() for breathy voices' noise.
    self.lib.espeak_ng_SetRandSeed(seed)
    _LIBC.srand(seed & 0xFFFFFFFF)
    data = text.encode("utf-8")
    status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != _EE_OK:
      raise EspeakError(f"espeak_Synth returned {status} for {text!r}")
    self.lib.espeak_Synchronize()
    audio = np.concatenate(self.chunks) if self.chunks else np.zeros((0,), np.int16)
    phonemes, words = [], []
    for kind, ms, position, length, name in self.events:
      if kind == _EVENT_PHONEME:
        phonemes.append(Phoneme.parse(name.decode("utf-8", "replace"), ms / 1000.0))
      else:
        words.append(Word(position, length, ms / 1000.0))
    return Synthesis(audio.astype(np.int16), SAMPLE_RATE, tuple(phonemes), tuple(words))


_LOCK = threading.Lock()  # the library and libc's rand() state are process-global
_COPY: tuple[int, str, str] | None = None  # (pid, private library path, data path)
_LIBC = ctypes.CDLL(None)
_LIBC.srand.argtypes = [ctypes.c_uint]


class Espeak:
  """Synthesises text with eSpeak NG; deterministic in (text, voice, seed), safe across threads."""

  sample_rate = SAMPLE_RATE

  def __init__(self):
    with _LOCK:
      session = _Session()
      self.version = session.version
      session.close()

  def synthesize(self, text: str, voice: Voice, *, seed: int = 0) -> Synthesis:
    """UTF-8 text, one voice -> 22050 Hz int16 audio with phoneme and word events (seconds).

    The same (text, voice, seed) gives the same audio, whatever was synthesised before.
    """
    if not text.strip():
      raise EspeakError("cannot synthesise empty text")
    with _LOCK:
      session = _Session()
      try:
        return session.synthesize(text, voice, seed)
      finally:
        session.close()
