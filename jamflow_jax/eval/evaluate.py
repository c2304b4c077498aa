"""Evaluation of a checkpoint on the validation split: run the tasks, score them against the truth.

    python -m jamflow_jax.main --config=configs/base.py:demo --workdir=runs/demo --mode=eval

For the first `eval.num_examples` utterances of the validation split, each task of `eval.tasks`
(`jamflow_jax.tasks`) over the whole utterance:

  a2m    the recorded mel given, no transcript; motion generated. Scored against the recorded motion:
         jaw_corr (Pearson correlation of jaw opening), jaw / lip (expression 0-4) / expression mean
         absolute errors, lve / mve / fdd on the face model's vertices in the head's frame (global
         and neck rotation at rest: head pose is not what the lips are scored on), and lip_sync.
  joint  the transcript and the recorded length given; speech + motion generated: mel_l1 and mcd
         against the recording, lip_sync of the generated pair.
  dub    the recorded motion and the transcript given; speech generated: mel_l1, mcd, and lip_sync
         of the given motion against the generated speech.
  tts    the transcript and the recorded length given; speech alone generated: mel_l1 and mcd.

lip_sync is the correlation between mouth opening (jaw opening) and speech energy at the best
offset within +-5 motion frames (`metrics.lip_sync`); speech energy is read from the log mel, so
recorded and generated speech are measured alike. Beside the model, each task prints the `truth`
(the recording scored against itself: 0 errors and the corpus's own lip sync) and, for motion, the
`mean` baseline (the corpus mean motion on every frame). Means are over utterances, except lve and
mve, which are frame-weighted (as their reference code pools them).

Writes DIR/eval/step_<N>.json and .txt, and for the first utterance a rendered video of the face
speaking (a2m: generated motion with the recorded speech, vocoded) and a plot of its motion
channels against the speech energy.
"""

import io
import json
import os
import tempfile
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image
from tensorboardX.proto.summary_pb2 import Summary
from tqdm import tqdm

from jamflow_jax import config as config_lib, paths, sharding, tasks
from jamflow_jax.eval import metrics
from jamflow_jax.inference import Clip, Pipeline
from jamflow_jax.motion import face as face_lib, flame, render
from jamflow_jax.motion.spec import MotionSpec
from jamflow_jax.motion.stats import MotionStats

_JAW_OPENING = 0  # the jaw's axis-angle x component: rotation about the ear-to-ear axis opens the mouth


def speech_energy(mel: np.ndarray, num_frames: int, mel_fps: float, fps: float) -> np.ndarray:
  """log mel [Ta, n_mels] -> log energy [num_frames] per motion frame (mel power summed over bins,
  averaged over the mel frames of each 1/fps window), floored 60 dB below the loudest frame."""
  power = np.sum(np.exp(2.0 * mel.astype(np.float64)), axis=-1)
  edges = np.round(np.arange(num_frames + 1) * mel_fps / fps).astype(int).clip(0, len(power))
  framed = np.array([power[a : max(b, a + 1)].mean() if a < len(power) else 0.0 for a, b in zip(edges[:-1], edges[1:])])
  db = 10 * np.log10(np.maximum(framed, 1e-20))
  return np.maximum(db, db.max() - 60.0)


