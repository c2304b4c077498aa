"""Rotation conversions and rotation-track resampling in numpy, vectorised over leading dims.

Conventions (the FLAME / SMPL-X / PyTorch3D ones, so tracker outputs convert without surprises):

- Axis-angle `[..., 3]`: the vector `theta * axis` (radians, right-handed); `R = exp(skew(aa))`.
  Results of conversions have `theta` in [0, pi].
- Rotation matrices `[..., 3, 3]` act on column vectors: `x' = R @ x`.
- Quaternions `[..., 4]` are unit, scalar first `(w, x, y, z)`; `q` and `-q` are the same rotation,
  and conversions return the one with `w >= 0`.
- 6D (Zhou et al. 2019, "On the Continuity of Rotation Representations in Neural Networks"):
  PyTorch3D's `rotation_6d_to_matrix` / `matrix_to_rotation_6d`, i.e. the 6 numbers are the first
  two ROWS of the matrix `(R[0, :], R[1, :])`; decoding Gram-Schmidt-orthonormalises them and the
  third row is their cross product. (The paper writes columns; trackers built on PyTorch3D, which
  is where 6D FLAME poses come from, store rows, so that is the one taken here.)

Everything is float64 inside; inputs may be any float dtype.
"""

import numpy as np

_SMALL = 1e-6  # below this angle (rad) the closed forms switch to their Taylor series


def _skew(v, xp=np):
  """[..., 3] -> [..., 3, 3] cross-product matrix, skew(v) @ x == cross(v, x)."""
  x, y, z = v[..., 0], v[..., 1], v[..., 2]
  zero = xp.zeros_like(x)
  return xp.stack([xp.stack([zero, -z, y], -1), xp.stack([z, zero, -x], -1), xp.stack([-y, x, zero], -1)], -2)


def axis_angle_to_matrix(aa, *, xp=np):
  """Rodrigues: [..., 3] axis-angle -> [..., 3, 3] rotation matrix, in numpy (float64) or, with
  xp=jax.numpy, jit- and grad-able in the input's dtype (FLAME's skinning).

  R = I + a K + b K^2 with K = skew(aa), K^2 = aa aa^T - t^2 I, a = sin(t)/t = sinc(t/pi) and
  b = (1 - cos t)/t^2 = sinc(t/2pi)^2 / 2, t = |aa|: through sinc, tiny rotations keep full
  precision (no 1 - cos cancellation), and the guarded square root keeps gradients finite at t = 0.
  """
  aa = np.asarray(aa, np.float64) if xp is np else xp.asarray(aa)
  theta2 = xp.sum(aa * aa, axis=-1)
  nonzero = theta2 > 0
  theta = xp.where(nonzero, xp.sqrt(xp.where(nonzero, theta2, 1.0)), 0.0)
  a = xp.sinc(theta / np.pi)[..., None, None]
  b = 0.5 * xp.sinc(theta / (2 * np.pi))[..., None, None] ** 2
  eye = xp.eye(3, dtype=aa.dtype)
  k2 = aa[..., :, None] * aa[..., None, :] - theta2[..., None, None] * eye
  return eye + a * _skew(aa, xp) + b * k2


def axis_angle_to_quaternion(aa: np.ndarray) -> np.ndarray:
  """[..., 3] axis-angle -> [..., 4] unit quaternion (w, x, y, z), w >= 0 for angles <= pi."""
  aa = np.asarray(aa, np.float64)
  theta2 = np.sum(aa * aa, axis=-1)
  theta = np.sqrt(theta2)
  small = theta < _SMALL
  safe = np.where(small, 1.0, theta)
  half_sinc = np.where(small, 0.5 - theta2 / 48.0, np.sin(safe / 2) / safe)  # sin(t/2) / t
  return np.concatenate([np.cos(theta / 2)[..., None], aa * half_sinc[..., None]], -1)


def quaternion_to_axis_angle(q: np.ndarray) -> np.ndarray:
  """[..., 4] quaternion (w, x, y, z; normalised here) -> [..., 3] axis-angle, angle in [0, pi]."""
  q = np.asarray(q, np.float64)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  q = np.where(q[..., :1] < 0, -q, q)  # the w >= 0 representative has angle <= pi
  w, v = q[..., 0], q[..., 1:]
  s = np.linalg.norm(v, axis=-1)  # sin(t/2)
  theta = 2.0 * np.arctan2(s, w)  # atan2 is accurate at both ends, unlike acos(w) near 0 or asin(s) near pi
  small = s < _SMALL
  # t / sin(t/2) -> 2 / w as s -> 0 (w -> 1).
  scale = np.where(small, 2.0 / np.where(small, w, 1.0), theta / np.where(small, 1.0, s))
  return v * scale[..., None]


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
  """[..., 4] quaternion (w, x, y, z; normalised here) -> [..., 3, 3] rotation matrix."""
  q = np.asarray(q, np.float64)
  w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
  return np.stack(
    [
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ],
    -2,
  )


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
  """[..., 3, 3] rotation matrix -> [..., 4] unit quaternion (w, x, y, z), w >= 0.

  Shepperd's method: of the four ways to recover the quaternion, use the one whose divisor
  (2 |q_i|) is largest, so no branch divides by a near-zero component (e.g. w ~ 0 at pi).
  """
  r = np.asarray(r, np.float64)
  m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
  # 4 q_i^2 for i = w, x, y, z.
  four_sq = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
  d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
  s21, s02, s10 = r[..., 2, 1] + r[..., 1, 2], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 0] + r[..., 0, 1]
  # Row i holds 4 q_i * (w, x, y, z).
  candidates = np.stack(
    [
      np.stack([four_sq[..., 0], d21, d02, d10], -1),
      np.stack([d21, four_sq[..., 1], s10, s02], -1),
      np.stack([d02, s10, four_sq[..., 2], s21], -1),
      np.stack([d10, s02, s21, four_sq[..., 3]], -1),
    ],
    -2,
  )
  best = np.argmax(four_sq, axis=-1)
  row = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
  q = row / np.linalg.norm(row, axis=-1, keepdims=True)
  return np.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
  """[..., 3, 3] rotation matrix -> [..., 3] axis-angle, angle in [0, pi] (via the quaternion)."""
  return quaternion_to_axis_angle(matrix_to_quaternion(r))


