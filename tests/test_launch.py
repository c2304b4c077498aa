"""The launchers, run with fake `gcloud`, `srun`, `xpk`, `uv` and `python3` on PATH.

Each fake records its arguments (NUL-separated, exact); the TPU launcher's remote command is then run
for two simulated workers, so what reaches `jamflow_jax.main` on a worker is asserted word for word.
"""

import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.train.num_steps=10", "--config.data.path=/data/my corpus"]  # a space survives
RECORD = 'printf "%s\\0" "$@" > "$CALLS/$(basename "$0").$(date +%s%N)"\n'


def _fake(bin_dir, name: str, body: str = "") -> None:
  path = bin_dir / name
  path.write_text("#!/usr/bin/env bash\nset -eu\n" + RECORD + body)
  path.chmod(0o755)


def _calls(calls, name: str) -> list[list[str]]:
  """Every recorded call of `name`, in order, as argument lists."""
  files = sorted(f for f in os.listdir(calls) if f.rsplit(".", 1)[0] == name)
  return [(calls / f).read_text().split("\0")[:-1] for f in files]


@pytest.fixture
def fakes(tmp_path):
  calls, bin_dir = tmp_path / "calls", tmp_path / "bin"
  calls.mkdir()
  bin_dir.mkdir()
  env = dict(os.environ, CALLS=str(calls), PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
  for key in ("SLURM_NTASKS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "LAYOUT", "VENV", "DRY_RUN"):
    env.pop(key, None)
  return tmp_path, calls, bin_dir, env


def _launch(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
  return subprocess.run(
    ["bash", os.path.join(ROOT, "launch", script), *args], env=env, capture_output=True, text=True, timeout=120
  )


def test_tpu_pod_copies_the_checkout_sets_up_python_3_11_and_runs_main_on_every_worker(fakes):
  tmp, calls, bin_dir, env = fakes
  workers = [tmp / "worker0", tmp / "worker1"]
  for home in workers:
    home.mkdir()
  # gcloud: scp copies to every worker's home; ssh runs the command on every worker (bash, its HOME).
  _fake(
    bin_dir,
    "gcloud",
    f"""
workers=({" ".join(map(str, workers))})
case "$4" in
  scp) for w in "${{workers[@]}}"; do cp "$5" "$w/${{6#*:}}"; done ;;
  ssh) for a in "$@"; do [[ "$a" == --command=* ]] && cmd=${{a#--command=}}; done
       for w in "${{workers[@]}}"; do HOME="$w" WORKER="$w" bash -c "$cmd"; done ;;
esac
""",
  )
  _fake(bin_dir, "python3")  # pip install --user uv
  # uv venv makes an interpreter that records what it is asked to run, per worker.
  _fake(
    bin_dir,
    "uv",
    """
if [[ "$1" == venv ]]; then mkdir -p .venv/bin
  printf '#!/usr/bin/env bash\\nprintf "%%s\\\\0" "$@" > "$WORKER/main.args"\\n' > .venv/bin/python
  chmod +x .venv/bin/python; fi
""",
  )
  result = _launch(
    "tpu_pod.sh", "my-tpu", "us-central2-b", "demo", "gs://bucket/run", *OVERRIDES, env=dict(env, PROJECT="my-project")
  )
  assert result.returncode == 0, result.stderr
  scp, ssh = _calls(calls, "gcloud")
  flags = ["--zone=us-central2-b", "--worker=all", "--project=my-project"]
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and scp[5:] == ["my-tpu:jamflow_jax_src.tgz", *flags]
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and ssh[5:8] == flags
  uv = _calls(calls, "uv")
  assert ["venv", "--quiet", "--python", "3.11", ".venv"] in uv
  assert ["pip", "install", "--quiet", "--python", ".venv/bin/python", "-e", ".[tpu]"] in uv
  for home in workers:
    assert (home / "jamflow_jax" / "jamflow_jax" / "main.py").is_file()  # the checkout arrived
    assert not (home / "jamflow_jax" / ".jax_cache").exists()  # what git ignores did not
    args = (home / "main.args").read_text().split("\0")[:-1]
    assert args == ["-m", "jamflow_jax.main", "--config=configs/base.py:demo", "--workdir=gs://bucket/run", *OVERRIDES]


def test_tpu_pod_without_overrides_passes_none_and_dry_run_only_prints(fakes):
  _, calls, bin_dir, env = fakes
  _fake(bin_dir, "gcloud")
  result = _launch("tpu_pod.sh", "my-tpu", "europe-west4-a", "base", "gs://b/r", env=dict(env, DRY_RUN="1"))
  assert result.returncode == 0, result.stderr
  assert _calls(calls, "gcloud") == []  # printed, not run
  # The printed line is bash-quoted ($'...' for the multi-line command): let bash split it.
  ssh = subprocess.run(
    ["bash", "-c", 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', "-", result.stdout.strip().splitlines()[-1]],
    capture_output=True,
    text=True,
  ).stdout.split("\0")
  assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  command = next(a for a in ssh if a.startswith("--command="))
  assert command.endswith("-m jamflow_jax.main --config=configs/base.py:base --workdir=gs://b/r")
  assert subprocess.run(["bash", "-n", "-c", command.removeprefix("--command=")]).returncode == 0


def _slurm(fakes, *, layout=None, gpus=None, venv_exists=True):
  tmp, calls, bin_dir, env = fakes
  venv = tmp / "venv"
  if venv_exists:
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "python").chmod(0o755)
  _fake(bin_dir, "srun")
  _fake(bin_dir, "python3")
  env = dict(env, VENV=str(venv), SLURM_SUBMIT_DIR=ROOT, SLURM_NTASKS="16", HOME=str(tmp))
  if layout:
    env["LAYOUT"] = layout
  if gpus:
    env["SLURM_GPUS_ON_NODE"] = gpus
  return _launch("slurm_gpu.sbatch", "base", "/shared/run", *OVERRIDES, env=env), calls, venv


def test_slurm_one_process_per_gpu(fakes):
  result, calls, venv = _slurm(fakes)
  assert result.returncode == 0, result.stderr
  assert _calls(calls, "srun") == [
    [
      "--kill-on-bad-exit=1",
      f"{venv}/bin/python",
      "-m",
      "jamflow_jax.main",
      "--config=configs/base.py:base",
      "--workdir=/shared/run",
      *OVERRIDES,
    ]
  ]
  assert _calls(calls, "python3") == []  # the environment exists: nothing installed


def test_slurm_one_process_per_node_drives_all_its_gpus(fakes):
  result, calls, venv = _slurm(fakes, layout="per_node", gpus="8")
  assert result.returncode == 0, result.stderr
  (srun,) = _calls(calls, "srun")
  assert srun[-len(OVERRIDES) - 1 :] == ["--local_device_ids=0,1,2,3,4,5,6,7", *OVERRIDES]


def test_slurm_per_node_without_a_gpu_count_and_unknown_layouts_are_one_line(fakes):
  result, calls, _ = _slurm(fakes, layout="per_node")
  assert result.returncode == 2 and "SLURM_GPUS_ON_NODE" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and _calls(calls, "srun") == []
  result, _, _ = _slurm(fakes, layout="per_rack")
  assert result.returncode == 2 and "per_gpu or per_node" in result.stderr


def test_slurm_installs_gpu_jax_into_a_new_environment(fakes):
  tmp, _, _, _ = fakes
  (tmp / ".local" / "bin").mkdir(parents=True)
  _fake(tmp / ".local" / "bin", "uv")  # where `pip install --user uv` puts it
  result, calls, venv = _slurm(fakes, venv_exists=False)
  assert result.returncode == 0, result.stderr
  assert _calls(calls, "python3") == [["-m", "pip", "install", "--quiet", "--user", "uv>=0.5"]]
  assert _calls(calls, "uv") == [
    ["venv", "--quiet", "--python", "3.11", str(venv)],
    ["pip", "install", "--quiet", "--python", f"{venv}/bin/python", "-e", f"{ROOT}[cuda]"],
  ]
  assert len(_calls(calls, "srun")) == 1


def test_xpk_creates_a_workload_with_the_checkout_on_python_3_11(fakes):
  _, calls, bin_dir, env = fakes
  _fake(bin_dir, "xpk")
  result = _launch(
    "xpk.sh",
    "my-cluster",
    "v5p-32",
    "base",
    "gs://bucket/run",
    *OVERRIDES,
    env=dict(env, WORKLOAD="jamflow-test", NUM_SLICES="2", ZONE="us-east5-a"),
  )
  assert result.returncode == 0, result.stderr
  (xpk,) = _calls(calls, "xpk")
  assert xpk[:-1] == [
    "workload",
    "create",
    "--cluster=my-cluster",
    "--workload=jamflow-test",
    "--tpu-type=v5p-32",
    "--num-slices=2",
    "--base-docker-image=python:3.11-slim",
    f"--script-dir={ROOT}",
    "--zone=us-east5-a",
  ]
  command = xpk[-1].removeprefix("--command=")
  install, run = command.split(" && ")
  assert install == "python3 -m pip install --quiet -e '.[tpu]'"
  assert shlex.split(run) == [
    "exec",
    "python3",
    "-m",
    "jamflow_jax.main",
    "--config=configs/base.py:base",
    "--workdir=gs://bucket/run",
    *OVERRIDES,
  ]


def test_xpk_refuses_a_local_workdir(fakes):
  _, calls, bin_dir, env = fakes
  _fake(bin_dir, "xpk")
  result = _launch("xpk.sh", "my-cluster", "v5p-32", "base", "/tmp/run", env=env)
  assert result.returncode == 2 and "gs://" in result.stderr and _calls(calls, "xpk") == []
