"""Config checks and the quantities derived from a config (frame rates, lengths).

`validate` runs before anything is compiled, so a bad config costs one clear line, not a trace
from deep inside XLA.
"""

import math
import os

import ml_collections

from jamflow_jax import axes, choices, tasks, text as text_lib
from jamflow_jax.audio import mel as mel_lib
from jamflow_jax.errors import ConfigError
from jamflow_jax.motion.spec import motion_frames_for


def mel_fps(config: ml_collections.ConfigDict) -> float:
  return config.data.sample_rate / config.data.hop_length


def motion_step(config: ml_collections.ConfigDict) -> float:
  """Mel frames per motion frame (93.75 / 25 = 3.75): a motion frame's step on the shared clock."""
  return mel_fps(config) / config.data.motion_fps


def motion_frames(config: ml_collections.ConfigDict, mel_frames: int) -> int:
  """T_m = ceil(T_a * motion_fps / mel_fps) (DESIGN data contract)."""
  d = config.data
  return motion_frames_for(mel_frames, motion_fps=d.motion_fps, sample_rate=d.sample_rate, hop_length=d.hop_length)


def joint_window_frames(config: ml_collections.ConfigDict) -> float:
  """The local cross-modal window in mel frames (the unit of the shared RoPE clock)."""
  return config.model.joint_window_s * mel_fps(config)


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Resolves the one -1 in `mesh.shape` so that the product is `num_devices`."""
  shape = tuple(int(s) for s in config.mesh.shape)
  if len(shape) != len(config.mesh.axes):
    raise ConfigError(f"mesh.shape {shape} and mesh.axes {tuple(config.mesh.axes)} differ in length")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"mesh.shape {shape}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh.shape {shape} does not divide the {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh.shape {shape} needs {math.prod(shape)} devices but {num_devices} are present")
  return shape


# Every numeric setting that has a sensible range, as an interval ("[" / "]" closed, "(" / ")"
# open). Checked first: the other checks divide by and compare with these values.
RANGES = {
  **dict.fromkeys(
    (
      "model.mel_dim",
      "model.motion_dim",
      "model.audio_width",
      "model.motion_width",
      "model.depth",
      "model.heads",
      "model.ff_mult",
      "model.text_vocab_size",
      "model.text_dim",
      "model.conv_pos_kernel",
      "model.conv_pos_groups",
    ),
    "[1, inf)",
  ),
  "model.head_dim": "[2, inf)",
  "model.time_freq_dim": "[2, inf)",
  "model.text_conv_layers": "[0, inf)",
  "model.rope_theta": "(0, inf)",
  "model.joint_window_s": "[0, inf]",  # inf: no locality
  "model.attention_block_q": "[0, inf)",
  "model.attention_block_k": "[0, inf)",
  **dict.fromkeys(
    (
      "data.sample_rate",
      "data.hop_length",
      "data.max_mel_frames",
      "data.num_buckets",
      "data.bucket_multiple",
      "data.sort_window",
      "data.num_threads",
      "data.prefetch",
      "data.corpus.num_utterances",
    ),
    "[1, inf)",
  ),
  **dict.fromkeys(("data.worker_processes", "data.synthetic_num_batches", "data.corpus.seed"), "[0, inf)"),
  "data.motion_fps": "(0, inf)",
  "flow.logit_std": "(0, inf)",
  **dict.fromkeys(("flow.a2m_text_drop", "flow.drop_text", "flow.drop_audio_cond", "flow.drop_motion_cond"), "[0, 1]"),
  "flow.audio_loss_weight": "[0, inf)",
  "flow.motion_loss_weight": "[0, inf)",
  "optim.learning_rate": "(0, inf)",
  "optim.warmup_steps": "[0, inf)",
  "optim.end_lr_ratio": "[0, 1]",
  "optim.b1": "[0, 1)",
  "optim.b2": "[0, 1)",
  "optim.eps": "(0, inf)",
  "optim.weight_decay": "[0, inf)",
  "optim.grad_clip": "(0, inf]",
  "optim.ema_decay": "[0, 1]",
  "train.num_steps": "[0, inf)",
  "train.batch_size": "[1, inf)",
  "train.seed": "[0, inf)",
  "train.microbatches": "[1, inf)",
  "train.log_every_steps": "[1, inf)",
  "train.peak_flops_per_device": "[0, inf)",
  "checkpoint.every_steps": "[1, inf)",
  "checkpoint.max_to_keep": "[1, inf)",
  "sample.nfe": "[1, inf)",
  "sample.sway": "[-1, 1]",  # F5-TTS's range; the time grid stays monotonic
  **dict.fromkeys(
    (
      "sample.cfg_text",
      "sample.cfg_audio",
      "sample.cfg_motion",
      "sample.seed",
      "sample.max_frames",
      "sample.overlap_s",
      "sample.crossfade_s",
    ),
    "[0, inf)",
  ),
  "sample.chars_per_second": "(0, inf)",
  "sample.speed": "(0, inf)",
  "sample.length_bucket": "[1, inf)",
  "sample.batch_jobs": "[1, inf)",
  "render.size": "[16, inf)",
  "eval.num_examples": "[1, inf)",
  "eval.every_steps": "[0, inf)",
  "eval.train_examples": "[1, inf)",
  "eval.seed": "[0, inf)",
}


def _check_range(key: str, value, interval: str) -> None:
  low, high = interval[1:-1].split(", ")
  above = float(low) <= value if interval[0] == "[" else float(low) < value  # both False for NaN
  below = value <= float(high) if interval[-1] == "]" else value < float(high)
  if not (above and below):
    bound = f"{'>=' if interval[0] == '[' else '>'} {low}" if interval.endswith("inf)") else f"in {interval}"
    raise ConfigError(f"{key}={value!r} must be {bound}")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None, platform: str | None = None) -> None:
  """Raises ConfigError (one line, naming the key) for a config that cannot run.

  `num_devices` / `platform` None skip the checks against the device mesh / the devices' platform:
  main runs the rest for every mode before JAX starts (a multi-process run must not touch the devices
  before jax.distributed does), then all of them once the devices are known, before any mode runs.
  """
  for key, interval in RANGES.items():
    value = config
    for part in key.split("."):
      value = value[part]
    _check_range(key, value, interval)
  m, d, f = config.model, config.data, config.flow
  if not 0 <= min(m.joint_layers, default=0) or max(m.joint_layers, default=-1) >= m.depth:
    raise ConfigError(
      f"model.joint_layers {tuple(m.joint_layers)} out of range for model.depth={m.depth}"
      f" (valid layers are 0..{m.depth - 1})"
    )
  if len(set(m.joint_layers)) != len(m.joint_layers):
    raise ConfigError(f"model.joint_layers {tuple(m.joint_layers)} lists a layer twice")
  if m.attention_impl not in choices.ATTENTION_IMPLS:
    raise ConfigError(f"model.attention_impl={m.attention_impl!r}; available: {', '.join(choices.ATTENTION_IMPLS)}")
  if m.attention_backend not in choices.ATTENTION_BACKENDS:
    raise ConfigError(
      f"model.attention_backend={m.attention_backend!r}; available: {', '.join(choices.ATTENTION_BACKENDS)}"
    )
  for name in ("attention_block_q", "attention_block_k"):
    if m[name] and (m[name] < 16 or m[name] & (m[name] - 1)):
      raise ConfigError(f"model.{name}={m[name]} must be 0 (the backend's default) or a power of two >= 16")
  if m.remat_policy not in choices.REMAT_POLICIES:
    raise ConfigError(f"model.remat_policy={m.remat_policy!r}; choose one of {', '.join(choices.REMAT_POLICIES)}")
  if m.dtype not in choices.DTYPES:
    raise ConfigError(f"model.dtype={m.dtype!r}; choose one of {', '.join(choices.DTYPES)}")
  for name in ("audio_width", "motion_width"):
    if m[name] % m.conv_pos_groups:
      raise ConfigError(f"model.{name}={m[name]} is not divisible by model.conv_pos_groups={m.conv_pos_groups}")
  vocab = text_lib.tokenizer(config).vocab_size
  if m.text_vocab_size < vocab:
    raise ConfigError(
      f"model.text_vocab_size={m.text_vocab_size} is smaller than the {vocab} ids (the filler 0 "
      f"included) of the tokenizer of model.text_vocab={m.text_vocab!r}"
    )
  if not 0 <= m.rope_heads <= m.heads:
    raise ConfigError(f"model.rope_heads={m.rope_heads} must be in [0, model.heads={m.heads}] (0 = all heads)")
  if m.head_dim % 2:
    raise ConfigError(f"model.head_dim={m.head_dim} must be even (RoPE rotates pairs)")
  if d.motion_fps > mel_fps(config):
    raise ConfigError(
      f"inconsistent frame rates: data.motion_fps={d.motion_fps} exceeds the mel frame "
      f"rate data.sample_rate/data.hop_length={mel_fps(config):g}"
    )
  unknown = set(f.task_mix) - set(tasks.NAMES)
  if unknown or any(w < 0 for w in f.task_mix.values()) or sum(f.task_mix.values()) <= 0:
    raise ConfigError(
      f"flow.task_mix {dict(f.task_mix)}: tasks are {', '.join(tasks.NAMES)} with non-negative weights, not all zero"
    )
  if not 0 < f.span_min <= f.span_max <= 1:
    raise ConfigError(f"flow.span_min={f.span_min}, flow.span_max={f.span_max}: need 0 < min <= max <= 1")
  _choose("model.text_null", m.text_null, choices.TEXT_NULLS)
  _choose("flow.time_sampling", f.time_sampling, choices.TIME_SAMPLING)
  _choose("optim.schedule", config.optim.schedule, choices.SCHEDULES)
  _choose("export.dtype", config.export.dtype, choices.DTYPES)
  _choose("export.format", config.export.format, choices.EXPORT_FORMATS)
  check_sampler(config.sample.solver, config.sample.nfe)
  profile_steps(config)
  unknown = set(config.eval.tasks) - set(tasks.NAMES)
  if unknown or not config.eval.tasks:
    raise ConfigError(f"eval.tasks {tuple(config.eval.tasks)}: choose from {', '.join(tasks.NAMES)}")
  # The mel front end (jamflow_jax.audio.mel), the vocoders and the corpora share one clock.
  for key, value, fixed in (
    ("data.sample_rate", d.sample_rate, mel_lib.SAMPLE_RATE),
    ("data.hop_length", d.hop_length, mel_lib.HOP_LENGTH),
  ):
    if value != fixed:
      raise ConfigError(f"{key}={value}: the mel front end (jamflow_jax.audio.mel) works at {fixed}")
  if d.source != "synthetic" and m.mel_dim != mel_lib.N_MELS:
    raise ConfigError(
      f"model.mel_dim={m.mel_dim}: speech data has {mel_lib.N_MELS} mel bins (any size only with data.source=synthetic)"
    )
  t = config.train
  if t.batch_size % t.microbatches:
    raise ConfigError(f"train.batch_size={t.batch_size} is not divisible into train.microbatches={t.microbatches}")
  if num_devices is not None:
    shape = mesh_shape(config, num_devices)
    batch_mesh_axes = axes.mesh_axes_of(config.sharding.logical_axis_rules, axes.BATCH)
    batch_shards = math.prod(s for s, a in zip(shape, config.mesh.axes) if a in batch_mesh_axes)
    if t.batch_size % (batch_shards * t.microbatches):
      raise ConfigError(
        f"train.batch_size={t.batch_size} is not divisible by the {batch_shards} batch shards of "
        f"mesh {dict(zip(config.mesh.axes, shape))}"
        + (f" times train.microbatches={t.microbatches}" if t.microbatches > 1 else "")
      )
  if d.source not in choices.DATA_SOURCES:
    raise ConfigError(
      f"data.source={d.source!r}; leave it empty (shards at data.path, or the built-in "
      "corpus), or set tfds or synthetic"
    )
  if d.source == "tfds" and not d.path:
    raise ConfigError("data.source=tfds needs data.path, the TFDS data_dir holding data.tfds_name")
  _choose("data.on_bad_record", d.on_bad_record, choices.ON_BAD_RECORD)
  if platform is not None:
    check_platform(config, platform)
  _validate_init(config)


def profile_steps(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """train.profile_steps "START,END" as (START, END), the steps (1-based, inclusive) to trace; "" = None."""
  value = config.train.profile_steps
  if value == "":
    return None
  try:
    start, end = (int(x) for x in str(value).split(","))
  except ValueError:
    start = end = 0  # not two integers
  if not 1 <= start <= end:
    raise ConfigError(f"train.profile_steps={value!r}: give START,END, steps with 1 <= START <= END ('' = none)")
  return start, end


def _choose(key: str, value, options: tuple) -> None:
  if value not in options:
    raise ConfigError(f"{key}={value!r}; choose one of {', '.join(options)}")


def check_sampler(solver: str, nfe: int) -> None:
  """ConfigError for a solver / NFE pair that cannot integrate (`sample.solver`, `sample.nfe`)."""
  _choose("sample.solver", solver, choices.SOLVERS)
  if nfe < 1 or (solver == "midpoint" and nfe % 2):
    raise ConfigError(f"sample.nfe={nfe}: needs >= 1, and even for the midpoint solver (two model evaluations a step)")


def check_platform(config: ml_collections.ConfigDict, platform: str) -> None:
  """ConfigError where the attention settings cannot run on devices of `platform` (cpu, gpu, tpu)."""
  m = config.model
  if m.attention_impl == "cudnn" and (platform != "gpu" or m.dtype != "bfloat16"):
    raise ConfigError(
      f"model.attention_impl='cudnn' needs GPUs and model.dtype='bfloat16' (devices: "
      f"{platform}, model.dtype={m.dtype!r}); use pallas or xla"
    )
  needs = {"triton": "gpu", "mosaic_tpu": "tpu"}.get(m.attention_backend)
  if m.attention_impl == "pallas" and needs and needs != platform:
    raise ConfigError(
      f"model.attention_backend={m.attention_backend!r} lowers for {needs}, but the devices are {platform}; use auto"
    )


def _validate_init(config: ml_collections.ConfigDict) -> None:
  """train.init_from: the file exists and the audio stream has what F5-TTS's layout fixes beyond shapes."""
  m, t = config.model, config.train
  if t.init_layout not in choices.F5_LAYOUTS:
    raise ConfigError(f"train.init_layout={t.init_layout!r}; choose {' or '.join(choices.F5_LAYOUTS)}")
  if not t.init_from:
    return
  if not os.path.isfile(t.init_from):
    raise ConfigError(f"train.init_from={t.init_from!r}: no such file")
  # Shapes are checked when the checkpoint is converted; these settings change no shape.
  v1 = t.init_layout == "v1"
  problems = []
  if not (m.rope_heads in (0, m.heads) if v1 else m.rope_heads == 1):
    problems.append(f"model.rope_heads={m.rope_heads} (need {'0: all heads' if v1 else '1: head 0 only'})")
  if m.text_mask_padding != v1:
    problems.append(f"model.text_mask_padding={m.text_mask_padding} (need {v1})")
  if m.qk_norm:
    problems.append("model.qk_norm=True (need False: F5-TTS has no qk-norm)")
  if m.rope_theta != 10000.0:
    problems.append(f"model.rope_theta={m.rope_theta} (need 10000)")
  if problems:
    raise ConfigError(
      f"train.init_from={t.init_from!r} with train.init_layout={t.init_layout!r} "
      f"({'F5TTS_v1_Base' if v1 else 'F5TTS_Base'}) needs other model settings: " + "; ".join(problems)
    )
