"""Readers for FLAME tracker outputs: one per-utterance .npz -> motion [T, D] in our layout + frame rate.

Our layout (jamflow_jax.motion.spec) is `expression[50] | jaw[3] | neck[3] | global_rot[3] | eyelids[2]`,
axis-angle rotations, 25 fps. Every reader drops what the layout does not hold: identity (`shape`,
`static_offset`, `dynamic_offset`), `translation`, eyeball rotations (`eyes_pose`), camera, lighting
and texture; parts a format does not have are zero (rest pose, eyes open) and say so in the notes.

Formats (`read_track(path, fmt)`, fmt "auto" detects by keys, in this order):

- "jamflow": `motion` [T, 61] already in our layout, optional scalar `fps`.
- "vhap": VHAP / GaussianAvatars `tracked_flame_params.npz` (ShenhanQian/VHAP
  vhap/model/tracker.py `save_result`; GaussianAvatars scene/flame_gaussian_model.py reads the
  same keys): `rotation` [T, 3] global, `neck_pose` [T, 3], `jaw_pose` [T, 3] (axis-angle, fed to
  FLAME's lbs in the order rotation|neck|jaw|eyes), `expr` [T, 100] (FLAME 2023, VHAP's default
  n_expr), `eyes_pose` [T, 6], `translation` [T, 3], `shape` [300], `static_offset`,
  `timestep_id`, `n_processed_frames`, `image_size`, optional `focal_length`, `tex`, `lights`,
  `dynamic_offset`. No eyelid parameters and no frame rate are stored. Detected by the four keys
  `expr`, `rotation`, `neck_pose`, `jaw_pose`.
- "emoca": the DECA family, stacked over frames. Detected by any expression key below.
  - EMOCA (radekd91/emoca gdl_apps/EMOCA/utils/io.py `save_codes`) and DECA write per frame
    `exp` [50], `pose` [6] = global[3] | jaw[3] axis-angle (gdl/models/DECA.py splits
    `posecode[..., :3]` / `[..., 3:]`), `shape` [100], `tex`, `detail`; stack the frames of an
    utterance into one npz (`exp` [T, 50], `pose` [T, 6]); `expcode` / `posecode` are accepted too.
  - SPECTRE (filby89/spectre src/spectre.py) codedict: `exp` [T, 50], `pose` [T, 6] (same
    split; its jaw refinement is written into `pose[..., 3:]`), `shape`, `tex`, `cam`, `light`.
  - SMIRK (georgeretsi/smirk src/smirk_encoder.py) outputs: `expression_params` [T, 50],
    `jaw_params` [T, 3], `pose_params` [T, 3] (global only; FLAME full pose is
    pose|neck|jaw|eyes in src/FLAME/FLAME.py), `eyelid_params` [T, 2] (left, right; FLAME 2020
    eyelid blendshapes, clamped 0..1), `shape_params` [T, 300], `cam` [T, 3].
  Accepted keys per part (one alias per part in a file):
  expression `exp|expcode|expression_params|expression|expr`, jaw `jaw|jaw_pose|jawpose|jaw_params`,
  global `global_rot|global_pose|global_orient|pose_params|rotation`, neck
  `neck|neck_pose|neck_pose_params`, eyelids `eyelids|eyelid_params`, and the combined `pose|posecode`:
  [T, 6] global|jaw axis-angle (DECA) or [T, 12] global|jaw 6D. Explicit jaw/global keys take
  precedence over the halves of `pose`.

Rotations may be [T, 3] axis-angle, [T, 6] 6D (PyTorch3D row convention, see
jamflow_jax.motion.rotations) or [T, 3, 3] matrices; all become axis-angle. Expression vectors
longer than 50 keep their first 50 components, shorter ones are zero-padded (noted). Arrays of shape
[T, 1, k] (per-frame batch-1 outputs stacked) are squeezed to [T, k].

Mixing FLAME versions in one corpus is not meaningful: FLAME 2020 (DECA/EMOCA/SPECTRE/SMIRK) and
FLAME 2023 (VHAP) have different expression bases, so the same 50 numbers mean different faces.

Frame rate: a scalar `fps` (or `frame_rate`) key when present, otherwise the caller's default;
`to_motion_fps` converts to 25 fps (rotations by quaternion slerp, other channels linearly).
Every error names the file and the key.
"""

import dataclasses
import os
import zipfile

import numpy as np

from jamflow_jax.motion import rotations
from jamflow_jax.motion.spec import MOTION_SPEC, MotionSpec

FORMATS = ("auto", "jamflow", "vhap", "emoca")
_FPS_KEYS = ("fps", "frame_rate")
_VHAP_KEYS = {"expression": "expr", "jaw": "jaw_pose", "neck": "neck_pose", "global_rot": "rotation"}
_EMOCA_KEYS = {
  "expression": ("exp", "expcode", "expression_params", "expression", "expr"),
  "jaw": ("jaw", "jaw_pose", "jawpose", "jaw_params"),
  "neck": ("neck", "neck_pose", "neck_pose_params"),
  "global_rot": ("global_rot", "global_pose", "global_orient", "pose_params", "rotation"),
  "eyelids": ("eyelids", "eyelid_params"),
}
_POSE_KEYS = ("pose", "posecode")


