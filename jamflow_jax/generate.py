"""JAM-Flow's tasks through one model, and the Python API for them.

    from jamflow_jax.generate import Pipeline
    pipe = Pipeline.from_workdir("runs/demo")                  # EMA weights of the latest checkpoint
    out = pipe.text_to_speech("The quick brown fox.", seed=0)  # speech + motion
    out.save("samples", "fox")                                 # fox.wav, fox.npz, fox.json

Every task is inpainting: it says, per modality, which frames are given and which are generated.

  task              audio                              motion                         text
  text_to_speech    [voice prompt] + generated         [motion prompt] + generated    prompt + new
  audio_to_motion   all given (the wav)                generated                      given or none
  dub               generated                          all given (the npz)            given
  edit              span regenerated, rest given       span regenerated, rest given   the whole clip's

Durations: text_to_speech takes `duration_s`, or F5-TTS's ratio rule (prompt frames per prompt
byte x new bytes), or `sample.chars_per_second` without a voice prompt; the other tasks take the
length of the given modality. Outputs of text_to_speech start after the prompt.

Long form: a request longer than the trained length (`sample.max_frames`, default
`data.max_mel_frames`) runs in chunks. Each chunk continues the previous one: its first
`sample.overlap_s` seconds are the previous chunk's last frames, given as condition (and, for text,
the words the speaking rate puts in them), so the model picks up voice, prosody and motion where
they stopped. Chunks start on frames shared by both clocks (15 mel frames = 4 motion frames). The
joined mel is vocoded as one signal: past the vocoder's window (`audio.vocoder.WINDOW_FRAMES`) in
windows that overlap by its receptive field, which give the whole-signal waveform without a seam
and in bounded memory; the whole float wav is kept (Result.wav, ~58 MB for 10 minutes).

Motion files written here (`Result.save`): `motion` float32 [T, D] FLAME parameters at 25 fps in
the layout of `jamflow_jax.motion.spec` (`expression[50] | jaw[3] | neck[3] | global_rot[3] |
eyelids[2]`, axis-angle), un-normalised; each part also under its own name; `fps`.
"""

import dataclasses
import fractions
import json
import math
import os
import re
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from jamflow_jax import checkpoint as checkpoint_lib
from jamflow_jax import config as config_lib
from jamflow_jax import model as model_lib
from jamflow_jax import paths as paths_lib
from jamflow_jax import sharding
from jamflow_jax import text as text_lib
from jamflow_jax.audio import mel as mel_lib
from jamflow_jax.audio import wav as wav_lib
from jamflow_jax.motion.spec import MotionSpec
from jamflow_jax.sampling import Conditions, Sampler, SamplerOptions


class InputError(ValueError):
  """A request the model cannot take (names the input and what is wrong)."""


@dataclasses.dataclass
class Result:
  """One task's output. mel [Ta, 100] log mel; wav [N] float32 at 24 kHz; motion [Tm, D] FLAME
  parameters at 25 fps, un-normalised (None when the task has no motion); info: what was run."""
  mel: np.ndarray
  wav: np.ndarray
  motion: np.ndarray | None
  info: dict
  spec: MotionSpec
  sample_rate: int

  def save(self, directory: str | os.PathLike, name: str, *, face=None, size: int = 256) -> dict[str, str]:
    """Writes NAME.wav, NAME.npz (when there is motion), NAME.mp4 (when there is motion and a `face`,
    a FLAME-format model, to show it on) and NAME.json into `directory` (local or a gs:// URL);
    returns their paths."""
    directory = paths_lib.workdir_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {"wav": directory / f"{name}.wav"}
    with paths_lib.local_file(out["wav"]) as f:
      wav_lib.write_wav(f, self.wav, self.sample_rate)
    if self.motion is not None:
      out["npz"] = directory / f"{name}.npz"
      with paths_lib.local_file(out["npz"]) as f:
        np.savez(f, motion=self.motion.astype(np.float32), fps=np.float32(self.spec.fps),
                 **{k: v.astype(np.float32) for k, v in self.spec.split(self.motion).items()})
      if face is not None:
        from jamflow_jax.motion import render
        out["mp4"] = directory / f"{name}.mp4"
        with paths_lib.local_file(out["mp4"]) as f:
          render.write_face_video(f, face, self.motion, wav=self.wav, sample_rate=self.sample_rate,
                                  fps=self.spec.fps, size=size)
    out["json"] = directory / f"{name}.json"
    out["json"].write_text(json.dumps({**self.info, "outputs": {k: v.name for k, v in out.items()}}, indent=1))
    return {k: os.fspath(v) for k, v in out.items()}