class Evaluator:
  """Scores a Pipeline on validation records (dicts of the shard schema: text, mel, motion)."""

  def __init__(self, pipe: Pipeline, face: flame.FlameModel | None = None):
    self.pipe, self.config = pipe, pipe.config
    self.spec = MotionSpec(fps=self.config.data.motion_fps)
    self.face = face
    self.mel_fps = config_lib.mel_fps(self.config)
    self._vertices = jax.jit(flame.flame_vertices) if face is not None else None

  def _lip_sync(self, motion: np.ndarray, mel: np.ndarray) -> tuple[float, int]:
    opening = self.spec.split(motion)["jaw"][:, _JAW_OPENING]
    energy = speech_energy(mel, motion.shape[0], self.mel_fps, self.spec.fps)
    return metrics.lip_sync(opening, energy, fps=self.spec.fps)

  def _motion_scores(self, pred: np.ndarray, truth: np.ndarray, mel: np.ndarray) -> dict:
    jaw = lambda m: self.spec.split(m)["jaw"][:, _JAW_OPENING]
    sync, offset = self._lip_sync(pred, mel)
    scores = {
      "jaw_corr": float(metrics.correlation(jaw(pred), jaw(truth))),
      "jaw_mae": metrics.jaw_error(pred, truth, self.spec),
      "lip_mae": metrics.lip_error(pred, truth, self.spec),
      "expr_mae": metrics.expression_error(pred, truth, spec=self.spec),
      "lip_sync": float(sync),
      "sync_offset": int(offset),
    }
    if self.face is not None:
      vp, vt = (np.asarray(self._vertices(self.face, self._in_head_frame(m))) for m in (pred, truth))
      scores["mve"] = metrics.mve(vp, vt)
      if "lips" in self.face.regions:
        scores["lve"] = metrics.lve(vp, vt, self.face.regions["lips"])
      if "upper_face" in self.face.regions:
        scores["fdd"] = metrics.fdd(vp, vt, np.asarray(self.face.v_template), self.face.regions["upper_face"])
    return scores

  def _in_head_frame(self, motion: np.ndarray) -> np.ndarray:
    """Motion with the head's rotations (global, neck) at rest: vertex metrics score the face in the
    head's frame, as VOCA / FaceFormer / CodeTalker meshes are (head pose is not speech-driven)."""
    motion = np.array(motion, np.float32)
    for part in ("global_rot", "neck"):
      motion[:, self.spec.slice(part)] = 0.0
    return motion

  def _speech_scores(self, pred_mel: np.ndarray, truth_mel: np.ndarray, motion: np.ndarray | None) -> dict:
    """mel_l1 and mcd against the recording; lip_sync of `pred_mel` with `motion` unless None."""
    scores = {
      "mel_l1": metrics.mel_l1(pred_mel, truth_mel),
      "mcd": metrics.mel_cepstral_distortion(pred_mel, truth_mel),
    }
    if motion is not None:
      sync, offset = self._lip_sync(motion, pred_mel)
      scores.update(lip_sync=float(sync), sync_offset=int(offset))
    return scores

  def _generate(self, task: str, record: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mel [Ta, 100], motion [Tm, D] un-normalised) of one task over the whole of one record."""
    mel = np.asarray(record["mel"], np.float32)
    tm = self.pipe.motion_frames(mel.shape[0])
    truth = self.pipe.stats.normalise(np.asarray(record["motion"], np.float32)[:tm])
    # The model sees the given frames only (the sampler masks the rest), so the record goes in whole.
    clip = Clip.of(task, text=None if task == "a2m" else record["text"], mel=mel, motion=truth)
    out_mel, out_motion = self.pipe.run(clip, seed, self.pipe.sampler_options({}))
    return out_mel, self.pipe.stats.denormalise(out_motion)

  def _scores(self, task: str, gen_mel, gen_motion, mel, truth) -> dict[str, dict]:
    """{system: scores} of one task on one record: the model beside the truth (and the mean motion)."""
    t = tasks.TASKS[tasks.index(task)]
    if not t.audio_generated:  # a2m: the motion is what is scored
      mean = np.broadcast_to(self.pipe.stats.mean, truth.shape)
      return {
        "model": self._motion_scores(gen_motion, truth, mel),
        "mean": self._motion_scores(mean, truth, mel),
        "truth": self._motion_scores(truth, truth, mel),
      }
    # Lip sync of the speech with the motion beside it: generated (joint), given (dub), none (tts).
    beside = (gen_motion if t.motion_generated else truth) if t.motion_present else None
    return {
      "model": self._speech_scores(gen_mel, mel, beside),
      "truth": self._speech_scores(mel, mel, truth if t.motion_present else None),
    }

  def evaluate(
    self, records: list[dict], tasks_: tuple[str, ...] = ("a2m", "joint", "dub"), *, seed: int = 0, progress=None
  ) -> dict:
    """{task: {system: {metric: value}}} over `records`, plus the generations of the first record."""
    rows = {task: {} for task in tasks_}
    frames = {task: [] for task in tasks_}
    first = {}
    for i, record in enumerate(records):
      mel = np.asarray(record["mel"], np.float32)
      tm = self.pipe.motion_frames(mel.shape[0])
      truth = np.asarray(record["motion"], np.float32)[:tm]
      for task in tasks_:
        gen_mel, gen_motion = self._generate(task, record, seed + i)
        for system, scores in self._scores(task, gen_mel, gen_motion, mel, truth).items():
          for name, value in scores.items():
            rows[task].setdefault(system, {}).setdefault(name, []).append(value)
        frames[task].append(tm)
        if i == 0:
          first[task] = (gen_mel, gen_motion)
      if progress is not None:
        progress(i + 1)
    results = {}
    for task, systems in rows.items():
      weights = np.asarray(frames[task], np.float64)
      results[task] = {
        system: {
          name: float(np.average(values, weights=weights if name in ("lve", "mve") else None))
          for name, values in scores.items()
        }
        for system, scores in systems.items()
      }
    return {"results": results, "first": first}


def table(results: dict) -> str:
  """One row per (task, system), one column per metric."""
  names = list(dict.fromkeys(n for systems in results.values() for s in systems.values() for n in s))
  lines = [["task", "system", *names]]
  for task, systems in results.items():
    for system, scores in systems.items():
      lines.append([task, system, *(f"{scores[n]:.4g}" if n in scores else "" for n in names)])
  widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
  return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def render_sample(
  pipe: Pipeline, face: flame.FlameModel, mel: np.ndarray, motion: np.ndarray, out_stem: epath.Path
) -> dict[str, str]:
  """out_stem.mp4 (the face speaking `mel`, vocoded) and out_stem.png (motion vs energy); local or URL."""
  wav = np.asarray(pipe.vocoder(mel), np.float32)
  rate, fps = pipe.config.data.sample_rate, pipe.spec.fps
  out = {"mp4": out_stem.with_name(out_stem.name + ".mp4"), "png": out_stem.with_name(out_stem.name + ".png")}
  with paths.local_file(out["mp4"]) as f:
    render.write_face_video(f, face, motion, wav=wav, sample_rate=rate, fps=fps, size=pipe.config.render.size)
  with paths.local_file(out["png"]) as f:
    render.plot_motion(f, motion, wav=wav, sample_rate=rate, fps=fps)
  return {k: os.fspath(v) for k, v in out.items()}


def run(config: ml_collections.ConfigDict, workdir: str, records: list[dict], *, step: int | None = None) -> dict:
  """--mode=eval: evaluates DIR's checkpoint (EMA weights) on `records` (validation records of the
  shard schema, `data_pipelines.sources.validation_records`) and writes DIR/eval/step_<N>.{json,txt,mp4,png}.

  Under several processes each one evaluates on its first local device (no process waits on
  another) and process 0 writes.
  """
  pipe = Pipeline.from_workdir(workdir, config, step=step)
  step = pipe.step
  face = face_lib.load_configured_face(config)
  writes = jax.process_index() == 0
  if not writes:
    logging.info("process %d evaluates alongside process 0, which writes the report", jax.process_index())
  t0 = time.perf_counter()
  with tqdm(total=len(records), desc="eval", unit="utt", disable=not writes) as bar:
    out = Evaluator(pipe, face).evaluate(
      records, tuple(config.eval.tasks), seed=config.eval.seed, progress=lambda n: bar.update(n - bar.n)
    )
  results = out["results"]
  stem = paths.workdir_path(workdir) / "eval" / f"step_{step}"
  report = {
    "step": step,
    "checkpoint": pipe.checkpoint,
    "num_examples": len(records),
    "face_model": config.render.face_model or "stand-in",
    "sampler": dict(config.sample),
    "wall_s": round(time.perf_counter() - t0, 1),
    "results": results,
  }
  if not writes:
    return report
  stem.parent.mkdir(parents=True, exist_ok=True)
  stem.with_name(stem.name + ".json").write_text(json.dumps(report, indent=1))
  text = table(results)
  stem.with_name(stem.name + ".txt").write_text(text + "\n")
  if config.eval.render and "a2m" in out["first"]:
    render_sample(
      pipe, face, np.asarray(records[0]["mel"], np.float32), out["first"]["a2m"][1], stem.with_name(stem.name + "_a2m")
    )
  logging.info(
    "evaluated step %d on %d validation utterances in %.0f s -> %s.{json,txt}",
    step,
    len(records),
    report["wall_s"],
    stem,
  )
  print(text)
  return report


class TrainingEvaluator:
  """Evaluation during training (eval.every_steps): EMA weights of the live state, scalars, one
  rendered sample (an animated GIF, as TensorBoard shows videos), its plot and audio to TensorBoard.

  The pipeline, the records and the face are built once; each call swaps in the current weights, so
  the sampler compiles once per length bucket for the whole run. Under several processes every
  process takes part: the weights are gathered from the mesh (a collective), each process evaluates
  on its first local device (the same computation, so none waits on another), and process 0 writes.
  """

  def __init__(self, config: ml_collections.ConfigDict, records: list[dict], motion: dict | None):
    """records: the validation records to score; motion: the corpus' motion description (its statistics)."""
    self.config, self.records = config, records
    self.face = face_lib.load_configured_face(config)
    self.stats = None if motion is None else MotionStats.from_json(motion, config.model.motion_dim)
    self.pipe = None

  def __call__(self, params, step: int, writer) -> dict:
    """Scores the weights `params` (arrays on the training mesh); `writer` None: nothing written."""
    params = sharding.to_host(params)
    if self.pipe is None:
      self.pipe = Pipeline(self.config, params, stats=self.stats, checkpoint="training (EMA)")
    self.pipe.use_params(params)
    t0 = time.perf_counter()
    out = Evaluator(self.pipe, self.face).evaluate(
      self.records, tuple(self.config.eval.tasks), seed=self.config.eval.seed
    )
    scalars = {
      f"eval/{task}/{name}": value
      for task, systems in out["results"].items()
      for name, value in systems["model"].items()
    }
    if writer is None:
      return out["results"]
    for name, value in scalars.items():
      writer.add_scalar(name, value, step)
    if self.config.eval.render and "a2m" in out["first"]:
      self._write_sample(writer, step, np.asarray(self.records[0]["mel"], np.float32), out["first"]["a2m"][1])
    writer.flush()
    logging.info(
      "step %d: evaluated %d validation utterances in %.1f s:\n%s",
      step,
      len(self.records),
      time.perf_counter() - t0,
      table(out["results"]),
    )
    return out["results"]

  def _write_sample(self, writer, step: int, mel: np.ndarray, motion: np.ndarray) -> None:
    rate = self.config.data.sample_rate
    wav = np.asarray(self.pipe.vocoder(mel), np.float32)
    frames = render.face_frames(self.face, motion, size=192)
    gif = _gif(frames, self.pipe.spec.fps)
    writer.file_writer.add_summary(
      Summary(
        value=[
          Summary.Value(
            tag="eval/a2m/video",
            image=Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3, encoded_image_string=gif),
          )
        ]
      ),
      step,
    )
    writer.add_audio("eval/a2m/audio", np.clip(wav, -1, 1), step, sample_rate=rate)
    with tempfile.TemporaryDirectory() as tmp:
      render.plot_motion(os.path.join(tmp, "plot.png"), motion, wav=wav, sample_rate=rate, fps=self.pipe.spec.fps)
      writer.add_image(
        "eval/a2m/plot", np.asarray(Image.open(os.path.join(tmp, "plot.png")).convert("RGB")), step, dataformats="HWC"
      )


def _gif(frames: np.ndarray, fps: float) -> bytes:
  """uint8 [T, H, W, 3] -> animated GIF bytes (TensorBoard's video format)."""
  buffer = io.BytesIO()
  images = [Image.fromarray(f) for f in frames]
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
  return buffer.getvalue()
