"""Faults an unlucky operator meets, through the real `jamflow_jax.main`: kill -9 during an async save,
SIGTERM, damaged checkpoints, a full disk, a second run on the same workdir, a refused resume, NaN.

Each run is one process on one CPU device with a shared compilation cache; losses are read from
train.metrics_file and compared bit for bit with one uninterrupted run.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from checkpoint_files import data_files, flip_bytes, largest_data_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 30, 10
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


def _command(workdir, *args, steps=STEPS, metrics=None, mode="train"):
  metrics = metrics or f"{workdir}.jsonl"
  return [
    sys.executable,
    "-m",
    "jamflow_jax.main",
    "--config=configs/base.py:tiny",
    f"--mode={mode}",
    "--config.data.source=synthetic",
    f"--config.train.num_steps={steps}",
    f"--config.checkpoint.every_steps={EVERY}",
    "--config.train.log_every_steps=1",
    f"--config.train.metrics_file={metrics}",
    "--config.sample.video=False",
    "--config.sample.nfe=2",
    f"--workdir={workdir}",
    *args,
  ]


def _env(cache):
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="",
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )


def _main(cache, workdir, *args, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(
    _command(workdir, *args, **kw), cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=TIMEOUT_S
  )


def _start(cache, workdir, *args, **kw) -> subprocess.Popen:
  return subprocess.Popen(
    _command(workdir, *args, **kw),
    cwd=ROOT,
    env=_env(cache),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _losses(path) -> dict[int, float]:
  """{step: loss} from a metrics file (a step run twice: its last value)."""
  out = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        out.update({int(s): v for s, v in json.loads(line).get("losses", {}).items()})
  return out


def _one_error_line(result, prefix: str) -> str:
  assert result.returncode != 0, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(prefix), result.stderr[-2000:]
  return line


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
  """An uninterrupted run: its workdir (checkpoints 10, 20, 30) and its losses."""
  work = tmp_path_factory.mktemp("reference") / "work"
  result = _main(cache, work)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = _losses(f"{work}.jsonl")
  assert sorted(losses) == list(range(1, STEPS + 1))
  return work, losses


def _wait_for(condition, proc, what: str) -> None:
  deadline = time.monotonic() + TIMEOUT_S
  while not condition():
    assert proc.poll() is None, f"the run ended before {what}:\n{proc.stderr.read()[-3000:]}"
    assert time.monotonic() < deadline, f"no {what} within {TIMEOUT_S} s"
    time.sleep(0.002)


def test_kill_9_during_an_async_save_then_resume_is_bit_exact(cache, reference, tmp_path):
  work = tmp_path / "work"
  proc = _start(cache, work)
  _wait_for(lambda: glob.glob(f"{work}/checkpoints/*orbax-checkpoint-tmp*"), proc, "a save in progress")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first = _losses(f"{work}.jsonl")
  result = _main(cache, work)
  assert result.returncode == 0, result.stderr[-3000:]
  assert {**first, **_losses(f"{work}.jsonl")} == reference[1]


def test_sigterm_saves_at_the_next_step_exits_0_and_resume_is_bit_exact(cache, reference, tmp_path):
  work = tmp_path / "work"
  proc = _start(cache, work)
  _wait_for(lambda: len(_losses(f"{work}.jsonl")) >= 3, proc, "step 3")
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == 0, stderr[-3000:]
  stopped = [line for line in stderr.splitlines() if "stopped by SIGTERM at step" in line]
  assert len(stopped) == 1, stderr[-3000:]
  step = int(stopped[0].split("at step ")[1].split(",")[0])
  assert f"checkpoint at step {step}" in stderr and (work / "checkpoints" / str(step) / "state").is_dir()
  assert not glob.glob(f"{work}/checkpoints/*tmp*")
  result = _main(cache, work)
  assert result.returncode == 0 and f"at step {step}" in result.stderr, result.stderr[-3000:]
  assert _losses(f"{work}.jsonl") == reference[1]


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(cache, reference, tmp_path):
  # The distributed runtime's preemption sync point: every process saves the same step, then stops.
  work = tmp_path / "work"
  port = _free_port()

  def start():
    return [
      subprocess.Popen(
        _command(
          work,
          f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={p}",
          metrics=f"{work}-{{process}}.jsonl",
        ),
        cwd=ROOT,
        env=_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      )
      for p in (0, 1)
    ]

  procs = start()
  _wait_for(lambda: len(_losses(f"{work}-0.jsonl")) >= 3, procs[0], "step 3")
  procs[0].send_signal(signal.SIGTERM)
  logs = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  stopped = {
    line.split("at step ")[1].split(",")[0]
    for log in logs
    for line in log.splitlines()
    if "stopped by SIGTERM at step" in line
  }
  assert len(stopped) == 1, logs  # both processes, the same step
  port = _free_port()
  procs = start()
  logs = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:]
  for p in (0, 1):
    got = _losses(f"{work}-{p}.jsonl")
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == pytest.approx(reference[1], rel=1e-5)  # 2 devices: other reduction order


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _write_pickle(path):
  import pickle

  with open(path, "wb") as f:
    f.write(pickle.dumps({"__reduce__": "os.system"}) * 100)


DAMAGE = {
  "64 bytes flipped": lambda d: flip_bytes(largest_data_file(f"{d}/state")),
  "data file truncated": lambda d: _truncate(largest_data_file(f"{d}/state")),
  "data file replaced by a pickle": lambda d: _write_pickle(largest_data_file(f"{d}/state")),
  "_METADATA empty": lambda d: open(f"{d}/state/_METADATA", "w").close(),
  "_METADATA missing": lambda d: os.remove(f"{d}/state/_METADATA"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_is_set_aside_and_training_resumes_from_the_previous(
  cache, reference, tmp_path, damage
):
  work = tmp_path / "work"
  shutil.copytree(reference[0], work)
  DAMAGE[damage](work / "checkpoints" / str(STEPS))
  result = _main(cache, work, steps=STEPS, metrics=str(tmp_path / "resumed.jsonl"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint {STEPS} is damaged" in result.stderr, result.stderr[-3000:]
  assert f"moved to {work / 'checkpoints' / f'corrupt-{STEPS}'}" in result.stderr
  assert (work / "checkpoints" / f"corrupt-{STEPS}" / "state").is_dir()  # set aside, not deleted
  resumed = _losses(tmp_path / "resumed.jsonl")
  assert resumed == {s: reference[1][s] for s in range(STEPS - EVERY + 1, STEPS + 1)}


def test_sampling_a_damaged_checkpoint_falls_back_or_names_it(cache, reference, tmp_path):
  work = tmp_path / "work"
  shutil.copytree(reference[0], work)
  for path in data_files(work / "checkpoints" / str(STEPS) / "state"):  # the EMA weights' among them
    flip_bytes(path)
  args = ["--task=tts", "--text=hi.", f"--out={tmp_path / 'out'}"]
  line = _one_error_line(_main(cache, work, *args, f"--step={STEPS}", mode="sample"), "checkpoint error:")
  assert f"checkpoints/{STEPS}" in line
  result = _main(cache, work, *args, mode="sample")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint {STEPS} is damaged" in result.stderr and f"weights of step {STEPS - EVERY}" in result.stderr
  assert os.path.exists(tmp_path / "out" / "tts-seed0.wav")


def _small_disk(tmp_path):
  """A directory whose disk fills after about one checkpoint: a 3 MB tmpfs as root; otherwise one
  made read-only once the first checkpoint is in (a write failure all the same)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if os.geteuid() == 0:
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
      pytest.skip("root without permission to mount a tmpfs")
    return disk, "No space left on device"
  return disk, "Permission denied"


