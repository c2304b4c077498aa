"""Evaluation: energy from the log mel, the scores and baselines, --mode=eval, and eval during training."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import sources
from jamflow_jax.eval import evaluate
from jamflow_jax.motion import face

from conftest import train_tiny_workdir


def test_speech_energy_from_the_log_mel():
  # Two mel frames per motion frame; power is exp(2 mel) summed over bins.
  mel = np.log(np.array([[1.0, 1.0], [3.0, 1.0], [0.0, 0.0], [0.0, 0.0]]) + 1e-30)
  energy = evaluate.speech_energy(mel, 2, mel_fps=2.0, fps=1.0)
  np.testing.assert_allclose(energy, [10 * np.log10(6.0), 10 * np.log10(6.0) - 60.0], rtol=1e-9)


def _read_events(directory):
  """Tags of the scalar, image and audio summaries in a TensorBoard event directory."""
  from tensorboardX.proto.event_pb2 import Event

  tags = set()
  for name in os.listdir(directory):
    data = open(os.path.join(directory, name), "rb").read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      tags.update(v.tag for v in event.summary.value)
  return tags


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """Evaluated during training, every step of two."""
  return train_tiny_workdir(
    tmp_path_factory.mktemp("evaluate"), eval__every_steps=2, eval__train_examples=2, sample__nfe=2
  )


def test_training_writes_evaluations_to_tensorboard(workdir):
  tags = _read_events(workdir / "tensorboard")
  assert {
    "eval/a2m/jaw_corr",
    "eval/a2m/lip_mae",
    "eval/a2m/lve",
    "eval/joint/mel_l1",
    "eval/dub/mcd",
    "eval/a2m/video",
    "eval/a2m/audio",
    "eval/a2m/plot",
  } <= tags


def test_evaluator_scores_the_model_beside_the_baselines(workdir):
  from configs.base import get_config
  from jamflow_jax.generate import Pipeline

  config = get_config("tiny")
  config.data.path = str(workdir.parent / "corpus")
  config.sample.nfe = 2
  pipe = Pipeline.from_workdir(workdir, config)
  records = sources.validation_records(config, 3)
  assert len(records) == 3
  out = evaluate.Evaluator(pipe, face.load_face()).evaluate(records)
  a2m, joint, dub = (out["results"][t] for t in ("a2m", "joint", "dub"))
  assert set(a2m) == {"model", "mean", "truth"} and set(joint) == set(dub) == {"model", "truth"}
  truth = a2m["truth"]
  assert truth["jaw_corr"] == pytest.approx(1.0) and truth["lip_mae"] == truth["lve"] == truth["mve"] == 0.0
  assert a2m["mean"]["jaw_corr"] == 0.0 and a2m["mean"]["lip_mae"] > 0 and a2m["model"]["lve"] > 0
  assert joint["truth"]["mel_l1"] == dub["truth"]["mcd"] == 0.0 and joint["model"]["mel_l1"] > 0
  assert -5 <= a2m["model"]["sync_offset"] <= 5
  gen_mel, gen_motion = out["first"]["a2m"]
  np.testing.assert_array_equal(gen_mel, records[0]["mel"].astype(np.float32))  # a2m keeps the audio
  assert gen_motion.shape == (pipe.motion_frames(gen_mel.shape[0]), 61)
  text = evaluate.table(out["results"])
  assert "a2m" in text.splitlines()[1] and "jaw_corr" in text.splitlines()[0]


def test_main_eval_writes_the_report_and_the_video(workdir):
  args = [
    sys.executable,
    "-m",
    "jamflow_jax.main",
    "--config=configs/base.py:tiny",
    f"--workdir={workdir}",
    "--mode=eval",
    f"--config.data.path={workdir.parent / 'corpus'}",
    "--config.eval.num_examples=2",
    "--config.sample.nfe=2",
  ]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  files = sorted(os.listdir(workdir / "eval"))
  assert files == ["step_2.json", "step_2.txt", "step_2_a2m.mp4", "step_2_a2m.png"]
  report = json.load(open(workdir / "eval" / "step_2.json"))
  assert report["num_examples"] == 2 and report["face_model"] == "stand-in"
  assert report["results"]["a2m"]["truth"]["jaw_corr"] == pytest.approx(1.0)
  assert "jaw_corr" in done.stdout
