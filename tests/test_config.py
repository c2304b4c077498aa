import subprocess
import sys

import pytest

from configs.base import PRESETS, get_config
from jamflow_jax.config import ConfigError, motion_frames, validate


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_validate(preset, tmp_path):
  config = get_config(preset)
  if preset == "f5":  # needs F5-TTS's vocab.txt (2545 tokens)
    (tmp_path / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(2545)))
    config.model.text_vocab = str(tmp_path / "vocab.txt")
  validate(config, 8)
  assert config.preset == preset


def test_default_is_paper_scale():
  m = get_config().model
  assert (m.audio_width, m.depth, m.heads, m.ff_mult, m.text_dim, m.text_conv_layers) == (1024, 22, 16, 2, 512, 4)
  assert len(m.joint_layers) == m.depth // 2


def test_motion_frames_follow_the_contract():
  config = get_config("tiny")
  # T_m = ceil(T_a * 25 / 93.75): 375 mel frames are exactly 100 motion frames, one more is 101.
  assert motion_frames(config, 375) == 100
  assert motion_frames(config, 376) == 101


@pytest.mark.parametrize(
  "override, message",
  [
    (lambda c: setattr(c.model, "joint_layers", (0, 5)), "model.joint_layers (0, 5) out of range for model.depth=2"),
    (lambda c: setattr(c.mesh, "shape", (3, 1, 1)), "mesh.shape (3, 1, 1) needs 3 devices but 8 are present"),
    (lambda c: setattr(c.mesh, "shape", (-1, 3, 1)), "does not divide the 8 devices"),
    (lambda c: setattr(c.data, "motion_fps", 200.0), "inconsistent frame rates"),
    (lambda c: setattr(c.train, "batch_size", 6), "train.batch_size=6 is not divisible by the 8 batch shards"),
    (lambda c: setattr(c.model, "attention_impl", "flash"), "model.attention_impl='flash'"),
    (lambda c: setattr(c.model, "attention_backend", "cuda"), "model.attention_backend='cuda'; available: auto"),
    (lambda c: setattr(c.model, "attention_block_q", 24), "model.attention_block_q=24 must be 0"),
    (lambda c: setattr(c.flow, "span_min", 0.0), "flow.span_min=0.0"),
    *(
      (lambda c, v=v: setattr(c.train, "profile_steps", v), f"train.profile_steps={v!r}: give START,END")
      for v in ("5,2", "0,3", "3", "a,b")
    ),
  ],
)
def test_bad_configs_fail_with_a_clear_message(override, message):
  config = get_config("tiny")
  override(config)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validate(config, 8)


def test_unknown_preset():
  with pytest.raises(ConfigError, match="unknown preset 'huge'.*base, demo, tiny"):
    get_config("huge")


@pytest.mark.parametrize(
  "args, message",
  [
    (["--config=configs/base.py:huge"], "config error: unknown preset 'huge'"),
    (
      ["--config=configs/base.py:tiny", "--config.model.joint_layers=(7,)"],
      "config error: model.joint_layers (7,) out of range",
    ),
    (
      ["--config=configs/base.py:tiny", "--config.data.path=/nowhere"],
      "config error: data.path='/nowhere': /nowhere is not a jamflow corpus",
    ),
    (
      ["--config=configs/base.py:tiny", "--config.train.profile_steps=5,2"],
      "config error: train.profile_steps='5,2': give START,END, steps with 1 <= START <= END ('' = none)",
    ),
  ],
)
def test_main_reports_bad_configs_in_one_line(tmp_path, args, message):
  proc = subprocess.run(
    [sys.executable, "-m", "jamflow_jax.main", f"--workdir={tmp_path}", *args],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(message), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
