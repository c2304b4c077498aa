"""Test writers of PyTorch checkpoint files, without torch: safetensors and torch's zip format.

`write_safetensors` is the library's writer (its files are checked against F5-TTS's own reader in
tests/test_f5tts_torch.py when torch is installed). `write_torch_zip` produces what `torch.save`
writes: a zip with `<root>/data.pkl` (pickle protocol 2) and one `<root>/data/<key>` record per
storage. The pickle names exactly torch's globals (`torch._utils._rebuild_tensor_v2`,
`torch.FloatStorage`, `collections.OrderedDict`, ...), which is done by putting stand-in `torch`,
`torch._utils` and `torch.storage` modules into sys.modules while it pickles (and only then).
"""

import collections
import glob
import io
import os
import pickle
import sys
import types
import zipfile
from unittest import mock

import ml_dtypes
import numpy as np

from jamflow_jax.torch_checkpoint import save_safetensors as write_safetensors  # noqa: F401 (the writers' API)

_STORAGE_NAMES = {
  np.dtype(np.float64): "DoubleStorage",
  np.dtype(np.float32): "FloatStorage",
  np.dtype(np.float16): "HalfStorage",
  np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
  np.dtype(np.int64): "LongStorage",
  np.dtype(np.int32): "IntStorage",
  np.dtype(np.int16): "ShortStorage",
  np.dtype(np.int8): "CharStorage",
  np.dtype(np.uint8): "ByteStorage",
  np.dtype(np.bool_): "BoolStorage",
}


# Dtypes that torch saves as untyped bytes plus a dtype argument (_rebuild_tensor_v3).
_V3_DTYPE_NAMES = {
  np.dtype(np.uint16): "uint16",
  np.dtype(np.uint32): "uint32",
  np.dtype(ml_dtypes.float8_e4m3fn): "float8_e4m3fn",
  np.dtype(ml_dtypes.float8_e5m2): "float8_e5m2",
}


class View:
  """A tensor viewing `base` (a 1-D array, one storage) at `offset` with `shape` and `stride` in elements.

  Bases of uint16 / uint32 / float8 are written as torch writes them: an untyped (byte) storage and
  `_rebuild_tensor_v3` with the dtype as an argument.
  """

  def __init__(self, base: np.ndarray, offset: int, shape, stride, *, parameter: bool = False):
    self.base, self.offset, self.shape, self.stride = base, offset, tuple(shape), tuple(stride)
    self.parameter = parameter


def _fake_torch():
  """Stand-in modules whose globals pickle under torch's own names."""
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")
  torch._utils = utils
  storage = types.ModuleType("torch.storage")
  for name in set(_STORAGE_NAMES.values()):
    setattr(torch, name, type(name, (), {"__module__": "torch"}))
  storage.UntypedStorage = torch.UntypedStorage = type("UntypedStorage", (), {"__module__": "torch.storage"})
  for name in _V3_DTYPE_NAMES.values():  # torch.dtype pickles as the global torch.<name>
    setattr(torch, name, type("dtype", (), {"__module__": "torch", "__reduce__": lambda self, n=name: n})())

  def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled, never called")

  def _rebuild_tensor_v3(*args):
    raise AssertionError("only pickled, never called")

  def _rebuild_parameter(*args):
    raise AssertionError("only pickled, never called")

  for fn in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter):
    fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
    setattr(utils, fn.__name__, fn)
  return {"torch": torch, "torch._utils": utils, "torch.storage": storage}


class _Storage:
  def __init__(self, key: str, base: np.ndarray):
    self.key, self.base = key, base


class _Tensor:
  def __init__(self, torch, storage: _Storage, view: View):
    self.torch, self.storage, self.view = torch, storage, view

  def __reduce_ex__(self, protocol):
    v = self.view
    args = (self.storage, v.offset, v.shape, v.stride, False, collections.OrderedDict())
    if v.base.dtype in _V3_DTYPE_NAMES:
      tensor = self.torch._utils._rebuild_tensor_v3, args + (getattr(self.torch, _V3_DTYPE_NAMES[v.base.dtype]),)
    else:
      tensor = self.torch._utils._rebuild_tensor_v2, args
    if not v.parameter:
      return tensor
    return self.torch._utils._rebuild_parameter, (_Reduced(tensor), True, collections.OrderedDict())


class _Reduced:
  def __init__(self, reduced):
    self.reduced = reduced

  def __reduce_ex__(self, protocol):
    return self.reduced


def write_torch_zip(path, tree, *, root: str = "archive", byteorder: str | None = "little") -> None:
  """Nested dicts / lists of arrays and `View`s -> a torch zip checkpoint.

  Dicts become OrderedDicts carrying torch's `_metadata` attribute (as `Module.state_dict()` does);
  views of one base array share one storage record; `byteorder=None` leaves out the byteorder record.
  """
  modules = _fake_torch()
  torch = modules["torch"]
  storages: dict[int, _Storage] = {}

  def storage_of(base):
    if id(base) not in storages:
      storages[id(base)] = _Storage(str(len(storages)), base)
    return storages[id(base)]

  def convert(node):
    if isinstance(node, dict):
      out = collections.OrderedDict((k, convert(v)) for k, v in node.items())
      out._metadata = collections.OrderedDict({"": {"version": 1}})
      return out
    if isinstance(node, (list, tuple)):
      return type(node)(convert(v) for v in node)
    if isinstance(node, np.ndarray):
      flat = np.ascontiguousarray(node).reshape(-1)
      stride = [int(np.prod(node.shape[i + 1 :])) for i in range(node.ndim)]
      node = View(flat, 0, node.shape, stride)
    if isinstance(node, View):
      return _Tensor(torch, storage_of(node.base), node)
    return node

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, _Storage) and obj.base.dtype in _V3_DTYPE_NAMES:
        return ("storage", torch.UntypedStorage, obj.key, "cpu", obj.base.nbytes)
      if isinstance(obj, _Storage):
        return ("storage", getattr(torch, _STORAGE_NAMES[obj.base.dtype]), obj.key, "cpu", obj.base.size)
      return None

  buffer = io.BytesIO()
  with mock.patch.dict(sys.modules, modules):
    Pickler(buffer, protocol=2).dump(convert(tree))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr(f"{root}/data.pkl", buffer.getvalue())
    if byteorder is not None:
      archive.writestr(f"{root}/byteorder", byteorder)
    for storage in storages.values():
      base = storage.base.byteswap() if byteorder == "big" else storage.base
      archive.writestr(f"{root}/data/{storage.key}", base.tobytes())
    archive.writestr(f"{root}/version", "3\n")


def write_zip_with_pickle(path, data_pkl: bytes, *, root: str = "archive") -> None:
  """A torch-shaped zip around an arbitrary (e.g. hostile) data.pkl."""
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{root}/data.pkl", data_pkl)
    archive.writestr(f"{root}/version", "3\n")


def flip_bytes(path, count: int = 64) -> None:
  """Inverts `count` bytes in the middle of the file at `path` (a damaged disk block)."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    chunk = f.read(count)
    f.seek(size // 2)
    f.write(bytes(b ^ 0x5A for b in chunk))


def data_files(item_dir) -> list[str]:
  """The array data files of an Orbax item directory (its OCDBT `d/` records)."""
  return [f for f in glob.glob(f"{item_dir}/**", recursive=True) if os.path.isfile(f) and "/d/" in f]


def largest_data_file(item_dir) -> str:
  return max(data_files(item_dir), key=os.path.getsize)
