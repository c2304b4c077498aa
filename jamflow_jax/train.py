"""Training: optimizer, train state, the sharded train step, and the loop with checkpoints.

The step is a pure function of (state, batch), jitted with explicit in/out shardings and the
state donated. The model is rebuilt from its graph definition and a plain parameter dict inside
the step (functional split/merge), which traces once and keeps the state a plain pytree that
Orbax, optax and the shardings all handle directly.
"""

import json
import os
import signal
import threading
from typing import Any, Iterator

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx, struct

from jamflow_jax import (
  axes,
  checkpoint as checkpoint_lib,
  config as config_lib,
  flow,
  metrics as metrics_lib,
  model as model_lib,
  paths,
  run_lock,
  sharding,
)
from jamflow_jax.errors import ConfigError, NonFiniteError
from jamflow_jax.eval.evaluate import TrainingEvaluator
from jamflow_jax.model import attention, f5tts

BATCH_NDIM = {"mel": 3, "mel_valid": 2, "motion": 3, "motion_valid": 2, "text": 2}


class TrainState(struct.PyTreeNode):
  step: jax.Array  # int32 []
  params: Any  # plain dict of float32 arrays
  ema_params: Any  # exponential moving average of params
  opt_state: Any
  rng: jax.Array  # uint32 [2]; step keys are fold_in(rng, step), so resuming is exact


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  o = config.optim
  warmup = max(int(o.warmup_steps), 1)
  decay_steps = max(int(config.train.num_steps) - warmup, 1)
  end = o.learning_rate * o.end_lr_ratio
  after = {
    "constant": optax.constant_schedule(o.learning_rate),
    "linear": optax.linear_schedule(o.learning_rate, end, decay_steps),
    "cosine": optax.cosine_decay_schedule(o.learning_rate, decay_steps, alpha=o.end_lr_ratio),
  }
  return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup), after[o.schedule]], [warmup])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with warmup + decay and global-norm clipping; no weight decay on vectors (norms, biases)."""
  o = config.optim
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
    optax.clip_by_global_norm(o.grad_clip),
    optax.adamw(
      learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask
    ),
  )


class Trainer:
  """The model's graph, the state's shardings on `mesh`, and the jitted init and train step."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    config = attention.for_platform(config, mesh.devices.flat[0].platform)
    self.config, self.mesh = config, mesh
    self.tx = make_optimizer(config)
    self.schedule = learning_rate_schedule(config)
    self.graphdef, abstract_params = model_lib.abstract_model(config, mesh)
    sharding.check_divisible(abstract_params, "model's parameters")
    param_sh = jax.tree.map(lambda a: a.sharding, abstract_params)
    rep = sharding.replicated(mesh)
    opt_state = jax.eval_shape(self.tx.init, abstract_params)
    self.state_shardings = TrainState(
      step=rep,
      params=param_sh,
      ema_params=param_sh,
      rng=rep,
      opt_state=optax.tree_map_params(self.tx, lambda _, s: s, opt_state, param_sh, transform_non_params=lambda _: rep),
    )
    self.abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=abstract_params,
        ema_params=abstract_params,
        opt_state=opt_state,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
      ),
      self.state_shardings,
    )
    self.batch_mesh_axes = sharding.batch_axes(config)
    self.batch_shardings = {k: sharding.batch_sharding(mesh, n, self.batch_mesh_axes) for k, n in BATCH_NDIM.items()}
    self._jit_init = jax.jit(self._init, out_shardings=self.state_shardings)
    self._jit_step = jax.jit(
      self._step,
      in_shardings=(self.state_shardings, self.batch_shardings),
      out_shardings=(self.state_shardings, rep),
      donate_argnums=0,
    )

  def context(self):
    return sharding.use_mesh(self.mesh, self.config)

  def _init(self, rng: jax.Array) -> TrainState:
    init_key, state_key = jax.random.split(rng)
    model = model_lib.JamFlow(self.config, rngs=nnx.Rngs(params=init_key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=self.tx.init(params), rng=state_key
    )

  def _step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    loss_and_grad = jax.value_and_grad(
      lambda params, batch, d, frames: flow.loss(nnx.merge(self.graphdef, params), batch, d, self.config.flow, frames),
      has_aux=True,
    )
    d = flow.draw(rng, batch, self.config.flow, config_lib.motion_step(self.config))
    k = int(self.config.train.microbatches)
    if k == 1:
      (_, metrics), grads = loss_and_grad(state.params, batch, d, None)
    else:
      grads, metrics = self._accumulate(loss_and_grad, state.params, batch, d, k)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with a warm-up of its own, so early averages are not dominated by the initialisation.
    decay = jnp.minimum(self.config.optim.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics.update(grad_norm=optax.tree.norm(grads), lr=self.schedule(state.step))
    if self.config.train.skip_nonfinite:  # a NaN/inf step leaves the weights and moments as they were
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
      params, ema, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, ema, opt_state),
        (state.params, state.ema_params, state.opt_state),
      )
    return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

  def _accumulate(self, loss_and_grad, params, batch: dict, d: flow.Draw, k: int) -> tuple[Any, dict]:
    """Gradients and metrics of the whole batch as the sum over k microbatches (train.microbatches),
    run one after another: activations of B / k examples live at a time. The draw and the loss
    denominators are the whole batch's, so the sums equal the one-batch values.

    Microbatch j holds rows j, j + k, j + 2k, ...: every device keeps its own rows (each holds a
    contiguous block of B / shards rows, a multiple of k), so splitting moves no data."""
    frames = flow.generated_frames(d.plan)

    def split(x):  # [B, ...] -> [k, B / k, ...], the B / k rows sharded as the batch was
      x = einops.rearrange(x, "(rows k) ... -> k rows ...", k=k)
      return sharding.constrain(x, (None, axes.BATCH) + (None,) * (x.ndim - 2))

    def body(total, micro):
      (_, metrics), grads = loss_and_grad(params, *micro, frames)
      return jax.tree.map(jnp.add, total, (grads, metrics)), None

    micro = jax.tree.map(split, (batch, d))
    zeros = jax.eval_shape(lambda: loss_and_grad(params, *jax.tree.map(lambda x: x[0], micro), frames))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[1], zeros[0][1]))
    (grads, metrics), _ = jax.lax.scan(body, zeros, micro)
    return grads, metrics

  def init(self, seed: int) -> TrainState:
    with self.context():
      return self._jit_init(jax.random.PRNGKey(seed).astype(jnp.uint32))

  def step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    with self.context():
      return self._jit_step(state, batch)

  def lower_step(self, abstract_batch: dict[str, jax.ShapeDtypeStruct]) -> jax.stages.Lowered:
    """The train step lowered for the abstract state and `abstract_batch` (ahead-of-time compiles)."""
    with self.context():
      return self._jit_step.lower(self.abstract_state, abstract_batch)

  def global_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    missing = set(BATCH_NDIM) - set(host_batch)
    if missing:
      raise KeyError(f"batch lacks keys {sorted(missing)} of the batch contract {sorted(BATCH_NDIM)}")
    return sharding.host_batch_to_global(
      {k: host_batch[k] for k in BATCH_NDIM}, self.mesh, self.config.train.batch_size, self.batch_mesh_axes
    )

  def process_rows(self) -> np.ndarray:
    """The rows of each global batch this process loads (`sharding.process_rows`)."""
    return sharding.process_rows(self.mesh, self.config.train.batch_size, self.batch_mesh_axes)


