"""Every generation task on the tiny preset, long form, the job runner, main --mode=sample and bad inputs."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from jamflow_jax import generate
from jamflow_jax.audio import mel as mel_lib, vocoder as vocoder_lib, wav as wav_lib
from jamflow_jax.generate import InputError

from conftest import train_tiny_workdir

FAST = {"nfe": 4}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return train_tiny_workdir(tmp_path_factory.mktemp("generate"))


@pytest.fixture(scope="module")
def pipe(workdir):
  config = generate.saved_config(str(workdir))
  # Chunks of 90 frames: room for a 30-frame overlap of which 15 are cross-faded.
  config.sample.max_frames = 90
  pipe = generate.Pipeline.from_workdir(workdir, config)
  assert (pipe.chunking.max_frames, pipe.chunking.overlap, pipe.chunking.crossfade) == (90, 30, 15)
  return pipe


def _wav(path, seconds, sr=24000):
  t = np.arange(int(seconds * sr)) / sr
  wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
  wav_lib.write_wav(path, wav, sr)
  return str(path)


def _motion_npz(path, frames, pipe, seed=0):
  motion = pipe.stats.mean + pipe.stats.std * np.random.default_rng(seed).normal(size=(frames, 61))
  np.savez(path, motion=motion.astype(np.float32), fps=25.0)
  return str(path), motion.astype(np.float32)


def _model_calls(pipe, monkeypatch) -> list:
  """[(clip, (mel, motion))] of each model call the pipeline makes from now on, in order."""
  seen, clips = [], {}
  request, sample = pipe.request, pipe.sample

  def record_request(clip, seed, options):
    clips[id(r := request(clip, seed, options))] = clip
    return r

  def record_sample(requests, batch):
    out = sample(requests, batch)
    seen.extend((clips[id(r)], o) for r, o in zip(requests, out))
    return out

  monkeypatch.setattr(pipe, "request", record_request)
  monkeypatch.setattr(pipe, "sample", record_sample)
  return seen


def test_text_to_speech_and_motion(pipe, tmp_path):
  out = pipe.text_to_speech("a b c.", seed=1, **FAST)
  ta = out.mel.shape[0]
  assert ta % 15 == 0 and ta >= np.ceil(6 * pipe.mel_fps / 18.0)
  assert out.motion.shape == (pipe.motion_frames(ta), 61)
  assert out.wav.shape == (ta * 256,) and out.wav.dtype == np.float32
  compiled = pipe.sampler.programs
  again = pipe.text_to_speech("a b c.", seed=1, **FAST)
  np.testing.assert_array_equal(out.mel, again.mel)
  other = pipe.text_to_speech("a b c d.", seed=1, **FAST)  # 60 frames: the same 64-frame bucket
  assert other.mel.shape[0] == 60 and pipe.sampler.programs == compiled
  paths = out.save(tmp_path, "abc")
  with np.load(paths["npz"]) as f:
    np.testing.assert_array_equal(f["motion"], out.motion)
    np.testing.assert_array_equal(f["jaw"], out.motion[:, 50:53])
    assert float(f["fps"]) == 25.0
  info = json.load(open(paths["json"]))
  assert info["task"] == "text_to_speech" and info["seed"] == 1 and info["options"]["nfe"] == 4
  wav, sr = wav_lib.load_wav(paths["wav"])
  assert sr == 24000 and wav.shape == (ta * 256,)
  speech_only = pipe.text_to_speech("a b c.", duration_s=0.4, with_motion=False, **FAST)
  assert speech_only.motion is None and speech_only.mel.shape[0] == 45  # 37.5 frames -> 3 ticks of 15


def test_text_to_speech_with_prompts_keeps_the_prefix(pipe, tmp_path, monkeypatch):
  prompt = _wav(tmp_path / "prompt.wav", 0.2)
  prompt_motion, raw = _motion_npz(tmp_path / "prompt.npz", 5, pipe)
  seen = _model_calls(pipe, monkeypatch)
  out = pipe.text_to_speech("hi", voice_prompt=prompt, prompt_text="ok.", motion_prompt=prompt_motion, **FAST)
  ((clip, (mel, motion)),) = seen
  p = 15  # the 0.2 s prompt has 19 frames, cut to one 15-frame tick
  assert clip.text == "ok. hi" and clip.audio_given.sum() == p and clip.motion_given.sum() == 4
  np.testing.assert_array_equal(mel[:p], mel_lib.log_mel(wav_lib.load_wav(prompt)[0])[-p:])
  np.testing.assert_array_equal(motion[:4], clip.motion[:4])
  # F5's ratio rule: prompt frames per byte x new bytes, rounded up to the tick.
  assert out.mel.shape[0] == 15 and len(seen) == 1  # ceil(15 / 3 * 2) = 10 frames, up to the tick
  np.testing.assert_array_equal(out.mel, mel[p:])
  assert out.motion.shape[0] == motion.shape[0] - 4


def test_long_form_text_runs_in_chunks_that_join(pipe, monkeypatch):
  seen = _model_calls(pipe, monkeypatch)
  text = "a b. c d e. f g. h i j."
  out = pipe.text_to_speech(text, **FAST)
  chunks = out.info["chunks"]
  assert len(chunks) >= 3 and " ".join(c["text"] for c in chunks) == text
  assert out.mel.shape[0] == sum(c["new_frames"] for c in chunks)
  assert [c["start_frame"] for c in chunks] == list(np.cumsum([0] + [c["new_frames"] for c in chunks[:-1]]))
  for (clip, (mel, mot)), c in zip(seen[1:], chunks[1:]):
    p, f, start = c["prefix_frames"], c["crossfade_frames"], c["start_frame"]
    assert (
      0 < p <= pipe.chunking.overlap
      and p % 15 == 0
      and f == min(pipe.chunking.crossfade, p - 15)
      and clip.mel.shape[0] <= pipe.chunking.max_frames
    )
    assert clip.audio_given.sum() == p - f and clip.motion_given.sum() == (p - f) * 4 // 15
    # The chunk continues from the output's frames before it, bit for bit, in both modalities; its
    # last `f` prefix frames are rendered again and cross-faded, ending on the new chunk's own frames.
    np.testing.assert_array_equal(mel[: p - f], out.mel[start - p : start - f])
    np.testing.assert_array_equal(out.mel[start : start + 5], mel[p : p + 5])
    m_start, m_p, m_f = start * 4 // 15, p * 4 // 15, f * 4 // 15
    np.testing.assert_allclose(
      mot[: m_p - m_f] * pipe.stats.std + pipe.stats.mean,
      out.motion[m_start - m_p : m_start - m_f],
      rtol=1e-5,
      atol=1e-5,
    )
  assert out.motion.shape == (pipe.motion_frames(out.mel.shape[0]), 61)


def test_long_form_vocodes_in_windows_of_one_program(pipe, monkeypatch, caplog, tmp_path):
  # 64-frame windows (14 context frames a side at 4 Griffin-Lim iterations) make these few
  # seconds long for the vocoder, as 44 s and more are for the default window.
  monkeypatch.setattr(pipe, "vocoder", vocoder_lib.load_vocoder("griffin_lim", num_iters=4, window=64))
  caplog.set_level(logging.INFO, logger="absl")
  out = pipe.text_to_speech("one two three. four five six. seven eight nine ten.", **FAST)
  ta = out.mel.shape[0]
  windows = len(vocoder_lib.window_plan(ta, 64, pipe.vocoder.context))
  assert len(out.info["chunks"]) >= 5 and windows >= 5
  assert out.wav.shape == (ta * 256,) and out.wav.dtype == np.float32 and np.isfinite(out.wav).all()
  assert np.abs(out.wav).max() > 0 and out.motion.shape == (pipe.motion_frames(ta), 61)
  assert f"vocoding window {windows} of {windows}: frames" in caplog.text
  other = pipe.text_to_speech("a shorter one, too.", **FAST)
  assert ta > other.mel.shape[0] > 64 and other.wav.shape == (other.mel.shape[0] * 256,)
  assert pipe.vocoder.programs == 1  # every window of both, the last ones included
  wav, sr = wav_lib.load_wav(out.save(tmp_path, "long")["wav"])
  assert sr == 24000 and wav.shape == (ta * 256,)


def test_audio_to_motion_short_and_long(pipe, tmp_path):
  path = _wav(tmp_path / "short.wav", 0.3)
  out = pipe.audio_to_motion(path, text="hm.", **FAST)
  mel = mel_lib.log_mel(wav_lib.load_wav(path)[0])
  np.testing.assert_array_equal(out.mel, mel)
  assert out.motion.shape == (pipe.motion_frames(mel.shape[0]), 61)
  np.testing.assert_array_equal(out.wav, wav_lib.load_wav(path)[0])
  long = pipe.audio_to_motion(_wav(tmp_path / "long.wav", 2.5), **FAST)
  ta = long.mel.shape[0]
  chunks = long.info["chunks"]
  assert len(chunks) >= 3 and long.motion.shape == (pipe.motion_frames(ta), 61)
  assert sum(c["new_frames"] for c in chunks) == long.motion.shape[0]
  assert all(c["start_frame"] % 15 == 0 for c in chunks) and chunks[-1]["start_frame"] + pipe.chunking.max_frames >= ta
  assert all(
    0 < c["prefix_frames"] <= pipe.chunking.overlap * 4 // 15
    and c["crossfade_frames"] == pipe.chunking.crossfade * 4 // 15
    for c in chunks[1:]
  )
  assert np.all(np.isfinite(long.motion))


def test_dub_keeps_the_motion(pipe, tmp_path):
  path, raw = _motion_npz(tmp_path / "face.npz", 9, pipe)
  out = pipe.dub(path, "yes.", **FAST)
  assert out.mel.shape == (33, 100) and out.wav.shape == (33 * 256,)  # floor(9 * 3.75)
  np.testing.assert_array_equal(out.motion, raw)


def test_edit_regenerates_only_the_span(pipe, tmp_path):
  audio = _wav(tmp_path / "clip.wav", 0.4)
  mel = mel_lib.log_mel(wav_lib.load_wav(audio)[0])
  tm = pipe.motion_frames(mel.shape[0])
  path, raw = _motion_npz(tmp_path / "clip.npz", tm, pipe)
  out = pipe.edit(
    audio=audio, motion=path, text="a new clip.", span=(0.1, 0.25), regenerate=("audio", "motion"), **FAST
  )
  span_a = (np.arange(mel.shape[0]) >= 0.1 * pipe.mel_fps) & (np.arange(mel.shape[0]) < 0.25 * pipe.mel_fps)
  np.testing.assert_array_equal(out.mel[~span_a], mel[~span_a])
  assert not np.allclose(out.mel[span_a], mel[span_a])
  span_m = (np.arange(tm) >= 0.1 * 25 - 1e-9) & (np.arange(tm) < 0.25 * 25)
  np.testing.assert_array_equal(out.motion[~span_m], raw[~span_m])
  assert not np.allclose(out.motion[span_m], raw[span_m])
  audio_only = pipe.edit(audio=audio, text="a new clip.", span=(0.1, 0.2), **FAST)
  assert audio_only.motion is None and audio_only.mel.shape == mel.shape


def test_bad_inputs_are_named(pipe, tmp_path):
  with pytest.raises(InputError, match="16000 Hz; the model works at 24000 Hz"):
    pipe.audio_to_motion(_wav(tmp_path / "a.wav", 0.3, sr=16000))
  resampled = pipe.audio_to_motion(_wav(tmp_path / "b.wav", 0.3, sr=16000), resample=True, **FAST)
  assert resampled.mel.shape[0] == 1 + int(0.3 * 24000) // 256
  np.savez(tmp_path / "bad.npz", motion=np.zeros((5, 40), np.float32), fps=25.0)
  with pytest.raises(InputError, match=r"motion.*40"):
    pipe.dub(str(tmp_path / "bad.npz"), "hi")
  with pytest.raises(InputError, match="empty transcript"):
    pipe.text_to_speech("   ")
  with pytest.raises(InputError, match=r"'\\u65e5'|日"):
    pipe.text_to_speech("hello 日本")
  with pytest.raises(InputError, match="needs prompt_text"):
    pipe.text_to_speech("hi", voice_prompt=_wav(tmp_path / "p.wav", 0.2))
  with pytest.raises(InputError, match="does not exist"):
    pipe.audio_to_motion(str(tmp_path / "missing.wav"))
  with pytest.raises(InputError, match=r"span=\(0.3, 0.2\)"):
    pipe.edit(audio=_wav(tmp_path / "c.wav", 0.3), text="x", span=(0.3, 0.2))
  with pytest.raises(InputError, match=r"job 3: keys \['voice'\] mean nothing to task tts"):
    generate.run_job(pipe, {"task": "tts", "text": "hi", "voice": "x.wav"}, where="job 3")
  with pytest.raises(InputError, match="sample.nfe=3"):
    pipe.text_to_speech("hi", solver="midpoint", nfe=3)


def test_main_samples_jobs_and_refuses_bad_input(workdir, tmp_path):
  _wav(tmp_path / "speech.wav", 0.3)
  (tmp_path / "jobs.json").write_text(
    json.dumps(
      [
        {"task": "tts", "name": "hello", "text": "hello.", "nfe": 2},
        {"task": "a2m", "name": "face", "audio": "speech.wav", "seed": 3, "nfe": 2},
      ]
    )
  )
  base = [
    sys.executable,
    "-m",
    "jamflow_jax.main",
    "--config=configs/base.py:tiny",
    f"--workdir={workdir}",
    "--mode=sample",
    f"--out={tmp_path / 'out'}",
  ]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run(
    base + [f"--jobs={tmp_path / 'jobs.json'}"], capture_output=True, text=True, timeout=600, env=env
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "out")) == [
    "face.json",
    "face.mp4",
    "face.npz",
    "face.wav",
    "hello.json",
    "hello.mp4",
    "hello.npz",
    "hello.wav",
  ]
  assert json.load(open(tmp_path / "out" / "face.json"))["seed"] == 3
  bad = subprocess.run(
    base + ["--task=dub", "--text=hi", f"--motion={tmp_path / 'none.npz'}"],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  assert bad.returncode == 1 and "input error: --task=dub: motion:" in bad.stderr and "does not exist" in bad.stderr


def test_jobs_batched_equal_each_job_alone(pipe, tmp_path):
  """Jobs sharing sampler calls (seeds per row) give what each gives alone; a bad job fails alone, named."""
  audio = _wav(tmp_path / "s.wav", 0.4)
  motion, _ = _motion_npz(tmp_path / "m.npz", 12, pipe)
  jobs = [
    {"task": "tts", "text": "a b c.", "seed": 1, **FAST},
    {"task": "tts", "text": "a b c.", "seed": 2, **FAST},
    {"task": "tts", "text": "d e.", "seed": 1, "with_motion": False, **FAST},
    {"task": "tts", "text": "d e f g h i j k l m n o p q r s t u.", "seed": 5, **FAST},  # long form: 2 chunks
    {"task": "a2m", "audio": audio, "seed": 3, **FAST},
    {"task": "dub", "motion": motion, "text": "hi.", **FAST},
    {"task": "dub", "motion": str(tmp_path / "missing.npz"), "text": "hi.", **FAST},
    {"task": "tts", "text": "x y z.", "seed": 4, **FAST},
  ]
  wheres = [f"job {i}" for i in range(len(jobs))]
  batched = generate.run_jobs(pipe, jobs, wheres, batch=4)
  assert isinstance(batched[6], InputError) and str(batched[6]).startswith("job 6: motion:")
  for i, (job, got) in enumerate(zip(jobs, batched)):
    if i == 6:
      continue
    alone = generate.run_job(pipe, job, where=wheres[i])
    assert got.info["seed"] == alone.info["seed"]
    # Equal to f32 rounding: XLA may order a larger batch's sums differently, never mixing rows. (The
    # wav is Griffin-Lim's of the mel, whose phase iterations magnify those last bits.)
    assert got.wav.shape == alone.wav.shape
    for name in ("mel", "motion"):
      a, b = getattr(got, name), getattr(alone, name)
      if b is None:
        assert a is None
      else:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(np.abs(b).max())))
