"""PyTorch checkpoints (``torch.save`` files) read into numpy arrays, without importing torch.

Two file formats are read:

* the zip format ``torch.save`` writes since PyTorch 1.6: an archive ``<name>/data.pkl`` (the
  pickled object; tensors refer to their storages by *persistent ids*), ``<name>/data/<key>``
  (the raw bytes of each storage) and ``<name>/byteorder``;
* the legacy format (``_use_new_zipfile_serialization=False`` and PyTorch < 1.6): five pickles
  in a row -- a magic number, a protocol version, system information, the object, the list of
  storage keys -- followed by the storages, each an int64 element count and its raw bytes.

Pickles are read by a **restricted unpickler**: the only globals it resolves are
``collections.OrderedDict``, the storage types (``torch.FloatStorage``, ...) and torch's tensor
rebuilding functions (``torch._utils._rebuild_tensor_v2`` and friends), all replaced by our own
numpy code.  Any other global (``os.system``, ``builtins.exec``, a module class of a whole
pickled model, ...) stops the load with a :class:`~regnas_jax.errors.DataError` naming it, before
anything is called.  Tensors come back as numpy arrays of their dtype (float32, float16,
bfloat16 via ``ml_dtypes``, float64, the integer types, bool), honouring storage offsets and
strides (a tensor that is a view of a larger storage).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np

from regnas_jax.errors import DataError

# torch's storage classes as pickled (``torch.FloatStorage`` ...) -> numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C   # torch/serialization.py MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


class _StorageType:
  """What a pickled ``torch.<X>Storage`` global stands for: just its dtype."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
  """A flat typed storage whose bytes are read on demand (``view`` of another, for legacy
  files' storage views)."""

  def __init__(self, dtype, numel: int, read: Callable[[], bytes] | None, where: str,
               base: "_Storage | None" = None, offset: int = 0):
    self.dtype, self.numel, self._read, self.where = dtype, numel, read, where
    self.base, self.offset = base, offset
    self._array = None

  def array(self) -> np.ndarray:
    """The storage as a 1-D array of ``numel`` elements."""
    if self._array is None:
      if self.base is not None:
        flat = self.base.array()
        if self.offset + self.numel > flat.size:
          raise DataError(f"{self.where}: a storage view runs past its storage")
        self._array = flat[self.offset:self.offset + self.numel]
      else:
        data = self._read()
        need = self.numel * self.dtype.itemsize
        if len(data) < need:
          raise DataError(f"{self.where}: storage holds {len(data)} bytes, expected {need} "
                          f"(truncated file?)")
        self._array = np.frombuffer(data, self.dtype, self.numel)
    return self._array


class _Tensor:
  """A tensor as pickled: storage + offset + size + stride; made an array by :meth:`array`."""

  def __init__(self, storage, offset, size, stride, where: str):
    ok = (isinstance(storage, _Storage) and _is_int(offset) and offset >= 0
          and _int_tuple(size) and _int_tuple(stride) and len(size) == len(stride))
    if not ok:
      raise DataError(f"{where}: malformed tensor record (storage {type(storage).__name__}, "
                      f"offset {offset!r}, size {size!r}, stride {stride!r})")
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    self.where = where

  def array(self) -> np.ndarray:
    dt = self.storage.dtype
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, dt)
    if any(s < 0 for s in self.size + self.stride):
      raise DataError(f"{self.where}: negative size or stride {self.size} / {self.stride}")
    last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
    flat = self.storage.array()
    if last >= flat.size:
      raise DataError(f"{self.where}: a tensor of size {self.size}, stride {self.stride} at "
                      f"offset {self.offset} runs past its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                           tuple(st * dt.itemsize for st in self.stride),
                                           writeable=False)
    return np.array(view, dt.newbyteorder("="), order="C")  # a copy, native byte order


