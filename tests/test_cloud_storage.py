"""A gs:// workdir end to end against an in-memory GCS server (tests/gcs_emulator.py), offline:
train (checkpoints, config.json, motion statistics, TensorBoard with an evaluation), resume,
--mode=sample and --mode=eval, all in the bucket and nothing on the local disk."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import write_random_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--config=configs/base.py:tiny",
  "--config.data.max_mel_frames=32",
  "--config.checkpoint.every_steps=2",
  "--config.eval.every_steps=2",
  "--config.eval.tasks=('a2m',)",
  "--config.eval.train_examples=1",
  "--config.eval.num_examples=1",
  "--config.eval.render=False",
  "--config.sample.nfe=2",
  "--config.sample.video=False",
]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(environment pointing gcsfs and tensorstore at the server, a gcsfs filesystem on it)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"), str(port)],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  try:
    assert server.stdout.readline().strip() == "ready"
    url = f"http://127.0.0.1:{port}"
    # gcsfs' experimental bucket-layout lookup is a gRPC call to Google itself (no network here: it
    # waits for its timeouts); the emulator is a plain bucket.
    env = dict(
      os.environ,
      STORAGE_EMULATOR_HOST=url,
      TENSORSTORE_GCS_HTTP_URL=url,
      GOOGLE_CLOUD_PROJECT="test",
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
    )
    os.environ["STORAGE_EMULATOR_HOST"] = url  # for this process's gcsfs
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    import gcsfs

    yield env, gcsfs.GCSFileSystem(project="test", token="anon", skip_instance_cache=True)
  finally:
    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    os.environ.pop("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", None)
    server.kill()
    server.wait()


def _main(env, *args: str) -> str:
  result = subprocess.run(
    [sys.executable, "-m", "jamflow_jax.main", *TINY, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def test_a_gs_workdir_trains_resumes_samples_and_evaluates_in_the_bucket(gcs, tmp_path):
  env, fs = gcs
  write_random_corpus(tmp_path / "corpus", 16, min_frames=20, max_frames=30)
  run = ["--workdir=gs://bucket/run", f"--config.data.path={tmp_path / 'corpus'}"]
  _main(env, *run, "--config.train.num_steps=2")
  log = _main(env, *run, "--config.train.num_steps=3")
  assert "resumed from gs://bucket/run/checkpoints at step 2" in log
  _main(env, *run, "--mode=sample", "--task=tts", "--text=hi.", "--name=hi")
  _main(env, *run, "--mode=eval")

  assert json.loads(fs.cat("bucket/run/config.json"))["train"]["num_steps"] == 3
  assert set(json.loads(fs.cat("bucket/run/motion_stats.json"))) >= {"mean", "std"}
  steps = {p.rsplit("/", 1)[-1] for p in fs.ls("bucket/run/checkpoints")}
  assert {"2", "3"} <= steps, steps
  assert any("tfevents" in p for p in fs.find("bucket/run/tensorboard"))
  assert {p.rsplit("/", 1)[-1] for p in fs.ls("bucket/run/samples")} == {"hi.wav", "hi.npz", "hi.json"}
  assert fs.cat("bucket/run/samples/hi.wav")[:4] == b"RIFF"
  report = json.loads(fs.cat("bucket/run/eval/step_3.json"))
  assert report["step"] == 3 and "a2m" in report["results"]
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # never a local ./gs:/... directory
