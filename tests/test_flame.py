"""FLAME in JAX: skinning against hand-computed cases, the restricted model reader, the stand-in head."""

import os
import pickle
import struct
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from jamflow_jax.motion import flame, rotations, standin
from jamflow_jax.motion.spec import MOTION_SPEC

# ---------------------------------------------------------------------------------- a tiny model
# Vertices 0-4 sit on the joints (the regressor picks them), 5 is on the jaw, 6 is half neck, half jaw.
JOINT_POSITIONS = np.array(
  [[0.0, 0.0, 0.0], [0.0, 0.1, -0.01], [0.0, 0.12, 0.02], [0.03, 0.15, 0.05], [-0.03, 0.15, 0.05]]
)
TINY_VERTICES = np.concatenate([JOINT_POSITIONS, [[0.0, 0.08, 0.08], [0.04, 0.09, 0.06]]])
TINY_WEIGHTS = np.array(
  [
    [1, 0, 0, 0, 0],
    [0, 1, 0, 0, 0],
    [0, 0, 1, 0, 0],
    [0, 0, 0, 1, 0],
    [0, 0, 0, 0, 1],
    [0, 0, 1, 0, 0],
    [0, 0.5, 0.5, 0, 0],
  ],
  np.float64,
)


def _tiny_arrays(num_shape=2, num_expression=3, seed=0):
  """FLAME file content of a 7-vertex model (FLAME's layouts: shapedirs identity first, posedirs [V, 3, 36])."""
  rng = np.random.default_rng(seed)
  num_vertices = TINY_VERTICES.shape[0]
  regressor = np.zeros((5, num_vertices))
  regressor[np.arange(5), np.arange(5)] = 1.0
  return {
    "v_template": TINY_VERTICES.copy(),
    "f": np.array([[5, 6, 2]], np.uint32),
    "shapedirs": rng.normal(0, 0.01, (num_vertices, 3, num_shape + num_expression)),
    "num_shape": np.asarray(num_shape),
    "posedirs": np.zeros((num_vertices, 3, 36)),
    "J_regressor": regressor,
    "weights": TINY_WEIGHTS.copy(),
    "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
  }


_vertices = jax.jit(flame.flame_vertices)  # one compile per input shape, not op-by-op dispatch


def _motion(num_frames=1, **parts):
  """[T, 61] motion with the given parts (each [size], the same in every frame), the rest at rest."""
  return MOTION_SPEC.join(
    {k: np.tile(np.asarray(v, np.float32), (num_frames, 1)) for k, v in parts.items()}, num_frames
  )


def _rot_x(t):
  return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _rot_y(t):
  return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


def _rot_z(t):
  return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def test_axis_angle_in_numpy_and_jax_matches_scipy_and_has_finite_gradients():
  from scipy.spatial.transform import Rotation

  rng = np.random.default_rng(0)
  aa = np.concatenate([rng.normal(size=(200, 3)), [[0, 0, 0], [1e-7, 0, 0], [0, 3e-4, -2e-4], [np.pi, 0, 0]]])
  want = Rotation.from_rotvec(aa).as_matrix()
  np.testing.assert_allclose(rotations.axis_angle_to_matrix(aa), want, atol=1e-12)
  got = np.asarray(jax.jit(lambda a: rotations.axis_angle_to_matrix(a, xp=jnp))(jnp.asarray(aa, jnp.float32)))
  np.testing.assert_allclose(got, want, atol=2e-6)
  # dR/d(aa_i) at 0 is skew(e_i): the generators of rotations about x, y, z.
  jac = np.asarray(jax.jit(jax.jacfwd(lambda a: rotations.axis_angle_to_matrix(a, xp=jnp)))(jnp.zeros(3)))
  for i in range(3):
    np.testing.assert_allclose(jac[..., i], rotations._skew(np.eye(3)[i]), atol=1e-7)


def test_rest_pose_returns_the_template():
  model = flame.flame_model_from_arrays(_tiny_arrays())
  out = _vertices(model, _motion(2))
  assert out.shape == (2, 7, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, np.broadcast_to(TINY_VERTICES, (2, 7, 3)), atol=1e-7)


def test_jaw_rotation_moves_only_jaw_weighted_vertices_about_the_jaw_joint():
  model = flame.flame_model_from_arrays(_tiny_arrays())
  angle = 0.3
  out = np.asarray(_vertices(model, _motion(jaw=[angle, 0, 0])))[0]
  jaw = JOINT_POSITIONS[2]
  moved = _rot_x(angle) @ (TINY_VERTICES[5] - jaw) + jaw
  expected = TINY_VERTICES.copy()
  expected[5] = moved
  expected[6] = 0.5 * TINY_VERTICES[6] + 0.5 * (_rot_x(angle) @ (TINY_VERTICES[6] - jaw) + jaw)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  assert moved[1] < TINY_VERTICES[5, 1]  # +x rotation swings the chin (in front of the hinge) down


def test_neck_and_global_rotations_chain_down_the_tree():
  model = flame.flame_model_from_arrays(_tiny_arrays())
  g, n, j = 0.2, -0.35, 0.25
  out = np.asarray(_vertices(model, _motion(global_rot=[0, g, 0], neck=[0, 0, n], jaw=[j, 0, 0])))[0]
  r_g, r_n, r_j = _rot_y(g), _rot_z(n), _rot_x(j)
  j0, j1, j2 = JOINT_POSITIONS[:3]

  def through_neck(x):  # a point carried by the neck joint (and its parent, the root)
    return r_g @ (r_n @ (x - j1) + j1 - j0) + j0

  np.testing.assert_allclose(out[0], j0, atol=1e-6)  # the root turns about itself
  np.testing.assert_allclose(out[3], through_neck(TINY_VERTICES[3]), atol=1e-6)  # eyes ride on the neck
  np.testing.assert_allclose(out[5], through_neck(r_j @ (TINY_VERTICES[5] - j2) + j2), atol=1e-6)
  np.testing.assert_allclose(
    out[6], 0.5 * through_neck(TINY_VERTICES[6]) + 0.5 * through_neck(r_j @ (TINY_VERTICES[6] - j2) + j2), atol=1e-6
  )


def test_shape_expression_and_eyelid_blendshapes_add_linearly():
  arrays = _tiny_arrays()
  rng = np.random.default_rng(1)
  arrays["l_eyelid"], arrays["r_eyelid"] = rng.normal(0, 0.01, (2, 7, 3))
  model = flame.flame_model_from_arrays(arrays)
  beta, psi, lids = np.array([0.7, -1.2]), np.array([1.5, -0.5, 2.0]), np.array([0.3, 0.9])
  out = np.asarray(_vertices(model, _motion(expression=np.pad(psi, (0, 47)), eyelids=lids), shape=beta))[0]
  dirs = arrays["shapedirs"]
  expected = (
    TINY_VERTICES
    + dirs[..., :2] @ beta
    + dirs[..., 2:] @ psi
    + lids[0] * arrays["l_eyelid"]
    + lids[1] * arrays["r_eyelid"]
  )
  np.testing.assert_allclose(out, expected, atol=1e-6)
  # Expression beyond the model's 3 directions is ignored; a shorter identity vector is allowed.
  more = np.asarray(_vertices(model, _motion(expression=np.full(50, 0.1))))[0]
  np.testing.assert_allclose(more, TINY_VERTICES + dirs[..., 2:] @ np.full(3, 0.1), atol=1e-6)
  with pytest.raises(ValueError, match="3 coefficients"):
    _vertices(model, _motion(), shape=np.zeros(3))


def test_pose_correctives_use_flames_feature_order_and_file_layout():
  arrays = _tiny_arrays()
  # Feature 9 (j - 1) + 3 a + b is (R_j - I)[a, b]; jaw (j = 2), entry [1, 2] -> feature 14, in
  # FLAME's [V, 3, 36] file layout, moving the root vertex 0 (which no rotation here touches) along z.
  arrays["posedirs"][0, 2, 14] = 0.5
  model = flame.flame_model_from_arrays(arrays)
  assert model.posedirs.shape == (36, 21)
  angle = 0.4
  out = np.asarray(_vertices(model, _motion(jaw=[angle, 0, 0])))[0]
  np.testing.assert_allclose(out[0], TINY_VERTICES[0] + [0, 0, 0.5 * -np.sin(angle)], atol=1e-6)
  np.testing.assert_allclose(out[1:5], TINY_VERTICES[1:5], atol=1e-6)  # the joints come from v_shaped
  # A neck rotation about x has (R - I)[1, 2] = -sin too, but in feature 5: the vertex stays.
  out = np.asarray(_vertices(model, _motion(neck=[angle, 0, 0])))[0]
  np.testing.assert_allclose(out[0], TINY_VERTICES[0], atol=1e-6)


def test_batched_jitted_and_differentiable():
  model = flame.flame_model_from_arrays(_tiny_arrays())
  rng = np.random.default_rng(2)
  motion = rng.normal(0, 0.2, (2, 3, 61)).astype(np.float32)
  batched = _vertices(model, motion)
  per_frame = np.stack([[np.asarray(_vertices(model, m[None]))[0] for m in clip] for clip in motion])
  np.testing.assert_allclose(batched, per_frame, atol=1e-6)
  grad = jax.jit(jax.grad(lambda m: jnp.sum(flame.flame_vertices(model, m) ** 2)))(jnp.zeros((1, 61)))
  assert np.all(np.isfinite(grad)) and np.any(grad[:, 50:59] != 0)  # the rotations reach the vertices


# ------------------------------------------------------------------------------ reading .pkl files


def _fake_chumpy(monkeypatch):
  """chumpy.ch.Ch and chumpy.reordering.Select stand-ins that pickle the way chumpy's classes do.

  chumpy's Ch.__getstate__ returns its __dict__ without the weak-reference caches; a plain Ch keeps
  its array under 'x', a Select its input under 'a' with 'idxs' and 'preferred_shape'.
  """
  package, ch, reordering = (types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering"))

  class Ch:
    def __init__(self, x):
      self.x, self._dirty_vars, self._itr, self._depends_on_deps = x, set(), None, {}
      self._parents, self._cache = "weak refs", {"r": None}

    def __getstate__(self):
      state = dict(self.__dict__)
      del state["_parents"], state["_cache"]
      return state

  class Select(Ch):
    def __init__(self, a, idxs, preferred_shape):
      super().__init__(None)
      del self.x
      self.a, self.idxs, self.preferred_shape = a, idxs, preferred_shape

  Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
  Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
  ch.Ch, reordering.Select, package.ch, package.reordering = Ch, Select, ch, reordering
  for name, module in (("chumpy", package), ("chumpy.ch", ch), ("chumpy.reordering", reordering)):
    monkeypatch.setitem(sys.modules, name, module)
  return Ch, Select


def _flame_pickle_content(Ch, Select):
  """A FLAME 2020 generic_model.pkl's layout (300 identity directions first) over the tiny model."""
  arrays = _tiny_arrays(num_shape=300, num_expression=4)
  posedirs = np.random.default_rng(3).normal(0, 0.01, (7, 3, 36))
  content = {
    "v_template": arrays["v_template"],
    "f": arrays["f"],
    "weights": arrays["weights"],
    "kintree_table": arrays["kintree_table"],
    "J": JOINT_POSITIONS,
    "bs_style": "lbs",
    "bs_type": "lrotmin",
    "shapedirs": Ch(arrays["shapedirs"]),
    "posedirs": Select(Ch(posedirs.ravel()[::-1].copy()), np.arange(posedirs.size)[::-1].copy(), (7, 3, 36)),
    "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
  }
  return content, arrays, posedirs


def _check_loaded(model, arrays, posedirs):
  np.testing.assert_allclose(model.v_template, arrays["v_template"], atol=1e-7)
  np.testing.assert_array_equal(model.faces, arrays["f"])
  assert model.shapedirs.shape == (7, 3, 300) and model.exprdirs.shape == (7, 3, 4)
  np.testing.assert_allclose(model.exprdirs, arrays["shapedirs"][..., 300:], atol=1e-7)
  np.testing.assert_allclose(model.posedirs, posedirs.reshape(21, 36).T, atol=1e-7)
  np.testing.assert_allclose(model.j_regressor, arrays["J_regressor"])
  assert model.parents == (-1, 0, 1, 1, 1) and model.eyelids is None


def test_reads_a_flame_pickle_with_chumpy_and_sparse_without_importing_chumpy(tmp_path, monkeypatch):
  path = tmp_path / "generic_model.pkl"
  with monkeypatch.context() as patch:
    content, arrays, posedirs = _flame_pickle_content(*_fake_chumpy(patch))
    path.write_bytes(pickle.dumps(content, protocol=2))
  modules = set(sys.modules)
  model = flame.load_flame_model(path)
  assert not any(m.startswith("chumpy") for m in set(sys.modules) - modules)
  _check_loaded(model, arrays, posedirs)
  motion = _motion(jaw=[0.2, 0, 0], expression=np.pad([1.0, -1.0], (0, 48)))
  reference = flame.flame_model_from_arrays({**arrays, "posedirs": posedirs, "num_shape": 300})
  np.testing.assert_allclose(_vertices(model, motion), _vertices(reference, motion), atol=1e-6)

  # SMIRK keeps FLAME 2023's eyelid blendshapes beside the model.
  lids = np.random.default_rng(4).normal(0, 0.01, (2, 7, 3))
  np.save(tmp_path / "l_eyelid.npy", lids[0])
  np.save(tmp_path / "r_eyelid.npy", lids[1])
  np.testing.assert_allclose(flame.load_flame_model(path).eyelids, lids, atol=1e-7)


class _Py2Object:
  def __init__(self, module, name, state):
    self.module, self.name, self.state = module, name, state


def _python2_pickle(obj) -> bytes:
  """Protocol-2 bytes the way Python 2 wrote FLAME's files: byte strings (dict keys, array data) as
  STRING opcodes, numpy under numpy.core, objects by NEWOBJ + BUILD."""
  out = [b"\x80\x02"]

  def string(data: bytes):
    out.append(b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data)

  def emit(o):
    if isinstance(o, dict):
      out.append(b"}(")
      for k, v in o.items():
        emit(k)
        emit(v)
      out.append(b"u")
    elif isinstance(o, tuple):
      out.append(b"(")
      for v in o:
        emit(v)
      out.append(b"t")
    elif isinstance(o, bool):
      out.append(b"\x88" if o else b"\x89")
    elif isinstance(o, int):
      out.append(b"J" + struct.pack("<i", o))
    elif o is None:
      out.append(b"N")
    elif isinstance(o, str):
      string(o.encode("latin1"))
    elif isinstance(o, np.ndarray):
      out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
      emit((0,))
      string(b"b")
      out.append(b"\x87R(")
      emit(1)
      emit(o.shape)
      out.append(b"cnumpy\ndtype\n")
      string(o.dtype.str[1:].encode())
      emit(0)
      emit(1)
      out.append(b"\x87R")
      emit((3, o.dtype.str[0], None, None, None, -1, -1, 0))
      out.append(b"b")
      emit(False)
      string(np.ascontiguousarray(o).tobytes())
      out.append(b"tb")
    elif isinstance(o, _Py2Object):
      out.append(f"c{o.module}\n{o.name}\n".encode() + b")\x81")
      emit(o.state)
      out.append(b"b")
    else:
      raise TypeError(type(o))

  emit(obj)
  return b"".join(out) + b"."


def test_reads_a_python2_pickle(tmp_path):
  arrays = _tiny_arrays(num_shape=300, num_expression=4)
  posedirs = np.random.default_rng(3).normal(0, 0.01, (7, 3, 36))
  sparse = scipy.sparse.csc_matrix(arrays["J_regressor"])
  content = {
    "v_template": arrays["v_template"],
    "f": arrays["f"],
    "weights": arrays["weights"],
    "kintree_table": arrays["kintree_table"],
    "bs_style": "lbs",
    "shapedirs": _Py2Object("chumpy.ch", "Ch", {"x": arrays["shapedirs"], "_itr": None}),
    "posedirs": posedirs,
    "J_regressor": _Py2Object(
      "scipy.sparse.csc",
      "csc_matrix",
      {
        "_shape": sparse.shape,
        "maxprint": 50,
        "format": "csc",
        "data": sparse.data,
        "indices": sparse.indices,
        "indptr": sparse.indptr,
      },
    ),
  }
  path = tmp_path / "flame2020.pkl"
  path.write_bytes(_python2_pickle(content))
  _check_loaded(flame.load_flame_model(path), arrays, posedirs)


class _RunsCode:
  def __init__(self, call):
    self.call = call

  def __reduce__(self):
    return self.call


@pytest.mark.parametrize(
  "make_call,what",
  [
    (lambda marker: (os.system, (f"touch {marker}",)), r"(posix|os)\.system"),
    # Protocol 2 writes Python 2's names for these: __builtin__.eval, commands.call.
    (lambda marker: (eval, (f"open({str(marker)!r}, 'w')",)), r"\.eval\b"),
    (lambda marker: (subprocess.call, (["touch", str(marker)],)), r"\.call\b"),
  ],
)
def test_refuses_pickles_that_would_run_code(tmp_path, make_call, what):
  marker = tmp_path / "pwned"
  path = tmp_path / "generic_model.pkl"
  arrays = _tiny_arrays(num_shape=300, num_expression=4)
  path.write_bytes(pickle.dumps({**arrays, "weights": _RunsCode(make_call(marker))}, protocol=2))
  with pytest.raises(flame.UnsafePickleError, match=what) as error:
    flame.load_flame_model(path)
  assert str(path) in str(error.value)
  assert not marker.exists()


def test_file_errors_name_the_file_and_the_key(tmp_path):
  arrays = _tiny_arrays()
  del arrays["weights"]
  path = tmp_path / "model.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"model\.npz: missing key 'weights'"):
    flame.load_flame_model(path)
  arrays = _tiny_arrays()
  arrays["shapedirs"] = arrays["shapedirs"][:, :2]
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"model\.npz: key 'shapedirs' has shape \[7, 2, 5\], expected \[7, 3, \?\]"):
    flame.load_flame_model(path)
  arrays = _tiny_arrays()
  arrays["kintree_table"] = np.array([[-1, 0, 0, 1, 1], [0, 1, 2, 3, 4]])
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match="kintree_table"):
    flame.load_flame_model(path)
  with pytest.raises(ValueError, match="unknown FLAME file type"):
    flame.load_flame_model(tmp_path / "model.obj")


# ---------------------------------------------------------------------------------- the stand-in


@pytest.fixture(scope="module")
def standin_model(tmp_path_factory):
  path = tmp_path_factory.mktemp("standin") / "standin.npz"
  return path, standin.make_standin(path)  # written, then read back through load_flame_model


@pytest.fixture(scope="module")
def posed(standin_model):
  """motion [T, 61] -> vertices [T, V, 3] numpy, through one jitted function."""
  model = standin_model[1]
  return lambda motion: np.asarray(_vertices(model, motion))


def _lip_pairs(model):
  """The slit: (upper, lower) lip vertex ids that coincide at rest, upper on the head, lower on the jaw."""
  rest = np.asarray(model.v_template)
  lips = np.asarray(model.regions["lips"])
  weights = np.asarray(model.lbs_weights)
  upper = lips[weights[lips, 2] == 0]
  lower = lips[weights[lips, 2] == 1]
  distance = np.linalg.norm(rest[upper][:, None] - rest[lower][None], axis=-1)
  i, j = np.nonzero(distance < 1e-9)
  return upper[i], lower[j]


def test_standin_round_trips_deterministically(standin_model, tmp_path):
  path, model = standin_model
  again = tmp_path / "again.npz"
  standin.write_standin(again)
  assert path.read_bytes() == again.read_bytes()
  built = standin.make_standin()
  for field in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights", "eyelids"):
    np.testing.assert_array_equal(getattr(model, field), getattr(built, field))
  assert set(model.regions) >= {"lips", "upper_face", "eyes"}
  assert model.num_vertices < 5000 and model.num_expression == 50 and model.posedirs.shape[0] == 36
  np.testing.assert_allclose(np.sum(model.lbs_weights, 1), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.sum(model.j_regressor, 1), 1.0, atol=1e-6)
  faces = np.asarray(model.faces)
  assert np.all((faces != np.roll(faces, 1, axis=1)).all(axis=1))  # no degenerate triangles


