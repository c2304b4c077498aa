"""The ODE solvers, sway sampling and classifier-free guidance of jamflow_jax.sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jamflow_jax import choices, model as model_lib, sampling, sharding
from jamflow_jax.sampling import Conditions, SamplerOptions


def test_solvers_converge_at_their_order():
  # dx/dt = a x + t has x(1) = (x0 + 1/a^2) e^a - 1/a - 1/a^2 (x(0) = x0).
  a, x0 = -1.3, jnp.array([0.7, -2.0])
  exact = (x0 + 1 / a**2) * np.exp(a) - 1 / a - 1 / a**2
  velocity = lambda x, t: a * x + t
  errors = {}
  for solver in choices.SOLVERS:
    for n in (16, 32):
      grid = jnp.linspace(0.0, 1.0, n + 1)
      errors[solver, n] = float(jnp.max(jnp.abs(sampling.integrate(velocity, x0, grid, solver) - exact)))
  assert 1.8 < errors["euler", 16] / errors["euler", 32] < 2.2  # first order
  assert 3.6 < errors["midpoint", 16] / errors["midpoint", 32] < 4.4  # second order
  assert errors["midpoint", 32] < 1e-3 and errors["euler", 32] < 2e-2
  # On a swayed grid (dense near 0) both still converge to the solution.
  grid = jnp.asarray(sampling.time_grid(SamplerOptions(solver="midpoint", nfe=64, sway=-1.0)))
  np.testing.assert_allclose(sampling.integrate(velocity, x0, grid, "midpoint"), exact, atol=1e-3)


def test_integrate_takes_pytrees():
  x = (jnp.ones((2, 3)), jnp.zeros((4,)))
  out = sampling.integrate(
    lambda x, t: (jnp.ones_like(x[0]), 2 * jnp.ones_like(x[1])), x, jnp.linspace(0, 1, 5), "euler"
  )
  np.testing.assert_allclose(out[0], 2.0, atol=1e-6)
  np.testing.assert_allclose(out[1], 2.0, atol=1e-6)


def test_sway_formula_and_grids():
  t = np.linspace(0, 1, 9)
  np.testing.assert_allclose(sampling.sway(t, -1.0), t - (np.cos(np.pi / 2 * t) - 1 + t))
  assert sampling.sway(0.5, -1.0) == pytest.approx(1 - np.cos(np.pi / 4))
  for s in (-1.0, -0.5, 0.0, 0.5):
    g = sampling.sway(t, s)
    assert g[0] == 0 and g[-1] == pytest.approx(1.0) and np.all(np.diff(g) > 0)
  np.testing.assert_allclose(sampling.sway(t, 0.0), t)
  # s < 0 puts more steps near t = 0: half the steps end before t = 0.3.
  assert sampling.time_grid(SamplerOptions(nfe=32, sway=-1.0))[16] < 0.3
  assert sampling.time_grid(SamplerOptions(nfe=32)).shape == (33,)
  assert sampling.time_grid(SamplerOptions(solver="midpoint", nfe=32)).shape == (17,)
  with pytest.raises(ValueError, match="even for the midpoint"):
    SamplerOptions(solver="midpoint", nfe=7)
  with pytest.raises(ValueError, match="sample.solver"):
    SamplerOptions(solver="rk4")


def _conditions(config, b=2, ta=40, seed=0):
  rng = np.random.default_rng(seed)
  tm = int(np.ceil(ta / 3.75))
  text = np.zeros((b, ta), np.int32)
  text[:, :12] = rng.integers(32, 127, (b, 12))
  return Conditions(
    text=text,
    text_given=np.ones(b, bool),
    audio=rng.normal(size=(b, ta, 100)).astype(np.float32),
    audio_given=np.arange(ta)[None].repeat(b, 0) < 10,
    audio_valid=np.ones((b, ta), bool),
    motion=rng.normal(size=(b, tm, 61)).astype(np.float32),
    motion_given=np.arange(tm)[None].repeat(b, 0) < 3,
    motion_valid=np.ones((b, tm), bool),
  )


@pytest.fixture
def tiny_model(tiny_config):
  mesh = sharding.single_device_mesh(tiny_config)
  with sharding.use_mesh(mesh, tiny_config):
    model = model_lib.create(tiny_config, seed=3)
  return model, mesh


def test_guidance_strength_zero_is_the_conditional_call_and_strengths_combine(tiny_config, tiny_model):
  model, mesh = tiny_model
  c = jax.tree.map(jnp.asarray, _conditions(tiny_config))
  x = (
    jax.random.normal(jax.random.PRNGKey(0), c.audio.shape),
    jax.random.normal(jax.random.PRNGKey(1), c.motion.shape),
  )
  t = jnp.float32(0.4)
  with sharding.use_mesh(mesh, tiny_config):

    def call(cond):  # one plain model call on conditions `cond`
      return sampling.guided_velocity(model, cond, ())(x, t)

    plain = call(c)
    opts = SamplerOptions(cfg_text=0.0, cfg_audio=0.0, cfg_motion=0.0)
    assert sampling.guidance_plan(opts, dict(text=True, audio=True, motion=True)) == ()
    # Strength 0: exactly the conditional call, computed the way the model computes it.
    from jamflow_jax.model.jamflow import FlowInputs

    direct = model(
      FlowInputs(
        audio_xt=x[0],
        audio_cond=jnp.where(c.audio_given[..., None], c.audio, 0.0),
        text=c.text,
        text_given=c.text_given,
        audio_valid=c.audio_valid,
        motion_xt=x[1],
        motion_cond=jnp.where(c.motion_given[..., None], c.motion, 0.0),
        motion_valid=c.motion_valid,
        t=jnp.full((2,), 0.4),
      )
    )
    np.testing.assert_array_equal(plain[0], direct[0])
    np.testing.assert_array_equal(plain[1], direct[1])
    # One batched call with three strengths = the formula over four separate calls.
    guided = (("text", 1.5), ("audio", 0.5), ("motion", 3.0))
    got = sampling.guided_velocity(model, c, guided)(x, t)
    want_a, want_m = plain
    for name, w in guided:
      va, vm = call(sampling.withheld(c, name))
      want_a, want_m = want_a + w * (plain[0] - va), want_m + w * (plain[1] - vm)
  np.testing.assert_allclose(got[0], want_a, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(got[1], want_m, atol=2e-5, rtol=1e-5)
  # Conditions that are absent or at strength 0 cost no model call.
  opts = SamplerOptions(cfg_text=2.0, cfg_audio=0.0, cfg_motion=1.0)
  assert sampling.guidance_plan(opts, dict(text=True, audio=True, motion=False)) == (("text", 2.0),)


def test_sampler_is_deterministic_and_keeps_given_frames(tiny_config):
  tiny_config.model.remat_policy = "full"  # as in the base preset: the sampler must not rematerialise
  tiny_config.model.scan_layers = True
  mesh = sharding.single_device_mesh(tiny_config)
  with sharding.use_mesh(mesh, tiny_config):
    model = model_lib.create(tiny_config, seed=3)
  from flax import nnx

  _, params = nnx.split(model, nnx.Param)
  sampler = sampling.Sampler(tiny_config, nnx.to_pure_dict(params), mesh)
  c = _conditions(tiny_config)
  opts = SamplerOptions(nfe=4)
  a1, m1 = sampler(c, opts, seed=7)
  a2, m2 = sampler(c, opts, seed=7)
  a3, _ = sampler(c, opts, seed=8)
  np.testing.assert_array_equal(a1, a2)
  np.testing.assert_array_equal(m1, m2)
  assert not np.allclose(a1, a3)
  np.testing.assert_array_equal(a1[c.audio_given], c.audio[c.audio_given])
  np.testing.assert_array_equal(m1[c.motion_given], c.motion[c.motion_given])
  assert np.all(np.isfinite(a1)) and a1.shape == c.audio.shape and m1.shape == c.motion.shape
