"""benchmarks.device_suite on a CPU: quick mode runs every section it is given at small shapes, the
rows that need a GPU (or torch + f5-tts) say so, a section that fails or overruns is one row and the
suite goes on, and the goals table is computed from the rows of the same run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _suite(tmp_path, *flags):
  # One device, as the suite is meant for (one GPU): not the 8 simulated ones of the other tests.
  xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
  env = {**os.environ, "XLA_FLAGS": xla_flags, "JAMFLOW_CACHE": str(tmp_path / "cache"), "JAMFLOW_F5_PYTHON": ""}
  return subprocess.run(
    [sys.executable, "-m", "benchmarks.device_suite", *flags],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_quick_suite_rows_and_ratios(tmp_path):
  out = tmp_path / "suite.json"
  done = _suite(tmp_path, "--sections=attention,f5", f"--json={out}")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "quick mode" in done.stdout and "goal" in done.stdout
  device, *rows = json.loads(out.read_text())
  assert device == {"device": {"platform": "cpu", "kind": "cpu", "count": 1}, "quick": True}
  goals = [r for r in rows if "goal" in r]
  rows = [r for r in rows if "section" in r]
  attention = {r["impl"]: r for r in rows if r["section"] == "attention"}
  assert attention["cudnn"]["note"] == attention["cudnn_full"]["note"] == "needs a GPU"
  assert attention["xla"]["x_xla"] == 1.0 and attention["pallas"]["x_xla"] > 0
  assert attention["pallas"]["fwd+bwd_ms"] > 0 and 0 < attention["pallas"]["blocks_visited"] <= 1
  ours = [r for r in rows if r["section"] == "f5" and r["framework"] == "ours"]
  assert [r["impl"] for r in ours] == ["xla"] and ours[0]["step_ms"] > 0  # interpreted pallas is no speed figure
  assert all(r["dtype"] == "float32" and r["batch"] == 2 and r["frames"] == 64 for r in ours)
  theirs = [r for r in rows if r["section"] == "f5" and r["framework"] == "f5-tts"]
  if "step_ms" in theirs[0]:  # torch and f5-tts importable here: the ratio is computed
    assert all(r["ours/f5"] == pytest.approx(r["step_ms"] / theirs[0]["step_ms"]) for r in ours)
  else:
    assert theirs[0]["note"].startswith("needs torch and f5-tts")
  assert len(goals) == 5 and all(g["met"].startswith("quick mode") for g in goals)


def test_a_section_that_overruns_is_a_row(tmp_path):
  out = tmp_path / "suite.json"
  done = _suite(tmp_path, "--sections=train", "--timeout_s=1", f"--json={out}")
  assert done.returncode == 0, done.stderr[-2000:]
  _, row, *_ = json.loads(out.read_text())
  assert row == {"section": "train", "note": "stopped after 1 s (--timeout_s)"}


def test_bad_flags_are_one_line(tmp_path):
  done = _suite(tmp_path, "--sections=train,speed")
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
    "flag error: --sections: unknown speed; choose from train, f5, attention, sampling"
  ]
  done = _suite(tmp_path, f"--f5_python={tmp_path / 'none'}")
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].startswith("flag error: --f5_python=")


def test_goals_from_full_rows():
  from benchmarks import device_suite

  rows = [
    {"section": "train", "preset": "base", "impl": "xla", "MFU": 0.31},
    {"section": "train", "preset": "base", "impl": "pallas", "MFU": 0.47},
    {"section": "f5", "framework": "ours", "impl": "pallas", "ours/f5": 0.74},
    {"section": "attention", "preset": "base", "L": 4096, "impl": "pallas", "x_xla": 2.5, "x_cudnn_full": 0.6},
    {"section": "attention", "preset": "demo", "L": 4096, "impl": "pallas", "x_xla": 9.0, "x_cudnn_full": 0.9},
    {"section": "sampling", "guidance": "text", "nfe": 32, "rtf": 0.02},
  ]
  goals = {g["goal"]: (g["measured"], g["met"]) for g in device_suite.goals(rows, quick=False)}
  assert list(goals.values()) == [(0.47, "true"), (0.74, "false"), (2.5, "true"), (0.6, "false"), (0.02, "true")]
  assert all(g["met"] == "not measured" for g in device_suite.goals([], quick=False))
