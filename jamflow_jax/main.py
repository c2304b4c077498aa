"""Entry point: python -m jamflow_jax.main --config=configs/base.py[:PRESET] --workdir=DIR --mode=MODE

Overrides: --config.a.b=value. Re-running the same training command with the same --workdir resumes.

--mode=sample runs one task from flags (--task=tts|a2m|dub|edit and its inputs) or every job of
--jobs=FILE (JSON, see README "Sampling") on DIR's latest checkpoint (EMA weights), writing
NAME.wav / NAME.npz / NAME.mp4 / NAME.json to --out (default DIR/samples). Sampler settings are
--config.sample.* (solver, nfe, sway, cfg_text / cfg_audio / cfg_motion, vocoder, ...).

--mode=sample --export_dir=PATH (or a --workdir that is an export) samples from an export alone;
--config is then optional (default: the export's) and --out defaults to PATH/samples.

--mode=export writes DIR/export/<step>/ (config.export: use_ema, dtype, format), see jamflow_jax.export.

--mode=eval scores DIR's checkpoint on the validation split (config.eval: tasks, num_examples,
render.face_model) and writes DIR/eval/step_<N>.{json,txt} plus a rendered video and plot.
"""

import logging as pylogging
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from data_pipelines import builtin, sources
from jamflow_jax import cli, config as config_lib, errors, export as export_lib, paths, train
from jamflow_jax.eval import evaluate
from jamflow_jax.inference import Pipeline, jobs as jobs_lib
from jamflow_jax.motion import face as face_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/base.py[:PRESET]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, TensorBoard logs and config.json go")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "export"], "what to run")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "--mode=sample: an export (DIR/export/<step>) to sample from")
# --mode=sample: one job from these flags, or many from --jobs.
_JOBS = flags.DEFINE_string("jobs", None, "JSON job file: a job object or a list of them (keys as the flags)")
_OUT = flags.DEFINE_string("out", None, "where samples go (default: WORKDIR/samples)")
_NAME = flags.DEFINE_string("name", None, "output file stem (default: TASK-seedSEED)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_TASK = flags.DEFINE_enum(
  "task",
  None,
  ["tts", "a2m", "dub", "edit"],
  "tts: text -> speech + motion; a2m: --audio -> motion; dub: --motion + --text -> "
  "speech; edit: regenerate --span of --audio (and --motion)",
)
_TEXT = flags.DEFINE_string("text", None, "transcript to speak (tts, dub), of the audio (a2m), of the edited clip")
_AUDIO = flags.DEFINE_string("audio", None, "wav file (a2m, edit), 24 kHz unless --resample")
_MOTION = flags.DEFINE_string("motion", None, "FLAME motion npz (dub, edit)")
_PROMPT_AUDIO = flags.DEFINE_string("prompt_audio", None, "tts: voice prompt wav (needs --prompt_text)")
_PROMPT_TEXT = flags.DEFINE_string("prompt_text", None, "tts: transcript of --prompt_audio")
_PROMPT_MOTION = flags.DEFINE_string("prompt_motion", None, "tts: motion prompt npz (the prefix's face)")
_DURATION = flags.DEFINE_float("duration", None, "tts: seconds of new speech (default: from the text)")
_SPEED = flags.DEFINE_float("speed", None, "tts: speaking-rate factor (default config.sample.speed)")
_SPAN = flags.DEFINE_list("span", None, "edit: START,END seconds to regenerate")
_REGENERATE = flags.DEFINE_list("regenerate", ["audio"], "edit: audio and/or motion")
_WITH_MOTION = flags.DEFINE_bool("with_motion", True, "tts: generate motion with the speech")
_RESAMPLE = flags.DEFINE_bool("resample", False, "resample input audio to 24 kHz instead of refusing it")
_SEED = flags.DEFINE_integer("seed", None, "noise seed (default config.sample.seed)")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "jax.distributed.initialize(): auto = when launched as several processes (--num_processes > 1, "
  "SLURM with several tasks, a multi-host Cloud TPU slice)",
)
# Multi-process start-up. Each flag falls back to its environment variable; SLURM and Cloud TPU fill
# in what neither gives (jax.distributed's cluster detection).
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0's coordinator (env JAX_COORDINATOR_ADDRESS)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the job (env JAX_NUM_PROCESSES)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process, 0..num_processes-1 (env JAX_PROCESS_ID)")
_LOCAL_DEVICES = flags.DEFINE_list(
  "local_device_ids",
  None,
  "accelerators this process drives, e.g. 0,1,2,3 (env JAX_LOCAL_DEVICE_IDS; "
  "default: all of the host's; under SLURM jax takes the one of SLURM_LOCALID)",
)