def init_from_f5(trainer: Trainer, state: TrainState) -> TrainState:
  """`state` with its audio stream (params and EMA) from the F5-TTS checkpoint at train.init_from."""
  config = trainer.config
  path = config.train.init_from
  try:
    state_dict = f5tts.load_f5_checkpoint(path)
  except ValueError as e:  # unreadable, unknown or unsafe file; the message names it
    raise ConfigError(f"train.init_from: {e}") from None
  converted = f5tts.convert(state_dict, trainer.abstract_state.params, config)
  logging.info(
    "audio stream from F5-TTS (train.init_layout=%s) %s: %d of the model's %d parameters "
    "in %d tensors; the motion stream starts random",
    config.train.init_layout,
    path,
    model_lib.count_params(converted),
    model_lib.count_params(state.params),
    len(jax.tree.leaves(converted)),
  )
  # Two placements: params and ema_params are donated to the step and must not share buffers.
  return state.replace(
    params=f5tts.merge_params(state.params, converted), ema_params=f5tts.merge_params(state.ema_params, converted)
  )


class Preemption:
  """Whether to stop at this step boundary: SIGTERM (Cloud TPU maintenance, a spot VM reclaimed,
  SLURM's time limit) seen at the same step by every process.

  One process: a SIGTERM handler raises a flag. Several: the distributed runtime's preemption sync
  manager, which installs its own SIGTERM handler and agrees on the first step every process reaches
  after any of them was signalled (multihost_utils.reached_preemption_sync_point)."""

  def __init__(self):
    self.signalled = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._notice)

  def _notice(self, signum, frame) -> None:
    self.signalled = True
    logging.warning("SIGTERM: saving a checkpoint after this step, then stopping")

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(steps: list[tuple[int, Any, Any]], skip: bool, ckpt) -> int:
  """Raises NonFiniteError at the first of `steps` ((step, loss, gradient norm)) with a NaN/inf loss or
  gradient norm (with train.skip_nonfinite: logs them instead, their updates were skipped); returns
  how many there were."""
  bad = [(step, loss, g) for step, loss, g in jax.device_get(steps) if not (np.isfinite(loss) and np.isfinite(g))]
  if not bad:
    return 0
  step, loss, g = bad[0]
  if skip:
    logging.warning(
      "step %d: loss %s, gradient norm %s: update skipped (%d such step(s) in this interval)", step, loss, g, len(bad)
    )
    return len(bad)
  last = ckpt.latest_step()
  raise NonFiniteError(
    f"step {step}: loss {loss}, gradient norm {g}; stopped before saving it "
    + (f"(the last checkpoint, step {last}, is intact)" if last is not None else "(no checkpoint saved)")
    + "; lower optim.learning_rate or set train.skip_nonfinite=True"
  )


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  source: Iterator[dict[str, np.ndarray]],
  validation: list[dict] | None = None,
) -> dict[int, float]:
  """Trains to `train.num_steps`, resuming from DIR/checkpoints if present (one run per workdir: a
  second is refused, run_lock). SIGTERM saves a checkpoint at the next step boundary and returns.

  `source`: host batches of this process' rows (`process_rows`), an iterator with get_state/set_state
  to resume where it was and `.motion` (the motion description) for real data; `validation`: records
  to evaluate on every `eval.every_steps` (None: no evaluation). `data_pipelines.sources.for_training`
  makes both from the config.

  Returns {step: loss} for the steps run in this call (host floats, fetched at logging time).
  """
  config_lib.validate(config, jax.device_count())
  directory = paths.workdir_path(workdir)  # local or gs://...: through etils.epath
  directory.mkdir(parents=True, exist_ok=True)
  with run_lock.RunLock(workdir, "training"):
    return _train(config, workdir, directory, source, validation)


