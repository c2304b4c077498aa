"""A trained model as a generator: loading a run, one model call per clip, and the tasks on top.

Every task is inpainting (`jamflow_jax.tasks`): per modality, which frames are given and which are
generated. Durations: text_to_speech takes `duration_s`, or F5-TTS's ratio rule (prompt frames per
prompt byte x new bytes), or `sample.chars_per_second` without a voice prompt; the other tasks take
the length of the given modality. Outputs of text_to_speech start after the prompt. Requests longer
than the trained length run in chunks (`inference.long_form`); the joined mel is vocoded as one
signal (past the vocoder's window in overlapping windows, `audio.vocoder.WINDOW_FRAMES`).
"""

import collections
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Generator

import jax
import ml_collections
import numpy as np
from absl import logging

from jamflow_jax import (
  checkpoint as checkpoint_lib,
  config as config_lib,
  export as export_lib,
  model as model_lib,
  paths as paths_lib,
  presets,
  sharding,
  tasks,
  text as text_lib,
)
from jamflow_jax.audio import mel as mel_lib
from jamflow_jax.audio.vocoder import load_vocoder
from jamflow_jax.errors import ConfigError, InputError
from jamflow_jax.inference import inputs, long_form
from jamflow_jax.inference.result import Result
from jamflow_jax.motion.spec import MotionSpec
from jamflow_jax.motion.stats import MotionStats
from jamflow_jax.sampling import Conditions, Sampler, SamplerOptions, guidance_plan


@dataclasses.dataclass
class Clip:
  """One model call's request, unpadded: Ta mel frames, Tm = motion_frames(Ta)."""

  text: str | None
  mel: np.ndarray  # float32 [Ta, mel_dim], given values (anything where not given)
  audio_given: np.ndarray  # bool [Ta]
  motion: np.ndarray  # float32 [Tm, D], normalised
  motion_given: np.ndarray  # bool [Tm]
  motion_present: bool

  @classmethod
  def of(
    cls,
    task: str,
    *,
    text: str | None,
    mel: np.ndarray,
    motion: np.ndarray,
    span_a: np.ndarray | None = None,
    span_m: np.ndarray | None = None,
  ) -> "Clip":
    """The clip of `task` (a name of jamflow_jax.tasks) generating the spans span_a bool [Ta] and
    span_m bool [Tm] (default: the whole clip); every other frame of mel / motion is given."""
    ta, tm = mel.shape[0], motion.shape[0]
    span_a = np.ones(ta, bool) if span_a is None else span_a
    span_m = np.ones(tm, bool) if span_m is None else span_m
    r = tasks.roles(tasks.index(task), span_a, span_m, np.ones(ta, bool), np.ones(tm, bool))
    return cls(
      text=text,
      mel=mel,
      audio_given=r.audio_given,
      motion=motion,
      motion_given=r.motion_given,
      motion_present=bool(r.motion_present),
    )


@dataclasses.dataclass
class Request:
  """One model call of a task: a clip padded to its length bucket (a batch of one), with its seed."""

  c: Conditions  # numpy arrays, padded: Ta_pad mel frames, Tm_pad = motion_frames(Ta_pad)
  present: dict[str, bool]  # which conditions the clip gives (text, audio, motion)
  seed: int
  options: SamplerOptions
  frames: tuple[int, int]  # (Ta, Tm) before padding

  @property
  def key(self) -> tuple:
    """Requests with equal keys run as rows of one sampler call: padded length, grid and guidance."""
    o = self.options
    return (self.c.audio.shape[1], o.solver, o.nfe, o.sway, guidance_plan(o, self.present))


def _task(steps):
  """A task written as a generator of the Requests it needs (each answered with the request's
  (mel [Ta, mel_dim], motion [Tm, D] normalised)) that returns its Result, as a method running it
  alone; the generator function stays reachable as `.steps` (for `Pipeline.run_tasks`)."""

  @functools.wraps(steps)
  def alone(self, *args, **kwargs) -> Result:
    (outcome,) = self.run_tasks([steps(self, *args, **kwargs)], 1)
    if isinstance(outcome, InputError):
      raise outcome
    return outcome

  alone.steps = steps
  return alone


