"""Rectified flow with an inpainting objective over the tasks of `jamflow_jax.tasks` (DESIGN.md
"Flow matching and tasks").

x_t = (1 - t) x0 + t x1, x0 ~ N(0, I), x1 = data, target velocity x1 - x0. Each example draws a
task (`flow.task_mix`) that decides, per modality, which frames are given (condition), which are
generated (loss) and whether the modality is absent. The span is one contiguous stretch of 70-100%
of the valid length (F5-TTS), the same stretch of time in both modalities. Classifier-free-guidance
dropout then withholds text, the given audio and the given motion with their own probabilities; a2m
also withholds the text with its own probability (`flow.a2m_text_drop`), for audio -> motion
without a transcript.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from jamflow_jax import tasks
from jamflow_jax.model.jamflow import FlowInputs


@struct.dataclass
class TaskPlan:
  """Per-example roles of every frame. Generated and given frames are always valid frames."""

  task: jax.Array  # int32 [B] index into tasks.TASKS
  audio_gen: jax.Array  # bool [B, Ta] frames the loss reads
  audio_given: jax.Array  # bool [B, Ta] frames shown as condition
  audio_present: jax.Array  # bool [B]
  motion_gen: jax.Array  # bool [B, Tm]
  motion_given: jax.Array  # bool [B, Tm]
  motion_present: jax.Array  # bool [B]
  text_given: jax.Array  # bool [B]


def sample_time(rng: jax.Array, batch_size: int, cfg: ml_collections.ConfigDict) -> jax.Array:
  """t [B] in [0, 1]: uniform, or logit-normal (mass in the middle, as in SD3)."""
  if cfg.time_sampling == "logit_normal":
    return jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * jax.random.normal(rng, (batch_size,)))
  return jax.random.uniform(rng, (batch_size,))


def draw_plan(
  rng: jax.Array, mel_valid: jax.Array, motion_valid: jax.Array, cfg: ml_collections.ConfigDict, motion_step: float
) -> TaskPlan:
  """Draws task, span and CFG dropout per example.

  Args: mel_valid bool [B, Ta]; motion_valid bool [B, Tm]; motion_step: mel frames per motion frame.
  """
  b, ta = mel_valid.shape
  tm = motion_valid.shape[1]
  k_task, k_len, k_start, k_a2m, k_text, k_audio, k_motion = jax.random.split(rng, 7)
  weights = jnp.array([cfg.task_mix.get(n, 0.0) for n in tasks.NAMES], jnp.float32)
  task = jax.random.categorical(k_task, jnp.log(weights), shape=(b,)).astype(jnp.int32)

  # One span of the valid length, in mel frames, shared by both modalities.
  length = jnp.sum(mel_valid, axis=1).astype(jnp.float32)
  frac = jax.random.uniform(k_len, (b,), minval=cfg.span_min, maxval=cfg.span_max)
  span = jnp.maximum(jnp.round(frac * length), 1.0)
  start = jnp.floor(jax.random.uniform(k_start, (b,)) * (length - span + 1))
  end = start + span
  in_span = lambda time: (time >= start[:, None]) & (time < end[:, None])
  span_a = in_span(jnp.arange(ta, dtype=jnp.float32)[None])
  span_m = in_span(jnp.arange(tm, dtype=jnp.float32)[None] * motion_step)
  r = tasks.roles(task, span_a, span_m, mel_valid, motion_valid)
  audio_given, motion_given = r.audio_given, r.motion_given

  bern = lambda k, p: jax.random.bernoulli(k, p, (b,))
  text_given = ~bern(k_text, cfg.drop_text) & ~((task == tasks.A2M) & bern(k_a2m, cfg.a2m_text_drop))
  audio_given &= ~bern(k_audio, cfg.drop_audio_cond)[:, None]
  motion_given &= ~bern(k_motion, cfg.drop_motion_cond)[:, None]
  return TaskPlan(
    task=task,
    audio_gen=r.audio_gen,
    audio_given=audio_given,
    audio_present=jnp.ones((b,), bool),
    motion_gen=r.motion_gen,
    motion_given=motion_given,
    motion_present=r.motion_present,
    text_given=text_given,
  )


def model_inputs(
  batch: dict, plan: TaskPlan, t: jax.Array, noise_a: jax.Array, noise_m: jax.Array
) -> tuple[FlowInputs, tuple[jax.Array, jax.Array]]:
  """Builds the model call and the velocity targets (x1 - x0) of both modalities.

  The condition holds the data of given frames only; withheld text is flagged (`text_given`); an absent
  modality is marked invalid, so no token attends to it.
  """
  mel, motion = batch["mel"], batch["motion"]
  tt = t[:, None, None]
  inputs = FlowInputs(
    audio_xt=(1 - tt) * noise_a + tt * mel,
    audio_cond=jnp.where(plan.audio_given[..., None], mel, 0.0),
    text=batch["text"],
    text_given=plan.text_given,
    audio_valid=batch["mel_valid"] & plan.audio_present[:, None],
    motion_xt=(1 - tt) * noise_m + tt * motion,
    motion_cond=jnp.where(plan.motion_given[..., None], motion, 0.0),
    motion_valid=batch["motion_valid"] & plan.motion_present[:, None],
    t=t,
  )
  return inputs, (mel - noise_a, motion - noise_m)


def masked_sq_error(pred: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example (sum of squared error over masked frames / feature dim, masked frame count): [B], [B]."""
  err = jnp.mean(jnp.square(pred - target), axis=-1)
  return jnp.sum(jnp.where(mask, err, 0.0), axis=1), jnp.sum(mask, axis=1).astype(jnp.float32)


