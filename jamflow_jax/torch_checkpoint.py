"""Reading PyTorch checkpoint files into numpy arrays, without torch and without plain pickle (and
writing safetensors, for F5-TTS's own inference).

Two formats:

- `.safetensors`: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
  data_offsets}} (plus an optional `__metadata__`), then the raw little-endian tensor bytes.
- torch's zip format (`torch.save` since 1.6; `.bin`, `.pt`, `.pth`, `.ckpt`): `<root>/data.pkl`
  holds the object tree as a pickle whose tensors point at storages `<root>/data/<key>`.

The pickle is read by an unpickler that resolves only the globals a state dict needs (the tensor
rebuild functions, storage and dtype names, OrderedDict and a few plain builtins); any other
global is refused by name *before* anything is called, so a hostile file cannot run code.
"""

import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

_SAFETENSORS_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "F8_E4M3": ml_dtypes.float8_e4m3fn,
  "F8_E5M2": ml_dtypes.float8_e5m2,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U64": np.uint64,
  "U32": np.uint32,
  "U16": np.uint16,
  "U8": np.uint8,
  "BOOL": np.bool_,
}

# Legacy typed-storage classes name the element type of a storage (torch.FloatStorage, ...).
_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "ComplexDoubleStorage": np.complex128,
  "ComplexFloatStorage": np.complex64,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
  # Dtypes without a typed storage (uint16, float8, ...) are saved as untyped bytes and get
  # their dtype from _rebuild_tensor_v3's argument.
  "UntypedStorage": np.uint8,
}

