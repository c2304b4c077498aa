import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from data_pipelines.synthetic import SyntheticBatches
from jamflow_jax import flow
from jamflow_jax.tasks import NAMES as TASKS

STEP = 93.75 / 25.0


def _batch(config, index=0):
  return {k: jnp.asarray(v) for k, v in SyntheticBatches(config).make_batch(index).items()}


def _plan(config, batch, seed=0):
  return flow.draw_plan(jax.random.key(seed), batch["mel_valid"], batch["motion_valid"], config.flow, STEP)


@pytest.fixture
def config():
  c = get_config("tiny")
  c.data.max_mel_frames = 96
  c.train.batch_size = 64
  c.flow.drop_text = c.flow.drop_audio_cond = c.flow.drop_motion_cond = 0.0
  return c


def test_plan_roles(config):
  batch = _batch(config)
  plan = jax.device_get(_plan(config, batch))
  mel_valid, motion_valid = np.asarray(batch["mel_valid"]), np.asarray(batch["motion_valid"])
  assert set(np.unique(plan.task)) == set(range(len(TASKS)))
  for i in range(config.train.batch_size):
    task = TASKS[plan.task[i]]
    a_gen, a_given, m_gen, m_given = plan.audio_gen[i], plan.audio_given[i], plan.motion_gen[i], plan.motion_given[i]
    assert not np.any(a_gen & a_given) and not np.any(m_gen & m_given)
    assert not np.any((a_gen | a_given) & ~mel_valid[i]) and not np.any((m_gen | m_given) & ~motion_valid[i])
    if task in ("joint", "tts", "dub"):
      idx = np.nonzero(a_gen)[0]
      frac = idx.size / mel_valid[i].sum()
      assert np.all(np.diff(idx) == 1), "one contiguous span"
      assert config.flow.span_min - 0.02 <= frac <= config.flow.span_max + 1e-6
      np.testing.assert_array_equal(a_given, mel_valid[i] & ~a_gen)
    if task == "joint":  # the same stretch of time in both streams
      a_idx = np.nonzero(a_gen)[0]
      motion_time = np.arange(m_gen.size) * STEP
      in_span = (motion_time >= a_idx.min()) & (motion_time < a_idx.max() + 1) & motion_valid[i]
      np.testing.assert_array_equal(m_gen, in_span)
    if task == "tts":
      assert not plan.motion_present[i] and not m_gen.any() and not m_given.any()
    if task == "a2m":
      assert not a_gen.any() and np.array_equal(a_given, mel_valid[i]) and m_gen.any()
    if task == "dub":
      assert np.array_equal(m_given, motion_valid[i]) and not m_gen.any()


def test_task_mix_is_respected(config):
  config.flow.task_mix = {"joint": 0.0, "tts": 0.0, "a2m": 1.0, "dub": 0.0}
  plan = _plan(config, _batch(config))
  assert bool(jnp.all(plan.task == TASKS.index("a2m")))


def test_loss_reads_only_generated_frames(config):
  batch = _batch(config)
  plan = _plan(config, batch)
  rng = np.random.default_rng(0)
  pred = (
    jnp.asarray(rng.normal(size=batch["mel"].shape), jnp.float32),
    jnp.asarray(rng.normal(size=batch["motion"].shape), jnp.float32),
  )
  t = jnp.full((config.train.batch_size,), 0.4)
  noise = (
    jax.random.normal(jax.random.key(1), batch["mel"].shape),
    jax.random.normal(jax.random.key(2), batch["motion"].shape),
  )

  def loss_with(mel, motion):
    _, target = flow.model_inputs({**batch, "mel": mel, "motion": motion}, plan, t, *noise)
    return flow.flow_loss(pred, target, plan, config.flow)[1]

  base = loss_with(batch["mel"], batch["motion"])
  not_gen_a = ~plan.audio_gen[..., None]
  not_gen_m = ~plan.motion_gen[..., None]
  # data outside the generated frames (given frames, padding, absent streams) moves: losses stay
  same = loss_with(batch["mel"] + 5.0 * not_gen_a, batch["motion"] + 5.0 * not_gen_m)
  for k in base:
    np.testing.assert_allclose(same[k], base[k], rtol=1e-6, err_msg=k)
  # data inside them moves: both losses change
  moved = loss_with(batch["mel"] + 0.5 * plan.audio_gen[..., None], batch["motion"] + 0.5 * plan.motion_gen[..., None])
  assert abs(moved["loss/audio"] - base["loss/audio"]) > 1e-3
  assert abs(moved["loss/motion"] - base["loss/motion"]) > 1e-3


def test_given_frames_are_the_condition_and_generated_frames_are_hidden(config):
  batch = _batch(config)
  plan = _plan(config, batch)
  t = jnp.full((config.train.batch_size,), 0.4)
  noise = (jnp.zeros_like(batch["mel"]), jnp.zeros_like(batch["motion"]))
  inputs, _ = flow.model_inputs(batch, plan, t, *noise)
  np.testing.assert_array_equal(inputs.audio_cond, jnp.where(plan.audio_given[..., None], batch["mel"], 0.0))
  assert bool(jnp.all(inputs.audio_cond[plan.audio_gen] == 0))
  assert bool(jnp.all(inputs.motion_cond[plan.motion_gen] == 0))
  tts = plan.task == TASKS.index("tts")
  assert bool(jnp.all(~inputs.motion_valid[tts]))  # an absent stream is invisible to attention


@pytest.mark.parametrize("dropped", ["drop_text", "drop_audio_cond", "drop_motion_cond"])
def test_dropped_conditions_are_dropped(config, dropped):
  config.flow[dropped] = 1.0
  batch = _batch(config)
  plan = _plan(config, batch)
  t = jnp.full((config.train.batch_size,), 0.4)
  noise = (jnp.zeros_like(batch["mel"]), jnp.zeros_like(batch["motion"]))
  inputs, _ = flow.model_inputs(batch, plan, t, *noise)
  field = {"drop_text": "text", "drop_audio_cond": "audio_cond", "drop_motion_cond": "motion_cond"}[dropped]
  # What the model reads of each condition: withheld text keeps its ids, flagged by text_given.
  seen = lambda x, f: jnp.where(x.text_given[:, None], x.text, 0) if f == "text" else getattr(x, f)
  assert bool(jnp.all(seen(inputs, field) == 0)), field
  assert field != "text" or not bool(jnp.any(inputs.text_given))
  # and the other conditions are still there
  kept = [f for f in ("text", "audio_cond", "motion_cond") if f != field]
  assert all(bool(jnp.any(seen(inputs, f) != 0)) for f in kept)
  # perturbing the source of a dropped condition leaves what the model reads of it unchanged
  source = {"text": "text", "audio_cond": "mel", "motion_cond": "motion"}[field]
  perturbed = {**batch, source: batch[source] + 1}
  inputs2, _ = flow.model_inputs(perturbed, plan, t, *noise)
  np.testing.assert_array_equal(seen(inputs2, field), seen(inputs, field))


def test_logit_normal_time_sampling(config):
  config.flow.time_sampling = "logit_normal"
  t = flow.sample_time(jax.random.key(0), 20000, config.flow)
  assert 0 < float(t.min()) and float(t.max()) < 1
  np.testing.assert_allclose(float(jnp.median(t)), 0.5, atol=0.02)
  assert float(jnp.mean(jnp.abs(t - 0.5) < 0.25)) > 0.6  # more mass in the middle than uniform
