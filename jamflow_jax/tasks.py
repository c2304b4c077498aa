"""JAM-Flow's tasks: per modality, which frames are given, which are generated, and whether the
motion stream is there at all. One vocabulary for training (`flow.task_mix` draws one per example),
inference (each Pipeline call runs one) and evaluation (`eval.tasks`):

  task   audio             motion            text                 runs in
  joint  span generated    span generated    given                tts job; edit of both
  tts    span generated    absent            given                tts job --nowith_motion; edit of audio alone
  a2m    all given         span generated    given or withheld    a2m job; edit of motion
  dub    span generated    all given         given                dub job; edit of audio with its motion

The span is the stretch of time a task generates; a modality's other valid frames are given.
Training draws one span of 70-100% of the clip (F5-TTS) shared by both modalities (`flow.draw_plan`);
inference and evaluation set it per modality: the frames after a prompt, the whole clip, an edited
stretch. `roles` turns (task, spans, valid frames) into the masks, on numpy arrays or traced jax
arrays alike (only elementwise boolean operators).
"""

import dataclasses
import functools
import operator
from typing import NamedTuple


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  audio_generated: bool  # the audio span is generated (else all audio is given)
  motion_generated: bool  # the motion span is generated (else the motion is given, or absent)
  motion_present: bool  # False: no motion stream (no valid motion frame, nothing attends to it)
  summary: str


TASKS = (
  Task("joint", audio_generated=True, motion_generated=True, motion_present=True, summary="text -> speech + motion"),
  Task("tts", audio_generated=True, motion_generated=False, motion_present=False, summary="text -> speech"),
  Task("a2m", audio_generated=False, motion_generated=True, motion_present=True, summary="audio -> motion"),
  Task("dub", audio_generated=True, motion_generated=False, motion_present=True, summary="motion + text -> speech"),
)
NAMES = tuple(t.name for t in TASKS)
JOINT, TTS, A2M, DUB = (NAMES.index(n) for n in ("joint", "tts", "a2m", "dub"))


def index(name: str) -> int:
  """The task's id (its position in TASKS); ValueError naming the choices for an unknown name."""
  if name not in NAMES:
    raise ValueError(f"task {name!r}; the tasks are {', '.join(NAMES)}")
  return NAMES.index(name)


class Roles(NamedTuple):
  """The masks of one task (or a batch of tasks; a pytree under jit). Generated and given frames are
  valid frames."""

  audio_gen: object  # bool [..., Ta] frames generated (the loss reads them)
  audio_given: object  # bool [..., Ta] frames shown as condition
  motion_gen: object  # bool [..., Tm]
  motion_given: object  # bool [..., Tm]
  motion_present: object  # bool [...]


def _where(task, flag: str):
  """Whether task (an id, or ids [B]) has `flag`: an OR of equalities, for numpy and jax alike."""
  return functools.reduce(operator.or_, [task == i for i, t in enumerate(TASKS) if getattr(t, flag)])


def _per_frame(x):
  return x[..., None] if getattr(x, "ndim", 0) else x


def roles(task, span_a, span_m, valid_a, valid_m) -> Roles:
  """The masks of `task` (id int, or ids int [B]) with its spans.

  Args: span_a bool [..., Ta], span_m bool [..., Tm]: the time each modality's span covers;
    valid_a bool [..., Ta], valid_m bool [..., Tm]: the clip's frames (not padding).
  """
  motion_present = _where(task, "motion_present")
  audio_gen = span_a & valid_a & _per_frame(_where(task, "audio_generated"))
  motion_gen = span_m & valid_m & _per_frame(_where(task, "motion_generated"))
  return Roles(
    audio_gen=audio_gen,
    audio_given=valid_a & ~audio_gen,
    motion_gen=motion_gen,
    motion_given=valid_m & ~motion_gen & _per_frame(motion_present),
    motion_present=motion_present,
  )