def _flag_or_env(flag, name: str, parse):
  if flag.value is not None:
    return flag.value
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return parse(value)
  except ValueError:
    raise app.UsageError(f"{name}={value!r} is not a valid --{flag.name}") from None


def distributed_settings() -> dict | None:
  """Keyword arguments for jax.distributed.initialize, or None for a single-process run."""
  ids = _flag_or_env(_LOCAL_DEVICES, "JAX_LOCAL_DEVICE_IDS", lambda v: v.split(","))
  settings = {
    "coordinator_address": _flag_or_env(_COORDINATOR, "JAX_COORDINATOR_ADDRESS", str),
    "num_processes": _flag_or_env(_NUM_PROCESSES, "JAX_NUM_PROCESSES", int),
    "process_id": _flag_or_env(_PROCESS_ID, "JAX_PROCESS_ID", int),
  }
  try:
    settings["local_device_ids"] = None if ids is None else [int(i) for i in ids]
  except ValueError:
    raise app.UsageError(f"--local_device_ids={','.join(ids)}: give comma-separated integers") from None
  env = os.environ
  cluster = int(env.get("SLURM_NTASKS", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  n, i = settings["num_processes"], settings["process_id"]
  if _DISTRIBUTED.value == "off" or (_DISTRIBUTED.value == "auto" and not cluster and (n or 1) <= 1):
    return None
  if not cluster and (n is None or i is None or not settings["coordinator_address"]):
    raise app.UsageError(
      "several processes need --coordinator_address, --num_processes and --process_id "
      "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) unless SLURM or a "
      "Cloud TPU slice provides them"
    )
  if n is not None and i is not None and not 0 <= i < n:
    raise app.UsageError(f"--process_id={i} must be in 0..{n - 1} (--num_processes={n})")
  return {k: v for k, v in settings.items() if v is not None}


class _QuietOrbax:
  """Keeps Orbax's per-save INFO chatter off the console, and its ERROR reports of a failed save or
  restore: every background writer reports the same failure with a traceback (and asyncio those of
  its tasks), while the Checkpointer raises it once, as one line. Orbax's warnings still show."""

  def filter(self, record) -> bool:
    if "/orbax/" in record.pathname:
      return record.levelno == pylogging.WARNING
    # asyncio's "exception was never retrieved" for an Orbax write names its files (*.orbax-checkpoint-tmp).
    return not (record.name == "asyncio" and "orbax" in record.getMessage())


def main(argv):
  logging.get_absl_handler().addFilter(_QuietOrbax())  # Orbax's records and asyncio's both pass it
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  export_dir = _export_dir()
  config = _CONFIG.value if _CONFIG.value is not None else export_lib.exported_config(export_dir)
  distributed = distributed_settings()
  if _MODE.value in ("train", "eval") and not config.data.path and not config.data.source:
    # Before the distributed runtime: a first build (minutes) must not outlast its start-up timeouts.
    builtin.ensure_corpus(config)
  if distributed is not None:
    logging.info(
      "starting the distributed runtime (%s)",
      ", ".join(f"{k}={v}" for k, v in distributed.items()) or "from the SLURM / Cloud TPU environment",
    )
    jax.distributed.initialize(**distributed)
  logging.info(
    "process %d of %d, %d of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  # The checks that need the devices, before any mode starts: the platform for every mode, the mesh for
  # training (sampling and evaluation run on each process' first device).
  training = _MODE.value == "train"
  config_lib.validate(config, jax.device_count() if training else None, jax.devices()[0].platform)
  if training:
    source, validation = sources.for_training(config)
    train.train(config, _WORKDIR.value, source, validation)
  elif _MODE.value == "sample":
    sample(config if _CONFIG.value is not None else None, _WORKDIR.value, export_dir)
  elif _MODE.value == "export":
    out = export_lib.export(_WORKDIR.value, config, step=_STEP.value)
    if jax.process_index() == 0:
      print(f"exported to {out}; sample: {export_lib.read_manifest(out)['sample_command']}")
  elif _MODE.value == "eval":
    evaluate.run(config, _WORKDIR.value, sources.validation_records(config, config.eval.num_examples), step=_STEP.value)


def _flag_job() -> dict:
  if _TASK.value is None:
    raise app.UsageError("--mode=sample needs --task (or --jobs=FILE)")
  span = _SPAN.value
  if span is not None:
    try:
      start, end = (float(x) for x in span)
    except ValueError:  # not two numbers
      raise app.UsageError(f"--span={','.join(span)}: give START,END in seconds") from None
    span = (start, end)
  job = {
    "task": _TASK.value,
    "name": _NAME.value,
    "seed": _SEED.value,
    "text": _TEXT.value,
    "audio": _AUDIO.value,
    "motion": _MOTION.value,
    "prompt_audio": _PROMPT_AUDIO.value,
    "prompt_text": _PROMPT_TEXT.value,
    "prompt_motion": _PROMPT_MOTION.value,
    "duration": _DURATION.value,
    "speed": _SPEED.value,
    "span": span,
    "regenerate": tuple(_REGENERATE.value),
    "with_motion": _WITH_MOTION.value,
    "resample": _RESAMPLE.value,
  }
  try:
    return jobs_lib.from_flags(job)
  except errors.InputError as e:  # flags the job kind does not take
    raise app.UsageError(str(e)) from None


def _export_dir() -> str | None:
  """The export --mode=sample reads: --export_dir, or a --workdir that is an export."""
  if _EXPORT_DIR.value is not None:
    return _EXPORT_DIR.value
  if _MODE.value == "sample" and _WORKDIR.value and export_lib.is_export(_WORKDIR.value):
    return _WORKDIR.value
  return None


def sample(config, workdir: str | None, export_dir: str | None = None) -> None:
  """--mode=sample: the flag job or every job of --jobs, with progress and outputs per job;
  from the run in `workdir`, or from the export `export_dir` (config None: the export's).

  Under several processes each one generates the same samples on its first local device (no
  process waits on another) and process 0 writes them.
  """
  jobs = jobs_lib.read_jobs(_JOBS.value) if _JOBS.value else [_flag_job()]
  wheres = [f"{_JOBS.value} job {i}" if _JOBS.value else f"--task={job['task']}" for i, job in enumerate(jobs)]
  for job, where in zip(jobs, wheres):  # all of them before the model loads: a bad last job fails now
    jobs_lib.check_job(job, where=where)
  base_dir = os.path.dirname(os.path.abspath(_JOBS.value)) if _JOBS.value else ""
  out_dir = _OUT.value or paths.workdir_path(export_dir or workdir) / "samples"  # local or a URL
  if export_dir is not None:
    pipe = Pipeline.from_export(export_dir, config)
    config = pipe.config
  else:
    pipe = Pipeline.from_workdir(workdir, config, step=_STEP.value)
  face = face_lib.load_configured_face(config) if config.sample.video else None
  writes = jax.process_index() == 0
  if not writes:
    logging.info("process %d generates alongside process 0, which writes the samples", jax.process_index())
  # Windows of jobs run side by side (Pipeline.run_tasks); outputs are written in job order up to the
  # first job that fails, whose error ends the run, as one job at a time would.
  window = 4 * config.sample.batch_jobs
  with tqdm(total=len(jobs), desc="samples", unit="sample", disable=len(jobs) == 1 or not writes) as progress:
    for start in range(0, len(jobs), window):
      outcomes = jobs_lib.run_jobs(
        pipe,
        jobs[start : start + window],
        wheres[start : start + window],
        base_dir=base_dir,
        batch=config.sample.batch_jobs,
      )
      for i, (job, where, result) in enumerate(zip(jobs[start:], wheres[start:], outcomes), start=start):
        if isinstance(result, errors.InputError):
          raise result
        name = job.get("name") or f"{job['task']}-seed{result.info['seed']}" + (f"-{i}" if len(jobs) > 1 else "")
        if writes:
          written = result.save(out_dir, name, face=face, size=config.render.size)
          logging.info("%s -> %s", where, ", ".join(sorted(written.values())))
        progress.update()


def _parse_flags(argv: list[str]) -> list[str]:
  """cli.parse_flags, then the flags every mode needs and the config checks that need no devices."""
  rest = cli.parse_flags(argv, _CONFIG)
  if _EXPORT_DIR.value is not None and _MODE.value != "sample":
    raise cli.FlagError(f"--export_dir is for --mode=sample (here --mode={_MODE.value})")
  # Sampling from an export needs neither: the export holds the config.
  required = (_CONFIG, _WORKDIR) if _EXPORT_DIR.value is None else ()
  for flag in required:
    if flag.value is None:
      raise cli.FlagError(f"--{flag.name} is required: {flags.FLAGS[flag.name].help}")
  if _CONFIG.value is not None:
    cli.loaded(_CONFIG, config_lib.validate)
  return rest


def run() -> None:
  cli.run(main, _parse_flags)


if __name__ == "__main__":
  run()