class TrackError(ValueError):
  """A motion file that cannot become motion: unreadable, unknown keys, bad shapes, NaN/inf."""


class MissingFrameRateError(TrackError):
  """The file stores no frame rate and the caller gave none."""


@dataclasses.dataclass(frozen=True)
class Track:
  """One utterance's motion as read: `motion` [T, D] float32 at `fps` (None if the file has none)."""

  motion: np.ndarray
  fps: float | None
  format: str
  notes: tuple[str, ...] = ()


def detect_format(keys, path: str = "motion file") -> str:
  """The format whose keys `keys` carry (see the module docstring); TrackError if none fits."""
  keys = set(keys)
  if "motion" in keys:
    return "jamflow"
  if set(_VHAP_KEYS.values()) <= keys:
    return "vhap"
  if keys & set(_EMOCA_KEYS["expression"]):
    return "emoca"
  raise TrackError(
    f"{path}: cannot tell the tracker format from keys {sorted(keys)}: expected `motion` "
    f"(jamflow), {sorted(_VHAP_KEYS.values())} (vhap), or one of "
    f"{list(_EMOCA_KEYS['expression'])} (emoca/spectre/smirk)"
  )


def _array(path: str, data, key: str) -> np.ndarray:
  """data[key] as float64 [T, ...] with T > 0, finite; [T, 1, k] squeezed to [T, k]."""
  try:
    value = np.asarray(data[key])
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise TrackError(f"{path}: key {key!r} cannot be read ({e})") from e
  if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
    raise TrackError(f"{path}: key {key!r} has dtype {value.dtype}, expected real numbers")
  if value.ndim == 3 and value.shape[1] == 1:
    value = value[:, 0]
  if value.ndim < 2 or value.shape[0] == 0:
    raise TrackError(f"{path}: key {key!r} has shape {value.shape}, expected [frames > 0, ...]")
  value = value.astype(np.float64)
  bad = ~np.isfinite(value)
  if bad.any():
    raise TrackError(f"{path}: key {key!r} has NaN/inf at frame {int(np.argwhere(bad)[0, 0])}")
  return value


def _rotation(path: str, key: str, value: np.ndarray) -> np.ndarray:
  """[T, 3] axis-angle, [T, 6] 6D or [T, 3, 3] matrices -> [T, 3] axis-angle."""
  if value.shape[1:] == (3,):
    return value
  if value.shape[1:] == (6,):
    return rotations.rotation_6d_to_axis_angle(value)
  if value.shape[1:] == (3, 3):
    return rotations.matrix_to_axis_angle(value)
  raise TrackError(
    f"{path}: key {key!r} has shape {value.shape}, expected a rotation per frame: "
    "[T, 3] axis-angle, [T, 6] 6D or [T, 3, 3] matrix"
  )


def _vector(path: str, key: str, value: np.ndarray, size: int, notes: list[str], pad: bool) -> np.ndarray:
  """[T, k] -> [T, size]; with `pad` (expression), the first `size` columns or zero-padded to `size`."""
  if value.ndim != 2 or (value.shape[1] != size and not pad):
    raise TrackError(f"{path}: key {key!r} has shape {value.shape}, expected [T, {size}]")
  if value.shape[1] > size:
    notes.append(f"{key}: first {size} of {value.shape[1]} components kept")
    return value[:, :size]
  if value.shape[1] < size:
    notes.append(f"{key}: {value.shape[1]} components zero-padded to {size}")
    return np.pad(value, ((0, 0), (0, size - value.shape[1])))
  return value


def _frame_rate(path: str, data) -> float | None:
  for key in _FPS_KEYS:
    if key in data:
      try:
        fps = float(np.asarray(data[key]).reshape(()))
      except (TypeError, ValueError) as e:
        raise TrackError(f"{path}: key {key!r} should be one number (frames per second): {e}") from e
      if not np.isfinite(fps) or fps <= 0:
        raise TrackError(f"{path}: key {key!r} = {fps} is not a frame rate")
      return fps
  return None


def _read_jamflow(path: str, data, spec: MotionSpec) -> tuple[np.ndarray, list[str]]:
  motion = _array(path, data, "motion")
  if motion.ndim != 2 or motion.shape[1] != spec.dim:
    raise TrackError(
      f"{path}: key 'motion' has shape {motion.shape}, expected [T, {spec.dim}] "
      f"({' | '.join(f'{n}[{s}]' for n, s in spec.parts)})"
    )
  return motion, []


def _pick(path: str, keys: set[str], aliases: tuple[str, ...]) -> str | None:
  """The one key of `aliases` present in `keys`, None if none; TrackError if several."""
  present = [k for k in aliases if k in keys]
  if len(present) > 1:
    raise TrackError(f"{path}: keys {present} all name the same motion part; keep one")
  return present[0] if present else None