def flow_loss(
  pred: tuple[jax.Array, jax.Array],
  target: tuple[jax.Array, jax.Array],
  plan: TaskPlan,
  cfg: ml_collections.ConfigDict,
  frames: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, dict]:
  """MSE on generated valid frames only, per modality, weighted; plus per-task sums for logging.

  `frames`: the generated (audio, motion) frame counts the squared errors are divided by, default
  this batch's. A microbatch passes its whole batch's, so that the losses (and gradients) of the
  microbatches add up to the batch's.

  Returns the scalar loss and metrics: `sum/<modality>/<task>` and `count/<modality>/<task>`
  (frame-weighted, so averages over any number of steps are exact). Every metric adds over microbatches.
  """
  se_a, n_a = masked_sq_error(pred[0], target[0], plan.audio_gen)
  se_m, n_m = masked_sq_error(pred[1], target[1], plan.motion_gen)
  total_a, total_m = generated_frames(plan) if frames is None else frames
  loss_a = jnp.sum(se_a) / jnp.maximum(total_a, 1.0)
  loss_m = jnp.sum(se_m) / jnp.maximum(total_m, 1.0)
  loss = cfg.audio_loss_weight * loss_a + cfg.motion_loss_weight * loss_m
  metrics = {"loss": loss, "loss/audio": loss_a, "loss/motion": loss_m}
  for i, name in enumerate(tasks.NAMES):
    sel = plan.task == i
    for mod, se, n in (("audio", se_a, n_a), ("motion", se_m, n_m)):
      metrics[f"sum/{mod}/{name}"] = jnp.sum(jnp.where(sel, se, 0.0))
      metrics[f"count/{mod}/{name}"] = jnp.sum(jnp.where(sel, n, 0.0))
  return loss, metrics


def generated_frames(plan: TaskPlan) -> tuple[jax.Array, jax.Array]:
  """How many (audio, motion) frames the loss reads: float32 scalars."""
  return jnp.sum(plan.audio_gen).astype(jnp.float32), jnp.sum(plan.motion_gen).astype(jnp.float32)


@struct.dataclass
class Draw:
  """Everything random in one objective evaluation of a batch of B examples."""

  plan: TaskPlan
  t: jax.Array  # float [B]
  noise_a: jax.Array  # float [B, Ta, mel_dim]   x0 of the audio stream
  noise_m: jax.Array  # float [B, Tm, motion_dim]


def draw(rng: jax.Array, batch: dict, cfg: ml_collections.ConfigDict, motion_step: float) -> Draw:
  """Task plans, flow times and noise for `batch` (the data contract)."""
  k_plan, k_t, k_a, k_m = jax.random.split(rng, 4)
  b = batch["mel"].shape[0]
  return Draw(
    plan=draw_plan(k_plan, batch["mel_valid"], batch["motion_valid"], cfg, motion_step),
    t=sample_time(k_t, b, cfg),
    noise_a=jax.random.normal(k_a, batch["mel"].shape, batch["mel"].dtype),
    noise_m=jax.random.normal(k_m, batch["motion"].shape, batch["motion"].dtype),
  )


def loss(
  model, batch: dict, d: Draw, cfg: ml_collections.ConfigDict, frames: tuple[jax.Array, jax.Array] | None = None
) -> tuple[jax.Array, dict]:
  """The objective of `model` (a JamFlow) on `batch` under the draw `d` (see flow_loss for `frames`)."""
  inputs, target = model_inputs(batch, d.plan, d.t, d.noise_a, d.noise_m)
  return flow_loss(model(inputs), target, d.plan, cfg, frames)


def objective(model, batch: dict, rng: jax.Array, cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """One draw of the training objective for `model` (a JamFlow) on a batch of the data contract."""
  return loss(model, batch, draw(rng, batch, cfg, model.motion_step), cfg)
