"""Jobs: what `--mode=sample` runs, from flags or a JSON job file of several (README "Sampling").

A job is {task, name?, seed?, <the job kind's keys>, <sampler options>}. The kinds are the
Pipeline's methods; each runs tasks of `jamflow_jax.tasks` (tts: joint, or tts without motion;
a2m; dub; edit: the task its `regenerate` makes).
"""

import dataclasses
import json
import math
import os

from jamflow_jax.errors import InputError
from jamflow_jax.inference.pipeline import Pipeline
from jamflow_jax.inference.result import Result
from jamflow_jax.sampling import SamplerOptions

# job kind -> (Pipeline method, its arguments by job key)
JOBS = {
  "tts": (
    "text_to_speech",
    {
      "text": "text",
      "prompt_audio": "voice_prompt",
      "prompt_text": "prompt_text",
      "prompt_motion": "motion_prompt",
      "duration": "duration_s",
      "speed": "speed",
      "with_motion": "with_motion",
      "resample": "resample",
    },
  ),
  "a2m": ("audio_to_motion", {"audio": "audio", "text": "text", "resample": "resample"}),
  "dub": ("dub", {"motion": "motion", "text": "text"}),
  "edit": (
    "edit",
    {
      "audio": "audio",
      "motion": "motion",
      "text": "text",
      "span": "span",
      "regenerate": "regenerate",
      "resample": "resample",
    },
  ),
}
PATH_KEYS = ("audio", "motion", "prompt_audio", "prompt_motion")
OPTION_KEYS = tuple(f.name for f in dataclasses.fields(SamplerOptions))
# Keys whose flags have defaults: from flags, they count only where the job kind takes them.
DEFAULTED_KEYS = ("regenerate", "with_motion", "resample")


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_from(low: int):
  return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


def _file_name(value) -> bool:
  """A plain file name: NAME.wav etc. land in the output directory, never outside it."""
  return isinstance(value, str) and value not in ("", ".", "..") and not set(value) & {"/", "\\", "\0"}


# Every job key (but task) -> (test of its value, what the value must be).
_VALUES = {
  **dict.fromkeys(("text", "prompt_text", "solver", *PATH_KEYS), (lambda v: isinstance(v, str), "a string")),
  "name": (_file_name, "a plain file name (no directory part)"),
  "seed": (_int_from(0), "an integer >= 0"),
  "nfe": (_int_from(1), "an integer >= 1"),
  **dict.fromkeys(("duration", "speed"), (lambda v: _number(v) and v > 0, "a positive number")),
  **dict.fromkeys(("sway", "cfg_text", "cfg_audio", "cfg_motion"), (_number, "a number")),
  "span": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_number, v)), "[START, END] in seconds"),
  "regenerate": (
    lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    "a list of audio and/or motion",
  ),
  **dict.fromkeys(("with_motion", "resample"), (lambda v: isinstance(v, bool), "true or false")),
}


def keys(kind: str) -> set[str]:
  """The keys a job of `kind` takes (sampler options aside)."""
  return set(JOBS[kind][1]) | {"task", "name", "seed"}


def check_job(job: dict, *, where: str = "job") -> None:
  """Raises InputError naming the job (`where`) and the key for a job that cannot run as written."""
  kind = job.get("task")
  if kind not in JOBS:
    raise InputError(f"{where}: task={kind!r}; choose one of {', '.join(JOBS)}")
  unknown = set(job) - keys(kind) - set(OPTION_KEYS)
  if unknown:
    raise InputError(
      f"{where}: keys {sorted(unknown)} mean nothing to task {kind}; it takes "
      f"{', '.join(sorted(JOBS[kind][1]))}, name, seed and {', '.join(OPTION_KEYS)}"
    )
  for key, value in job.items():
    if key != "task" and value is not None and not _VALUES[key][0](value):
      raise InputError(f"{where}: {key}={value!r} must be {_VALUES[key][1]}")


def from_flags(values: dict) -> dict:
  """The job of the command line's flags ({key: value or None}, `task` set); InputError naming the
  flags the job kind does not take."""
  given = {k for k, v in values.items() if v is not None}
  stray = given - keys(values["task"]) - set(DEFAULTED_KEYS)
  if stray:
    raise InputError(f"--task={values['task']} does not take --{', --'.join(sorted(stray))}")
  return {k: v for k, v in values.items() if k in keys(values["task"])}


def _call(job: dict, where: str, base_dir: str) -> tuple[str, dict]:
  """The job's Pipeline method and its keyword arguments; paths relative to base_dir."""
  check_job(job, where=where)
  method, arguments = JOBS[job["task"]]
  kwargs = {arguments[k]: v for k, v in job.items() if k in arguments and v is not None}
  for k in PATH_KEYS:
    if k in arguments and job.get(k) is not None:
      kwargs[arguments[k]] = os.path.join(base_dir, os.path.expanduser(job[k]))
  kwargs.update({k: job[k] for k in OPTION_KEYS if job.get(k) is not None})
  return method, {"seed": job.get("seed"), **kwargs}


def run_job(pipe: Pipeline, job: dict, *, where: str = "job", base_dir: str = "") -> Result:
  """Runs one job; paths relative to base_dir."""
  method, kwargs = _call(job, where, base_dir)
  try:
    return getattr(pipe, method)(**kwargs)
  except InputError as e:
    raise InputError(f"{where}: {e}") from e


def run_jobs(pipe: Pipeline, jobs: list[dict], wheres: list[str], *, base_dir: str = "", batch: int = 1) -> list:
  """Runs jobs side by side (`Pipeline.run_tasks`: model calls of similar length share a sampler call
  of up to `batch` rows); each job's Result, or its InputError naming it (`wheres`), in its place.
  A job's outputs are those `run_job` gives it alone."""
  calls = [_call(job, where, base_dir) for job, where in zip(jobs, wheres, strict=True)]
  steps = [getattr(Pipeline, method).steps(pipe, **kwargs) for method, kwargs in calls]
  outcomes = pipe.run_tasks(steps, batch)
  return [
    InputError(f"{where}: {out}") if isinstance(out, InputError) else out
    for out, where in zip(outcomes, wheres, strict=True)
  ]


def read_jobs(path: str) -> list[dict]:
  """A JSON job file: one job object, or a list of them (see README "Sampling")."""
  try:
    with open(path) as f:
      jobs = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"job file {path}: {e}") from e
  jobs = [jobs] if isinstance(jobs, dict) else jobs
  if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs) or not jobs:
    raise InputError(f"job file {path}: expected a job object or a non-empty list of them")
  return jobs