_TORCH_DTYPES = {
  "float64": np.float64,
  "double": np.float64,
  "float32": np.float32,
  "float": np.float32,
  "float16": np.float16,
  "half": np.float16,
  "bfloat16": ml_dtypes.bfloat16,
  "complex128": np.complex128,
  "complex64": np.complex64,
  "int64": np.int64,
  "long": np.int64,
  "int32": np.int32,
  "int": np.int32,
  "int16": np.int16,
  "short": np.int16,
  "int8": np.int8,
  "uint8": np.uint8,
  "uint16": np.uint16,
  "uint32": np.uint32,
  "uint64": np.uint64,
  "bool": np.bool_,
  "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
  "float8_e5m2": ml_dtypes.float8_e5m2,
  "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
  "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}


class UnsafeCheckpointError(ValueError):
  """The checkpoint's pickle refers to a global outside the state-dict allowlist."""


class _Storage:
  """One `<root>/data/<key>` record: a flat array of `numel` elements, read on first use."""

  def __init__(self, archive: zipfile.ZipFile, member: str, dtype: np.dtype, numel: int, big_endian: bool):
    self.archive, self.member, self.dtype, self.numel = archive, member, dtype, numel
    self.big_endian = big_endian
    self._raw = None

  def raw(self) -> bytes:
    if self._raw is None:
      try:
        self._raw = self.archive.read(self.member)
      except KeyError:
        raise ValueError(f"storage record {self.member} is missing") from None
      if len(self._raw) < self.numel * self.dtype.itemsize:
        raise ValueError(
          f"storage record {self.member} holds {len(self._raw)} bytes, fewer than {self.numel} x {self.dtype}"
        )
    return self._raw

  def elements(self, dtype: np.dtype) -> np.ndarray:
    """The storage's bytes as a flat array of `dtype` (native byte order)."""
    raw = self.raw()
    count = len(raw) // dtype.itemsize
    if not self.big_endian or dtype.itemsize == 1:
      return np.frombuffer(raw, dtype, count)
    # Swap within each scalar: a complex number is two floats, each swapped on its own.
    part = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
    swapped = np.frombuffer(raw, np.uint8, count * dtype.itemsize).reshape(-1, part)[:, ::-1]
    return np.ascontiguousarray(swapped).reshape(-1).view(dtype)


def _strided(storage: _Storage, dtype: np.dtype, offset: int, size, stride) -> np.ndarray:
  """The tensor viewing `storage` at (offset, size, stride) in elements, as a new contiguous array."""
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
    raise ValueError(f"tensor on {storage.member} has an invalid layout: size {size}, stride {stride}, offset {offset}")
  flat = storage.elements(dtype)
  if 0 in size:
    return np.zeros(size, dtype)
  # as_strided trusts its arguments: check the last element lies inside the storage first.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise ValueError(f"tensor on {storage.member} reaches element {last} of a storage of {flat.size}")
  view = np.lib.stride_tricks.as_strided(
    flat[offset:], shape=size, strides=[s * dtype.itemsize for s in stride], writeable=False
  )
  return np.array(view, dtype, order="C", copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  return _strided(storage, storage.dtype, int(storage_offset), size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
  return _strided(storage, np.dtype(dtype), int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  return data


class _StateDict(dict):
  """OrderedDict stand-in; drops the `_metadata` attribute torch attaches to state dicts."""

  def __setstate__(self, state):
    pass


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
  """Protocol-2 pickles write `bytes` as _codecs.encode(str, 'latin1')."""
  return text.encode(encoding)


def _device(kind: str, index: int | None = None) -> str:
  """torch.device('cuda', 0) -> 'cuda:0'."""
  return kind if index is None else f"{kind}:{index}"


_ALLOWED = {
  ("collections", "OrderedDict"): _StateDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("torch", "Size"): tuple,
  ("torch", "device"): _device,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "bytearray"): bytearray,
  ("builtins", "complex"): complex,
  ("_codecs", "encode"): _codecs_encode,
  # A storage class resolves to its element dtype (immutable, so a pickle cannot alter it).
  **{("torch", name): np.dtype(dtype) for name, dtype in _STORAGE_DTYPES.items()},
  ("torch.storage", "UntypedStorage"): np.dtype(np.uint8),
  **{("torch", name): np.dtype(dtype) for name, dtype in _TORCH_DTYPES.items()},
}


# Protocol-2 pickles (torch.save's) name the builtins module by its Python 2 name; pickle's own
# find_class maps it back, which this unpickler's find_class replaces. Only the module name is mapped:
# what may be loaded is still exactly `_ALLOWED`.
_PYTHON2_MODULES = {"__builtin__": "builtins"}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles torch's data.pkl, resolving only `_ALLOWED` globals and storage persistent ids."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, big_endian: bool, path: str):
    super().__init__(io.BytesIO(data))
    self.archive, self.root, self.big_endian, self.path = archive, root, big_endian, path
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    module = _PYTHON2_MODULES.get(module, module)
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
        f"{self.path}: refusing to load global {module}.{name}; only tensors, storages, dtypes and "
        "plain containers are read (re-save the state dict alone, or as safetensors)"
      ) from None

  def persistent_load(self, pid):
    # torch.save writes ('storage', storage_type, key, location, numel) for each storage.
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], np.dtype)):
      raise ValueError(f"unsupported persistent id {pid!r}")
    _, dtype, key, _, numel = pid
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _Storage(self.archive, f"{self.root}data/{key}", dtype, int(numel), self.big_endian)
    return self.storages[key]


def _plain(tree: Any) -> Any:
  """OrderedDict stand-ins -> dicts, recursively (lists and tuples keep their type)."""
  if isinstance(tree, dict):
    return {key: _plain(value) for key, value in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_plain(value) for value in tree)
  return tree


