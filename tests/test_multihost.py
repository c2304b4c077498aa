"""Real multi-process runs: N processes on 127.0.0.1 through jax.distributed and the real
`jamflow_jax.main` (gloo collectives on CPU), against one process with as many devices.

Training with the data, the fsdp and the tensor axis across processes and with fsdp and tensor both
across (every process's loss equals the single-process loss); evaluation during training with the
parameters split over processes; kill -9 of every process and resume; --mode=eval and --mode=sample.
Every launch is bounded by a timeout, so a hang fails instead of blocking CI.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import write_random_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
STEPS = 4
# One length bucket, a 2-utterance a2m evaluation at the last step with 2 solver steps: small programs.
TINY = [
  "--config=configs/base.py:tiny",
  "--config.data.max_mel_frames=32",
  f"--config.train.num_steps={STEPS}",
  "--config.checkpoint.every_steps=2",
  "--config.train.log_every_steps=1",
  "--config.eval.tasks=('a2m',)",
  "--config.eval.train_examples=2",
  "--config.eval.num_examples=2",
  "--config.eval.render=False",
  "--config.sample.nfe=2",
  "--config.sample.video=False",
  # 4 heads, so that the tensor axis can span 4 devices.
  "--config.model.heads=4",
  "--config.model.head_dim=8",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """A one-bucket corpus, a compilation cache for every launch, and the 1 process x 4 devices run."""
  root = tmp_path_factory.mktemp("multihost")
  write_random_corpus(root / "corpus", 24, min_frames=20, max_frames=30)
  env = {
    "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
    # Unoptimised CPU code compiles in half the time; every run of the comparison uses it.
    "EXTRA_XLA": "--xla_backend_optimization_level=0",
  }
  _run(root, env, "single", 1, 4, "(4,1,1)", f"--config.eval.every_steps={STEPS}")
  return root, env, _metrics(root, "single", 1)[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(
  root, env, name: str, processes: int, devices: int, *args: str, mode: str = "train"
) -> list[subprocess.Popen]:
  """`processes` x `devices` running main on workdir root/name (metrics into root/name-P.jsonl)."""
  port, procs = _free_port(), []
  for p in range(processes):
    # Every program cached, however quick to compile: a resumed run or another mode recompiles nothing.
    penv = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=env["JAX_COMPILATION_CACHE_DIR"],
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {env['EXTRA_XLA']}",
    )
    cmd = [
      sys.executable,
      "-m",
      "jamflow_jax.main",
      *TINY,
      f"--mode={mode}",
      f"--workdir={root / name}",
      f"--config.data.path={root / 'corpus'}",
      f"--config.train.metrics_file={root / name}-{{process}}.jsonl",
      *args,
    ]
    if processes > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={p}"]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return procs


def _finish(procs: list[subprocess.Popen]) -> list[str]:
  """Each process's output; asserts every one exited 0 within TIMEOUT_S."""
  try:
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-3000:]}"
  return logs


def _run(root, env, name, processes, devices, mesh, *args, mode="train") -> list[str]:
  return _finish(_start(root, env, name, processes, devices, f"--config.mesh.shape={mesh}", *args, mode=mode))


def _metrics(root, name: str, processes: int) -> dict[int, dict]:
  """{process: {"losses": {step: loss} (the last value of a step run twice), "eval": {step: scores}}}."""
  out = {}
  for p in range(processes):
    losses, evals = {}, {}
    with open(root / f"{name}-{p}.jsonl") as f:
      for line in f:
        record = json.loads(line)
        losses.update({int(s): v for s, v in record.get("losses", {}).items()})
        if "eval" in record:
          evals[record["step"]] = record["eval"]
    out[p] = {"losses": losses, "eval": evals}
  return out


def _assert_losses_equal(multi: dict, reference: dict) -> None:
  for p, got in multi.items():
    assert sorted(got["losses"]) == list(range(1, STEPS + 1)), p
    for step, loss in got["losses"].items():
      assert loss == pytest.approx(reference["losses"][step], rel=1e-5, abs=1e-6), (p, step)
  assert len({tuple(sorted(m["losses"].items())) for m in multi.values()}) == 1  # every process agrees


