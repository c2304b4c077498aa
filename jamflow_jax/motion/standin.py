"""A procedural stand-in for FLAME: a head of a few thousand vertices in FLAME's file format.

The licensed FLAME model cannot ship, so demos, tests and renders of the built-in corpus use this
head instead. It is an `.npz` with FLAME's keys (see `flame.flame_model_from_arrays`) and FLAME's
5-joint tree (global, neck, jaw, left eye, right eye), in FLAME's frame: meters, x to the subject's
left (the viewer's right), y up, z out of the face.

Geometry: a lat-long surface of revolution (neck tube -> skull ellipsoid) whose rings are
superellipses, carved by smooth fields into a face (nose, brow ridge, eye sockets with deep eye
openings, cheekbones, lips, chin, ears). The mouth is a slit: along the mouth row the lower lip has
its own copies of the vertices, so a jaw rotation opens a gap (there is no mouth interior, as in
FLAME; with back faces culled the open mouth shows the background). Two eyeball caps sit in the eye
openings on the eye joints, and a small tongue blob rides on the jaw inside the mouth.

Skinning: the lower lip, chin and lower cheeks follow the jaw (rotation about +x opens the mouth,
as FLAME's jaw pose does), the head follows the neck joint, the lower neck the root. The joints are
regressed from vertices: the root and neck from rings of the neck, the jaw from the two sides of the
head below the ears, the eyes from the eyeballs.

Expression directions (units as FLAME's: about -3..3 in use), components 0-5 as documented in
`spec.EXPRESSION_COMPONENTS`: 0 lips pressed together, 1 lips rounded and pushed forward, 2 lip
corners pulled wide, 3 lower lip tucked up and back, 4 tongue tip pushed out between the lips,
5 brows and forehead lifted; 6-49 are small smooth seeded fields on the face. Ten identity
directions (head width, face length, depth, nose, chin, jaw width and four smooth fields). The
eyelid blendshapes close each eye opening over its eyeball. posedirs are zero: there are no
learned pose correctives to imitate, but the array keeps FLAME's [V, 3, 36] shape.

Regions: `lips`, `upper_face` (eyes, brows, forehead), `eyes` (the eyeballs) and `tongue`.
The bytes of the file depend only on VERSION (fixed seeds, a zip with fixed timestamps).
"""

import dataclasses
import io
import os
import zipfile

import numpy as np
from scipy.interpolate import PchipInterpolator

from jamflow_jax.motion import flame

VERSION = 1
SEED = 20250601
NUM_SHAPE = 10
NUM_EXPRESSION = 50

# Layout (meters).
MOUTH_Y = -0.047  # the mouth slit row
MOUTH_HALF_WIDTH = 0.024  # slit columns are those with |x| below this
EYE_CENTRE = (0.033, 0.028)  # (|x|, y) of the eye openings
EYE_HALF = (0.0135, 0.0065)  # half width, half height of an eye opening
EYE_RADIUS = 0.012
SKULL_CENTRE_Y, SKULL_CENTRE_Z = 0.015, -0.005
SKULL_HALF = (0.075, 0.105, 0.090, 0.098)  # x, y (up), z front, z back of the skull ellipsoid
NECK_BOTTOM = -0.165

# Profile below the skull centre: y -> (half width, front z, back z) at the midline, before features.
_PROFILE_Y = (-0.165, -0.14, -0.118, -0.107, -0.100, -0.090, -0.075, -0.055, -0.030, -0.005, 0.015)
_PROFILE = (
  (0.053, 0.036, -0.058),
  (0.051, 0.036, -0.057),
  (0.050, 0.038, -0.056),
  (0.050, 0.045, -0.057),
  (0.051, 0.062, -0.058),
  (0.054, 0.078, -0.062),
  (0.060, 0.086, -0.070),
  (0.066, 0.089, -0.083),
  (0.071, 0.088, -0.094),
  (0.074, 0.086, -0.100),
  (0.075, 0.085, -0.103),
)


def _smoothstep(edge0, edge1, x):
  t = np.clip((np.asarray(x, np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _gauss(d, sigma):
  return np.exp(-0.5 * (np.asarray(d) / sigma) ** 2)


def _warped(lo: float, hi: float, n: int, density, endpoint: bool) -> np.ndarray:
  """n samples in [lo, hi] spaced inversely to `density` (a function on [lo, hi])."""
  grid = np.linspace(lo, hi, 4001)
  cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density(grid[1:]) + density(grid[:-1])) * np.diff(grid))])
  targets = np.linspace(0.0, cdf[-1], n) if endpoint else np.arange(n) * cdf[-1] / n
  return np.interp(targets, cdf, grid)