def test_standin_jaw_opens_the_mouth(standin_model, posed):
  model = standin_model[1]
  upper, lower = _lip_pairs(model)
  assert len(upper) >= 5
  rest, opened = posed(np.concatenate([_motion(), _motion(jaw=[0.2, 0, 0])]))
  np.testing.assert_allclose(rest, model.v_template, atol=1e-6)
  gap = opened[upper, 1] - opened[lower, 1]
  assert gap.max() > 0.015 and gap.min() > 0  # about 2 cm at the middle, open along the whole slit
  np.testing.assert_allclose(opened[upper], rest[upper], atol=1e-6)  # the upper lip stays
  forehead = np.asarray(model.regions["upper_face"])
  np.testing.assert_allclose(opened[forehead], rest[forehead], atol=1e-6)


def test_standin_expressions_close_round_and_widen_the_lips(standin_model, posed):
  model = standin_model[1]
  upper, lower = _lip_pairs(model)
  jaw = [0.1, 0, 0]
  frames = posed(
    np.concatenate(
      [
        _motion(jaw=jaw),
        _motion(jaw=jaw, expression=np.eye(50)[0] * 3),
        _motion(jaw=jaw, expression=np.eye(50)[1] * 3),
        _motion(jaw=jaw, expression=np.eye(50)[2] * 3),
      ]
    )
  )
  gap = [np.mean(f[upper, 1] - f[lower, 1]) for f in frames]
  width = [np.ptp(f[upper, 0]) for f in frames]  # between the slit's outermost columns
  assert gap[1] < gap[0] - 0.004  # lip closure: lips pressed towards each other
  assert width[1] == pytest.approx(width[0], abs=1e-3)
  assert width[2] < width[0] - 0.004  # rounding narrows
  assert width[3] > width[0] + 0.004  # spreading widens


def test_standin_eyelids_brows_and_tongue(standin_model, posed):
  model = standin_model[1]
  rest = np.asarray(model.v_template)
  eyes = np.asarray(model.regions["eyes"])
  left_eye = eyes[rest[eyes, 0] > 0]
  frames = posed(
    np.concatenate(
      [
        _motion(eyelids=[1, 0]),
        _motion(expression=np.eye(50)[5] * 3),
        _motion(jaw=[0.05, 0, 0], expression=np.eye(50)[4] * 3),
      ]
    )
  )
  # A closed lid covers the eyeball: the lid in front of the eye centre is ahead of the eyeball's front.
  centre = rest[left_eye].mean(0)
  skin = np.setdiff1d(np.arange(model.num_vertices), eyes)
  in_front = skin[np.hypot(*(rest[skin, :2] - centre[:2]).T) < 0.004]
  in_front = in_front[rest[in_front, 2] > 0]
  assert frames[0][in_front, 2].min() > rest[left_eye, 2].max()
  assert rest[in_front, 2].max() < rest[left_eye, 2].max()  # open at rest
  right_eye = eyes[rest[eyes, 0] < 0]
  np.testing.assert_allclose(frames[0][right_eye], rest[right_eye], atol=1e-6)
  brows = np.asarray(model.regions["upper_face"])
  assert np.mean(frames[1][brows, 1] - rest[brows, 1]) > 0.002
  tongue = np.asarray(model.regions["tongue"])
  assert frames[2][tongue, 2].max() > rest[_lip_pairs(model)[0], 2].max()  # out past the lips' line