class _Refused(DataError):
  """A pickle that asks for something other than tensor rebuilding."""


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x) -> bool:
  return isinstance(x, (tuple, list)) and all(_is_int(v) for v in x)


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only ordered dicts, storage types and tensor rebuilding; refuses anything else.

  ``storage(pid)`` turns a persistent id into a :class:`_Storage`; ``None`` refuses persistent
  ids (the legacy format's header pickles have none).
  """

  def __init__(self, file, where: str, storage: Callable | None):
    super().__init__(file)
    self.where, self._storage = where, storage

  def find_class(self, module: str, name: str):
    where = self.where
    # Protocol-2 pickles name Python 3 modules by their Python 2 names (__builtin__, ...).
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    if module == "torch" and name == "Size":  # a tensor size, pickled as torch.Size(tuple)
      return tuple
    if module == "torch._utils":
      rebuild = {
          # (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
          "_rebuild_tensor_v2": lambda s, o, size, st, *_: _Tensor(s, o, size, st, where),
          "_rebuild_tensor": lambda s, o, size, st: _Tensor(s, o, size, st, where),
          # nn.Parameter(data, requires_grad, backward_hooks[, state]): its data
          "_rebuild_parameter": lambda data, *_: data,
          "_rebuild_parameter_with_state": lambda data, *_: data,
      }
      if name in rebuild:
        return rebuild[name]
    raise _Refused(f"{where}: refused to unpickle {module}.{name} (only tensors and ordered "
                    f"dicts are rebuilt; a pickle calling anything else is not loaded)")

  def persistent_load(self, pid):
    if self._storage is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
      raise _Refused(f"{self.where}: refused persistent id {kind!r} (only tensor storages are "
                      f"rebuilt)")
    return self._storage(pid[1:])


def _unpickle(data, where: str, storage: Callable | None):
  """Unpickle ``data`` (bytes or a binary file) with the restricted unpickler."""
  f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
  try:
    return _RestrictedUnpickler(f, where, storage).load()
  except DataError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
          AttributeError, struct.error, RecursionError, MemoryError) as e:
    raise DataError(f"{where}: damaged or truncated pickle ({type(e).__name__}: "
                    f"{_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  return lines[0][:200] if lines else type(e).__name__


def _storage_type(t, where: str) -> np.dtype:
  if not isinstance(t, _StorageType):
    raise DataError(f"{where}: storage of unsupported type {t!r}")
  return t.dtype


def _load_zip(path: str, zf: zipfile.ZipFile) -> Any:
  names = zf.namelist()
  pkls = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
  if len(pkls) != 1:
    raise DataError(f"{path}: a zip file but not a torch.save checkpoint (no single data.pkl)")
  prefix = pkls[0][:-len("data.pkl")]
  order = "little"
  if prefix + "byteorder" in names:
    order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if order not in ("little", "big"):
      raise DataError(f"{path}: unknown byte order {order!r}")

  def storage(pid):
    if len(pid) != 4:
      raise DataError(f"{path}: malformed storage record {pid!r}")
    stype, key, _location, numel = pid
    if not isinstance(key, str) or not _is_int(numel) or numel < 0:
      raise DataError(f"{path}: malformed storage record {pid!r}")
    dt = _storage_type(stype, path).newbyteorder("<" if order == "little" else ">")
    rec = f"{prefix}data/{key}"
    if rec not in names:
      raise DataError(f"{path}: storage {key!r} is missing from the archive (truncated file?)")
    def read():  # no more than the storage needs, whatever the record claims to inflate to
      with zf.open(rec) as f:
        return f.read(numel * dt.itemsize)

    return _Storage(dt, numel, read, f"{path} ({rec})")

  obj = _unpickle(zf.read(pkls[0]), path, storage)
  return _resolve(obj)


def _load_legacy(path: str, f) -> Any:
  not_torch = (f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy "
               f"format's magic number)")
  try:
    magic = _unpickle(f, path, None)
  except _Refused:
    raise
  except DataError:
    raise DataError(not_torch) from None
  if not _is_int(magic) or magic != LEGACY_MAGIC:
    raise DataError(not_torch)
  proto = _unpickle(f, path, None)
  if proto != LEGACY_PROTOCOL:
    raise DataError(f"{path}: legacy PyTorch format of unknown protocol {proto!r}")
  info = _unpickle(f, path, None)
  little = not isinstance(info, Mapping) or info.get("little_endian", True)
  roots: dict[str, _Storage] = {}
  views: dict[str, _Storage] = {}
  pending: dict[str, bytes] = {}

  def storage(pid):
    if len(pid) != 5:
      raise DataError(f"{path}: malformed storage record {pid!r}")
    stype, key, _location, numel, view = pid
    if not isinstance(key, str) or not _is_int(numel) or numel < 0:
      raise DataError(f"{path}: malformed storage record {pid!r}")
    dt = _storage_type(stype, path).newbyteorder("<" if little else ">")
    if key not in roots:
      roots[key] = _Storage(dt, numel, lambda k=key: pending.get(k, b""), f"{path} (storage {key})")
    root = roots[key]
    if view is None:
      return root
    if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2])):
      raise DataError(f"{path}: malformed storage view {view!r}")
    vkey, off, size = view
    if vkey not in views:
      views[vkey] = _Storage(dt, size, None, f"{path} (view {vkey})", base=root, offset=off)
    return views[vkey]

  obj = _unpickle(f, path, storage)
  keys = _unpickle(f, path, None)
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
    raise DataError(f"{path}: malformed list of storage keys")
  for key in keys:
    if key not in roots:
      raise DataError(f"{path}: storage {key!r} is listed but never used")
    head = f.read(8)
    if len(head) < 8:
      raise DataError(f"{path}: truncated: storage {key!r} is missing")
    n = int.from_bytes(head, "little" if little else "big", signed=True)
    nbytes = n * roots[key].dtype.itemsize
    data = f.read(nbytes)
    if n < 0 or len(data) < nbytes:
      raise DataError(f"{path}: truncated: storage {key!r} has {len(data)} of {nbytes} bytes")
    pending[key] = data
  return _resolve(obj)


def _resolve(obj):
  """Replace every pickled tensor in a tree of dicts/lists/tuples by its numpy array."""
  if isinstance(obj, _Tensor):
    return obj.array()
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _resolve(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_resolve(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_resolve(v) for v in obj)
  if isinstance(obj, _Storage):
    raise DataError(f"{obj.where}: a bare storage, not a tensor")
  return obj


def load(path: str) -> Any:
  """The object a ``torch.save`` file holds, tensors as numpy arrays.

  Raises :class:`DataError` (one line naming the file) for a missing, truncated or damaged
  file, for anything that is not a PyTorch checkpoint and for a pickle that would call any
  global other than tensor rebuilding (the message names it).
  """
  path = os.fspath(path)
  try:
    f = open(path, "rb")
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror})") from None
  with f:
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"PK"):
      try:
        with zipfile.ZipFile(f) as zf:
          return _load_zip(path, zf)
      except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise DataError(f"{path}: damaged or truncated zip archive ({_first_line(e)})") from None
    if not head:
      raise DataError(f"{path}: empty file")
    return _load_legacy(path, f)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The state dict of a checkpoint: the object itself, or its ``"state_dict"`` entry (OFA
  saves ``{"state_dict": ...}``), as ``{name: array}``; ``num_batches_tracked`` buffers
  (counters BN never reads in eval mode) are left out."""
  path = os.fspath(path)
  obj = load(path)
  sd = obj
  if isinstance(obj, Mapping) and "state_dict" in obj:
    sd = obj["state_dict"]
  if not isinstance(sd, Mapping) or not any(isinstance(v, np.ndarray) for v in sd.values()):
    keys = (f" (top-level keys: {', '.join(repr(k) for k in list(obj)[:5])})"
            if isinstance(obj, Mapping) else f" (it holds a {type(obj).__name__})")
    raise DataError(f"{path}: holds no state dict (a mapping of names to tensors){keys}")
  bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise DataError(f"{path}: state dict entry {bad[0]!r} is not a tensor")
  return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
