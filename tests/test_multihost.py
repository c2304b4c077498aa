"""Real multi-process training: N processes on 127.0.0.1 through jax.distributed and the real
`jamflow_jax.main` (gloo collectives on CPU), against one process with as many devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import write_random_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # a hang fails the test instead of blocking CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(root, name: str, processes: int, devices: int, mesh: str, corpus) -> dict[int, dict[int, float]]:
  """Trains the tiny preset for 4 steps as `processes` x `devices`; -> {process: {step: loss}}."""
  port, procs = _free_port(), []
  metrics = root / f"{name}-{{process}}.jsonl"
  for p in range(processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "jamflow_jax.main", "--config=configs/base.py:tiny", f"--workdir={root / name}",
           f"--config.data.path={corpus}", "--config.train.num_steps=4", "--config.checkpoint.every_steps=2",
           "--config.train.log_every_steps=1", f"--config.train.metrics_file={metrics}",
           f"--config.mesh.shape={mesh}"]
    if processes > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={p}"]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  try:
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  out = {}
  for p in range(processes):
    with open(str(metrics).format(process=p)) as f:
      out[p] = {int(s): v for line in f for s, v in json.loads(line)["losses"].items()}
  return out


@pytest.mark.parametrize("processes,devices,mesh", [(4, 1, "(1,2,2)")])
def test_model_axis_across_processes_trains_like_one_process(tmp_path, processes, devices, mesh):
  # (1,2,2) over 4 processes of 1 device: fsdp and tensor both span processes, so pairs of processes
  # hold the same batch rows (the case that once trained on half a batch without an error).
  corpus = tmp_path / "corpus"
  write_random_corpus(corpus, 24, min_frames=20, max_frames=45)
  reference = _launch(tmp_path, "single", 1, processes * devices, "(4,1,1)", corpus)[0]
  assert sorted(reference) == [1, 2, 3, 4]
  multi = _launch(tmp_path, "multi", processes, devices, mesh, corpus)
  for p, losses in multi.items():
    assert sorted(losses) == sorted(reference), p
    for step, loss in losses.items():
      assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (p, step)
  assert len({tuple(sorted(losses.items())) for losses in multi.values()}) == 1  # every process agrees