def rotation_6d_to_matrix(d6: np.ndarray) -> np.ndarray:
  """[..., 6] -> [..., 3, 3]: the two 3-vectors are the first two rows, Gram-Schmidt-orthonormalised."""
  d6 = np.asarray(d6, np.float64)
  a1, a2 = d6[..., :3], d6[..., 3:]
  b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
  b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
  b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
  return np.stack([b1, b2, np.cross(b1, b2)], -2)


def matrix_to_rotation_6d(r: np.ndarray) -> np.ndarray:
  """[..., 3, 3] -> [..., 6]: the first two rows, concatenated."""
  r = np.asarray(r, np.float64)
  return r[..., :2, :].reshape(*r.shape[:-2], 6)


def rotation_6d_to_axis_angle(d6: np.ndarray) -> np.ndarray:
  """[..., 6] 6D rotation -> [..., 3] axis-angle."""
  return matrix_to_axis_angle(rotation_6d_to_matrix(d6))


def quaternion_slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical linear interpolation along the shorter arc: q0, q1 [..., 4], t [...] -> [..., 4].

  t = 0 gives q0, t = 1 gives q1 (or -q1: same rotation). Nearly equal rotations fall back to
  normalised lerp, where slerp's sin(omega) divisor would lose precision.
  """
  q0 = np.asarray(q0, np.float64)
  q1 = np.asarray(q1, np.float64)
  t = np.asarray(t, np.float64)[..., None]
  dot = np.sum(q0 * q1, axis=-1, keepdims=True)
  q1 = np.where(dot < 0, -q1, q1)  # q and -q are one rotation; take the short way round
  dot = np.abs(dot)
  omega = np.arccos(np.clip(dot, -1.0, 1.0))
  near = dot > 1.0 - 1e-9
  sin_omega = np.where(near, 1.0, np.sin(omega))
  w0 = np.where(near, 1.0 - t, np.sin((1.0 - t) * omega) / sin_omega)
  w1 = np.where(near, t, np.sin(t * omega) / sin_omega)
  q = w0 * q0 + w1 * q1
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def resample_positions(num_frames: int, src_fps: float, dst_fps: float) -> tuple[np.ndarray, np.ndarray]:
  """Where the frames of a track resampled from src_fps to dst_fps fall in the source.

  A track of `num_frames` source frames (frame i at time i / src_fps) becomes
  `round(num_frames * dst_fps / src_fps)` frames (at least 1), frame j at time j / dst_fps; times
  past the last source frame hold it. Returns (i0 [T'] int, frac [T'] float): the output frame lies
  `frac` of the way from source frame i0 to i0 + 1 (i0 + 1 <= num_frames - 1 wherever frac > 0).
  """
  if num_frames < 1 or src_fps <= 0 or dst_fps <= 0:
    raise ValueError(f"cannot resample {num_frames} frames from {src_fps} to {dst_fps} fps")
  out_frames = max(1, round(num_frames * dst_fps / src_fps))
  pos = np.minimum(np.arange(out_frames) * (src_fps / dst_fps), num_frames - 1)
  i0 = np.minimum(np.floor(pos).astype(np.int64), max(num_frames - 2, 0))
  return i0, pos - i0


def resample_rotations(aa: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
  """[T, ..., 3] axis-angle track at src_fps -> [T', ..., 3] at dst_fps by quaternion slerp.

  Frame placement as in `resample_positions`. Slerp moves at constant angular velocity between
  neighbouring source frames, so a constant-velocity rotation (below pi per source frame) is
  reproduced exactly; interpolating axis-angle components linearly would not be.
  """
  aa = np.asarray(aa, np.float64)
  i0, frac = resample_positions(aa.shape[0], src_fps, dst_fps)
  q = axis_angle_to_quaternion(aa)
  i1 = np.minimum(i0 + 1, aa.shape[0] - 1)
  frac = frac.reshape(-1, *([1] * (aa.ndim - 2)))
  return quaternion_to_axis_angle(quaternion_slerp(q[i0], q[i1], np.broadcast_to(frac, q[i0].shape[:-1])))


def resample_linear(x: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
  """[T, ...] track at src_fps -> [T', ...] at dst_fps by linear interpolation (same frame placement)."""
  x = np.asarray(x, np.float64)
  i0, frac = resample_positions(x.shape[0], src_fps, dst_fps)
  i1 = np.minimum(i0 + 1, x.shape[0] - 1)
  frac = frac.reshape(-1, *([1] * (x.ndim - 1)))
  return (1.0 - frac) * x[i0] + frac * x[i1]