def _assert_scores_equal(got: dict, want: dict) -> None:
  assert got.keys() == want.keys()
  for task in want:
    for name, value in want[task]["model"].items():
      assert got[task]["model"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (task, name)


def test_data_axis_across_processes_trains_like_one_process(shared):
  # (4,1,1) over 2 processes x 2 devices: each process loads its own half of every batch.
  root, env, reference = shared
  _run(root, env, "data", 2, 2, "(4,1,1)")
  _assert_losses_equal(_metrics(root, "data", 2), reference)


def test_fsdp_across_processes_trains_evaluates_and_samples_like_one_process(shared):
  # (1,4,1) over 2 processes x 2 devices: parameters are split over both processes' devices.
  root, env, reference = shared
  _run(root, env, "fsdp", 2, 2, "(1,4,1)", f"--config.eval.every_steps={STEPS}")
  multi = _metrics(root, "fsdp", 2)
  _assert_losses_equal(multi, reference)
  for p in multi:  # evaluation during training: every process takes part, the same scores
    _assert_scores_equal(multi[p]["eval"][STEPS], reference["eval"][STEPS])

  # --mode=eval: every process restores and scores; process 0 alone writes the report.
  logs = _run(root, env, "fsdp", 2, 2, "(1,4,1)", mode="eval")
  with open(root / "fsdp" / "eval" / f"step_{STEPS}.json") as f:
    report = json.load(f)
  assert report["step"] == STEPS and report["num_examples"] == 2
  _assert_scores_equal(report["results"], reference["eval"][STEPS])
  assert "a2m" in logs[0] and "writes the report" in logs[1]

  # --mode=sample: the same sample on every process, written once.
  logs = _run(root, env, "fsdp", 2, 2, "(1,4,1)", "--task=tts", "--text=hi.", "--name=hi", mode="sample")
  samples = sorted(os.listdir(root / "fsdp" / "samples"))
  assert samples == ["hi.json", "hi.npz", "hi.wav"], samples
  assert "writes the samples" in logs[1]


def _kill_at_checkpoint(procs: list[subprocess.Popen], checkpoint) -> None:
  """SIGKILL every process once `checkpoint` is committed (Orbax renames it into place)."""
  deadline = time.monotonic() + TIMEOUT_S
  while not checkpoint.is_dir() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.02)
  for p in procs:
    p.kill()  # every process, wherever it is
  for p in procs:
    p.wait()
  assert checkpoint.is_dir(), "the run ended before its checkpoint"


def test_tensor_axis_across_processes_trains_like_one_process_and_resumes_after_kill_9(shared):
  # (1,1,4) over 2 processes x 2 devices: each process holds 2 of the 4 replicas of every row, so
  # both load the whole batch.
  root, env, reference = shared
  _kill_at_checkpoint(
    _start(root, env, "tensor", 2, 2, "--config.mesh.shape=(1,1,4)"), root / "tensor" / "checkpoints" / "2"
  )
  logs = _run(root, env, "tensor", 2, 2, "(1,1,4)")
  assert all("resumed from" in log for log in logs)
  _assert_losses_equal(_metrics(root, "tensor", 2), reference)


def test_fsdp_and_tensor_across_processes_train_like_one_process(shared):
  # (1,2,2) over 4 processes of 1 device (the mesh that once trained on half the batch): pairs of
  # processes hold the same rows, each one of a row's two replicas.
  root, env, reference = shared
  _run(root, env, "mixed", 4, 1, "(1,2,2)")
  _assert_losses_equal(_metrics(root, "mixed", 4), reference)


def test_a_mesh_the_model_cannot_be_split_over_is_one_config_error(tmp_path):
  # 8-way tensor parallelism over 4 heads.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "jamflow_jax.main",
      *TINY,
      "--config.data.source=synthetic",
      f"--workdir={tmp_path / 'w'}",
      "--config.mesh.shape=(1,1,8)",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("config error:") and "tensor" in lines[-1], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
