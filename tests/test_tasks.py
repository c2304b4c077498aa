"""The task vocabulary (jamflow_jax.tasks), the motion normalisation and the one-line user errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from jamflow_jax import errors, tasks
from jamflow_jax.config import ConfigError, validate
from jamflow_jax.inference import Clip
from jamflow_jax.motion.stats import MotionStats

SPAN_A = np.array([0, 1, 1, 1, 0, 0], bool)
SPAN_M = np.array([0, 1, 1, 0], bool)
VALID_A = np.array([1, 1, 1, 1, 1, 0], bool)
VALID_M = np.array([1, 1, 1, 0], bool)


@pytest.mark.parametrize(
  "name, audio_gen, motion_gen, present",
  [
    ("joint", SPAN_A & VALID_A, SPAN_M & VALID_M, True),
    ("tts", SPAN_A & VALID_A, np.zeros(4, bool), False),
    ("a2m", np.zeros(6, bool), SPAN_M & VALID_M, True),
    ("dub", SPAN_A & VALID_A, np.zeros(4, bool), True),
  ],
)
def test_roles_follow_the_table(name, audio_gen, motion_gen, present):
  r = tasks.roles(tasks.index(name), SPAN_A, SPAN_M, VALID_A, VALID_M)
  np.testing.assert_array_equal(r.audio_gen, audio_gen)
  np.testing.assert_array_equal(r.audio_given, VALID_A & ~audio_gen)  # every other valid frame is given
  np.testing.assert_array_equal(r.motion_gen, motion_gen)
  np.testing.assert_array_equal(r.motion_given, VALID_M & ~motion_gen & present)
  assert bool(r.motion_present) is present


def test_roles_of_a_batch_under_jit_equal_each_example_in_numpy():
  ids = np.arange(len(tasks.TASKS), dtype=np.int32)
  b = ids.size
  batched = jax.jit(tasks.roles)(
    jnp.asarray(ids), *(jnp.asarray(np.broadcast_to(x, (b, x.size))) for x in (SPAN_A, SPAN_M, VALID_A, VALID_M))
  )
  for i in ids:
    one = tasks.roles(int(i), SPAN_A, SPAN_M, VALID_A, VALID_M)
    for field in ("audio_gen", "audio_given", "motion_gen", "motion_given", "motion_present"):
      np.testing.assert_array_equal(np.asarray(getattr(batched, field))[i], getattr(one, field))


def test_unknown_task_names_the_choices():
  with pytest.raises(ValueError, match="task 'm2a'; the tasks are joint, tts, a2m, dub"):
    tasks.index("m2a")


def test_clip_of_an_edit_keeps_everything_outside_the_span():
  mel, motion = np.zeros((6, 100), np.float32), np.zeros((4, 61), np.float32)
  clip = Clip.of("dub", text="hi", mel=mel, motion=motion, span_a=SPAN_A, span_m=SPAN_M)
  np.testing.assert_array_equal(clip.audio_given, ~SPAN_A)
  assert clip.motion_given.all() and clip.motion_present
  assert not Clip.of("tts", text="hi", mel=mel, motion=motion).motion_present


def test_motion_stats_round_trip_and_refuse_bad_statistics():
  rng = np.random.default_rng(0)
  stats = MotionStats.from_json({"mean": rng.normal(size=61).tolist(), "std": rng.uniform(0.1, 2, 61).tolist()}, 61)
  motion = rng.normal(size=(7, 61)).astype(np.float32)
  np.testing.assert_allclose(stats.denormalise(stats.normalise(motion)), motion, rtol=1e-5, atol=1e-5)
  assert stats.normalise(motion).dtype == np.float32
  with pytest.raises(ConfigError, match=r"stats.json: mean \(3,\) and std \(3,\) must both be \[61\]"):
    MotionStats.from_json({"mean": [0, 0, 0], "std": [1, 1, 1]}, 61, where="stats.json")
  with pytest.raises(ConfigError, match="std positive"):
    MotionStats.from_json({"mean": [0.0], "std": [0.0]})
  with pytest.raises(ConfigError, match="need per-dimension lists 'mean' and 'std'"):
    MotionStats.from_json({"mean": [0.0]})


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("eval.tasks", ("a2m", "m2a"), r"eval.tasks \(.a2m., .m2a.\): choose from joint, tts, a2m, dub"),
    ("sample.solver", "rk4", "sample.solver='rk4'; choose one of euler, midpoint"),
    ("sample.nfe", 3, "sample.nfe=3: needs >= 1, and even for the midpoint solver"),
    ("data.sample_rate", 22050, r"data.sample_rate=22050: the mel front end .* works at 24000"),
    ("model.mel_dim", 80, "model.mel_dim=80: speech data has 100 mel bins"),
  ],
)
def test_validate_checks_what_every_mode_uses(key, value, message):
  config = get_config("demo")
  if key == "sample.nfe":
    config.sample.solver = "midpoint"
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_validate_checks_the_attention_platform():
  config = get_config("demo")
  config.model.attention_impl = "cudnn"
  validate(config)  # no devices named: nothing to check against
  with pytest.raises(ConfigError, match="model.attention_impl='cudnn' needs GPUs"):
    validate(config, 8, "cpu")


def test_user_errors_end_as_one_prefixed_line():
  assert errors.one_line(ConfigError("model.depth=0 must be >= 1")) == "config error: model.depth=0 must be >= 1"
  assert errors.one_line(errors.TextError("text: empty transcript")) == "input error: text: empty transcript"
  assert errors.one_line(errors.NonFiniteError("step 3: loss nan")) == "training stopped: step 3: loss nan"
