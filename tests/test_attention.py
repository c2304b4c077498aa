import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.base import get_config
from jamflow_jax import sharding
from jamflow_jax.config import joint_window_frames
from jamflow_jax.model.attention import AUDIO, MOTION, AttentionOptions, joint_attention, joint_mask
from jamflow_jax.model.dit import DualLayer, Tokens
from jamflow_jax.model.rope import apply_rope, rope_angles


def _naive_attention(q, k, v, allowed):
  """Row-by-row softmax over the allowed keys only, in numpy float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  out = np.zeros_like(q)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      for i in range(q.shape[1]):
        keys = np.nonzero(allowed[b, i])[0]
        if keys.size:
          s = k[b, keys, h] @ q[b, i, h] / math.sqrt(q.shape[-1])
          p = np.exp(s - s.max())
          out[b, i, h] = (p / p.sum()) @ v[b, keys, h]
  return out


def _random_tokens(rng, b, la, lm, step=3.75):
  mod = np.concatenate([np.full((b, la), AUDIO), np.full((b, lm), MOTION)], 1).astype(np.int32)
  time = np.concatenate([np.tile(np.arange(la), (b, 1)), np.tile(np.arange(lm) * step, (b, 1))], 1)
  valid = rng.random((b, la + lm)) > 0.2
  valid[0, :la] = False  # the audio rows of example 0 have no audio key
  return mod, time.astype(np.float32), valid


@pytest.mark.parametrize("window", [0.0, 4.0, 30.0, math.inf])
def test_reference_matches_a_naive_masked_softmax(window):
  rng = np.random.default_rng(0)
  b, la, lm, h, d = 2, 20, 6, 2, 8
  mod, time, valid = _random_tokens(rng, b, la, lm)
  q, k, v = (rng.normal(size=(b, la + lm, h, d)).astype(np.float32) for _ in range(3))
  out = joint_attention(
    q, k, v, q_mod=mod, kv_mod=mod, q_time=time, kv_time=time, q_valid=valid, kv_valid=valid, window=window
  )
  allowed = np.asarray(joint_mask(mod, mod, time, time, valid, valid, window))
  expected_allowed = (
    valid[:, :, None]
    & valid[:, None, :]
    & ((mod[:, :, None] == mod[:, None, :]) | (np.abs(time[:, :, None] - time[:, None, :]) <= window))
  )
  np.testing.assert_array_equal(allowed, expected_allowed)
  np.testing.assert_allclose(np.asarray(out), _naive_attention(q, k, v, allowed), atol=1e-5)


def test_rows_without_keys_are_zero_with_zero_gradient():
  rng = np.random.default_rng(1)
  b, l, h, d = 1, 8, 2, 4
  q, k, v = (jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.float32) for _ in range(3))
  mod = jnp.zeros((b, l), jnp.int32)
  time = jnp.arange(l, dtype=jnp.float32)[None]
  q_valid = jnp.ones((b, l), bool)
  kv_valid = jnp.zeros((b, l), bool).at[:, :4].set(True)
  # Queries 4.. are valid but the window of 0 across modalities does not matter within one modality,
  # so make the last queries keyless by giving them another modality and a window of 0 far away.
  q_mod = mod.at[:, 6:].set(MOTION)
  q_time = time.at[:, 6:].set(100.0)

  def f(q, k, v):
    return joint_attention(
      q, k, v, q_mod=q_mod, kv_mod=mod, q_time=q_time, kv_time=time, q_valid=q_valid, kv_valid=kv_valid, window=0.0
    )

  out = f(q, k, v)
  assert bool(jnp.all(out[:, 6:] == 0)) and bool(jnp.all(jnp.isfinite(out)))
  gq, gk, gv = jax.grad(lambda *a: jnp.sum(f(*a)[:, 6:] ** 2) + jnp.sum(f(*a)[:, :6]), argnums=(0, 1, 2))(q, k, v)
  assert bool(jnp.all(gq[:, 6:] == 0))
  assert bool(jnp.all(gk[:, 4:] == 0)) and bool(jnp.all(gv[:, 4:] == 0))  # invalid keys get no gradient
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in (gq, gk, gv))


def test_audio_and_motion_tokens_at_one_instant_rotate_alike():
  config = get_config("tiny")
  step = config.data.sample_rate / config.data.hop_length / config.data.motion_fps  # 3.75
  audio_time = jnp.arange(64, dtype=jnp.float32)[None]
  motion_time = jnp.arange(17, dtype=jnp.float32)[None] * step
  x = jax.random.normal(jax.random.key(0), (1, 1, 2, 16))
  rot_a = apply_rope(jnp.tile(x, (1, 64, 1, 1)), rope_angles(audio_time, 16))
  rot_m = apply_rope(jnp.tile(x, (1, 17, 1, 1)), rope_angles(motion_time, 16))
  # motion frame 4 is at 15.0 mel frames, motion frame 8 at 30.0
  np.testing.assert_allclose(rot_m[0, 4], rot_a[0, 15], atol=1e-6)
  np.testing.assert_allclose(rot_m[0, 8], rot_a[0, 30], atol=1e-6)
  assert not np.allclose(rot_m[0, 4], rot_a[0, 16], atol=1e-3)
  # logits depend on the time difference only
  q = rope_angles(jnp.array([[2.5, 10.0]]), 16)
  k = rope_angles(jnp.array([[0.0, 7.5]]), 16)
  dots = [jnp.sum(apply_rope(x, q[:, i : i + 1]) * apply_rope(x[..., ::-1], k[:, i : i + 1])) for i in range(2)]
  np.testing.assert_allclose(dots[0], dots[1], rtol=1e-5)


class TestLocalJointMaskInAJointLayer:
  """Perturb one motion frame and watch the audio outputs of a joint layer."""

  la, lm = 64, 17

  def setup_method(self):
    config = get_config("tiny")
    config.model.joint_window_s = 0.1  # 9.375 mel frames either side
    self.window = joint_window_frames(config)
    with sharding.use_mesh(sharding.single_device_mesh(config), config):
      self.layer = DualLayer(
        32,
        32,
        2,
        16,
        2,
        True,
        joint=True,
        window=self.window,
        attention=AttentionOptions("xla"),
        rngs=nnx.Rngs(0),
        dtype=jnp.float32,
      )
    # adaLN-zero starts with closed gates; open them so the attention output reaches the residual.
    for block in (self.layer.audio, self.layer.motion):
      block.modulation.proj.bias[...] = jnp.ones_like(block.modulation.proj.bias[...])
    rng = jax.random.split(jax.random.key(1), 4)
    self.xa = jax.random.normal(rng[0], (1, self.la, 32))
    self.xm = jax.random.normal(rng[1], (1, self.lm, 32))
    self.temb = jax.random.normal(rng[2], (1, 32))
    self.motion_valid = jnp.ones((1, self.lm), bool).at[:, 15:].set(False)
    self.kick = jax.random.normal(rng[3], (32,))  # not a constant: LayerNorm would erase that

  def audio_out(self, xm, window=None, attn=AttentionOptions("xla")):
    # The layer's static settings, as a layer built with this window and these options holds them.
    self.layer.window, self.layer.attention = self.window if window is None else window, attn

    def tokens(mod, time, valid):
      return Tokens(jnp.full(valid.shape, mod, jnp.int32), time, valid, rope_angles(time, 16))

    ta = tokens(AUDIO, jnp.arange(self.la, dtype=jnp.float32)[None], jnp.ones((1, self.la), bool))
    tm = tokens(MOTION, jnp.arange(self.lm, dtype=jnp.float32)[None] * 3.75, self.motion_valid)
    ya, _ = self.layer(self.xa, xm, self.temb, self.temb, ta, tm)
    return ya

  @pytest.mark.parametrize("attn", [AttentionOptions("xla"), AttentionOptions("pallas", "interpret", 16, 16)])
  def test_far_motion_frame_does_not_reach_audio(self, attn):
    base = self.audio_out(self.xm, attn=attn)
    moved = self.audio_out(self.xm.at[:, 4].add(self.kick), attn=attn)  # motion frame 4 sits at mel frame 15
    changed = np.nonzero(np.any(np.abs(np.asarray(moved - base)[0]) > 1e-6, axis=-1))[0]
    # exactly the audio frames within the window of time 15 see the change
    expected = np.nonzero(np.abs(np.arange(self.la) - 15.0) <= self.window)[0]
    np.testing.assert_array_equal(changed, expected)

  def test_without_locality_every_audio_frame_sees_the_motion_frame(self):
    base = self.audio_out(self.xm, window=math.inf)
    moved = self.audio_out(self.xm.at[:, 4].add(self.kick), window=math.inf)
    assert bool(jnp.all(jnp.any(jnp.abs(moved - base) > 1e-6, axis=-1)))

  def test_padding_motion_frame_reaches_nothing(self):
    base = self.audio_out(self.xm, window=math.inf)
    moved = self.audio_out(self.xm.at[:, 16].add(self.kick), window=math.inf)  # frame 16 is padding
    np.testing.assert_array_equal(np.asarray(moved), np.asarray(base))