def _load_torch_zip(path: str) -> dict:
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      bare_pickle = f.read(1) == b"\x80"  # torch.save before the zip format
    if bare_pickle:
      raise ValueError(
        f"{path}: legacy (pre-1.6) torch serialization is not read; re-save it with "
        "torch.save(torch.load(path), path) in torch >= 1.6 (zip format) or as safetensors"
      )
    raise ValueError(f"{path}: not a torch zip checkpoint")
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one <root>/data.pkl in the zip, found {pickles or 'none'}")
    root = pickles[0][: -len("data.pkl")]
    big_endian = False
    if f"{root}byteorder" in archive.namelist():  # absent in files from torch < 2.1: little-endian
      big_endian = archive.read(f"{root}byteorder").decode().strip() == "big"
    try:
      tree = _RestrictedUnpickler(archive.read(pickles[0]), archive, root, big_endian, path).load()
    except UnsafeCheckpointError:
      raise
    except (
      pickle.UnpicklingError,
      ValueError,
      TypeError,
      AttributeError,
      EOFError,
      IndexError,
      KeyError,
      zipfile.BadZipFile,
    ) as e:
      raise ValueError(f"{path}: cannot read the checkpoint ({e})") from e
  tree = _plain(tree)
  if not isinstance(tree, dict):
    raise ValueError(f"{path}: holds a {type(tree).__name__}, not a dict of tensors")
  return tree


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise ValueError(f"{path}: too short for a safetensors file")
  (header_len,) = struct.unpack("<Q", data[:8])
  if header_len > len(data) - 8:
    raise ValueError(f"{path}: safetensors header of {header_len} bytes runs past the end of the file")
  try:
    header = json.loads(data[8 : 8 + header_len])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable safetensors header ({e})") from e
  body = memoryview(data)[8 + header_len :]
  tensors = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
      shape = tuple(int(n) for n in entry["shape"])
      begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: bad safetensors entry {name!r}: {entry!r}") from e
    if not 0 <= begin <= end <= len(body) or end - begin != int(np.prod(shape)) * dtype.itemsize:
      raise ValueError(
        f"{path}: tensor {name!r} ({entry['dtype']} {list(shape)}) has data_offsets "
        f"{[begin, end]} that do not fit its size or the file"
      )
    tensors[name] = np.frombuffer(body[begin:end], dtype).reshape(shape).copy()
  return tensors


def load(path: str | os.PathLike) -> dict:
  """A checkpoint file -> its tree with tensors as numpy arrays.

  `.safetensors` gives a flat {name: array}; torch zip files (`.bin`, `.pt`, `.pth`, `.ckpt`)
  give the saved tree with dicts for (Ordered)dicts, e.g. {"ema_model_state_dict": {...}, "step": 7}.
  Raises ValueError naming the path for a missing, unreadable or unknown file, and
  UnsafeCheckpointError for a pickle that asks for anything but tensors and plain containers.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such checkpoint file")
  suffix = os.path.splitext(path)[1].lower()
  try:
    if suffix == SAFETENSORS_SUFFIX:
      return _load_safetensors(path)
    if suffix in TORCH_SUFFIXES:
      return _load_torch_zip(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: cannot read ({e})") from e
  raise ValueError(
    f"{path}: unknown checkpoint type {suffix!r}; expected {SAFETENSORS_SUFFIX} or one of {', '.join(TORCH_SUFFIXES)}"
  )


def save_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """{name: array} -> a .safetensors file at `path` (an epath.Path or local name): the header
  padded with spaces to a multiple of 8 bytes, tensors in name order, little-endian."""
  names = {np.dtype(dtype): name for name, dtype in _SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  for name in sorted(tensors):
    array = np.asarray(tensors[name])
    if array.dtype not in names:
      raise ValueError(f"{name}: no safetensors dtype for {array.dtype}")
    data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    header[name] = {
      "dtype": names[array.dtype],
      "shape": list(array.shape),
      "data_offsets": [offset, offset + len(data)],
    }
    chunks.append(data)
    offset += len(data)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  epath.Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dicts / lists of arrays -> {"a.b.0.c": array}; non-array leaves (e.g. "step") are dropped."""
  if isinstance(tree, np.ndarray):
    return {prefix: tree}
  items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
  flat = {}
  for key, value in items:
    flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat
