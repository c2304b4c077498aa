"""FLAME in JAX: motion frames -> head meshes by linear blend skinning, and a safe FLAME file reader.

FLAME (Li et al. 2017, "Learning a model of facial shape and expression from 4D scans") is a
template mesh with 5 joints, root first: global (0), neck (1, child of 0), jaw (2), left eye (3) and
right eye (4), the last three children of the neck. A frame is posed the way the public FLAME /
DECA / SMIRK code does it:

  v_shaped = template + shapedirs . beta + exprdirs . psi (+ eyelid blendshapes . eyelid weights)
  joints   = J_regressor @ v_shaped
  R_j      = rodrigues(pose_j), full pose in joint order global | neck | jaw | eye_l | eye_r
  v_posed  = v_shaped + posedirs^T . flatten(R_1..4 - I)      (36 pose-corrective features)
  G_j      = G_parent(j) [R_j | J_j - J_parent(j)],  G_0 = [R_0 | J_0]
  v        = sum_j w_vj (G_j with translation G_j.t - G_j.R J_j) v_posed

Our motion frame (`jamflow_jax.motion.spec`) gives psi (its first E expression components), jaw,
neck, global and the two eyelid weights (FLAME 2023 / SMIRK: index 0 left, 1 right); the eyes stay
at rest and identity (beta) is optional. Units are the model's (meters for FLAME). SMIRK adds the
eyelid offsets after skinning; here they join v_shaped, so they turn with the head (the two differ
by the head's rotation of a few-millimetre offset).

The model files are licensed and never shipped: `load_flame_model` reads a user's copy. FLAME's
`.pkl` files are Python 2 pickles holding numpy arrays, scipy sparse matrices and chumpy objects;
they are read by an unpickler that only rebuilds those as plain data (chumpy is never imported) and
refuses anything else, e.g. a pickle that would call `os.system`, with `UnsafePickleError`.
"""

import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jamflow_jax.motion import rotations, spec as spec_lib

JOINTS = ("global", "neck", "jaw", "eye_l", "eye_r")
PARENTS = (-1, 0, 1, 1, 1)
NUM_POSE_FEATURES = 9 * (len(JOINTS) - 1)  # (R - I) of every joint but the root
FLAME_NUM_SHAPE = 300  # FLAME 2020 / 2023 shapedirs: 300 identity then 100 expression directions
_HIGHEST = jax.lax.Precision.HIGHEST  # a mesh is geometry: no bf16/TF32 passes on accelerators


@struct.dataclass
class FlameModel:
  """A FLAME-format model (arrays are jax.Arrays; the model is a pytree, jit-able as an argument).

  posedirs is stored the way LBS multiplies it, [36, V * 3] (smplx / DECA layout): row
  9 (j - 1) + 3 a + b is the displacement field of (R_j - I)[a, b] for j = 1..4, column 3 v + c
  is vertex v, coordinate c. Files hold FLAME's [V, 3, 36] (`posedirs.reshape(V * 3, 36).T` here).
  """

  v_template: jax.Array  # float32 [V, 3]
  faces: jax.Array  # int32 [F, 3], counter-clockwise seen from outside
  shapedirs: jax.Array  # float32 [V, 3, S] identity directions
  exprdirs: jax.Array  # float32 [V, 3, E] expression directions
  posedirs: jax.Array  # float32 [36, V * 3] pose correctives (see above)
  j_regressor: jax.Array  # float32 [5, V] joints = j_regressor @ vertices
  lbs_weights: jax.Array  # float32 [V, 5] skinning weights, rows sum to 1
  eyelids: jax.Array | None = None  # float32 [2, V, 3] left, right eyelid closing blendshapes
  regions: dict = struct.field(default_factory=dict)  # name -> int32 [N] vertex indices
  parents: tuple = struct.field(pytree_node=False, default=PARENTS)

  @property
  def num_vertices(self) -> int:
    return self.v_template.shape[0]

  @property
  def num_shape(self) -> int:
    return self.shapedirs.shape[-1]

  @property
  def num_expression(self) -> int:
    return self.exprdirs.shape[-1]