def _start(trainer: Trainer, ckpt: checkpoint_lib.Checkpointer, source) -> TrainState:
  """The state to continue from: the latest intact checkpoint (with the source where it was), or a new
  one (its audio stream from F5-TTS under train.init_from)."""
  restored = ckpt.restore(trainer.abstract_state)
  if restored is None:
    state = trainer.init(trainer.config.train.seed)
    return init_from_f5(trainer, state) if trainer.config.train.init_from else state
  state, data_state = restored
  if data_state is not None and hasattr(source, "set_state"):
    source.set_state(data_state)
  logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  return state


def _train(config, workdir, directory, source, validation) -> dict[int, float]:
  mesh = sharding.make_mesh(config)
  logging.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].device_kind)
  trainer = Trainer(config, mesh)
  ckpt = checkpoint_lib.Checkpointer(workdir, config)
  state = _start(trainer, ckpt, source)
  # Only now that the checkpoint has been accepted: a refused resume leaves the workdir as it was.
  motion = getattr(source, "motion", None)  # for un-normalising generated motion
  if jax.process_index() == 0:
    (directory / "config.json").write_text(config.to_json_best_effort(indent=2))
    if motion is not None:
      (directory / "motion_stats.json").write_text(json.dumps(motion))
  # Every process takes part in evaluation (the weights are gathered from the mesh).
  evaluator = TrainingEvaluator(config, validation, motion) if validation is not None else None
  first, num_steps = int(state.step), int(config.train.num_steps)
  skip_nonfinite = bool(config.train.skip_nonfinite)
  logger = metrics_lib.MetricsLogger(workdir, num_steps, first)
  throughput = metrics_lib.Throughput(config, trainer.process_rows().size, first)
  profiler = metrics_lib.StepProfiler(config, workdir, first)
  preemption = Preemption()
  history, pending, losses, unchecked, skipped = {}, [], [], [], 0
  try:
    for step in range(first + 1, num_steps + 1):
      host_batch = next(source)
      throughput.add(host_batch)
      profiler.before(step, state)
      state, step_metrics = trainer.step(state, trainer.global_batch(host_batch))
      profiler.after(step, state)
      pending.append(step_metrics)
      losses.append((step, step_metrics["loss"]))
      unchecked.append((step, step_metrics["loss"], step_metrics["grad_norm"]))
      logger.advance()
      ckpt.committed()  # logs "checkpoint at step N" once a save is on disk; raises if it failed
      preempted = preemption.reached(step)
      last = preempted or step == num_steps
      saving = last or step % ckpt.every_steps == 0
      logging_now = step % config.train.log_every_steps == 0 or last
      if saving or logging_now:  # before any checkpoint: no NaN is saved
        skipped += _check_finite(unchecked, skip_nonfinite, ckpt)
        unchecked = []
      if saving:
        ckpt.save(step, state, source.get_state() if hasattr(source, "get_state") else None)
      if evaluator is not None and step % config.eval.every_steps == 0 and not preempted:
        results = evaluator(state.ema_params, step, logger.writer)
        if config.train.metrics_file:
          _append_metrics(config.train.metrics_file, {"step": step, "eval": results})
      if logging_now:
        scalars = metrics_lib.reduce_interval(pending)
        if skip_nonfinite:
          scalars["skipped_steps"] = skipped
        scalars.update(throughput.interval(step))
        history.update((s, float(v)) for s, v in jax.device_get(losses))
        logger.write(step, scalars)
        if config.train.metrics_file:
          _append_metrics(
            config.train.metrics_file, {"step": step, "losses": {s: history[s] for s, _ in losses}, "scalars": scalars}
          )
        pending, losses = [], []
      if preempted:
        ckpt.wait()
        logging.warning("stopped by SIGTERM at step %d, its checkpoint saved; re-run the same command to resume", step)
        break
  finally:  # whatever stops the loop, the checkpoints already started are completed
    profiler.close()
    preemption.close()
    try:
      ckpt.wait()
    finally:
      ckpt.close()
      logger.close()
  return history


def _append_metrics(path: str, record: dict) -> None:
  """`record` as one JSON line into the local file `path` ({process} -> this process' index): per
  logging interval every step's loss and the interval's scalars as this process computed them, per
  evaluation its scores."""
  path = path.format(process=jax.process_index())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps({**record, "process": jax.process_index()}) + "\n")
