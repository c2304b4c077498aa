"""ODE sampling of the flow with classifier-free guidance (DESIGN "Sampling").

Generation integrates the learned velocity from noise at t = 0 to data at t = 1 with Euler or
midpoint steps over a time grid warped by F5-TTS's sway sampling,

  t' = t + s (cos(pi/2 t) - 1 + t),

which for s < 0 spends more steps near t = 0, where the coarse layout is decided.

Guidance has one strength per condition c in (text, audio, motion):

  v = v(all) + sum_c w_c (v(all) - v(all but c)),

so w = 0 everywhere is exactly the conditional model. The variants with one condition withheld
(text -> flagged withheld, given audio / motion -> zeros, as the CFG dropout of training does) ride in
the batch of the same model call. Frames given as condition are returned as they came, bit for bit.
"""

import dataclasses
from collections.abc import Sequence

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx, struct

from jamflow_jax import config as config_lib, model as model_lib, sharding
from jamflow_jax.model.jamflow import FlowInputs
from jamflow_jax.text import FILLER_ID

CONDITIONS = ("text", "audio", "motion")


@struct.dataclass
class Conditions:
  """What a batch of requests gives the sampler (B examples, Ta mel frames, Tm motion frames).

  Generated frames are the valid frames that are not given; an absent modality has no valid frame.
  Motion is normalised (the model's units).
  """

  text: jax.Array  # int32 [B, Ta] filler-padded ids (all filler: no transcript)
  text_given: jax.Array  # bool [B] False: the transcript is withheld
  audio: jax.Array  # float32 [B, Ta, mel_dim] given mel frames (anything elsewhere)
  audio_given: jax.Array  # bool [B, Ta]
  audio_valid: jax.Array  # bool [B, Ta]
  motion: jax.Array  # float32 [B, Tm, motion_dim]
  motion_given: jax.Array  # bool [B, Tm]
  motion_valid: jax.Array  # bool [B, Tm]


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
  """How to integrate: solver, model evaluations (NFE), sway coefficient, guidance strengths."""

  solver: str = "euler"
  nfe: int = 32
  sway: float = -1.0
  cfg_text: float = 2.0
  cfg_audio: float = 2.0
  cfg_motion: float = 2.0

  def __post_init__(self):  # ConfigError (a ValueError) naming sample.solver / sample.nfe
    config_lib.check_sampler(self.solver, self.nfe)

  @classmethod
  def from_config(cls, sample: ml_collections.ConfigDict) -> "SamplerOptions":
    return cls(
      solver=sample.solver,
      nfe=int(sample.nfe),
      sway=float(sample.sway),
      cfg_text=float(sample.cfg_text),
      cfg_audio=float(sample.cfg_audio),
      cfg_motion=float(sample.cfg_motion),
    )

  def strength(self, condition: str) -> float:
    return getattr(self, f"cfg_{condition}")


def sway(t, coefficient: float):
  """F5-TTS sway sampling: t + s (cos(pi/2 t) - 1 + t); keeps 0 and 1 fixed."""
  return t + coefficient * (np.cos(np.pi / 2 * t) - 1 + t)


def time_grid(options: SamplerOptions) -> np.ndarray:
  """float32 [steps + 1] from 0 to 1: nfe Euler steps or nfe / 2 midpoint steps, swayed."""
  steps = options.nfe if options.solver == "euler" else options.nfe // 2
  return sway(np.linspace(0.0, 1.0, steps + 1), options.sway).astype(np.float32)


def integrate(velocity, x0, grid: jax.Array, solver: str):
  """Solves dx/dt = velocity(x, t) from grid[0] to grid[-1] over the grid's intervals.

  x0 is any pytree of arrays; `velocity(x, t)` returns one like it, t a float32 scalar.
  """
  axpy = lambda a, x, y: jax.tree.map(lambda xi, yi: xi + a * yi, x, y)

  def step(i, x):
    t0, t1 = grid[i], grid[i + 1]
    h = t1 - t0
    if solver == "euler":
      return axpy(h, x, velocity(x, t0))
    mid = axpy(h / 2, x, velocity(x, t0))
    return axpy(h, x, velocity(mid, t0 + h / 2))

  return jax.lax.fori_loop(0, grid.shape[0] - 1, step, x0)


def withheld(c: Conditions, condition: str) -> Conditions:
  """The conditions with one of them withheld, as classifier-free-guidance dropout trains it."""
  if condition == "text":
    return c.replace(text_given=jnp.zeros_like(c.text_given))
  if condition == "audio":
    return c.replace(audio_given=jnp.zeros_like(c.audio_given))
  return c.replace(motion_given=jnp.zeros_like(c.motion_given))


