"""CIFAR-10 and CIFAR-100 as their authors distribute them, read into uint8 arrays.

Four layouts, each as the ``.tar.gz`` archive or as the folder it unpacks to (the folder itself
or the one sub-folder the archive creates, e.g. ``cifar-10-batches-bin/``):

==================  ============================================  =============================
archive             members read                                  record
==================  ============================================  =============================
cifar-10-binary     ``data_batch_1.bin`` .. ``_5.bin``,            1 label byte + 3,072 pixels
                    ``test_batch.bin`` (``batches.meta.txt``)
cifar-100-binary    ``train.bin``, ``test.bin``                    2 label bytes (coarse, fine)
                    (``fine_label_names.txt``)                     + 3,072 pixels
cifar-10-python     ``data_batch_1`` .. ``_5``, ``test_batch``     a pickled dict: ``b'data'``
                    (``batches.meta``)                             (N, 3072) uint8, ``b'labels'``
cifar-100-python    ``train``, ``test`` (``meta``)                 ``b'data'``, ``b'fine_labels'``
==================  ============================================  =============================

The 3,072 pixel bytes of an image are its red, green and blue planes, each 32 x 32 row-major;
they become ``(32, 32, 3)`` arrays.  CIFAR-100 is read with its **fine** labels (100 classes);
the coarse ones (20 superclasses) are checked and dropped.  Class names (the ``meta`` files) are
optional.

The python pickles are read by a **restricted unpickler** (never ``pickle.load``): the only
globals it resolves are the ones a CIFAR batch holds -- numpy's array and dtype reconstruction
(``_reconstruct``, and ``_frombuffer`` of protocol 5; no object dtypes), ``_codecs.encode`` (how
Python 3 pickles bytes at protocol 2) and plain builtin containers and numbers.  Any other global (``os.system``, ``builtins.eval``, a class) is
refused with a :class:`~regnas_jax.errors.DataError` naming it, before anything is called.

Archives are read in one streaming pass (nothing is extracted to disk).  Every fault -- a
missing member, a truncated record file or archive, a pickle that is not a CIFAR batch, labels
out of range -- is one :class:`DataError` line naming the file and ``config.data.path``.
"""

from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
import tarfile
from typing import NamedTuple

import numpy as np

from regnas_jax.errors import DataError

PIXELS = 32 * 32 * 3
WHERE = "config.data.path"


class Layout(NamedTuple):
  """What one distribution of CIFAR holds: member names and how a record reads."""
  name: str                 # 'cifar10' | 'cifar100'
  kind: str                 # 'binary' | 'python'
  train: tuple              # member names of the training batches
  test: tuple
  meta: str                 # optional member with the class names
  num_classes: int


LAYOUTS = (
    Layout("cifar10", "binary", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
           ("test_batch.bin",), "batches.meta.txt", 10),
    Layout("cifar100", "binary", ("train.bin",), ("test.bin",), "fine_label_names.txt", 100),
    Layout("cifar10", "python", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
           "batches.meta", 10),
    Layout("cifar100", "python", ("train",), ("test",), "meta", 100),
)
_MEMBERS = {m for lay in LAYOUTS for m in lay.train + lay.test + (lay.meta,)}


class CifarArrays(NamedTuple):
  train_images: np.ndarray   # (N, 32, 32, 3) uint8
  train_labels: np.ndarray   # (N,) int32
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple         # () when the distribution's meta file is absent
  name: str                  # 'cifar10' | 'cifar100'


# ----------------------------------------------------------------------------------------------
# The restricted unpickler
# ----------------------------------------------------------------------------------------------
def _numpy_reducer(protocol: int):
  """numpy's array reconstruction function at pickle ``protocol`` (``_reconstruct``; protocol 5:
  ``_frombuffer``), found without importing a deprecated module."""
  return np.zeros(1).__reduce_ex__(protocol)[0]


def _dtype(*args):
  d = np.dtype(*[a.decode("latin1") if isinstance(a, bytes) else a for a in args])
  if d.hasobject:
    raise pickle.UnpicklingError("an array of Python objects")
  return d


def _encode(text, encoding="latin1"):
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError("_codecs.encode with arguments other than (str, 'latin1')")
  return codecs.encode(text, encoding)


_BUILTINS = {n: getattr(builtins, n) for n in ("dict", "list", "tuple", "set", "frozenset",
                                              "bytes", "bytearray", "str", "int", "float",
                                              "bool")}
SAFE_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _numpy_reducer(2)
       for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numpy_reducer(5) for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    **{(mod, n): f for mod in ("builtins", "__builtin__") for n, f in _BUILTINS.items()},
}


class _Refused(DataError):
  """A pickle that asks for a global outside :data:`SAFE_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
  """A pickle reader that resolves only :data:`SAFE_GLOBALS` (module docstring)."""

  def __init__(self, file, where: str):
    super().__init__(file, encoding="bytes")
    self.where = where

  def find_class(self, module: str, name: str):
    f = SAFE_GLOBALS.get((module, name))
    if f is None:
      raise _Refused(f"{self.where}: the pickle asks for {module}.{name}, which a CIFAR batch "
                     f"never holds: refused (only dicts, lists, strings, numbers and numpy "
                     f"arrays are read)")
    return f

  def persistent_load(self, pid):
    raise pickle.UnpicklingError("a persistent id")


def safe_unpickle(data: bytes, where: str):
  """The object pickled in ``data``, read by :class:`RestrictedUnpickler`; any fault (a refused
  global, a truncated or malformed pickle) is one :class:`DataError` naming ``where``."""
  try:
    return RestrictedUnpickler(io.BytesIO(data), where).load()
  except _Refused:
    raise
  except Exception as e:  # noqa: BLE001 - pickle raises many types for damaged data
    msg = str(e).splitlines()[0] if str(e) else ""
    raise DataError(f"{where}: not a readable pickle ({type(e).__name__}: {msg})") from None


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------
def _planes_to_images(pixels: np.ndarray) -> np.ndarray:
  """``(N, 3072)`` uint8 (R, G, B planes of 32 x 32) -> ``(N, 32, 32, 3)``."""
  return np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_labels(labels: np.ndarray, n: int, where: str, what: str = "labels") -> None:
  if len(labels) and (labels.min() < 0 or labels.max() >= n):
    raise DataError(f"{where}: {what} must be class indices 0..{n - 1}, found "
                    f"{int(labels.min())}..{int(labels.max())}")


def read_binary(data: bytes, layout: Layout, where: str) -> tuple[np.ndarray, np.ndarray]:
  """``(images (N, 32, 32, 3) uint8, labels (N,) int32)`` of one binary batch file."""
  head = 1 if layout.num_classes == 10 else 2
  rec = head + PIXELS
  if not data or len(data) % rec:
    raise DataError(f"{where}: {len(data)} bytes are not a whole number of {rec}-byte records "
                    f"({head} label byte{'s' if head > 1 else ''} + {PIXELS} pixels; truncated?)")
  recs = np.frombuffer(data, np.uint8).reshape(-1, rec)
  if head == 2:
    _check_labels(recs[:, 0], 20, where, "coarse labels")
  labels = recs[:, head - 1].astype(np.int32)
  _check_labels(labels, layout.num_classes, where)
  return _planes_to_images(recs[:, head:]), labels


def _field(d: dict, key: str):
  """``d[key]`` for a pickle read with bytes keys (Python 2) or str keys (Python 3)."""
  for k in (key.encode(), key):
    if k in d:
      return d[k]
  return None


def read_python(data: bytes, layout: Layout, where: str) -> tuple[np.ndarray, np.ndarray]:
  """``(images, labels)`` of one pickled batch: a dict with ``b'data'`` ``(N, 3072)`` uint8 and
  ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100), lists of ints."""
  obj = safe_unpickle(data, where)
  key = "labels" if layout.num_classes == 10 else "fine_labels"
  want = f"a dict with b'data' ((N, 3072) uint8) and b'{key}' (N ints)"
  if not isinstance(obj, dict):
    raise DataError(f"{where}: not a CIFAR batch: the pickle holds a {type(obj).__name__}, "
                    f"expected {want}")
  pixels, labels = _field(obj, "data"), _field(obj, key)
  if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 2
          and pixels.shape[1] == PIXELS):
    got = (f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray)
           else type(pixels).__name__)
    raise DataError(f"{where}: not a CIFAR batch: b'data' is {got}, expected {want}")
  try:
    labels = np.asarray(labels, np.int64)
  except (TypeError, ValueError, OverflowError):
    labels = None
  if labels is None or labels.shape != (len(pixels),):
    raise DataError(f"{where}: not a CIFAR batch: b'{key}' is not {len(pixels)} integers "
                    f"(expected {want})")
  _check_labels(labels, layout.num_classes, where)
  return _planes_to_images(pixels), labels.astype(np.int32)


def _class_names(data: bytes | None, layout: Layout, where: str) -> tuple:
  """Class names from the distribution's meta file (``()`` when absent or unreadable)."""
  if data is None:
    return ()
  if layout.kind == "binary":
    names = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
  else:
    try:
      obj = safe_unpickle(data, where)
    except _Refused:
      raise
    except DataError:
      return ()
    key = "label_names" if layout.num_classes == 10 else "fine_label_names"
    raw = _field(obj, key) if isinstance(obj, dict) else None
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
             for n in (raw if isinstance(raw, list) else [])]
  return tuple(names) if len(names) == layout.num_classes else ()


# ----------------------------------------------------------------------------------------------
# Archives and folders
# ----------------------------------------------------------------------------------------------
def _read_tar(path: str) -> dict:
  """``{basename: bytes}`` of the members of the tar archive ``path`` that CIFAR layouts name
  (one streaming pass; nothing is written to disk)."""
  out = {}
  try:
    with tarfile.open(path, "r|*") as tar:
      for m in tar:
        base = os.path.basename(m.name)
        if m.isfile() and base in _MEMBERS and base not in out:
          out[base] = tar.extractfile(m).read()
  except (tarfile.TarError, EOFError, OSError, ValueError) as e:
    raise DataError(f"{WHERE}: {path}: not a readable tar archive ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'truncated?'})") from None
  return out


def _folder_files(path: str) -> dict:
  """``{basename: full path}`` of the CIFAR member files in ``path`` or its sub-folders (one
  level: the folder an archive unpacks to)."""
  out = {}
  dirs = [path] + sorted(os.path.join(path, d) for d in os.listdir(path)
                         if os.path.isdir(os.path.join(path, d)))
  for d in dirs:
    for f in sorted(os.listdir(d)):
      full = os.path.join(d, f)
      if f in _MEMBERS and f not in out and os.path.isfile(full):
        out[f] = full
  return out


def _pick_layout(found: set, name: str | None, path: str) -> Layout:
  """The layout whose training and test members are all in ``found`` (``name`` restricts it to
  'cifar10' or 'cifar100'); else a DataError saying what is missing."""
  cands = [lay for lay in LAYOUTS if name in (None, lay.name)]
  for lay in cands:
    if set(lay.train + lay.test) <= found:
      return lay
  other = [lay for lay in LAYOUTS if set(lay.train + lay.test) <= found]
  hint = (f"; it holds {other[0].name} ({other[0].kind}): use --config.data.name={other[0].name}"
          if other else "")
  near = max(cands, key=lambda lay: len(found & set(lay.train + lay.test)))
  missing = [m for m in near.train + near.test if m not in found]
  what = name or "CIFAR-10 or CIFAR-100"
  raise DataError(f"{WHERE}: {path} holds no complete {what} batches (missing "
                  f"{', '.join(missing)}{hint}); give the archive as distributed "
                  f"(e.g. cifar-10-binary.tar.gz or cifar-10-python.tar.gz) or its folder")


def is_tar(path: str) -> bool:
  try:
    return tarfile.is_tarfile(path)
  except OSError:
    return False


def read_cifar(path: str, name: str | None = None) -> CifarArrays:
  """CIFAR-10 or CIFAR-100 (``name``; None: whichever ``path`` holds) from a distributed archive
  or its folder, as uint8 arrays (module docstring)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    files = _folder_files(path)
    lay = _pick_layout(set(files), name, path)

    def read(m):
      with open(files[m], "rb") as f:
        return f.read()
    blobs = {m: read(m) for m in lay.train + lay.test + (lay.meta,) if m in files}
  elif os.path.isfile(path):
    blobs = _read_tar(path)
    lay = _pick_layout(set(blobs), name, path)
  else:
    raise DataError(f"{WHERE}: no such file or folder: {path}")
  reader = read_binary if lay.kind == "binary" else read_python
  parts = {s: [reader(blobs[m], lay, f"{WHERE}: {path}: {m}") for m in members]
           for s, members in (("train", lay.train), ("test", lay.test))}
  tr_x, tr_y, te_x, te_y = (np.concatenate([p[i] for p in parts[s]])
                            for s in ("train", "test") for i in (0, 1))
  names = _class_names(blobs.get(lay.meta), lay, f"{WHERE}: {path}: {lay.meta}")
  return CifarArrays(tr_x, tr_y, te_x, te_y, names, lay.name)
