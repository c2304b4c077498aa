"""torch_checkpoint on files written here in torch's own formats (no torch installed)."""

import pickle

import ml_dtypes
import numpy as np
import pytest

from jamflow_jax import torch_checkpoint

from checkpoint_files import View, write_safetensors, write_torch_zip, write_zip_with_pickle


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "f32": rng.standard_normal((3, 4)).astype(np.float32),
    "f16": rng.standard_normal((5,)).astype(np.float16),
    "bf16": rng.standard_normal((2, 3, 2)).astype(ml_dtypes.bfloat16),
    "i64": rng.integers(-(2**40), 2**40, (4,)),
    "f64": rng.standard_normal((2,)),
    "i8": rng.integers(-100, 100, (3,)).astype(np.int8),
    "mask": rng.random((2, 2)) > 0.5,
    "scalar": np.array(1.5, np.float32),
  }


def _assert_same(got, want):
  assert got.dtype == want.dtype and got.shape == want.shape
  assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def test_safetensors_round_trip(tmp_path):
  arrays = _arrays()
  path = tmp_path / "model.safetensors"
  write_safetensors(path, arrays, metadata={"format": "pt"})
  loaded = torch_checkpoint.load(path)
  assert sorted(loaded) == sorted(arrays)
  for name, array in arrays.items():
    _assert_same(loaded[name], array)
    assert loaded[name].flags.writeable


def test_safetensors_rejects_bad_offsets(tmp_path):
  path = tmp_path / "bad.safetensors"
  write_safetensors(path, {"w": np.zeros((4,), np.float32)})
  data = bytearray(path.read_bytes())
  data[8:] = data[8:].replace(b'"shape":[4]', b'"shape":[9]')
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="'w'.*data_offsets"):
    torch_checkpoint.load(path)


@pytest.mark.parametrize("byteorder", ["little", "big", None])
def test_torch_zip_dtypes_views_and_nesting(tmp_path, byteorder):
  arrays = _arrays()
  base = np.arange(40, dtype=np.float32) * 0.5
  transposed = View(base, 0, (4, 5), (1, 4))  # a [5, 4] tensor's .t(): non-contiguous
  offset_view = View(base, 7, (3, 2), (4, 1), parameter=True)  # a slice: storage offset 7
  tree = {
    "ema_model_state_dict": {**arrays, "t": transposed, "sliced": offset_view},
    "step": 7,
    "history": [np.ones(2, np.int32), "note"],
  }
  path = tmp_path / "model_1200.pt"
  write_torch_zip(path, tree, byteorder=byteorder)

  loaded = torch_checkpoint.load(path)
  assert loaded["step"] == 7 and type(loaded["ema_model_state_dict"]) is dict
  state = loaded["ema_model_state_dict"]
  for name, array in arrays.items():
    _assert_same(state[name], array)
  _assert_same(state["t"], base[:20].reshape(5, 4).T)
  _assert_same(state["sliced"], base[7:19].reshape(3, 4)[:, :2])
  assert state["t"].flags.c_contiguous and state["t"].flags.writeable
  _assert_same(loaded["history"][0], np.ones(2, np.int32))

  flat = torch_checkpoint.flatten(loaded)
  assert "step" not in flat and "history.1" not in flat
  _assert_same(flat["ema_model_state_dict.t"], base[:20].reshape(5, 4).T)
  _assert_same(flat["history.0"], np.ones(2, np.int32))
  assert len(flat) == len(arrays) + 3


def test_torch_zip_untyped_storage_dtypes(tmp_path):
  """uint16 / float8 tensors: byte storage + _rebuild_tensor_v3(..., dtype), as torch >= 2.3 saves them."""
  rng = np.random.default_rng(1)
  arrays = {
    "u16": rng.integers(0, 2**16, (3, 2)).astype(np.uint16),
    "f8": rng.standard_normal((4,)).astype(ml_dtypes.float8_e4m3fn),
  }
  base = np.arange(12, dtype=np.uint16)
  path = tmp_path / "new_dtypes.pt"
  write_torch_zip(path, {**arrays, "u16_t": View(base, 2, (2, 3), (1, 4))})
  loaded = torch_checkpoint.load(path)
  for name, array in arrays.items():
    _assert_same(loaded[name], array)
  _assert_same(loaded["u16_t"], np.array([[base[2 + i + 4 * j] for j in range(3)] for i in range(2)], np.uint16))


def test_refuses_foreign_globals_without_running_them(tmp_path):
  marker = tmp_path / "pwned"
  # GLOBAL os.system + REDUCE, hand-assembled the way a hostile checkpoint would be.
  payload = (
    b"\x80\x02cos\nsystem\nq\x00X"
    + len(f"touch {marker}").to_bytes(4, "little")
    + f"touch {marker}".encode()
    + b"\x85R."
  )
  path = tmp_path / "evil.bin"
  write_zip_with_pickle(path, payload)
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match=r"os\.system.*") as info:
    torch_checkpoint.load(path)
  assert str(path) in str(info.value) and not marker.exists()

  class Exploit:
    def __reduce__(self):
      return eval, ("1 + 1",)

  path = tmp_path / "evil4.pth"
  write_zip_with_pickle(path, pickle.dumps({"w": Exploit()}, protocol=4))  # STACK_GLOBAL
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match=r"builtins\.eval"):
    torch_checkpoint.load(path)


def test_protocol_2_builtins_are_mapped_and_nothing_else(tmp_path):
  """torch.save writes protocol 2, where set / frozenset / complex / bytearray are `__builtin__.*`."""
  values = {"s": {1, 2}, "f": frozenset({3}), "c": 1 + 2j, "b": bytearray(b"xy\x80")}
  data = pickle.dumps(values, protocol=2)
  assert b"c__builtin__\nset" in data and b"c__builtin__\nbytearray" in data
  path = tmp_path / "builtins.pt"
  write_zip_with_pickle(path, data)
  loaded = torch_checkpoint.load(path)
  assert loaded == values and type(loaded["b"]) is bytearray and type(loaded["f"]) is frozenset

  payload = b"\x80\x02c__builtin__\neval\nq\x00X" + len("1 + 1").to_bytes(4, "little") + b"1 + 1\x85R."
  path = tmp_path / "evil2.pt"
  write_zip_with_pickle(path, payload)
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match=r"builtins\.eval"):
    torch_checkpoint.load(path)


def test_rejects_out_of_bounds_views(tmp_path):
  path = tmp_path / "oob.pt"
  write_torch_zip(path, {"w": View(np.zeros(6, np.float32), 4, (2, 2), (2, 1))})
  with pytest.raises(ValueError, match="reaches element 7 of a storage of 6"):
    torch_checkpoint.load(path)


def test_bad_files(tmp_path):
  with pytest.raises(ValueError, match="no such checkpoint file"):
    torch_checkpoint.load(tmp_path / "missing.bin")
  (tmp_path / "weights.npz").write_bytes(b"PK")
  with pytest.raises(ValueError, match=r"weights\.npz.*unknown checkpoint type"):
    torch_checkpoint.load(tmp_path / "weights.npz")
  legacy = tmp_path / "legacy.pt"
  legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))  # torch's legacy magic number
  with pytest.raises(ValueError, match="legacy.*re-save"):
    torch_checkpoint.load(legacy)
  (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match=r"junk\.ckpt.*not a torch zip"):
    torch_checkpoint.load(tmp_path / "junk.ckpt")
  (tmp_path / "short.safetensors").write_bytes(b"\xff" * 12)
  with pytest.raises(ValueError, match=r"short\.safetensors"):
    torch_checkpoint.load(tmp_path / "short.safetensors")