def guided_velocity(model, c: Conditions, guided: tuple[tuple[str, float], ...]):
  """velocity((x_audio, x_motion), t) under guidance; `guided` = ((condition, strength), ...).

  One model call serves the conditional variant and every withheld variant (stacked on the batch).
  """
  variants = [c] + [withheld(c, name) for name, _ in guided]
  stack = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *variants)
  n = len(variants)

  def velocity(x, t):
    xa, xm = (jnp.concatenate([a] * n, axis=0) for a in x)
    b = xa.shape[0]
    inputs = FlowInputs(
      audio_xt=xa,
      audio_cond=jnp.where(stack.audio_given[..., None], stack.audio, 0.0),
      text=stack.text,
      text_given=stack.text_given,
      audio_valid=stack.audio_valid,
      motion_xt=xm,
      motion_cond=jnp.where(stack.motion_given[..., None], stack.motion, 0.0),
      motion_valid=stack.motion_valid,
      t=jnp.full((b,), t, jnp.float32),
    )
    va, vm = (einops.rearrange(v, "(n b) ... -> n b ...", n=n) for v in model(inputs))
    out_a, out_m = va[0], vm[0]
    for k, (_, w) in enumerate(guided, start=1):
      out_a = out_a + w * (va[0] - va[k])
      out_m = out_m + w * (vm[0] - vm[k])
    return out_a, out_m

  return velocity


def guidance_plan(options: SamplerOptions, present: dict[str, bool]) -> tuple[tuple[str, float], ...]:
  """The (condition, strength) pairs worth a model call: strength != 0 and the condition given."""
  return tuple((name, options.strength(name)) for name in CONDITIONS if options.strength(name) != 0.0 and present[name])


class Sampler:
  """Samples (mel [B, Ta, mel_dim], motion [B, Tm, motion_dim]) from a model's parameters.

  Compiled once per (padded lengths, batch size, guidance plan, solver, NFE): callers pad lengths
  to buckets so a session compiles a few programs, not one per request.
  """

  def __init__(self, config: ml_collections.ConfigDict, params, mesh: jax.sharding.Mesh):
    """params: the model's parameter dict (arrays on `mesh`)."""
    # No backward pass here, so nothing to rematerialise: the graph is built with remat off.
    inference = config.copy_and_resolve_references()
    inference.model.remat_policy = "none"
    self.graphdef, _ = model_lib.abstract_model(inference, mesh)
    self.params, self.mesh, self.config = params, mesh, config
    self._context = lambda: sharding.use_mesh(mesh, config)
    self._jit = jax.jit(self._sample, static_argnames=("solver", "guided"))

  @property
  def programs(self) -> int:
    """How many sampling programs this sampler has compiled."""
    return self._jit._cache_size()

  def _sample(
    self, params, c: Conditions, grid: jax.Array, keys: jax.Array, *, solver: str, guided: tuple[tuple[str, float], ...]
  ) -> tuple[jax.Array, jax.Array]:
    """keys: [B] PRNG keys, one per row: row b's noise is drawn from keys[b] alone."""
    model = nnx.merge(self.graphdef, params)

    def noise(key):  # one row's: ([Ta, mel_dim], [Tm, motion_dim])
      k_a, k_m = jax.random.split(key)
      return jax.random.normal(k_a, c.audio.shape[1:], jnp.float32), jax.random.normal(
        k_m, c.motion.shape[1:], jnp.float32
      )

    x0 = jax.vmap(noise)(keys)
    xa, xm = integrate(guided_velocity(model, c, guided), x0, grid, solver)
    return jnp.where(c.audio_given[..., None], c.audio, xa), jnp.where(c.motion_given[..., None], c.motion, xm)

  def __call__(
    self, c: Conditions, options: SamplerOptions, seed: int | Sequence[int], present: dict[str, bool] | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Host arrays out. `present` says which conditions exist (default: read from `c`).

    seed: one per row (an int s: rows get s, s + 1, ...). Row b's noise comes from
    PRNGKey(seed[b]) alone, so a row samples what it would in a batch of its own whatever its
    neighbours are (the same values; the arithmetic of a larger batch may round differently).
    """
    batch = c.audio.shape[0]
    seeds = np.arange(seed, seed + batch) if isinstance(seed, (int, np.integer)) else np.asarray(seed)
    if seeds.shape != (batch,):
      raise ValueError(f"{seeds.shape[0]} seeds for a batch of {batch}")
    if present is None:
      c_host = jax.device_get(c)
      present = {
        "text": bool(np.any((c_host.text != FILLER_ID) & c_host.text_given[:, None])),
        "audio": bool(np.any(c_host.audio_given)),
        "motion": bool(np.any(c_host.motion_given)),
      }
    with self._context():
      out = self._jit(
        self.params,
        c,
        jnp.asarray(time_grid(options)),
        jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32)),
        solver=options.solver,
        guided=guidance_plan(options, present),
      )
    return jax.device_get(out)