def flame_vertices(
  model: FlameModel, motion, shape=None, *, spec: spec_lib.MotionSpec = spec_lib.MOTION_SPEC
) -> jax.Array:
  """Posed meshes for motion frames: motion [..., D] (e.g. [T, 61]) -> vertices [..., V, 3] float32.

  motion is in `spec`'s layout; the first min(E, 50) expression components drive exprdirs (a model
  with more directions leaves the rest at 0), jaw / neck / global_rot are axis-angle, eyelids weight
  `model.eyelids` (ignored when the model has none). shape: optional identity [S'] (S' <= S) or
  [..., S'] per frame. Batched over the leading dims, jit-able (`jax.jit(flame_vertices)`).
  """
  motion = jnp.asarray(motion, jnp.float32)
  parts = spec.split(motion)
  lead = motion.shape[:-1]
  num_vertices = model.num_vertices

  expression = parts["expression"]
  num_expr = min(model.num_expression, expression.shape[-1])
  offsets = jnp.einsum(
    "...e,vce->...vc", expression[..., :num_expr], model.exprdirs[..., :num_expr], precision=_HIGHEST
  )
  if shape is not None:
    shape = jnp.asarray(shape, jnp.float32)
    if shape.shape[-1] > model.num_shape:
      raise ValueError(f"shape has {shape.shape[-1]} coefficients; the model has {model.num_shape} directions")
    offsets = offsets + jnp.einsum(
      "...s,vcs->...vc", shape, model.shapedirs[..., : shape.shape[-1]], precision=_HIGHEST
    )
  if model.eyelids is not None and "eyelids" in parts:
    offsets = offsets + jnp.einsum("...k,kvc->...vc", parts["eyelids"], model.eyelids, precision=_HIGHEST)
  v_shaped = model.v_template + offsets  # [..., V, 3]
  joints = jnp.einsum("jv,...vc->...jc", model.j_regressor, v_shaped, precision=_HIGHEST)  # [..., 5, 3]

  eyes = jnp.zeros(lead + (3,), jnp.float32)
  pose = jnp.stack([parts["global_rot"], parts["neck"], parts["jaw"], eyes, eyes], axis=-2)
  rot = rotations.axis_angle_to_matrix(pose, xp=jnp)  # [..., 5, 3, 3]
  pose_feature = (rot[..., 1:, :, :] - jnp.eye(3)).reshape(lead + (NUM_POSE_FEATURES,))
  v_posed = v_shaped + jnp.matmul(pose_feature, model.posedirs, precision=_HIGHEST).reshape(lead + (num_vertices, 3))

  # World transforms down the kinematic tree (parents precede children), then each joint's transform
  # relative to its rest position: x -> G.R (x - J) + G.t.
  world_r, world_t = [], []
  for j, parent in enumerate(model.parents):
    if parent < 0:
      world_r.append(rot[..., j, :, :])
      world_t.append(joints[..., j, :])
    else:
      offset = joints[..., j, :] - joints[..., parent, :]
      world_r.append(jnp.matmul(world_r[parent], rot[..., j, :, :], precision=_HIGHEST))
      world_t.append(world_t[parent] + jnp.einsum("...ab,...b->...a", world_r[parent], offset, precision=_HIGHEST))
  world_r = jnp.stack(world_r, axis=-3)  # [..., 5, 3, 3]
  world_t = jnp.stack(world_t, axis=-2)  # [..., 5, 3]
  rel_t = world_t - jnp.einsum("...jab,...jb->...ja", world_r, joints, precision=_HIGHEST)

  blend_r = jnp.einsum("vj,...jab->...vab", model.lbs_weights, world_r, precision=_HIGHEST)
  blend_t = jnp.einsum("vj,...ja->...va", model.lbs_weights, rel_t, precision=_HIGHEST)
  return jnp.einsum("...vab,...vb->...va", blend_r, v_posed, precision=_HIGHEST) + blend_t


# ----------------------------------------------------------------------------------- file reading


class UnsafePickleError(pickle.UnpicklingError):
  """A model pickle referenced something that is not array data; nothing from it was executed."""


class _Pickled:
  """An instance of an allowed data class (chumpy, scipy.sparse) kept as its pickled state only.

  Nothing of the real class is imported or run: construction records the arguments, BUILD records
  the state, and `_as_array` interprets known states afterwards.
  """

  origin = ""  # "module.name" of the class the pickle named

  def __new__(cls, *args):
    obj = object.__new__(cls)
    obj.args = args
    obj.state = None
    return obj

  def __setstate__(self, state):
    self.state = state


_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(module: str, name: str) -> type:
  origin = f"{module}.{name}"
  if origin not in _PLACEHOLDERS:
    _PLACEHOLDERS[origin] = type(name, (_Pickled,), {"origin": origin})
  return _PLACEHOLDERS[origin]


def _numpy_globals() -> dict[tuple[str, str], object]:
  try:
    from numpy._core import multiarray  # numpy >= 2
  except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray
  out = {}
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    out[(module, "_reconstruct")] = multiarray._reconstruct
    out[(module, "scalar")] = multiarray.scalar
  out[("numpy", "ndarray")] = np.ndarray
  out[("numpy", "dtype")] = np.dtype
  return out


_NUMPY_GLOBALS = _numpy_globals()
# Python 2 pickles name builtins `__builtin__` (fix_imports only applies in the default find_class).
_BUILTINS = {"set": set, "frozenset": frozenset, "object": object, "bytes": bytes}
_SPARSE = ("csc_matrix", "csr_matrix", "csc_array", "csr_array")
# chumpy classes whose pickled state is plain data: Ch keeps its array under 'x', the reorderings
# keep their input under 'a' plus numbers.
_CHUMPY = {
  ("chumpy.ch", "Ch"),
  ("chumpy.reordering", "Reshape"),
  ("chumpy.reordering", "Select"),
  ("chumpy.reordering", "transpose"),
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Rebuilds numpy arrays, scipy sparse matrices and chumpy objects as data; refuses all else."""

  def __init__(self, file, path: str):
    super().__init__(file, encoding="latin1")  # FLAME files are Python 2 pickles
    self._path = path

  def _refuse(self, what: str) -> UnsafePickleError:
    return UnsafePickleError(
      f"{self._path}: the pickle references {what}, which is not array data; "
      "refusing to load it (nothing from it was run)"
    )

  def find_class(self, module, name):
    if (module, name) in _NUMPY_GLOBALS:
      return _NUMPY_GLOBALS[(module, name)]
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
      return _BUILTINS[name]
    if module in ("copyreg", "copy_reg") and name == "_reconstructor":
      return self._reconstructor  # protocol 0/1 objects: (class, object, None)
    if module == "_codecs" and name == "encode":
      return self._latin1_encode  # Python 3 protocol-2 pickles write bytes as encode(str, 'latin1')
    if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE:
      return _placeholder(module, name)
    if (module, name) in _CHUMPY:
      return _placeholder(module, name)
    raise self._refuse(f"{module}.{name}")

  def _reconstructor(self, cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, _Pickled)) or base is not object or state is not None:
      raise self._refuse(f"copyreg._reconstructor({getattr(cls, '__name__', cls)!r}, ...)")
    return cls.__new__(cls)

  def _latin1_encode(self, text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
      raise self._refuse(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _sparse_to_dense(obj: _Pickled, where: str) -> np.ndarray:
  """A pickled csc/csr matrix's state (data, indices, indptr, shape) -> dense float64 array."""
  state = obj.state if isinstance(obj.state, dict) else {}
  shape = state.get("_shape", state.get("shape"))
  data, indices, indptr = (state.get(k) for k in ("data", "indices", "indptr"))
  if shape is None or not all(isinstance(a, np.ndarray) for a in (data, indices, indptr)):
    raise ValueError(f"{where}: {obj.origin} without data/indices/indptr/shape in its pickled state")
  rows, cols = (int(s) for s in shape)
  by_column = obj.origin.rsplit(".", 1)[-1].startswith("csc")
  major, minor = (cols, rows) if by_column else (rows, cols)
  if (
    indptr.shape != (major + 1,)
    or indices.shape != data.shape
    or indptr[0] != 0
    or indptr[-1] != data.size
    or np.any(np.diff(indptr) < 0)
    or indices.size
    and (indices.min() < 0 or indices.max() >= minor)
  ):
    raise ValueError(
      f"{where}: inconsistent {obj.origin} (shape {tuple(shape)}, indptr {indptr.shape}, {data.size} values)"
    )
  major_index = np.repeat(np.arange(major), np.diff(indptr))
  dense = np.zeros((rows, cols))
  np.add.at(dense, (indices, major_index) if by_column else (major_index, indices), data)
  return dense


def _as_array(value, where: str, depth: int = 0) -> np.ndarray:
  """A loaded value (ndarray, sparse or chumpy placeholder, list) -> numeric ndarray."""
  if depth > 32:
    raise ValueError(f"{where}: chumpy objects nested too deeply")
  if isinstance(value, _Pickled):
    kind = value.origin.rsplit(".", 1)[-1]
    if value.origin.startswith("scipy.sparse"):
      return _sparse_to_dense(value, where)
    state = value.state if isinstance(value.state, dict) else {}
    if kind == "Ch" and "x" in state:
      return _as_array(state["x"], where, depth + 1)
    if kind in ("Reshape", "Select", "transpose") and "a" in state:
      inner = _as_array(state["a"], where, depth + 1)
      if kind == "Reshape":
        return inner.reshape(state["newshape"])
      if kind == "transpose":
        return np.transpose(inner, state.get("axes"))
      out = inner.ravel()[np.asarray(state["idxs"], np.int64)]
      return out.reshape(state["preferred_shape"]) if "preferred_shape" in state else out
    raise ValueError(f"{where}: cannot read {value.origin} with state keys {sorted(state)} as an array")
  array = np.asarray(value)
  if array.dtype.kind not in "biuf":
    raise ValueError(f"{where}: expected numbers, got {array.dtype} {type(value).__name__}")
  return array


def _read_pickle(path: str) -> dict:
  with open(path, "rb") as f:
    try:
      content = _RestrictedUnpickler(f, path).load()
    except UnsafePickleError:
      raise
    except Exception as e:  # bytes that are no pickle fail anywhere inside the unpickler (EOF, bad opcode...)
      raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
  if not isinstance(content, dict):
    raise ValueError(f"{path}: expected a dict of FLAME arrays, the pickle holds a {type(content).__name__}")
  return {str(k): v for k, v in content.items()}


def _read_npz(path: str) -> dict:
  try:
    with np.load(path, allow_pickle=False) as archive:
      return {k: archive[k] for k in archive.files}
  except (ValueError, zipfile.BadZipFile) as error:
    raise ValueError(f"{path}: not a readable .npz of plain arrays ({error})") from error


def _sibling_eyelids(path: str, arrays: dict) -> None:
  """SMIRK ships FLAME 2023's eyelid blendshapes as l_eyelid.npy / r_eyelid.npy beside the model."""
  folder = os.path.dirname(os.path.abspath(path))
  files = {k: os.path.join(folder, f"{k}.npy") for k in ("l_eyelid", "r_eyelid")}
  if not any(k in arrays for k in files) and all(os.path.exists(f) for f in files.values()):
    for key, file in files.items():
      arrays[key] = np.load(file, allow_pickle=False)


def flame_model_from_arrays(arrays: dict, source: str = "arrays") -> FlameModel:
  """FLAME file content {key: array-like} -> FlameModel, checking keys and shapes.

  Keys: v_template [V, 3], f [F, 3], shapedirs [V, 3, S + E] (identity first; `num_shape` splits
  it, default FLAME's 300), posedirs [V, 3, 36], J_regressor [5, V] (dense or scipy sparse),
  weights [V, 5], kintree_table [2, 5] (parents in row 0: FLAME's tree); optional l_eyelid and
  r_eyelid [V, 3] (both or neither) and region_<name> vertex index arrays. Other keys are ignored.
  Errors name `source` and the key.
  """

  def get(key):
    if key not in arrays:
      raise ValueError(f"{source}: missing key {key!r} (found {', '.join(sorted(arrays)) or 'none'})")
    return _as_array(arrays[key], f"{source}: key {key!r}")

  def check(key, array, shape):
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
      want = ", ".join("?" if s is None else str(s) for s in shape)
      raise ValueError(f"{source}: key {key!r} has shape {list(array.shape)}, expected [{want}]")
    return array

  v_template = check("v_template", get("v_template"), (None, 3)).astype(np.float32)
  num_vertices = v_template.shape[0]
  faces = check("f", get("f"), (None, 3))
  if faces.dtype.kind not in "iu" or faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
    raise ValueError(f"{source}: key 'f' must hold integer vertex indices in [0, {num_vertices})")
  dirs = check("shapedirs", get("shapedirs"), (num_vertices, 3, None)).astype(np.float32)
  num_shape = FLAME_NUM_SHAPE
  if "num_shape" in arrays:
    count = get("num_shape")
    if count.size != 1 or count.dtype.kind not in "iu":
      raise ValueError(f"{source}: key 'num_shape' must be one integer, got {count.dtype} {list(count.shape)}")
    num_shape = int(count.item())
  if not 0 <= num_shape < dirs.shape[-1]:
    raise ValueError(
      f"{source}: key 'shapedirs' has {dirs.shape[-1]} directions, so no expression "
      f"directions follow the first {num_shape} (identity); give num_shape"
    )
  posedirs = check("posedirs", get("posedirs"), (num_vertices, 3, NUM_POSE_FEATURES)).astype(np.float32)
  regressor = check("J_regressor", get("J_regressor"), (len(JOINTS), num_vertices)).astype(np.float32)
  weights = check("weights", get("weights"), (num_vertices, len(JOINTS))).astype(np.float32)
  kintree = check("kintree_table", get("kintree_table"), (2, len(JOINTS)))
  parents = (-1,) + tuple(int(p) for p in kintree[0, 1:])  # row 0, entry 0 is uint32(-1) in FLAME files
  if parents != PARENTS:
    raise ValueError(f"{source}: key 'kintree_table' gives parents {parents}; FLAME's tree is {PARENTS}")

  eyelids = None
  if "l_eyelid" in arrays or "r_eyelid" in arrays:
    eyelids = np.stack([check(k, get(k), (num_vertices, 3)) for k in ("l_eyelid", "r_eyelid")]).astype(np.float32)
  regions = {}
  for key in sorted(arrays):
    if key.startswith("region_"):
      index = check(key, get(key), (None,))
      if index.dtype.kind not in "iu" or index.size and (index.min() < 0 or index.max() >= num_vertices):
        raise ValueError(f"{source}: key {key!r} must hold integer vertex indices in [0, {num_vertices})")
      regions[key[len("region_") :]] = jnp.asarray(index, jnp.int32)

  return FlameModel(
    v_template=jnp.asarray(v_template),
    faces=jnp.asarray(faces, jnp.int32),
    shapedirs=jnp.asarray(dirs[..., :num_shape]),
    exprdirs=jnp.asarray(dirs[..., num_shape:]),
    posedirs=jnp.asarray(posedirs.reshape(num_vertices * 3, NUM_POSE_FEATURES).T),
    j_regressor=jnp.asarray(regressor),
    lbs_weights=jnp.asarray(weights),
    eyelids=None if eyelids is None else jnp.asarray(eyelids),
    regions=regions,
  )


def load_flame_model(path: str | os.PathLike) -> FlameModel:
  """Reads a FLAME-format model file -> FlameModel.

  `.pkl`: FLAME 2020 `generic_model.pkl` / FLAME 2023 `flame2023.pkl` through the restricted
  unpickler (numpy arrays, scipy csc/csr matrices and chumpy Ch / reorderings read as plain data,
  anything else -> UnsafePickleError); eyelid blendshapes come from `l_eyelid.npy` and
  `r_eyelid.npy` beside the file when the pickle has none (SMIRK's layout). `.npz`: the same keys
  (see `flame_model_from_arrays`), loaded without pickle, e.g. the stand-in head of
  `jamflow_jax.motion.standin` (`jamflow_jax.motion.face.load_face` picks one).
  """
  path = os.fspath(path)
  extension = os.path.splitext(path)[1].lower()
  if extension == ".pkl":
    arrays = _read_pickle(path)
    _sibling_eyelids(path, arrays)
  elif extension == ".npz":
    arrays = _read_npz(path)
  else:
    raise ValueError(f"{path}: unknown FLAME file type {extension!r}; expected .pkl or .npz")
  return flame_model_from_arrays(arrays, source=path)