# ------------------------------------------------------------------------------------- the surface


def _rows() -> tuple[np.ndarray, np.ndarray]:
  """Rings from the neck bottom to just below the crown: y [R] and (half width, front z, back z) [R, 3]."""
  lower = _warped(
    NECK_BOTTOM, SKULL_CENTRE_Y, 42, lambda y: 0.45 + 2.2 * _smoothstep(-0.125, -0.105, y), endpoint=False
  )
  lower[np.argmin(np.abs(lower - MOUTH_Y))] = MOUTH_Y
  theta = _warped(0.0, np.pi / 2, 24, lambda t: 1.0 + 3.5 * (1 - _smoothstep(0.35, 0.75, t)), endpoint=True)[:-1]
  hx, hy, hzf, hzb = SKULL_HALF
  upper = np.stack(
    [hx * np.cos(theta), SKULL_CENTRE_Z + hzf * np.cos(theta), SKULL_CENTRE_Z - hzb * np.cos(theta)], axis=1
  )
  profile = PchipInterpolator(_PROFILE_Y, np.asarray(_PROFILE), axis=0)(lower)
  return (np.concatenate([lower, SKULL_CENTRE_Y + hy * np.sin(theta)]), np.concatenate([profile, upper]))


def _columns(n: int = 56) -> np.ndarray:
  """Azimuths [n] in [-pi, pi), 0 at the front (+z), +pi/2 at +x; mirror-symmetric, finer over the face."""
  half = _warped(0.0, np.pi, n // 2 + 1, lambda p: 0.75 + 3.0 * (1 - _smoothstep(0.75, 1.1, p)), endpoint=True)
  return np.concatenate([[-np.pi], -half[1:-1][::-1], [0.0], half[1:-1]])


def _ring_points(phi: np.ndarray, half_width, front_z, back_z) -> tuple[np.ndarray, np.ndarray]:
  """Superellipse rings: flatter at the face (exponent 2.5) than at the back (2.1). -> x, z [R, C]."""
  s, c = np.sin(phi)[None], np.cos(phi)[None]
  p = np.where(c >= 0, 2.5, 2.1)
  centre = (front_z + back_z)[:, None] / 2
  depth = (front_z - back_z)[:, None] / 2
  x = half_width[:, None] * np.sign(s) * np.abs(s) ** (2 / p)
  z = centre + depth * np.sign(c) * np.abs(c) ** (2 / p)
  return x, z


_NOSE_Y = (0.047, 0.034, 0.018, 0.000, -0.010, -0.016, -0.021, -0.026, -0.031)
_NOSE_HEIGHT = (0.0, 0.004, 0.0085, 0.016, 0.021, 0.019, 0.010, 0.003, 0.0)
_NOSE_WIDTH = (0.007, 0.0055, 0.006, 0.0075, 0.009, 0.0105, 0.012, 0.012, 0.012)


def _nose(x, y):
  """Forward height of the nose [N] at (x, y)."""
  inside = (y < _NOSE_Y[0]) & (y > _NOSE_Y[-1])
  yc = np.clip(y, _NOSE_Y[-1], _NOSE_Y[0])
  height = PchipInterpolator(_NOSE_Y[::-1], _NOSE_HEIGHT[::-1])(yc)
  width = PchipInterpolator(_NOSE_Y[::-1], _NOSE_WIDTH[::-1])(yc)
  wings = 0.007 * _gauss(np.abs(x) - 0.0125, 0.0045) * _gauss(y + 0.017, 0.0045)
  return np.where(inside, height * _gauss(x, width), 0.0) + wings


def _eye_rho(x, y):
  """Normalised elliptic radius [N] from the nearer eye opening's centre (1 on its rim)."""
  return np.hypot((np.abs(x) - EYE_CENTRE[0]) / EYE_HALF[0], (y - EYE_CENTRE[1]) / EYE_HALF[1])


def _face_relief(x, y, z, phi):
  """Displacements [N, 3] at rest points (x, y, z [N], column azimuth [N]) that carve the face."""
  ax = np.abs(x)
  front = _smoothstep(0.15, 0.6, np.cos(phi))
  lip = np.clip(1 - (ax / 0.028) ** 2, 0.0, 1.0)  # lips taper to the corners
  eye_dx, eye_dy = ax - EYE_CENTRE[0], y - EYE_CENTRE[1]
  dz = (
    _nose(x, y)
    + 0.006 * _gauss(y - 0.049, 0.007) * (1 - _smoothstep(0.045, 0.068, ax))  # brow ridge
    - 0.011 * _gauss(eye_dx, 0.017) * _gauss(eye_dy, 0.012)  # sockets
    + 0.0025 * _gauss(eye_dx, 0.009) * _gauss(eye_dy - 0.0095, 0.0025)  # upper lid folds
    - 0.009 * (1 - _smoothstep(0.85, 1.05, _eye_rho(x, y)))  # eye openings
    + 0.005 * _gauss(ax - 0.046, 0.012) * _gauss(y - 0.001, 0.014)  # cheekbones
    + 0.0062 * lip**0.7 * _gauss(y - (MOUTH_Y + 0.0045 + 0.0015 * lip), 0.0040)  # upper lip
    + 0.0065 * lip**0.7 * _gauss(y - (MOUTH_Y - 0.0055 - 0.002 * lip), 0.0046)  # lower lip
    - 0.0025 * lip**0.5 * _gauss(y - MOUTH_Y, 0.0018)  # the line between the lips
    - 0.0012 * _gauss(x, 0.0025) * _gauss(y - (MOUTH_Y + 0.014), 0.005)  # philtrum
    - 0.003 * _gauss(ax - 0.026, 0.004) * _gauss(y - MOUTH_Y, 0.005)  # mouth corners
    - 0.0035 * _gauss(y - (MOUTH_Y - 0.018), 0.004) * (1 - _smoothstep(0.014, 0.03, ax))  # chin fold
    + 0.006 * _gauss(x, 0.014) * _gauss(y + 0.082, 0.009)
  )  # chin
  ears = 0.013 * _gauss(y - 0.008, 0.016) * _gauss(z + 0.012, 0.011) * _smoothstep(0.6, 0.9, np.abs(np.sin(phi)))
  return np.stack([np.sign(x) * ears, np.zeros_like(x), dz * front], axis=1)


def _band_faces(phi: np.ndarray, below: np.ndarray, above: np.ndarray) -> list[tuple[int, int, int]]:
  """Triangles between two rings of vertex ids [C] (counter-clockwise from outside).

  Quads are split along mirrored diagonals on the two sides, so the face shades symmetrically.
  """
  faces = []
  for c in range(phi.size):
    c1 = (c + 1) % phi.size
    a, b, d, e = below[c], below[c1], above[c], above[c1]
    if phi[c] + (phi[c1] if c1 else np.pi) >= 0:
      faces += [(a, b, e), (a, e, d)]
    else:
      faces += [(a, b, d), (b, e, d)]
  return faces


def _ellipsoid(centre, half_axes, segments: int, polar: np.ndarray) -> np.ndarray:
  """A front pole (+z) then rings at polar angles `polar` (radians) on an ellipsoid -> [N, 3]."""
  beta = 2 * np.pi * np.arange(segments) / segments
  rings = [np.array([[0.0, 0.0, 1.0]])]
  rings += [
    np.stack([np.sin(a) * np.cos(beta), np.sin(a) * np.sin(beta), np.full(segments, np.cos(a))], 1) for a in polar
  ]
  return np.asarray(centre) + np.concatenate(rings) * np.asarray(half_axes)


def _ellipsoid_faces(start: int, segments: int, num_rings: int, back_pole: bool) -> list[tuple[int, int, int]]:
  """Triangles of `_ellipsoid` points numbered from `start` (and of a back pole after them)."""

  def ring(k, j):
    return start + 1 + k * segments + j % segments

  faces = [(start, ring(0, j), ring(0, j + 1)) for j in range(segments)]
  for k in range(num_rings - 1):
    for j in range(segments):
      faces += [(ring(k, j), ring(k + 1, j), ring(k + 1, j + 1)), (ring(k, j), ring(k + 1, j + 1), ring(k, j + 1))]
  if back_pole:
    back = start + 1 + num_rings * segments
    faces += [(ring(num_rings - 1, j), back, ring(num_rings - 1, j + 1)) for j in range(segments)]
  return faces


def _bumps(rng: np.random.Generator, num: int, sigma: tuple[float, float], amplitude: float):
  """Seeded smooth fields, each 3 Gaussian bumps over the face: (centres [num, 3, 2] (x, y),
  widths [num, 3], displacements [num, 3, 3])."""
  centres = np.stack([rng.uniform(-0.05, 0.05, (num, 3)), rng.uniform(-0.095, 0.06, (num, 3))], -1)
  widths = rng.uniform(*sigma, (num, 3))
  directions = rng.normal(size=(num, 3, 3))
  directions *= (amplitude * rng.uniform(0.5, 1.0, (num, 3)) / np.linalg.norm(directions, axis=-1))[..., None]
  return centres, widths, directions


def _eval_bumps(bumps, points: np.ndarray) -> np.ndarray:
  """The fields of `_bumps` at points [N, 3] -> [N, 3, num]."""
  centres, widths, directions = bumps
  distance = np.linalg.norm(points[:, None, None, :2] - centres[None], axis=-1)  # [N, num, 3]
  return np.einsum("nkb,kbc->nck", _gauss(distance, widths[None]), directions)


@dataclasses.dataclass
class _Head:
  """The skin surface: ring grid (row-major), crown pole, then the lower lip's copies of the slit."""

  points: np.ndarray  # [N, 3] rest positions, relief included
  phi: np.ndarray  # [N] azimuth of each point's column (pi for the pole)
  faces: list  # triangles over `points` ids
  ring_y: np.ndarray  # [R] heights of the rings
  ids: np.ndarray  # [R, C] grid ids
  upper_edge: np.ndarray  # [K] the upper lip's edge along the slit
  lower_edge: np.ndarray  # [K] the lower lip's copies of them (same rest positions)


def _head() -> _Head:
  ring_y, rings = _rows()
  phi = _columns()
  num_rows, num_cols = ring_y.size, phi.size
  x, z = _ring_points(phi, *rings.T)
  grid = np.stack([x, np.broadcast_to(ring_y[:, None], x.shape), z], -1).reshape(-1, 3)
  grid[np.abs(grid[:, 0]) < 1e-12, 0] = 0.0  # exact midline (sin(pi) is not 0 in floats)
  ids = np.arange(grid.shape[0]).reshape(num_rows, num_cols)
  pole = grid.shape[0]
  mouth_row = int(np.argmin(np.abs(ring_y - MOUTH_Y)))
  slit = np.flatnonzero((np.abs(x[mouth_row]) < MOUTH_HALF_WIDTH) & (np.cos(phi) > 0))
  upper_edge = ids[mouth_row, slit]
  lower_edge = pole + 1 + np.arange(slit.size)
  points = np.concatenate([grid, [[0.0, SKULL_CENTRE_Y + SKULL_HALF[1], SKULL_CENTRE_Z]], grid[upper_edge]])
  point_phi = np.concatenate([np.tile(phi, num_rows), [np.pi], phi[slit]])
  points += _face_relief(points[:, 0], points[:, 1], points[:, 2], point_phi)

  faces = []
  for r in range(num_rows - 1):
    above = ids[r + 1].copy()
    if r + 1 == mouth_row:
      above[slit] = lower_edge  # the band below the lips' line closes on the lower lip
    faces += _band_faces(phi, ids[r], above)
  faces += [(ids[-1, c], ids[-1, (c + 1) % num_cols], pole) for c in range(num_cols)]
  return _Head(points, point_phi, faces, ring_y, ids, upper_edge, lower_edge)


def _skinning(head: _Head, num_vertices: int, eyes: list, tongue: np.ndarray, equators: list):
  """Skinning weights [V, 5] and joint regressor [5, V]."""
  hx, hy, _ = head.points.T
  num_head = hx.size
  # The jaw takes the lower lip, chin and lower cheeks: below the lips' line, which past the mouth
  # corners drops and softens towards the jaw angle; not the throat, not behind the ears.
  spread = np.maximum(0.0, np.abs(hx) - MOUTH_HALF_WIDTH)
  jaw = _smoothstep(0.0, 1.0, (MOUTH_Y - 0.25 * spread - hy) / (0.004 + 1.2 * spread) + 0.5)
  jaw[head.upper_edge], jaw[head.lower_edge] = 0.0, 1.0
  jaw *= (1 - _smoothstep(1.15, 1.6, np.abs(head.phi))) * _smoothstep(-0.118, -0.100, hy)
  on_head = _smoothstep(-0.14, -0.09, hy)  # the neck joint carries the head, the root the lower neck
  weights = np.zeros((num_vertices, 5))
  weights[:num_head, 0] = 1 - on_head
  weights[:num_head, 1] = on_head * (1 - jaw)
  weights[:num_head, 2] = on_head * jaw
  weights[eyes[0], 3] = weights[eyes[1], 4] = weights[tongue, 2] = 1.0

  regressor = np.zeros((5, num_vertices))
  for joint, level in ((0, -0.15), (1, -0.112)):  # ring centroids, each vertex weighted by its arc
    ring = head.ids[np.argmin(np.abs(head.ring_y - level))]
    points = head.points[ring]
    arc = np.linalg.norm(points - np.roll(points, 1, 0), axis=1) + np.linalg.norm(
      points - np.roll(points, -1, 0), axis=1
    )
    regressor[joint, ring] = arc / arc.sum()
  # The jaw hinge: the two sides of the head below the ears (a mirror pair of columns).
  jaw_ring = head.ids[np.argmin(np.abs(head.ring_y + 0.004))]
  column_phi = head.phi[head.ids[0]]
  regressor[2, jaw_ring[[int(np.argmin(np.abs(column_phi - s * np.pi / 2))) for s in (1, -1)]]] = 0.5
  for joint, equator in zip((3, 4), equators):  # eyeball centres
    regressor[joint, equator] = 1.0 / equator.size
  return weights, regressor


def _expressions(
  rng: np.random.Generator,
  head: _Head,
  num_vertices: int,
  tongue: np.ndarray,
  tongue_centre: np.ndarray,
  tongue_half: np.ndarray,
  points: np.ndarray,
) -> np.ndarray:
  """Expression directions [V, 3, 50], per unit; components 0-5 as spec.EXPRESSION_COMPONENTS."""
  hx, hy, _ = head.points.T
  ax, sx = np.abs(hx), np.sign(hx)
  front = _smoothstep(0.15, 0.6, np.cos(head.phi))
  side = np.sign(hy - MOUTH_Y)  # which lip a vertex belongs to; the slit's two edges by construction
  side[head.upper_edge], side[head.lower_edge] = 1.0, -1.0
  mouth = (1 - _smoothstep(0.020, 0.034, ax)) * front
  upper = np.where(side > 0, 1.0, np.where(side < 0, 0.0, 0.5)) * _gauss(hy - MOUTH_Y, 0.007) * mouth
  lower = np.where(side < 0, 1.0, np.where(side > 0, 0.0, 0.5)) * _gauss(hy - MOUTH_Y, 0.008) * mouth
  lips = _gauss(hy - MOUTH_Y, 0.010) * mouth
  corners = lips * _smoothstep(0.0, MOUTH_HALF_WIDTH, ax)
  brows = (
    (1 - _smoothstep(0.045, 0.07, ax))
    * front
    * np.where(hy >= 0.047, _gauss(hy - 0.047, 0.03), _gauss(hy - 0.047, 0.009))
  )
  zero = np.zeros_like(hx)
  expr = np.zeros((num_vertices, 3, NUM_EXPRESSION))
  skin = expr[: hx.size]
  skin[:, :, 0] = np.stack([zero, -0.0007 * upper + 0.0009 * lower, -0.0004 * (upper + lower)], 1)
  skin[:, :, 1] = np.stack([-0.0018 * sx * corners, 0.0002 * (upper - lower), 0.0012 * lips], 1)
  skin[:, :, 2] = np.stack([0.0015 * sx * corners, 0.0003 * corners, -0.0005 * lips], 1)
  skin[:, :, 3] = np.stack([zero, 0.0002 * upper + 0.0011 * lower, 0.0003 * upper - 0.0016 * lower], 1)
  skin[:, :, 4] = np.stack([zero, -0.0003 * lower, zero], 1)  # the lips part a little for the tongue
  skin[:, :, 5] = np.stack([zero, 0.0018 * brows, 0.0003 * brows], 1)
  others = _bumps(rng, NUM_EXPRESSION - 6, (0.012, 0.025), 0.0006)
  skin[:, :, 6:] = _eval_bumps(others, head.points) * front[:, None, None]
  # The tongue's tip reaches forward and up between the lips, getting narrower and thinner.
  blob = points[tongue]
  tip = _smoothstep(tongue_centre[2] - tongue_half[2], tongue_centre[2] + tongue_half[2], blob[:, 2])
  expr[tongue, :, 4] = np.stack(
    [-0.1 * blob[:, 0] * tip, (0.0015 + 0.12 * (tongue_centre[1] - blob[:, 1])) * tip, 0.0035 * tip], 1
  )
  return expr


def _identity(rng: np.random.Generator, head: _Head, num_vertices: int, rigid_parts: list) -> np.ndarray:
  """Identity directions [V, 3, NUM_SHAPE]; rigid parts (id array, centre) move with the field at
  their centre, so eyeballs stay round."""

  def below(p, lo, hi):
    return 1 - _smoothstep(lo, hi, p[:, 1])

  def fronted(p):  # the face half
    return _smoothstep(0.0, 0.04, p[:, 2])

  def along(p, dx=0.0, dy=0.0, dz=0.0):
    return np.stack(np.broadcast_arrays(dx, dy, dz, p[:, 0])[:3], 1)

  def chin(p):
    return _gauss(p[:, 0], 0.016) * _gauss(p[:, 1] + 0.085, 0.012) * fronted(p)

  fields = [
    lambda p: along(p, dx=0.04 * p[:, 0]),  # head width
    lambda p: along(p, dy=-0.004 * below(p, -0.1, 0.03)),  # face length
    lambda p: along(p, dz=0.035 * p[:, 2]),  # head depth
    lambda p: along(p, dz=0.35 * _nose(p[:, 0], p[:, 1]) * fronted(p)),  # nose size
    lambda p: along(p, dy=-0.001 * chin(p), dz=0.004 * chin(p)),  # chin
    lambda p: along(p, dx=0.06 * p[:, 0] * below(p, -0.09, -0.03) * _smoothstep(-0.12, -0.10, p[:, 1])),  # jaw
  ]
  smooth = _bumps(rng, NUM_SHAPE - len(fields), (0.03, 0.05), 0.002)
  fields += [lambda p, k=k: _eval_bumps(smooth, p)[:, :, k] for k in range(NUM_SHAPE - len(fields))]
  out = np.zeros((num_vertices, 3, NUM_SHAPE))
  for k, field in enumerate(fields):
    out[: head.points.shape[0], :, k] = field(head.points)
    for part, centre in rigid_parts:
      out[part, :, k] = field(centre[None])
  return out


def _eyelids(head: _Head, num_vertices: int, rho: np.ndarray, eye_centres: list) -> np.ndarray:
  """[2, V, 3]: each blendshape pulls the skin of its eye opening onto a sphere just over the eyeball."""
  hx, hy, hz = head.points.T
  out = np.zeros((2, num_vertices, 3))
  for k, centre in enumerate(eye_centres):
    reach = (EYE_RADIUS + 0.0013) ** 2 - (hx - centre[0]) ** 2 - (hy - centre[1]) ** 2
    lid_z = centre[2] + np.sqrt(np.maximum(reach, 0.0))
    mine = (np.sign(hx) == np.sign(centre[0])) & (reach > 0)
    out[k, : hx.size, 2] = np.where(mine, np.maximum(lid_z - hz, 0.0), 0.0) * (1 - _smoothstep(1.0, 1.35, rho))
  return out


def standin_arrays() -> dict[str, np.ndarray]:
  """The stand-in head as FLAME file content {key: array}: what `write_standin` saves."""
  rng = np.random.default_rng(SEED)
  head = _head()
  parts, faces = [head.points], list(head.faces)

  def add(points, part_faces):
    start = sum(p.shape[0] for p in parts)
    parts.append(points)
    faces.extend(part_faces(start))
    return start + np.arange(points.shape[0])

  # Eyeballs: caps (the front 105 degrees) whose front sits just behind the rim of the eye opening.
  segments, polar = 16, np.deg2rad(np.arange(15, 106, 15))
  rho = np.where(np.cos(head.phi) > 0.3, _eye_rho(head.points[:, 0], head.points[:, 1]), np.inf)  # face side
  eyes, eye_centres, equators = [], [], []
  for sign in (1.0, -1.0):  # left eye (+x) first, as FLAME's joint 3
    rim = (sign * head.points[:, 0] > 0) & (rho > 1.15) & (rho < 1.45)
    centre = np.array([sign * EYE_CENTRE[0], EYE_CENTRE[1], head.points[rim, 2].mean() - 0.0008 - EYE_RADIUS])
    eyes.append(
      add(
        _ellipsoid(centre, (EYE_RADIUS,) * 3, segments, polar),
        lambda start: _ellipsoid_faces(start, segments, polar.size, back_pole=False),
      )
    )
    eye_centres.append(centre)
    equators.append(eyes[-1][1 + int(np.argmin(np.abs(polar - np.pi / 2))) * segments + np.arange(segments)])

  # Tongue: a flat blob on the jaw, hidden behind the closed lips.
  slit_z = head.points[head.upper_edge[np.argmin(np.abs(head.points[head.upper_edge, 0]))], 2]
  tongue_centre = np.array([0.0, MOUTH_Y - 0.0045, slit_z - 0.0115])
  tongue_half = np.array([0.0125, 0.0038, 0.0095])
  tongue_polar = np.linspace(0, np.pi, 7)[1:-1]
  tongue = add(
    np.concatenate(
      [_ellipsoid(tongue_centre, tongue_half, 10, tongue_polar), [tongue_centre - [0, 0, tongue_half[2]]]]
    ),
    lambda start: _ellipsoid_faces(start, 10, tongue_polar.size, back_pole=True),
  )

  vertices = np.concatenate(parts)
  num_vertices = vertices.shape[0]
  weights, regressor = _skinning(head, num_vertices, eyes, tongue, equators)
  expressions = _expressions(rng, head, num_vertices, tongue, tongue_centre, tongue_half, vertices)
  identity = _identity(rng, head, num_vertices, list(zip(eyes + [tongue], eye_centres + [tongue_centre])))
  eyelids = _eyelids(head, num_vertices, rho, eye_centres)
  hy, cos_phi = head.points[:, 1], np.cos(head.phi)
  regions = {
    "lips": np.flatnonzero((cos_phi > 0.5) & (np.abs(head.points[:, 0]) < 0.028) & (np.abs(hy - MOUTH_Y) < 0.011)),
    "upper_face": np.flatnonzero((cos_phi > 0.45) & (hy > 0.016) & (hy < 0.085)),
    "eyes": np.concatenate(eyes),
    "tongue": tongue,
  }
  arrays = {
    "v_template": vertices,
    "f": np.asarray(faces),
    "num_shape": np.asarray(NUM_SHAPE),
    "shapedirs": np.concatenate([identity, expressions], axis=-1),
    "posedirs": np.zeros((num_vertices, 3, flame.NUM_POSE_FEATURES)),  # no learned pose correctives
    "J_regressor": regressor,
    "weights": weights,
    "kintree_table": np.array([flame.PARENTS, range(len(flame.PARENTS))]),
    "l_eyelid": eyelids[0],
    "r_eyelid": eyelids[1],
    "standin_version": np.asarray(VERSION),
    **{f"region_{name}": index for name, index in regions.items()},
  }
  return {k: v.astype(np.float32 if v.dtype.kind == "f" else np.int32) for k, v in arrays.items()}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  """An .npz (uncompressed zip of .npy) whose bytes depend only on the arrays (fixed timestamps)."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
    for key in sorted(arrays):
      payload = io.BytesIO()
      np.lib.format.write_array(payload, np.require(arrays[key], requirements="C"), allow_pickle=False)
      archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), payload.getvalue())
  return buffer.getvalue()


def write_standin(path: str | os.PathLike) -> None:
  """Writes the stand-in head as a FLAME-format .npz (same bytes for the same VERSION)."""
  path = os.fspath(path)
  partial = f"{path}.partial"
  with open(partial, "wb") as f:
    f.write(_npz_bytes(standin_arrays()))
  os.replace(partial, path)


def make_standin(path: str | os.PathLike | None = None) -> flame.FlameModel:
  """The stand-in head as a FlameModel; with `path`, written there first and read back through
  `flame.load_flame_model` (the file round trip), else built in memory through the same checks."""
  if path is None:
    return flame.flame_model_from_arrays(standin_arrays(), source=f"stand-in head v{VERSION}")
  write_standin(path)
  return flame.load_flame_model(path)