@dataclasses.dataclass
class Clip:
  """One model call's request, unpadded: Ta mel frames, Tm = motion_frames(Ta)."""
  text: str | None
  mel: np.ndarray           # float32 [Ta, mel_dim], given values (anything where not given)
  audio_given: np.ndarray   # bool [Ta]
  motion: np.ndarray        # float32 [Tm, D], normalised
  motion_given: np.ndarray  # bool [Tm]
  motion_present: bool


class Pipeline:
  """A trained JAM-Flow model with its sampler, vocoder, tokenizer and motion normalisation."""

  def __init__(self, config: ml_collections.ConfigDict, params, *, motion_mean: np.ndarray | None = None,
               motion_std: np.ndarray | None = None, checkpoint: str = "", step: int | None = None, vocoder=None):
    self.config, self.checkpoint, self.step = config, checkpoint, step  # step: of the weights, when known
    self.mesh = sharding.single_device_mesh(config)
    graphdef, _ = model_lib.abstract_model(config, self.mesh)
    self.sampler = Sampler(graphdef, params, self.mesh, config)
    self.tokenizer = text_lib.tokenizer(config)
    if vocoder is None:
      from jamflow_jax.audio.vocoder import load_vocoder
      try:
        vocoder = load_vocoder(config.sample.vocoder)
      except ValueError as e:  # missing, unsafe (refused unread) or not a Vocos checkpoint; names the file
        raise config_lib.ConfigError(f"sample.vocoder={config.sample.vocoder!r}: "
                                     + "; ".join(line.strip() for line in str(e).splitlines())) from None
    self.vocoder = vocoder
    self.spec = MotionSpec(fps=config.data.motion_fps)
    dim = config.model.motion_dim
    if motion_mean is None:
      logging.warning("no motion statistics: generated motion stays in the model's normalised units")
    self.motion_mean = np.zeros(dim, np.float32) if motion_mean is None else np.asarray(motion_mean, np.float32)
    self.motion_std = np.ones(dim, np.float32) if motion_std is None else np.asarray(motion_std, np.float32)
    self.mel_fps = config_lib.mel_fps(config)
    # Chunk boundaries fall where both clocks tick: 15 mel frames = 4 motion frames at 93.75 / 25 fps.
    self.align = fractions.Fraction(self.mel_fps / config.data.motion_fps).limit_denominator(1000).numerator
    s = config.sample
    self.max_frames = int(s.max_frames or config.data.max_mel_frames) // self.align * self.align
    self.overlap = max(self.align, min(int(s.overlap_s * self.mel_fps), self.max_frames // 3)) \
        // self.align * self.align
    # The last frames of the overlap are rendered by both chunks and cross-faded (at least one tick
    # of the overlap stays given).
    self.crossfade = min(int(s.crossfade_s * self.mel_fps) // self.align * self.align, self.overlap - self.align)

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None, *,
                   step: int | None = None, use_ema: bool | None = None, vocoder=None) -> "Pipeline":
    """Loads DIR/checkpoints (EMA weights by default) with DIR/config.json (or `config`)."""
    workdir = paths_lib.workdir_path(workdir)
    if not (workdir / "checkpoints").is_dir():
      raise InputError(f"{workdir}: no checkpoints/ directory; train into this --workdir first")
    if config is None:
      config = saved_config(workdir)
    use_ema = config.sample.use_ema if use_ema is None else use_ema
    mesh = sharding.single_device_mesh(config)
    abstract = model_lib.abstract_params(config, mesh)
    params, step = checkpoint_lib.Checkpointer(workdir, config).restore_params(abstract, step, ema=use_ema)
    mean = std = None
    stats_path = workdir / "motion_stats.json"
    if stats_path.exists():
      stats = json.loads(stats_path.read_text())
      mean, std = stats["mean"], stats["std"]
    logging.info("loaded %s weights of step %d from %s", "EMA" if use_ema else "raw", step, workdir)
    return cls(config, params, motion_mean=mean, motion_std=std, vocoder=vocoder, step=step,
               checkpoint=f"{workdir}/checkpoints/{step}" + (" (EMA)" if use_ema else ""))

  # ---- inputs -------------------------------------------------------------------------------------

  def load_audio(self, audio, *, name: str = "audio", resample: bool = False) -> np.ndarray:
    """A wav path or (samples, sample_rate) -> log mel [T, 100]."""
    return mel_lib.log_mel(self.load_wav(audio, name=name, resample=resample))

  def load_wav(self, audio, *, name: str = "audio", resample: bool = False) -> np.ndarray:
    """A wav path or (samples, sample_rate) -> checked mono float32 [N] at the model's rate."""
    if isinstance(audio, (str, os.PathLike)):
      if not os.path.exists(audio):
        raise InputError(f"{name}: {audio} does not exist")
      try:
        wav, sr = wav_lib.load_wav(audio)
      except ValueError as e:  # empty, or not audio; the message starts with the file
        raise InputError(f"{name} {e}") from None
      where = f"{name} {os.fspath(audio)}"
    else:
      wav, sr = audio
      wav, where = np.asarray(wav, np.float32), name
    rate = self.config.data.sample_rate
    if sr != rate:
      if not resample:
        raise InputError(f"{where}: sample rate {sr} Hz; the model works at {rate} Hz. Resample it "
                         f"(or pass resample=True / --resample)")
      wav = wav_lib.resample(wav, sr, rate)
    if wav.ndim != 1 or wav.shape[0] <= mel_lib.N_FFT:
      raise InputError(f"{where}: need mono audio longer than {mel_lib.N_FFT} samples, got shape {wav.shape}")
    if not np.all(np.isfinite(wav)):  # float wavs can hold them; the outputs would be all NaN
      raise InputError(f"{where}: has NaN or infinite samples")
    return wav

  def load_motion(self, motion, *, name: str = "motion") -> np.ndarray:
    """A FLAME npz path (any format data_pipelines.trackers reads) or an array [T, D] -> checked [T, D]."""
    from data_pipelines import trackers
    if isinstance(motion, (str, os.PathLike)):
      if not os.path.exists(motion):
        raise InputError(f"{name}: {motion} does not exist")
      try:
        path, (motion, track) = motion, trackers.load_motion(motion, default_fps=self.spec.fps, spec=self.spec)
      except trackers.TrackError as e:
        raise InputError(f"{name}: {e}") from e
      if track.fps is None:
        logging.warning("%s: %s stores no frame rate; taken as %g fps", name, path, self.spec.fps)
    motion = np.asarray(motion, np.float32)
    dim = self.config.model.motion_dim
    if motion.ndim != 2 or motion.shape[1] != dim:
      raise InputError(f"{name}: motion of shape {motion.shape}; the model's layout is [frames, {dim}] "
                       f"({' | '.join(f'{n}[{s}]' for n, s in self.spec.parts)})")
    if motion.shape[0] < 1 or not np.all(np.isfinite(motion)):
      raise InputError(f"{name}: motion must have at least one frame and finite values")
    return motion

  def normalise(self, motion: np.ndarray) -> np.ndarray:
    return (motion - self.motion_mean) / self.motion_std

  def _ids(self, text: str, *, where: str) -> np.ndarray:
    try:
      return self.tokenizer.encode(text, where=where)
    except text_lib.TextError as e:
      raise InputError(str(e)) from e

  def motion_frames(self, mel_frames: int) -> int:
    return config_lib.motion_frames(self.config, mel_frames)

  def _frames(self, seconds: float) -> int:
    return max(1, int(round(seconds * self.mel_fps)))

  # ---- one model call -----------------------------------------------------------------------------

  def run(self, clip: Clip, seed: int, options: SamplerOptions) -> tuple[np.ndarray, np.ndarray]:
    """Pads the clip to its length bucket, samples, un-pads: (mel [Ta, 100], motion [Tm, D] normalised)."""
    ta, tm = clip.mel.shape[0], clip.motion.shape[0]
    bucket = self.config.sample.length_bucket
    ta_pad = -(-ta // bucket) * bucket
    tm_pad = self.motion_frames(ta_pad)
    ids = np.full((ta_pad,), text_lib.FILLER_ID, np.int32)
    if clip.text:
      enc = self._ids(clip.text, where="text")
      if enc.shape[0] > ta:
        raise InputError(f"text: {enc.shape[0]} characters do not fit in {ta / self.mel_fps:.2f} s "
                         f"({ta} mel frames); give a longer duration")
      ids[:enc.shape[0]] = enc
    pad = lambda x, n: np.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    valid_a = np.arange(ta_pad) < ta
    valid_m = (np.arange(tm_pad) < tm) & clip.motion_present
    c = Conditions(
        text=ids[None], audio=pad(clip.mel, ta_pad)[None], audio_given=pad(clip.audio_given, ta_pad)[None],
        audio_valid=valid_a[None], motion=pad(clip.motion, tm_pad)[None],
        motion_given=(pad(clip.motion_given, tm_pad) & valid_m)[None], motion_valid=valid_m[None])
    present = {"text": bool(clip.text), "audio": bool(clip.audio_given.any()),
               "motion": bool(clip.motion_present and clip.motion_given.any())}
    mel, motion = self.sampler(jax.tree.map(np.asarray, c), options, seed, present)
    return mel[0, :ta], motion[0, :tm]

  def sampler_options(self, overrides: dict) -> SamplerOptions:
    try:
      return dataclasses.replace(SamplerOptions.from_config(self.config.sample), **overrides)
    except (TypeError, ValueError) as e:
      raise InputError(f"sampler options {overrides}: {e}") from e

  def _result(self, task: str, mel: np.ndarray, motion: np.ndarray | None, info: dict, t0: float, *,
              wav: np.ndarray | None = None, given_motion: tuple[np.ndarray, np.ndarray] | None = None) -> Result:
    """Vocodes (unless `wav` is given) and un-normalises; given motion frames come back as they were
    given (`given_motion` = (motion [Tm, D], given [Tm])), not through the normalisation round trip."""
    if wav is None:
      wav = np.asarray(self.vocoder(mel), np.float32)
    if motion is not None:
      motion = motion * self.motion_std + self.motion_mean
      if given_motion is not None:
        motion = np.where(given_motion[1][:, None], given_motion[0], motion)
    seconds = mel.shape[0] / self.mel_fps
    elapsed = time.perf_counter() - t0
    info = {"task": task, "checkpoint": self.checkpoint, "vocoder": self.vocoder.name,
            "preset": self.config.get("preset", ""), "duration_s": round(seconds, 3),
            "mel_frames": int(mel.shape[0]), "motion_frames": None if motion is None else int(motion.shape[0]),
            "wall_s": round(elapsed, 3), **info}
    logging.info("%s: %.2f s of %s in %.2f s (RTF %.3f)", task, seconds,
                 "speech + motion" if motion is not None else "speech", elapsed, elapsed / seconds)
    return Result(mel=mel, wav=wav, motion=motion, info=info, spec=self.spec,
                  sample_rate=self.config.data.sample_rate)

  def _seed(self, seed: int | None) -> int:
    return int(self.config.sample.seed if seed is None else seed)

  # ---- tasks --------------------------------------------------------------------------------------

  def text_to_speech(self, text: str, *, voice_prompt=None, prompt_text: str | None = None,
                     motion_prompt=None, duration_s: float | None = None, speed: float | None = None,
                     with_motion: bool = True, seed: int | None = None, resample: bool = False,
                     **options) -> Result:
    """Speech (and, unless with_motion=False, motion) for `text`; prompts become the given prefix.

    voice_prompt: wav path or (samples, rate), with `prompt_text` its transcript; motion_prompt:
    FLAME npz path or array [T, D] (un-normalised), the face of the same prefix.
    """
    t0, seed, opts = time.perf_counter(), self._seed(seed), self.sampler_options(options)
    self._ids(text, where="text")
    if voice_prompt is not None and not prompt_text:
      raise InputError("voice_prompt needs prompt_text, its transcript")
    if prompt_text and voice_prompt is None:
      raise InputError("prompt_text is the transcript of a voice_prompt; give the voice_prompt too")
    if motion_prompt is not None and not with_motion:
      raise InputError("motion_prompt given with with_motion=False")
    speed = float(self.config.sample.speed if speed is None else speed)
    if speed <= 0:
      raise InputError(f"speed={speed} must be positive")
    # The prefix: prompt frames, cut at the start to a multiple of the shared clock tick.
    p_mel = None if voice_prompt is None else self.load_audio(voice_prompt, name="voice_prompt", resample=resample)
    p_mot = None if motion_prompt is None else self.normalise(self.load_motion(motion_prompt, name="motion_prompt"))
    if p_mel is not None:
      p_len = p_mel.shape[0] // self.align * self.align
      p_mel = p_mel[p_mel.shape[0] - p_len:]
      if p_mot is not None:
        p_mot = _fit(p_mot, self.motion_frames(p_len))
    elif p_mot is not None:
      p_len = int(p_mot.shape[0] * self.mel_fps / self.config.data.motion_fps) // self.align * self.align
      p_mot = p_mot[p_mot.shape[0] - self.motion_frames(p_len):]
    else:
      p_len = 0
    if p_len >= self.max_frames - self.align:
      raise InputError(f"prompt of {p_len / self.mel_fps:.2f} s leaves no room in the model's "
                       f"{self.max_frames / self.mel_fps:.2f} s; use a shorter prompt")
    if p_mel is not None:
      rate = p_len / len(prompt_text.encode("utf-8"))          # F5-TTS: mel frames per UTF-8 byte
    else:
      rate = self.mel_fps / self.config.sample.chars_per_second
    rate /= speed
    total = self._frames(duration_s) if duration_s else int(math.ceil(rate * len(text.encode("utf-8"))))
    if duration_s or p_len + -(-total // self.align) * self.align <= self.max_frames:
      pieces = [text]
    else:  # long form: pieces that fit beside the prompt or the overlap
      pieces = _split_text(text, max(1, int((self.max_frames - max(p_len, self.overlap) - self.align) / rate)))
    if duration_s and p_len + total > self.max_frames:
      raise InputError(f"duration_s={duration_s} plus the prompt exceeds the model's "
                       f"{self.max_frames / self.mel_fps:.2f} s; leave duration_s out for long form")

    d_mel, d_mot = self.config.model.mel_dim, self.config.model.motion_dim
    out_mel, out_mot, chunks = np.zeros((0, d_mel), np.float32), np.zeros((0, d_mot), np.float32), []
    prefix = (p_mel, p_mot, prompt_text or "", p_len, 0)
    for i, piece in enumerate(pieces):
      new = total if duration_s else int(math.ceil(rate * len(piece.encode("utf-8"))))
      new = -(-new // self.align) * self.align
      pre_mel, pre_mot, pre_text, pre_len, fade = prefix
      ta = pre_len + new
      if ta > self.max_frames:
        raise InputError(f"text piece {piece!r} needs {ta / self.mel_fps:.2f} s, more than the model's "
                         f"{self.max_frames / self.mel_fps:.2f} s; add punctuation or spaces to split it")
      tm = self.motion_frames(ta)
      # Given: the prefix except its last `fade` frames, which this chunk renders again to cross-fade.
      mel = np.zeros((ta, d_mel), np.float32)
      audio_given = np.arange(ta) < (pre_len - fade if pre_mel is not None else 0)
      if pre_mel is not None:
        mel[:pre_len] = pre_mel
      motion = np.zeros((tm, d_mot), np.float32)
      motion_given = np.zeros(tm, bool)
      if pre_mot is not None:
        motion[:pre_mot.shape[0]] = pre_mot
        motion_given[:pre_mot.shape[0] - self.motion_frames(fade)] = True
      clip = Clip(text=(pre_text + " " + piece).strip(), mel=mel, audio_given=audio_given,
                   motion=motion, motion_given=motion_given, motion_present=with_motion)
      gen_mel, gen_mot = self.run(clip, seed + i, opts)
      logging.info("chunk %d of %d: %d + %d frames, %r", i + 1, len(pieces), pre_len, new, piece)
      pm, fm = self.motion_frames(pre_len), self.motion_frames(fade)
      if fade:
        out_mel[-fade:] = _crossfade(out_mel[-fade:], gen_mel[pre_len - fade:pre_len])
        out_mot[out_mot.shape[0] - fm:] = _crossfade(out_mot[out_mot.shape[0] - fm:], gen_mot[pm - fm:pm])
      chunks.append({"text": piece, "prefix_frames": pre_len, "crossfade_frames": fade, "new_frames": new,
                     "start_frame": out_mel.shape[0]})
      out_mel = np.concatenate([out_mel, gen_mel[pre_len:]])
      out_mot = np.concatenate([out_mot, gen_mot[pm:]])
      if i + 1 < len(pieces):
        prefix = self._continuation(out_mel, out_mot, new, piece, with_motion)
    info = {"text": text, "seed": seed, "options": dataclasses.asdict(opts), "speed": speed,
            "voice_prompt": _describe(voice_prompt), "prompt_text": prompt_text,
            "motion_prompt": _describe(motion_prompt), "prompt_frames": p_len,
            "frames_per_byte": round(rate, 4), "chunks": chunks}
    return self._result("text_to_speech", out_mel, out_mot if with_motion else None, info, t0)

  def _continuation(self, mel: np.ndarray, motion: np.ndarray, new: int, piece: str, with_motion: bool):
    """The next chunk's prefix: the output's last frames (of the `new` frames `piece` got), the words the
    rate puts there, and how many of its last frames the next chunk renders again to cross-fade."""
    n = len(piece.encode("utf-8"))
    before = lambda w: len(piece[:w].encode("utf-8")) / n  # fraction of the piece before word w
    words = [m.start() for m in re.finditer(r"\S+", piece)]
    want = 1.0 - min(self.overlap, new) / new
    # The first word that starts inside the overlap (the last word if none does).
    start = next((w for w in words if before(w) >= want), words[-1])
    frames = int(round((1.0 - before(start)) * new)) // self.align * self.align
    frames = min(max(self.align, frames), self.overlap)
    tail_mot = motion[motion.shape[0] - self.motion_frames(frames):] if with_motion else None
    return mel[mel.shape[0] - frames:], tail_mot, piece[start:], frames, min(self.crossfade, frames - self.align)

  def audio_to_motion(self, audio, *, text: str | None = None, seed: int | None = None,
                      resample: bool = False, **options) -> Result:
    """Motion for a wav (path or (samples, rate)); the transcript helps if given (short clips)."""
    t0, seed, opts = time.perf_counter(), self._seed(seed), self.sampler_options(options)
    wav = self.load_wav(audio, resample=resample)
    mel = mel_lib.log_mel(wav)
    if text is not None:
      self._ids(text, where="text")
    ta = mel.shape[0]
    tm_total = self.motion_frames(ta)
    d = self.config.model.motion_dim
    if ta <= self.max_frames:
      starts = [0]
    else:  # chunks of max_frames, each starting `overlap` frames before the previous one ended
      step = self.max_frames - self.overlap
      starts = list(range(0, ta - self.overlap, step))
      if text is not None:
        logging.warning("audio of %.1f s runs in %d chunks; the transcript is not used for long form",
                        ta / self.mel_fps, len(starts))
        text = None
    out = np.zeros((tm_total, d), np.float32)
    done, chunks = 0, []  # motion frames written so far
    for i, s in enumerate(starts):
      e = min(ta, s + self.max_frames)
      m0 = round(s * self.config.data.motion_fps / self.mel_fps)  # exact: s is a multiple of `align`
      tm = min(self.motion_frames(e - s), tm_total - m0)
      pre = done - m0  # motion frames this chunk shares with the output so far
      fade = self.motion_frames(self.crossfade) if i else 0
      motion = np.zeros((tm, d), np.float32)
      motion[:pre] = out[m0:done]
      clip = Clip(text=text, mel=mel[s:e], audio_given=np.ones(e - s, bool), motion=motion,
                   motion_given=np.arange(tm) < pre - fade, motion_present=True)
      _, gen = self.run(clip, seed + i, opts)
      logging.info("chunk %d of %d: audio frames %d-%d", i + 1, len(starts), s, e)
      if fade:
        out[done - fade:done] = _crossfade(out[done - fade:done], gen[pre - fade:pre])
      out[done:m0 + tm] = gen[pre:]
      chunks.append({"start_frame": s, "prefix_frames": pre, "crossfade_frames": fade, "new_frames": m0 + tm - done})
      done = m0 + tm
    info = {"audio": _describe(audio), "text": text, "seed": seed, "options": dataclasses.asdict(opts),
            "chunks": chunks}
    return self._result("audio_to_motion", mel, out, info, t0, wav=wav)  # the given audio beside the motion

  def dub(self, motion, text: str, *, seed: int | None = None, **options) -> Result:
    """Speech saying `text`, timed to a FLAME motion clip (npz path or array [T, D] un-normalised)."""
    t0, seed, opts = time.perf_counter(), self._seed(seed), self.sampler_options(options)
    self._ids(text, where="text")
    raw = self.load_motion(motion)
    m = self.normalise(raw)
    tm = m.shape[0]
    ta = int(tm * self.mel_fps / self.config.data.motion_fps)  # motion_frames(ta) == tm
    if ta > self.max_frames:
      raise InputError(f"motion of {tm / self.config.data.motion_fps:.2f} s is longer than the model's "
                       f"{self.max_frames / self.mel_fps:.2f} s; dub it in parts")
    clip = Clip(text=text, mel=np.zeros((ta, self.config.model.mel_dim), np.float32),
                 audio_given=np.zeros(ta, bool), motion=m, motion_given=np.ones(tm, bool), motion_present=True)
    mel, gen = self.run(clip, seed, opts)
    info = {"motion": _describe(motion), "text": text, "seed": seed, "options": dataclasses.asdict(opts)}
    return self._result("dub", mel, gen, info, t0, given_motion=(raw, np.ones(tm, bool)))

  def edit(self, *, span: tuple[float, float], audio=None, motion=None, text: str | None = None,
           regenerate: tuple[str, ...] = ("audio",), seed: int | None = None, resample: bool = False,
           **options) -> Result:
    """Regenerates `span` = (start_s, end_s) of the given audio and/or motion, keeping the rest.

    `text` is the transcript of the whole edited clip (needed to regenerate speech). The wav is
    vocoded from the whole mel (frames outside the span are the given ones).
    """
    t0, seed, opts = time.perf_counter(), self._seed(seed), self.sampler_options(options)
    unknown = set(regenerate) - {"audio", "motion"}
    if unknown or not regenerate:
      raise InputError(f"regenerate={tuple(regenerate)}: choose audio and/or motion")
    for name, given in (("audio", audio), ("motion", motion)):
      if name in regenerate and given is None:
        raise InputError(f"regenerating {name} needs the {name} clip to edit")
    if "audio" in regenerate and not text:
      raise InputError("regenerating audio needs text, the transcript of the whole edited clip")
    if audio is None:  # the model always hears audio (training never drops the audio stream)
      raise InputError("edit needs the audio clip (and the motion clip to edit motion)")
    wav = self.load_wav(audio, resample=resample)
    mel = mel_lib.log_mel(wav)
    mot = self.load_motion(motion) if motion is not None else None
    ta = mel.shape[0]
    tm = self.motion_frames(ta)
    if mot is not None:
      mot = _fit(mot, tm)  # raw; normalised for the model below
    if ta > self.max_frames:
      raise InputError(f"clip of {ta / self.mel_fps:.2f} s is longer than the model's "
                       f"{self.max_frames / self.mel_fps:.2f} s; edit a shorter excerpt")
    start_s, end_s = span
    duration = ta / self.mel_fps
    if not 0 <= start_s < end_s <= duration + 1e-6:
      raise InputError(f"span=({start_s}, {end_s}) must satisfy 0 <= start < end <= {duration:.3f} s")
    in_span_a = (np.arange(ta) >= start_s * self.mel_fps) & (np.arange(ta) < end_s * self.mel_fps)
    times_m = np.arange(tm) / self.config.data.motion_fps
    in_span_m = (times_m >= start_s) & (times_m < end_s)
    audio_given = ~in_span_a if "audio" in regenerate else np.ones(ta, bool)
    motion_given = ~in_span_m if "motion" in regenerate else np.ones(tm, bool)
    clip = Clip(text=text, mel=mel, audio_given=audio_given,
                 motion=self.normalise(mot) if mot is not None else np.zeros((tm, self.config.model.motion_dim), np.float32),
                 motion_given=motion_given, motion_present=mot is not None)
    out_mel, out_mot = self.run(clip, seed, opts)
    info = {"audio": _describe(audio), "motion": _describe(motion), "text": text, "span_s": [start_s, end_s],
            "regenerate": list(regenerate), "seed": seed, "options": dataclasses.asdict(opts)}
    wav = None if "audio" in regenerate else wav
    return self._result("edit", out_mel, out_mot if mot is not None else None, info, t0, wav=wav,
                        given_motion=None if mot is None else (mot, motion_given))


def saved_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """DIR/config.json over its preset's defaults (so settings newer than the run get their defaults)."""
  from configs.base import get_config
  path = paths_lib.workdir_path(workdir) / "config.json"
  if not path.exists():
    raise InputError(f"{workdir}: no config.json; pass the training config")
  saved = json.loads(path.read_text())
  config = get_config(saved.get("preset", "base"))

  def merge(node: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in node:
        continue  # a setting this version no longer has
      if isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
        merge(node[key], value)
      else:
        node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value

  merge(config, saved)
  return config


def _crossfade(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a -> b over their frames [F, C] with raised-cosine weights (sum 1, flat at both ends)."""
  w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(a.shape[0]) + 0.5) / a.shape[0]))[:, None]
  return ((1 - w) * a + w * b).astype(np.float32)


def _fit(motion: np.ndarray, frames: int) -> np.ndarray:
  """Cuts or edge-pads motion [T, D] to `frames` frames (clips differ by a frame at their ends)."""
  if motion.shape[0] >= frames:
    return motion[:frames]
  return np.pad(motion, [(0, frames - motion.shape[0]), (0, 0)], mode="edge")


def _describe(x) -> str | None:
  if x is None:
    return None
  if isinstance(x, (str, os.PathLike)):
    return os.fspath(x)
  return "array"


def _split_text(text: str, max_bytes: int) -> list[str]:
  """Sentences (then clauses, then words) packed into pieces of at most ~max_bytes UTF-8 bytes."""
  units = []
  for sentence in re.split(r"(?<=[.!?;:])\s+", text.strip()):
    if len(sentence.encode("utf-8")) <= max_bytes:
      units.append(sentence)
      continue
    for clause in re.split(r"(?<=[,])\s+", sentence):
      units.extend([clause] if len(clause.encode("utf-8")) <= max_bytes else clause.split())
  pieces = []
  for unit in units:
    if pieces and len((pieces[-1] + " " + unit).encode("utf-8")) <= max_bytes:
      pieces[-1] += " " + unit
    else:
      pieces.append(unit)
  return pieces


# ---- jobs: what `--mode=sample` runs (flags, or a JSON job file of several) ------------------------

# task -> (Pipeline method, its arguments by job key)
TASKS = {
    "tts": ("text_to_speech", {"text": "text", "prompt_audio": "voice_prompt", "prompt_text": "prompt_text",
                               "prompt_motion": "motion_prompt", "duration": "duration_s", "speed": "speed",
                               "with_motion": "with_motion", "resample": "resample"}),
    "a2m": ("audio_to_motion", {"audio": "audio", "text": "text", "resample": "resample"}),
    "dub": ("dub", {"motion": "motion", "text": "text"}),
    "edit": ("edit", {"audio": "audio", "motion": "motion", "text": "text", "span": "span",
                      "regenerate": "regenerate", "resample": "resample"}),
}
_PATH_KEYS = ("audio", "motion", "prompt_audio", "prompt_motion")
_OPTION_KEYS = tuple(f.name for f in dataclasses.fields(SamplerOptions))


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_from(low: int):
  return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


def _file_name(value) -> bool:
  """A plain file name: NAME.wav etc. land in the output directory, never outside it."""
  return isinstance(value, str) and value not in ("", ".", "..") and not set(value) & {"/", "\\", "\0"}


# Every job key (but task) -> (test of its value, what the value must be).
_JOB_VALUES = {
    **dict.fromkeys(("text", "prompt_text", "solver", *_PATH_KEYS), (lambda v: isinstance(v, str), "a string")),
    "name": (_file_name, "a plain file name (no directory part)"),
    "seed": (_int_from(0), "an integer >= 0"), "nfe": (_int_from(1), "an integer >= 1"),
    **dict.fromkeys(("duration", "speed"), (lambda v: _number(v) and v > 0, "a positive number")),
    **dict.fromkeys(("sway", "cfg_text", "cfg_audio", "cfg_motion"), (_number, "a number")),
    "span": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_number, v)),
             "[START, END] in seconds"),
    "regenerate": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                   "a list of audio and/or motion"),
    **dict.fromkeys(("with_motion", "resample"), (lambda v: isinstance(v, bool), "true or false")),
}


def check_job(job: dict, *, where: str = "job") -> None:
  """Raises InputError naming the job (`where`) and the key for a job that cannot run as written."""
  task = job.get("task")
  if task not in TASKS:
    raise InputError(f"{where}: task={task!r}; choose one of {', '.join(TASKS)}")
  keys = TASKS[task][1]
  unknown = set(job) - set(keys) - set(_OPTION_KEYS) - {"task", "name", "seed"}
  if unknown:
    raise InputError(f"{where}: keys {sorted(unknown)} mean nothing to task {task}; it takes "
                     f"{', '.join(sorted(keys))}, name, seed and {', '.join(_OPTION_KEYS)}")
  for key, value in job.items():
    if key != "task" and value is not None and not _JOB_VALUES[key][0](value):
      raise InputError(f"{where}: {key}={value!r} must be {_JOB_VALUES[key][1]}")


def run_job(pipe: Pipeline, job: dict, *, where: str = "job", base_dir: str = "") -> Result:
  """Runs one job {task, name?, seed?, <task's keys>, <sampler options>}; paths relative to base_dir."""
  check_job(job, where=where)
  method, keys = TASKS[job["task"]]
  kwargs = {keys[k]: v for k, v in job.items() if k in keys and v is not None}
  for k in _PATH_KEYS:
    if k in keys and job.get(k) is not None:
      kwargs[keys[k]] = os.path.join(base_dir, os.path.expanduser(job[k]))
  kwargs.update({k: job[k] for k in _OPTION_KEYS if job.get(k) is not None})
  try:
    return getattr(pipe, method)(seed=job.get("seed"), **kwargs)
  except InputError as e:
    raise InputError(f"{where}: {e}") from e


def read_jobs(path: str) -> list[dict]:
  """A JSON job file: one job object, or a list of them (see README "Sampling")."""
  try:
    with open(path) as f:
      jobs = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"job file {path}: {e}") from e
  jobs = [jobs] if isinstance(jobs, dict) else jobs
  if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs) or not jobs:
    raise InputError(f"job file {path}: expected a job object or a non-empty list of them")
  return jobs