def _read_parts(
  path: str, data, keys: dict[str, str | None], pose_key: str | None, spec: MotionSpec
) -> tuple[np.ndarray, list[str]]:
  """Assembles [T, D] from per-part keys (None = absent) and an optional combined `pose` key."""
  notes, parts, sources = [], {}, {}
  if pose_key is not None:  # read first, so explicit jaw/global keys below overwrite its halves
    pose = _array(path, data, pose_key)
    if pose.shape[1:] not in ((6,), (12,)):
      raise TrackError(
        f"{path}: key {pose_key!r} has shape {pose.shape}, expected [T, 6] (global | jaw "
        "axis-angle, DECA/EMOCA/SPECTRE) or [T, 12] (global | jaw 6D)"
      )
    half = pose.shape[1] // 2
    parts["global_rot"] = _rotation(path, pose_key, pose[:, :half])
    parts["jaw"] = _rotation(path, pose_key, pose[:, half:])
    sources["global_rot"] = sources["jaw"] = pose_key
  for name, key in keys.items():
    if key is None:
      continue
    value = _array(path, data, key)
    size = dict(spec.parts)[name]
    if name in spec.rotations:
      parts[name] = _rotation(path, key, value)
    else:
      parts[name] = _vector(path, key, value, size, notes, pad=name == "expression")
    sources[name] = key
  lengths = {sources[n]: v.shape[0] for n, v in parts.items()}
  if len(set(lengths.values())) > 1:
    raise TrackError(f"{path}: keys disagree on the number of frames: {lengths}")
  for name in spec.names:
    if name not in parts:
      notes.append(f"{name}: absent, zeros")
  num_frames = next(iter(parts.values())).shape[0]
  return spec.join(parts, num_frames), notes


def read_track(path: str | os.PathLike, fmt: str = "auto", spec: MotionSpec = MOTION_SPEC) -> Track:
  """Reads one .npz of tracker output (format `fmt`, see the module docstring) -> Track at its own rate."""
  path = os.fspath(path)
  if fmt not in FORMATS:
    raise ValueError(f"motion format {fmt!r}; choose one of {FORMATS}")
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise TrackError(f"{path}: cannot read as .npz ({e})") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise TrackError(f"{path}: a single array, not an .npz of named tracker outputs")
  with data:
    keys = set(data.files)
    fmt = detect_format(keys, path) if fmt == "auto" else fmt
    if fmt == "jamflow":
      motion, notes = _read_jamflow(path, data, spec)
    elif fmt == "vhap":
      missing = sorted(set(_VHAP_KEYS.values()) - keys)
      if missing:
        raise TrackError(f"{path}: not a VHAP tracked_flame_params file: keys {missing} are missing")
      motion, notes = _read_parts(path, data, dict(_VHAP_KEYS), None, spec)
    else:
      chosen = {name: _pick(path, keys, aliases) for name, aliases in _EMOCA_KEYS.items()}
      if chosen["expression"] is None:
        raise TrackError(f"{path}: no expression key (one of {list(_EMOCA_KEYS['expression'])})")
      motion, notes = _read_parts(path, data, chosen, _pick(path, keys, _POSE_KEYS), spec)
    fps = _frame_rate(path, data)
  return Track(motion.astype(np.float32), fps, fmt, tuple(notes))


def to_motion_fps(motion: np.ndarray, src_fps: float, spec: MotionSpec = MOTION_SPEC) -> np.ndarray:
  """[T, D] at src_fps -> [T', D] float32 at spec.fps, T' = round(T * spec.fps / src_fps).

  Rotation parts are resampled by quaternion slerp, the others linearly (see
  jamflow_jax.motion.rotations.resample_positions for where frames fall).
  """
  motion = np.asarray(motion, np.float64)
  if abs(src_fps - spec.fps) < 1e-6:
    return motion.astype(np.float32)
  parts = {}
  for name, value in spec.split(motion).items():
    if name in spec.rotations:
      parts[name] = rotations.resample_rotations(value, src_fps, spec.fps)
    else:
      parts[name] = rotations.resample_linear(value, src_fps, spec.fps)
  return spec.join(parts, next(iter(parts.values())).shape[0])


def load_motion(
  path: str | os.PathLike, fmt: str = "auto", default_fps: float | None = None, spec: MotionSpec = MOTION_SPEC
) -> tuple[np.ndarray, Track]:
  """Reads a tracker file and converts it to spec.fps: (motion [T', D] float32, the Track as read).

  The file's own frame rate wins over `default_fps`; MissingFrameRateError if neither exists.
  """
  track = read_track(path, fmt, spec)
  fps = track.fps if track.fps is not None else default_fps
  if fps is None:
    raise MissingFrameRateError(
      f"{os.fspath(path)}: the {track.format} file stores no frame rate (no {' or '.join(_FPS_KEYS)} key); "
      "give the tracker's frame rate with --motion_fps"
    )
  return to_motion_fps(track.motion, fps, spec), track