def test_a_failed_save_stops_the_run_in_one_line_and_keeps_the_earlier_checkpoints(cache, tmp_path):
  disk, error = _small_disk(tmp_path)
  work = disk / "work"
  try:
    if error == "Permission denied":
      proc = _start(cache, work, metrics=str(tmp_path / "m.jsonl"))
      _wait_for(
        lambda: (
          (work / "checkpoints" / str(EVERY) / "commit_success.txt").exists()
          or (work / "checkpoints" / str(EVERY) / "_CHECKPOINT_METADATA").exists()
        ),
        proc,
        "checkpoint 10",
      )
      os.chmod(work / "checkpoints", 0o555)
      proc.wait(timeout=TIMEOUT_S)
      result = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.read())
    else:
      result = _main(cache, work, metrics=str(tmp_path / "m.jsonl"))
    line = _one_error_line(result, f"checkpoint error: saving step {2 * EVERY}")
    assert error in line and f"checkpoints {EVERY} are in place" in line
    assert f"checkpoint at step {2 * EVERY}" not in result.stderr
    assert f"checkpoint at step {EVERY}" in result.stderr
    assert (work / "checkpoints" / str(EVERY) / "state").is_dir()
  finally:
    if error == "Permission denied":
      os.chmod(work / "checkpoints", 0o755)
    else:
      subprocess.run(["umount", str(disk)])


def test_a_second_run_on_a_workdir_is_refused_and_a_killed_runs_lock_is_taken_over(cache, tmp_path):
  work = tmp_path / "work"
  first = _start(cache, work, steps=100000)
  _wait_for(lambda: (work / "run.lock").exists() and len(_losses(f"{work}.jsonl")) >= 1, first, "training")
  line = _one_error_line(_main(cache, work, steps=100000), "workdir error:")
  assert f"pid {first.pid}" in line and "in use by another run" in line
  first.send_signal(signal.SIGKILL)
  first.wait()
  result = _main(cache, work, steps=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "taking over the stale lock" in result.stderr and not (work / "run.lock").exists()


def test_a_refused_resume_leaves_the_workdir_as_it_was(cache, reference, tmp_path):
  work = tmp_path / "work"
  shutil.copytree(reference[0], work)
  saved = (work / "config.json").read_bytes()
  line = _one_error_line(_main(cache, work, "--config.model.depth=3"), "config error:")
  assert "depth" in line
  assert (work / "config.json").read_bytes() == saved


def test_a_non_finite_loss_stops_the_run_naming_the_step_or_is_skipped(cache, tmp_path):
  blow_up = ["--config.optim.learning_rate=1e30", "--config.optim.warmup_steps=1"]
  result = _main(cache, tmp_path / "stop", *blow_up)
  line = _one_error_line(result, "training stopped: step ")
  assert "loss nan" in line or "loss inf" in line
  assert not glob.glob(f"{tmp_path}/stop/checkpoints/[0-9]*")  # the poison was never saved

  result = _main(cache, tmp_path / "skip", *blow_up, "--config.train.skip_nonfinite=True", steps=EVERY)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "update skipped" in result.stderr
  assert (tmp_path / "skip" / "checkpoints" / str(EVERY) / "state").is_dir()  # saved, finite (checked on save)