class Pipeline:
  """A trained JAM-Flow model with its sampler, vocoder, tokenizer and motion normalisation."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    params,
    *,
    stats: MotionStats | None = None,
    checkpoint: str = "",
    step: int | None = None,
    vocoder=None,
  ):
    self.config, self.checkpoint, self.step = config, checkpoint, step  # step: of the weights, when known
    self.mesh = sharding.single_device_mesh(config)
    self.sampler = Sampler(config, params, self.mesh)
    self.tokenizer = text_lib.tokenizer(config)
    if vocoder is None:
      try:
        vocoder = load_vocoder(config.sample.vocoder)
      except ValueError as e:  # missing, unsafe (refused unread) or not a Vocos checkpoint; names the file
        raise ConfigError(
          f"sample.vocoder={config.sample.vocoder!r}: " + "; ".join(line.strip() for line in str(e).splitlines())
        ) from None
    self.vocoder = vocoder
    self.spec = MotionSpec(fps=config.data.motion_fps)
    if stats is None:
      logging.warning("no motion statistics: generated motion stays in the model's normalised units")
      stats = MotionStats.identity(config.model.motion_dim)
    self.stats = stats
    self.mel_fps = config_lib.mel_fps(config)
    self.chunking = long_form.Chunking.from_config(config)

  @classmethod
  def from_workdir(
    cls,
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
    use_ema: bool | None = None,
    vocoder=None,
  ) -> "Pipeline":
    """Loads DIR/checkpoints (EMA weights by default) with DIR/config.json (or `config`)."""
    workdir = paths_lib.workdir_path(workdir)
    checkpoint_lib.checkpoints_dir(workdir)
    if config is None:
      config = saved_config(workdir)
    use_ema = config.sample.use_ema if use_ema is None else use_ema
    mesh = sharding.single_device_mesh(config)
    abstract = model_lib.abstract_params(config, mesh)
    params, step = checkpoint_lib.Checkpointer(workdir, config).restore_params(abstract, step, ema=use_ema)
    stats = None
    stats_path = workdir / "motion_stats.json"
    if stats_path.exists():
      stats = MotionStats.from_json(json.loads(stats_path.read_text()), config.model.motion_dim, where=str(stats_path))
    logging.info("loaded %s weights of step %d from %s", "EMA" if use_ema else "raw", step, workdir)
    return cls(
      config,
      params,
      stats=stats,
      vocoder=vocoder,
      step=step,
      checkpoint=f"{workdir}/checkpoints/{step}" + (" (EMA)" if use_ema else ""),
    )

  @classmethod
  def from_export(
    cls, path: str | os.PathLike, config: ml_collections.ConfigDict | None = None, *, vocoder=None
  ) -> "Pipeline":
    """Loads an export (`jamflow_jax.export`: DIR/export/<step>/) on this process' first device,
    without the training run; `config` (default: the export's) for the sampling settings."""
    exported = export_lib.load(path, config)
    m = exported.manifest
    logging.info("loaded the %s %s weights of step %d from %s", m["weights"], m["dtype"], m["step"], path)
    return cls(
      exported.config,
      exported.params,
      stats=exported.stats,
      vocoder=vocoder,
      step=m["step"],
      checkpoint=f"{path} ({m['weights']}, {m['dtype']})",
    )

  def use_params(self, params) -> None:
    """Samples from `params` from now on (same shapes: nothing recompiles)."""
    self.sampler.params = params

  def motion_frames(self, mel_frames: int) -> int:
    return config_lib.motion_frames(self.config, mel_frames)

  def _frames(self, seconds: float) -> int:
    return max(1, int(round(seconds * self.mel_fps)))

  def _wav(self, audio, *, name: str = "audio", resample: bool = False) -> np.ndarray:
    return inputs.load_wav(audio, self.config.data.sample_rate, name=name, resample=resample)

  def _motion(self, motion, *, name: str = "motion") -> np.ndarray:
    return inputs.load_motion(motion, self.spec, self.config.model.motion_dim, name=name)

  def _ids(self, text: str) -> np.ndarray:
    return inputs.encode(self.tokenizer, text)

  # ---- one model call -----------------------------------------------------------------------------

  def request(self, clip: Clip, seed: int, options: SamplerOptions) -> Request:
    """The clip padded to its length bucket as a sampler row; InputError if its text does not fit."""
    ta, tm = clip.mel.shape[0], clip.motion.shape[0]
    bucket = self.config.sample.length_bucket
    ta_pad = -(-ta // bucket) * bucket
    tm_pad = self.motion_frames(ta_pad)
    ids = np.full((ta_pad,), text_lib.FILLER_ID, np.int32)
    if clip.text:
      enc = self._ids(clip.text)
      if enc.shape[0] > ta:
        raise InputError(
          f"text: {enc.shape[0]} characters do not fit in {ta / self.mel_fps:.2f} s "
          f"({ta} mel frames); give a longer duration"
        )
      ids[: enc.shape[0]] = enc
    pad = lambda x, n: np.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    valid_a = np.arange(ta_pad) < ta
    valid_m = (np.arange(tm_pad) < tm) & clip.motion_present
    c = Conditions(
      text=ids[None],
      text_given=np.ones(1, bool),
      audio=pad(clip.mel, ta_pad)[None],
      audio_given=pad(clip.audio_given, ta_pad)[None],
      audio_valid=valid_a[None],
      motion=pad(clip.motion, tm_pad)[None],
      motion_given=(pad(clip.motion_given, tm_pad) & valid_m)[None],
      motion_valid=valid_m[None],
    )
    present = {
      "text": bool(clip.text),
      "audio": bool(clip.audio_given.any()),
      "motion": bool(clip.motion_present and clip.motion_given.any()),
    }
    return Request(c, present, seed, options, (ta, tm))

  def sample(self, requests: list[Request], batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mel [Ta, mel_dim], motion [Tm, D] normalised) per request, un-padded.

    Requests of one padded length and guidance plan (and solver, NFE, sway) share sampler calls of
    up to `batch` rows, in power-of-two sizes so that a length bucket compiles a few programs. Each
    row draws its noise from its own seed (`Sampler`): a request gets what it gets alone.
    """
    groups = collections.defaultdict(list)
    for i, r in enumerate(requests):
      groups[r.key].append(i)
    out = [None] * len(requests)
    for members in groups.values():
      while members:
        size = 1 << (min(len(members), batch).bit_length() - 1)
        part, members = members[:size], members[size:]
        first = requests[part[0]]
        c = jax.tree.map(lambda *xs: np.concatenate(xs), *(requests[i].c for i in part))
        mel, motion = self.sampler(c, first.options, [requests[i].seed for i in part], first.present)
        for row, i in enumerate(part):
          ta, tm = requests[i].frames
          out[i] = (mel[row, :ta], motion[row, :tm])
    return out

  def run(self, clip: Clip, seed: int, options: SamplerOptions) -> tuple[np.ndarray, np.ndarray]:
    """One model call alone: (mel [Ta, mel_dim], motion [Tm, D] normalised)."""
    return self.sample([self.request(clip, seed, options)], 1)[0]

  def run_tasks(self, tasks: list[Generator[Request, tuple, Result]], batch: int) -> list[Result | InputError]:
    """Runs tasks (generators from the task methods' `.steps`) side by side, each one's Result or
    InputError in its place.

    Every round takes each unfinished task's next request and samples them together (`sample`), so
    requests of similar length share model calls; a task's outputs are those it gets alone.
    """
    outcomes = [None] * len(tasks)
    answers = dict.fromkeys(range(len(tasks)))  # task -> the answer to its last request (None: start)
    while answers:
      requests = {}
      for i, answer in answers.items():
        try:
          requests[i] = tasks[i].send(answer)
        except StopIteration as stop:
          outcomes[i] = stop.value
        except InputError as e:
          outcomes[i] = e
      answers = dict(zip(requests, self.sample(list(requests.values()), batch)))
    return outcomes

  def sampler_options(self, overrides: dict) -> SamplerOptions:
    try:
      return dataclasses.replace(SamplerOptions.from_config(self.config.sample), **overrides)
    except (TypeError, ValueError) as e:
      raise InputError(f"sampler options {overrides}: {e}") from e

  def _result(
    self,
    task: str,
    mel: np.ndarray,
    motion: np.ndarray | None,
    info: dict,
    t0: float,
    *,
    wav: np.ndarray | None = None,
    given_motion: tuple[np.ndarray, np.ndarray] | None = None,
  ) -> Result:
    """Vocodes (unless `wav` is given) and un-normalises; given motion frames come back as they were
    given (`given_motion` = (motion [Tm, D], given [Tm])), not through the normalisation round trip."""
    if wav is None:
      wav = np.asarray(self.vocoder(mel), np.float32)
    if motion is not None:
      motion = self.stats.denormalise(motion)
      if given_motion is not None:
        motion = np.where(given_motion[1][:, None], given_motion[0], motion)
    seconds = mel.shape[0] / self.mel_fps
    elapsed = time.perf_counter() - t0
    info = {
      "task": task,
      "checkpoint": self.checkpoint,
      "vocoder": self.vocoder.name,
      "preset": self.config.get("preset", ""),
      "duration_s": round(seconds, 3),
      "mel_frames": int(mel.shape[0]),
      "motion_frames": None if motion is None else int(motion.shape[0]),
      "wall_s": round(elapsed, 3),
      **info,
    }
    logging.info(
      "%s: %.2f s of %s in %.2f s (RTF %.3f)",
      task,
      seconds,
      "speech + motion" if motion is not None else "speech",
      elapsed,
      elapsed / seconds,
    )
    return Result(mel=mel, wav=wav, motion=motion, info=info, spec=self.spec, sample_rate=self.config.data.sample_rate)

  def _seed(self, seed: int | None) -> int:
    return int(self.config.sample.seed if seed is None else seed)

  # ---- tasks --------------------------------------------------------------------------------------

  @_task
  def text_to_speech(
    self,
    text: str,
    *,
    voice_prompt=None,
    prompt_text: str | None = None,
    motion_prompt=None,
    duration_s: float | None = None,
    speed: float | None = None,
    with_motion: bool = True,
    seed: int | None = None,
    resample: bool = False,
    **options,
  ) -> Result:
    """Speech (and, unless with_motion=False, motion) for `text`: task joint (tts without motion);
    prompts become the given prefix.

    voice_prompt: wav path or (samples, rate), with `prompt_text` its transcript; motion_prompt:
    FLAME npz path or array [T, D] (un-normalised), the face of the same prefix.
    """
    t0, seed, opts = time.perf_counter(), self._seed(seed), self.sampler_options(options)
    self._ids(text)
    if voice_prompt is not None and not prompt_text:
      raise InputError("voice_prompt needs prompt_text, its transcript")
    if prompt_text and voice_prompt is None:
      raise InputError("prompt_text is the transcript of a voice_prompt; give the voice_prompt too")
    if motion_prompt is not None and not with_motion:
      raise InputError("motion_prompt given with with_motion=False")
    speed = float(self.config.sample.speed if speed is None else speed)
    if speed <= 0:
      raise InputError(f"speed={speed} must be positive")
    ch = self.chunking
    # The prefix: prompt frames, cut at the start to a multiple of the shared clock tick.
    p_mel = (
      None if voice_prompt is None else mel_lib.log_mel(self._wav(voice_prompt, name="voice_prompt", resample=resample))
    )
    p_mot = None if motion_prompt is None else self.stats.normalise(self._motion(motion_prompt, name="motion_prompt"))
    if p_mel is not None:
      p_len = p_mel.shape[0] // ch.align * ch.align
      p_mel = p_mel[p_mel.shape[0] - p_len :]
      if p_mot is not None:
        p_mot = long_form.fit(p_mot, self.motion_frames(p_len))
    elif p_mot is not None:
      p_len = int(p_mot.shape[0] * self.mel_fps / ch.motion_fps) // ch.align * ch.align
      p_mot = p_mot[p_mot.shape[0] - self.motion_frames(p_len) :]
    else:
      p_len = 0
    if p_len >= ch.max_frames - ch.align:
      raise InputError(
        f"prompt of {p_len / self.mel_fps:.2f} s leaves no room in the model's "
        f"{ch.max_frames / self.mel_fps:.2f} s; use a shorter prompt"
      )
    if p_mel is not None:
      rate = p_len / len(prompt_text.encode("utf-8"))  # F5-TTS: mel frames per UTF-8 byte
    else:
      rate = self.mel_fps / self.config.sample.chars_per_second
    rate /= speed
    total = self._frames(duration_s) if duration_s else int(math.ceil(rate * len(text.encode("utf-8"))))
    if duration_s or p_len + ch.ticks(total) <= ch.max_frames:
      pieces = [text]
    else:  # long form: pieces that fit beside the prompt or the overlap
      pieces = long_form.split_text(text, max(1, int((ch.max_frames - max(p_len, ch.overlap) - ch.align) / rate)))
    if duration_s and p_len + total > ch.max_frames:
      raise InputError(
        f"duration_s={duration_s} plus the prompt exceeds the model's "
        f"{ch.max_frames / self.mel_fps:.2f} s; leave duration_s out for long form"
      )

    task = "joint" if with_motion else "tts"
    d_mel, d_mot = self.config.model.mel_dim, self.config.model.motion_dim
    out_mel, out_mot, chunks = np.zeros((0, d_mel), np.float32), np.zeros((0, d_mot), np.float32), []
    pre_mel, pre_mot, pre_text, pre_len, fade = p_mel, p_mot, prompt_text or "", p_len, 0
    for i, piece in enumerate(pieces):
      new = ch.ticks(total if duration_s else int(math.ceil(rate * len(piece.encode("utf-8")))))
      ta = pre_len + new
      if ta > ch.max_frames:
        raise InputError(
          f"text piece {piece!r} needs {ta / self.mel_fps:.2f} s, more than the model's "
          f"{ch.max_frames / self.mel_fps:.2f} s; add punctuation or spaces to split it"
        )
      tm = self.motion_frames(ta)
      # Given: the prefix except its last `fade` frames, which this chunk renders again to cross-fade.
      mel = np.zeros((ta, d_mel), np.float32)
      if pre_mel is not None:
        mel[:pre_len] = pre_mel
      motion = np.zeros((tm, d_mot), np.float32)
      if pre_mot is not None:
        motion[: pre_mot.shape[0]] = pre_mot
      given_a = pre_len - fade if pre_mel is not None else 0
      given_m = pre_mot.shape[0] - self.motion_frames(fade) if pre_mot is not None else 0
      clip = Clip.of(
        task,
        text=(pre_text + " " + piece).strip(),
        mel=mel,
        motion=motion,
        span_a=np.arange(ta) >= given_a,
        span_m=np.arange(tm) >= given_m,
      )
      gen_mel, gen_mot = yield self.request(clip, seed + i, opts)
      logging.info("chunk %d of %d: %d + %d frames, %r", i + 1, len(pieces), pre_len, new, piece)
      pm, fm = self.motion_frames(pre_len), self.motion_frames(fade)
      if fade:
        out_mel[-fade:] = long_form.crossfade(out_mel[-fade:], gen_mel[pre_len - fade : pre_len])
        out_mot[out_mot.shape[0] - fm :] = long_form.crossfade(out_mot[out_mot.shape[0] - fm :], gen_mot[pm - fm : pm])
      chunks.append(
        {
          "text": piece,
          "prefix_frames": pre_len,
          "crossfade_frames": fade,
          "new_frames": new,
          "start_frame": out_mel.shape[0],
        }
      )
      out_mel = np.concatenate([out_mel, gen_mel[pre_len:]])
      out_mot = np.concatenate([out_mot, gen_mot[pm:]])
      if i + 1 < len(pieces):  # the next chunk continues from the output's last frames
        pre_len, pre_text = ch.continuation(new, piece)
        pre_mel = out_mel[out_mel.shape[0] - pre_len :]
        pre_mot = out_mot[out_mot.shape[0] - self.motion_frames(pre_len) :] if with_motion else None
        fade = min(ch.crossfade, pre_len - ch.align)
    info = {
      "text": text,
      "seed": seed,
      "options": dataclasses.asdict(opts),
      "speed": speed,
      "voice_prompt": inputs.describe(voice_prompt),
      "prompt_text": prompt_text,
      "motion_prompt": inputs.describe(motion_prompt),
      "prompt_frames": p_len,
      "frames_per_byte": round(rate, 4),
      "chunks": chunks,
    }
    return self._result("text_to_speech", out_mel, out_mot if with_motion else None, info, t0)

  @_task
  def audio_to_motion(
    self, audio, *, text: str | None = None, seed: int | None = None, resample: bool = False, **options
  ) -> Result:
    """Motion for a wav (path or (samples, rate)): task a2m; the transcript helps if given (short clips)."""
    t0, seed, opts = time.perf_counter(), self._seed(seed), self.sampler_options(options)
    wav = self._wav(audio, resample=resample)
    mel = mel_lib.log_mel(wav)
    if text is not None:
      self._ids(text)
    ch = self.chunking
    ta = mel.shape[0]
    tm_total = self.motion_frames(ta)
    d = self.config.model.motion_dim
    starts = ch.audio_starts(ta)
    if len(starts) > 1 and text is not None:
      logging.warning(
        "audio of %.1f s runs in %d chunks; the transcript is not used for long form", ta / self.mel_fps, len(starts)
      )
      text = None
    out = np.zeros((tm_total, d), np.float32)
    done, chunks = 0, []  # motion frames written so far
    for i, s in enumerate(starts):
      e = min(ta, s + ch.max_frames)
      m0 = round(s * ch.motion_fps / self.mel_fps)  # exact: s is a multiple of `align`
      tm = min(self.motion_frames(e - s), tm_total - m0)
      pre = done - m0  # motion frames this chunk shares with the output so far
      fade = self.motion_frames(ch.crossfade) if i else 0
      motion = np.zeros((tm, d), np.float32)
      motion[:pre] = out[m0:done]
      clip = Clip.of("a2m", text=text, mel=mel[s:e], motion=motion, span_m=np.arange(tm) >= pre - fade)
      _, gen = yield self.request(clip, seed + i, opts)
      logging.info("chunk %d of %d: audio frames %d-%d", i + 1, len(starts), s, e)
      if fade:
        out[done - fade : done] = long_form.crossfade(out[done - fade : done], gen[pre - fade : pre])
      out[done : m0 + tm] = gen[pre:]
      chunks.append({"start_frame": s, "prefix_frames": pre, "crossfade_frames": fade, "new_frames": m0 + tm - done})
      done = m0 + tm
    info = {
      "audio": inputs.describe(audio),
      "text": text,
      "seed": seed,
      "options": dataclasses.asdict(opts),
      "chunks": chunks,
    }
    return self._result("audio_to_motion", mel, out, info, t0, wav=wav)  # the given audio beside the motion

  @_task
  def dub(self, motion, text: str, *, seed: int | None = None, **options) -> Result:
    """Speech saying `text`, timed to a FLAME motion clip (npz path or array [T, D] un-normalised): task dub."""
    t0, seed, opts = time.perf_counter(), self._seed(seed), self.sampler_options(options)
    self._ids(text)
    raw = self._motion(motion)
    tm = raw.shape[0]
    ta = int(tm * self.mel_fps / self.config.data.motion_fps)  # motion_frames(ta) == tm
    if ta > self.chunking.max_frames:
      raise InputError(
        f"motion of {tm / self.config.data.motion_fps:.2f} s is longer than the model's "
        f"{self.chunking.max_frames / self.mel_fps:.2f} s; dub it in parts"
      )
    clip = Clip.of(
      "dub", text=text, mel=np.zeros((ta, self.config.model.mel_dim), np.float32), motion=self.stats.normalise(raw)
    )
    mel, gen = yield self.request(clip, seed, opts)
    info = {"motion": inputs.describe(motion), "text": text, "seed": seed, "options": dataclasses.asdict(opts)}
    return self._result("dub", mel, gen, info, t0, given_motion=(raw, clip.motion_given))

  @_task
  def edit(
    self,
    *,
    span: tuple[float, float],
    audio=None,
    motion=None,
    text: str | None = None,
    regenerate: tuple[str, ...] = ("audio",),
    seed: int | None = None,
    resample: bool = False,
    **options,
  ) -> Result:
    """Regenerates `span` = (start_s, end_s) of the given audio and/or motion, keeping the rest: task
    joint (both), dub (audio, with its motion), tts (audio, no motion) or a2m (motion).

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
    wav = self._wav(audio, resample=resample)
    mel = mel_lib.log_mel(wav)
    mot = self._motion(motion) if motion is not None else None
    ta = mel.shape[0]
    tm = self.motion_frames(ta)
    if mot is not None:
      mot = long_form.fit(mot, tm)  # raw; normalised for the model below
    if ta > self.chunking.max_frames:
      raise InputError(
        f"clip of {ta / self.mel_fps:.2f} s is longer than the model's "
        f"{self.chunking.max_frames / self.mel_fps:.2f} s; edit a shorter excerpt"
      )
    start_s, end_s = span
    duration = ta / self.mel_fps
    if not 0 <= start_s < end_s <= duration + 1e-6:
      raise InputError(f"span=({start_s}, {end_s}) must satisfy 0 <= start < end <= {duration:.3f} s")
    in_span_a = (np.arange(ta) >= start_s * self.mel_fps) & (np.arange(ta) < end_s * self.mel_fps)
    times_m = np.arange(tm) / self.config.data.motion_fps
    in_span_m = (times_m >= start_s) & (times_m < end_s)
    if "motion" in regenerate:
      task = "joint" if "audio" in regenerate else "a2m"
    else:
      task = "dub" if mot is not None else "tts"
    clip = Clip.of(
      task,
      text=text,
      mel=mel,
      span_a=in_span_a,
      span_m=in_span_m,
      motion=self.stats.normalise(mot) if mot is not None else np.zeros((tm, self.config.model.motion_dim), np.float32),
    )
    out_mel, out_mot = yield self.request(clip, seed, opts)
    info = {
      "audio": inputs.describe(audio),
      "motion": inputs.describe(motion),
      "text": text,
      "span_s": [start_s, end_s],
      "regenerate": list(regenerate),
      "seed": seed,
      "options": dataclasses.asdict(opts),
    }
    wav = None if "audio" in regenerate else wav
    return self._result(
      "edit",
      out_mel,
      out_mot if mot is not None else None,
      info,
      t0,
      wav=wav,
      given_motion=None if mot is None else (mot, clip.motion_given),
    )


def saved_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """DIR/config.json over its preset's defaults (`presets.from_saved`)."""
  path = paths_lib.workdir_path(workdir) / "config.json"
  if not path.exists():
    raise InputError(f"{workdir}: no config.json; pass the training config")
  return presets.from_saved(json.loads(path.read_text()))
