"""Datasets: one interface, many sources, and the on-device batch pipeline.

Every source gives a :class:`Dataset`: ``train`` / ``val`` / ``test`` splits of uint8 RGB images
plus labels, the number of classes, the normalisation constants and (where the source has them)
the class names.  ``val`` is a holdout carved from the training data by :func:`holdout_split`
(``val_size`` examples, a fixed seed; the search only ever looks at it); ``test`` is for
reporting.  Sources (``config.data.name``; ``jobs/build.py`` maps the config onto them):

* ``digits`` -- :func:`load_digits`: the offline default, scikit-learn's 1,797 real 8x8
  handwritten digits (they ship inside scikit-learn), upscaled; digits has its own fixed split.
* ``cifar10`` / ``cifar100`` -- :func:`load_cifar`: the archives as distributed
  (``cifar-10-binary.tar.gz``, ``cifar-10-python.tar.gz``, ``cifar-100-binary.tar.gz``,
  ``cifar-100-python.tar.gz``) or the folders they unpack to, read by :mod:`.cifar` (python
  pickles through a restricted unpickler; CIFAR-100 with its fine labels), or a packed ``.npz``
  (below); which one is told by the file's content.
* ``folder`` -- :func:`load_folder`: ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg``
  (ImageNet as usually unpacked), classes sorted by folder name, decoded image by image
  (:mod:`.folder`); ``python -m regnas_jax.data.synthetic DIR`` writes a small generated one
  (:mod:`.synthetic`: the ImageNet configs' smoke variants read it).
* ``npz`` -- :func:`load_packed_npz`: a packed ``.npz`` of any dataset.
* ``tfds`` -- :func:`load_tfds`: a dataset prepared with TensorFlow Datasets, read through
  ``tfds.data_source`` (array_record; TensorFlow itself is not needed), never downloaded unless
  asked (``download=True``).  Images are read lazily.
* from Python -- :func:`from_arrays` (``(x, y)`` arrays) and :func:`from_sources` (random-access
  sources, e.g. grain or tfds data sources); ``jobs.run(cfg, workdir, dataset=...)`` runs on one.

**The packed ``.npz`` format** (``python -m regnas_jax.data.convert`` writes it from any source
above; ``np.load(path, allow_pickle=False)`` reads it):

=======================  ========  ========  ===============================================
array                    dtype     shape     meaning
=======================  ========  ========  ===============================================
``train_jpeg``           uint8     (bytes,)  every encoded image of the split, concatenated
``train_offsets``        integer   (N + 1,)  image ``i`` is ``jpeg[offsets[i]:offsets[i+1]]``
``train_labels``         integer   (N,)      class index ``0 .. num_classes - 1``
``test_jpeg`` ...        ...       ...       the same for the test split
``class_names``          str       (C,)      optional: the name of each class
=======================  ========  ========  ===============================================

Each image is a whole encoded file in any format PIL reads (JPEG in the CIFAR-10 copy this
project uses; the converter writes PNG, lossless, unless told otherwise), all of one size per
split.  It is decoded once and cached as uint8 arrays, or (``decode='on_demand'``) kept as bytes
and decoded per read by :class:`PackedJpegSource`, so decoding runs in the input pipeline's
workers (``data/pipeline.py``).

A split is a *source*: ``len(split)`` and ``split.get(indices) -> (images, labels)`` with images
``(B, S, S, 3)`` uint8 and labels ``(B,)`` int32; ``split.raw(i) -> (image (H, W, 3) uint8,
label)`` is one example as stored (any size: what a random-resized crop starts from).
:class:`ArraySource` holds arrays in memory; :class:`PackedJpegSource`, :class:`RecordSource`
and :class:`.folder.FolderSource` decode on demand.  ``preprocess`` (random crop + flip, resize
to the step's resolution, normalise) runs on the device and is deterministic given its key;
``eval_batches`` streams a split as fixed-size normalised batches, so scoring never holds a whole
split as float32.  Every fault of a file or a setting is one :class:`DataError` line naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np


from regnas_jax.errors import DataError  # (also reachable as data.DataError)


class Source(Protocol):
  def __len__(self) -> int: ...
  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
  def raw(self, index: int) -> tuple[np.ndarray, int]: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A split held in memory: ``images`` ``(N, S, S, 3)`` uint8, ``labels`` ``(N,)`` int32."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices):
    indices = np.asarray(indices)
    return self.images[indices], self.labels[indices]

  def raw(self, index):
    return self.images[int(index)], int(self.labels[int(index)])


@dataclasses.dataclass(frozen=True)
class SubsetSource:
  """The examples ``indices`` of another source (e.g. the holdout carved from train)."""
  base: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def get(self, indices):
    return self.base.get(self.indices[np.asarray(indices)])

  def raw(self, index):
    return self.base.raw(self.indices[int(index)])


class Dataset(NamedTuple):
  name: str
  train: Any          # Source
  val: Any            # Source: holdout carved from the training data
  test: Any           # Source
  num_classes: int
  image_size: int     # side of the stored images
  mean: tuple         # per-channel mean of pixel/255 (normalisation)
  std: tuple
  class_names: tuple = ()   # the name of each class, where the source has them


def split_indices(n: int, fractions: tuple[float, float], seed: int):
  """Deterministic disjoint index sets (train, val, test) covering ``range(n)``."""
  perm = np.random.default_rng(seed).permutation(n)
  n_val, n_test = int(round(n * fractions[0])), int(round(n * fractions[1]))
  return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


def holdout_split(n: int, val_size: int, seed: int):
  """(train, val) indices: ``val_size`` examples carved from ``range(n)`` by a fixed seed."""
  if not 0 < val_size < n:
    raise DataError(f"config.data.val_size: must be between 1 and {n - 1} (training examples), "
                    f"got {val_size}")
  perm = np.random.default_rng(seed).permutation(n)
  return np.sort(perm[val_size:]), np.sort(perm[:val_size])


# ----------------------------------------------------------------------------------------------
# A Dataset from splits: the holdout carved alike for every source; the user's own data
# ----------------------------------------------------------------------------------------------
def _with_holdout(name: str, train, test, num_classes: int, image_size: int, mean, std,
                  val_size: int, seed: int, class_names=()) -> Dataset:
  """The :class:`Dataset` whose ``val`` is ``val_size`` examples of ``train`` carved by
  :func:`holdout_split` (arrays stay arrays; other sources become :class:`SubsetSource`)."""
  tr, va = holdout_split(len(train), int(val_size), seed)
  if isinstance(train, ArraySource):
    parts = [ArraySource(train.images[i], train.labels[i]) for i in (tr, va)]
  else:
    parts = [SubsetSource(train, i) for i in (tr, va)]
  return Dataset(name, *parts, test, num_classes=int(num_classes), image_size=int(image_size),
                 mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                 class_names=tuple(class_names))


def default_val_size(n: int) -> int:
  """The holdout of the Python entry points when none is given: 10% of ``n``, at most 5,000."""
  return min(5000, max(1, n // 10))


def pixel_stats(src, max_images: int = 2048) -> tuple[tuple, tuple]:
  """Per-channel mean and std of pixel/255 over up to ``max_images`` evenly spaced images of
  ``src`` (as ``get`` gives them)."""
  idx = np.unique(np.linspace(0, len(src) - 1, min(len(src), max_images)).astype(int))
  x = src.get(idx)[0].reshape(-1, 3).astype(np.float64) / 255.0
  return tuple(x.mean(0)), tuple(np.maximum(x.std(0), 1e-3))


def _check_arrays(split, arg: str):
  """``(images (N, S, S, 3) uint8, labels (N,) int32)`` of a user's ``(x, y)`` pair."""
  try:
    x, y = split
  except (TypeError, ValueError):
    raise DataError(f"from_arrays: {arg} must be an (images, labels) pair") from None
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim == 4 and x.shape[-1] == 1:
    x = np.repeat(x, 3, -1)
  if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or not len(x):
    raise DataError(f"from_arrays: {arg} images must be (N, S, S, 3) (or (N, S, S) grey), "
                    f"N > 0, got {x.shape}")
  if x.dtype != np.uint8:
    raise DataError(f"from_arrays: {arg} images must be uint8 pixels 0..255, got {x.dtype} "
                    f"(e.g. (x * 255).round().astype(np.uint8))")
  if y.shape != (len(x),) or y.dtype.kind not in "iu":
    raise DataError(f"from_arrays: {arg} labels must be {len(x)} integers, got {y.dtype} "
                    f"{y.shape}")
  return np.ascontiguousarray(x), y.astype(np.int32)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"{where}: labels must be class indices 0..{num_classes - 1}, found "
                    f"{int(labels.min())}..{int(labels.max())}")


def from_arrays(train, test, num_classes: int | None = None, *, val_size: int | None = None,
                seed: int = 0, name: str = "arrays", mean=None, std=None,
                class_names=()) -> Dataset:
  """A :class:`Dataset` of the user's own arrays: ``train`` and ``test`` are ``(images,
  labels)`` pairs, images ``(N, S, S, 3)`` (or ``(N, S, S)`` grey) uint8, labels ``(N,)`` class
  indices.

  ``val_size`` training examples (default :func:`default_val_size`) form the holdout, carved by
  ``seed`` as for every other source; ``num_classes`` defaults to the largest label + 1,
  ``mean``/``std`` (per channel, pixel/255) to the training images'.  Run a job on it with
  ``regnas_jax.jobs.run(cfg, workdir, dataset=...)``.
  """
  tr_x, tr_y = _check_arrays(train, "train")
  te_x, te_y = _check_arrays(test, "test")
  if te_x.shape[1] != tr_x.shape[1]:
    raise DataError(f"from_arrays: test images are {te_x.shape[1]} px, train images "
                    f"{tr_x.shape[1]} px: give both at one size")
  if num_classes is None:
    num_classes = int(max(tr_y.max(), te_y.max())) + 1
  for arg, y in (("train", tr_y), ("test", te_y)):
    _check_labels(y, num_classes, f"from_arrays: {arg}")
  train_src = ArraySource(tr_x, tr_y)
  if mean is None or std is None:
    mean, std = pixel_stats(train_src)
  return _with_holdout(name, train_src, ArraySource(te_x, te_y), num_classes=num_classes,
                       image_size=tr_x.shape[1], mean=mean, std=std,
                       val_size=default_val_size(len(tr_y)) if val_size is None else val_size,
                       seed=seed, class_names=class_names)


def _as_source(src, arg: str, image_size, image_key: str, label_key: str):
  """Our source protocol (``get``/``raw``) as it is; a random-access sequence of records as a
  :class:`RecordSource`."""
  if hasattr(src, "get") and hasattr(src, "raw") and hasattr(src, "__len__"):
    return src
  if not (hasattr(src, "__len__") and hasattr(src, "__getitem__")):
    raise DataError(f"from_sources: {arg} must support len() and [i] (a grain or tfds data "
                    f"source, a list of records), got {type(src).__name__}")
  return RecordSource(src, image_size or 0, image_key, label_key)


def from_sources(train, test, num_classes: int, *, image_size: int | None = None,
                 val_size: int | None = None, seed: int = 0, name: str = "sources", mean=None,
                 std=None, class_names=(), image_key: str = "image",
                 label_key: str = "label") -> Dataset:
  """A :class:`Dataset` of the user's random-access sources, read on demand (nothing is loaded
  here but one example of each split and the statistics' sample).

  ``train``/``test``: sequences whose ``[i]`` is a record -- a dict with ``image_key`` (an
  ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)`` uint8 image of any size) and ``label_key``, or an
  ``(image, label)`` pair: a ``grain`` or ``tfds`` data source, a list -- or sources of this
  module (``get``/``raw``).  Images are centre-cropped and resized to ``image_size`` (default:
  the side of the first training image, which must then be square); ``val_size`` (default
  :func:`default_val_size`) training examples form the holdout; ``mean``/``std`` default to a
  sample of the training images'.  The user's sources must pickle to run in the input
  pipeline's worker processes (``config.input.workers``).
  """
  srcs = [_as_source(s, a, image_size, image_key, label_key)
          for s, a in ((train, "train"), (test, "test"))]
  for src, arg in zip(srcs, ("train", "test")):
    if not len(src):
      raise DataError(f"from_sources: {arg} is empty")
    try:
      img, label = src.raw(0)
    except (KeyError, TypeError, ValueError, IndexError) as e:
      raise DataError(f"from_sources: {arg}[0] is not a record with {image_key!r} and "
                      f"{label_key!r} nor an (image, label) pair ({type(e).__name__}: "
                      f"{e})") from None
    if img.ndim != 3 or img.shape[-1] != 3 or not 0 <= label < num_classes:
      raise DataError(f"from_sources: {arg}[0]: an image {img.shape} and label {label}; "
                      f"expected an (H, W, 3) image and a label in 0..{num_classes - 1}")
  if image_size is None:
    h, w = srcs[0].raw(0)[0].shape[:2]
    if h != w:
      raise DataError(f"from_sources: the first training image is {h} x {w}: give image_size")
    image_size = h
    srcs = [dataclasses.replace(s, image_size=h) if isinstance(s, RecordSource) else s
            for s in srcs]
  if mean is None or std is None:
    mean, std = pixel_stats(srcs[0])
  return _with_holdout(name, srcs[0], srcs[1], num_classes=num_classes, image_size=image_size,
                       mean=mean, std=std,
                       val_size=default_val_size(len(srcs[0])) if val_size is None else val_size,
                       seed=seed, class_names=class_names)


def fingerprint(dataset: Dataset) -> str:
  """A short hash identifying ``dataset``'s data: its sizes, constants and images -- all of them for
  splits held in memory, 64 evenly spaced examples of a split read on demand (a run's identity
  records it in place of ``config.data`` when a job runs on a Dataset given from Python)."""
  h = hashlib.sha1(repr((dataset.name, dataset.num_classes, dataset.image_size, dataset.mean,
                         dataset.std)).encode())
  for src in (dataset.train, dataset.val, dataset.test):
    h.update(str(len(src)).encode())
    if isinstance(src, ArraySource):
      x, y = src.images, src.labels
    else:
      x, y = src.get(np.unique(np.linspace(0, len(src) - 1, min(len(src), 64)).astype(int)))
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.asarray(y, np.int64).tobytes())
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Offline default: scikit-learn digits
# ----------------------------------------------------------------------------------------------
def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Resize ``(N, H, W)`` images to ``(N, size, size)`` (align-corners=False bilinear)."""
  n, h, w = images.shape

  def axis(src, dst):
    pos = (np.arange(dst) + 0.5) * src / dst - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, src - 1)
    hi = np.clip(lo + 1, 0, src - 1)
    return lo, hi, np.clip(pos - lo, 0.0, 1.0)

  (y0, y1, fy), (x0, x1, fx) = axis(h, size), axis(w, size)
  rows = images[:, y0] * (1 - fy)[None, :, None] + images[:, y1] * fy[None, :, None]
  return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]


def load_digits(image_size: int = 32, seed: int = 0, val_fraction: float = 0.15,
                test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's digits as RGB uint8 images of side ``image_size`` with a fixed split."""
  from sklearn.datasets import load_digits as _load  # ships its data, works offline

  if image_size < 8:
    raise DataError(f"image_size: digits are 8x8, got {image_size}")
  d = _load()
  imgs = resize_bilinear(d.images.astype(np.float64) / 16.0, image_size)
  imgs = np.round(np.clip(imgs, 0, 1) * 255).astype(np.uint8)
  imgs = np.repeat(imgs[..., None], 3, axis=-1)
  labels = d.target.astype(np.int32)
  tr, va, te = split_indices(len(labels), (val_fraction, test_fraction), seed)
  mk = lambda idx: ArraySource(imgs[idx], labels[idx])
  return Dataset("digits", mk(tr), mk(va), mk(te), num_classes=10, image_size=image_size,
                 mean=(0.3,) * 3, std=(0.38,) * 3)


# ----------------------------------------------------------------------------------------------
# Images: decoding and centre crops (PIL, imported lazily)
# ----------------------------------------------------------------------------------------------
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_image(blob: np.ndarray, where: str) -> np.ndarray:
  """One encoded image file (a 1-D uint8 array) as ``(H, W, 3)`` uint8 RGB; PIL's faults are one
  DataError ``'<where> cannot be decoded (...)'``."""
  from PIL import Image

  try:
    with Image.open(io.BytesIO(blob.tobytes())) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  except Exception as e:  # noqa: BLE001 - PIL raises several types for bad data
    raise DataError(f"{where} cannot be decoded ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop resized to ``size`` (PIL bilinear); greyscale becomes RGB."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, -1)
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  from PIL import Image

  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  im = Image.fromarray(np.ascontiguousarray(image[y:y + s, x:x + s]))
  return np.asarray(im.resize((size, size), Image.BILINEAR), np.uint8)


def _stack(images: list, where: str) -> np.ndarray:
  shapes = {a.shape for a in images}
  if len(shapes) > 1:
    raise DataError(f"{where}: images of different shapes in one split: {sorted(shapes)[:3]} "
                    f"(convert with --image_size to make them one size)")
  return np.stack(images)


# ----------------------------------------------------------------------------------------------
# The packed .npz file (module docstring)
# ----------------------------------------------------------------------------------------------
_NPZ_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets",
             "test_labels")


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, where: str) -> np.ndarray:
  return _stack([decode_image(blob[offsets[i]:offsets[i + 1]], f"{where}: image {i}")
                 for i in range(len(offsets) - 1)], where)


def _file_key(path: str) -> str:
  st = os.stat(path)
  return hashlib.sha1(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _read_npz(path: str, keys, what: str, optional=(), require=None) -> dict:
  """The arrays ``keys`` (and those of ``optional`` present) of an ``.npz`` file (no pickles),
  which must hold every array of ``require`` (default ``keys``); any damage is one DataError."""
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in (keys if require is None else require) if k not in z.files]
      if missing:
        raise DataError(f"{what}: {path} lacks array {missing[0]!r} of the packed JPEG format "
                        f"(has {', '.join(z.files)})")
      return {k: z[k] for k in tuple(keys) + tuple(k for k in optional if k in z.files)}
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001 - bad zip, CRC error, object arrays, truncation, ...
    raise DataError(f"{what}: {path} is not a readable .npz file ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _check_split(arrays: dict, split: str, path: str, num_classes: int) -> None:
  """Offsets inside the blob and ascending, one more than labels; labels in range."""
  off, lab, blob = arrays[f"{split}_offsets"], arrays[f"{split}_labels"], arrays[f"{split}_jpeg"]
  where = f"config.data.path: {path}: {split}"
  if off.ndim != 1 or lab.ndim != 1 or blob.ndim != 1:
    raise DataError(f"{where}: offsets, labels and jpeg bytes must be 1-D arrays")
  if len(off) != len(lab) + 1:
    raise DataError(f"{where}_offsets has {len(off)} entries, expected {len(lab) + 1} "
                    f"({split}_labels + 1)")
  if off.dtype.kind not in "iu" or lab.dtype.kind not in "iu":
    raise DataError(f"{where}: offsets and labels must be integers, got {off.dtype} / {lab.dtype}")
  if len(off) and (off[0] < 0 or off[-1] > len(blob) or np.any(np.diff(off) <= 0)):
    raise DataError(f"{where}_offsets must ascend strictly inside the {len(blob)} jpeg bytes")
  if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
    raise DataError(f"{where}_labels must be class indices 0..{num_classes - 1}, found "
                    f"{int(lab.min())}..{int(lab.max())}")


def packed_classes(path: str) -> tuple[int, tuple]:
  """``(num_classes, class_names)`` of a packed file: ``len(class_names)`` where the file has
  them, else the largest label + 1."""
  z = _read_npz(path, ("train_labels", "test_labels"), "config.data.path", ("class_names",),
                _NPZ_KEYS)
  names = tuple(str(n) for n in z.get("class_names", np.zeros(0, str)).reshape(-1))
  if names:
    return len(names), names
  labs = [z[k] for k in ("train_labels", "test_labels") if z[k].size]
  if any(lab.dtype.kind not in "iu" for lab in labs):
    raise DataError(f"config.data.path: {path}: labels must be integers")
  return (int(max(lab.max() for lab in labs)) + 1 if labs else 0), ()


def decode_packed_jpeg(path: str, cache_dir: str | None = None, num_classes: int = 10):
  """``(train_images, train_labels, test_images, test_labels)`` uint8/int32 from a packed file.

  Decoding happens once per file version: the arrays are kept in memory (keyed by path, size
  and modification time) and, with ``cache_dir``, also written there as ``.npz`` for later
  processes.  Every fault of the file or the cache is one :class:`DataError` line.
  """
  if not os.path.isfile(path):
    raise DataError(f"config.data.path: no such file: {path}")
  return _decode_packed(path, cache_dir, num_classes, _file_key(path))


@functools.lru_cache(maxsize=2)
def _decode_packed(path: str, cache_dir: str | None, num_classes: int, version: str):
  cached = None
  if cache_dir:
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
      raise DataError(f"config.data.cache_dir: {cache_dir} exists and is not a directory")
    cached = os.path.join(cache_dir, f"decoded-{os.path.basename(path)}-{version}.npz")
    if os.path.isfile(cached):
      keys = ("train_images", "train_labels", "test_images", "test_labels")
      try:
        z = _read_npz(cached, keys, "config.data.cache_dir")
      except DataError as e:
        raise DataError(f"{e}; a damaged decode cache: remove it to decode again") from None
      return tuple(z[k] for k in keys)
  arrays = _read_npz(path, _NPZ_KEYS, "config.data.path")
  out = []
  for split in ("train", "test"):
    _check_split(arrays, split, path, num_classes)
    out += [_decode_jpegs(arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"],
                          f"config.data.path: {path}: {split}"),
            arrays[f"{split}_labels"].astype(np.int32)]
  if cached:
    try:
      os.makedirs(cache_dir, exist_ok=True)
      tmp = cached + ".tmp.npz"
      np.savez(tmp, train_images=out[0], train_labels=out[1], test_images=out[2],
               test_labels=out[3])
      os.replace(tmp, cached)
    except OSError as e:
      raise DataError(f"config.data.cache_dir: cannot write {cached} ({e.strerror})") from None
  return tuple(out)


decode_packed_jpeg.cache_clear = _decode_packed.cache_clear
_PACKED: dict = {}   # (path, split, version) -> (jpeg bytes, offsets, labels), once per process


@dataclasses.dataclass(frozen=True)
class PackedJpegSource:
  """One split (``'train'`` / ``'test'``) of a packed file, decoded image by image on read.

  It holds only the path and the split's name, so it pickles cheaply to the input pipeline's
  worker processes; each process reads the split's compressed bytes (about 25 MB per CIFAR-10
  split) once, on first use.  The pixels are exactly those of :func:`decode_packed_jpeg`.
  """
  path: str
  split: str
  num_classes: int = 10
  version: str = ""     # the file's size and time (load_packed_npz): a rewritten file is re-read

  def _arrays(self):
    key = (self.path, self.split, self.version)
    if key not in _PACKED:
      names = [f"{self.split}_{k}" for k in ("jpeg", "offsets", "labels")]
      arrays = _read_npz(self.path, names, "config.data.path")
      _check_split(arrays, self.split, self.path, self.num_classes)
      _PACKED[key] = (arrays[names[0]], arrays[names[1]], arrays[names[2]].astype(np.int32))
    return _PACKED[key]

  def __len__(self) -> int:
    return len(self._arrays()[2])

  def raw(self, index):
    blob, off, labels = self._arrays()
    i = int(index)
    return (decode_image(blob[off[i]:off[i + 1]],
                         f"config.data.path: {self.path}: {self.split}: image {i}"),
            int(labels[i]))

  def get(self, indices):
    pairs = [self.raw(i) for i in np.asarray(indices).reshape(-1)]
    return (_stack([p[0] for p in pairs], f"config.data.path: {self.path}: {self.split}"),
            np.asarray([p[1] for p in pairs], np.int32))


DECODES = ("once", "on_demand")


def _check_decode(decode: str) -> None:
  if decode not in DECODES:
    raise DataError(f"config.input.decode: {decode!r} is not one of {DECODES}")


def load_packed_npz(path: str, name: str = "npz", num_classes: int | None = None,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, val_size: int = 5000, seed: int = 0,
                    cache_dir: str | None = None, decode: str = "once") -> Dataset:
  """A packed ``.npz`` file (module docstring) at ``path``; ``val_size`` holdout images carved
  from train.  ``num_classes`` None: ``len(class_names)``, else the largest label + 1.

  ``decode='once'`` decodes the whole file into uint8 arrays (cached, see
  :func:`decode_packed_jpeg`); ``'on_demand'`` keeps the encoded bytes and decodes per read (the
  same pixels; what the grain pipeline's workers parallelise).
  """
  _check_decode(decode)
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"config.data.path: no such file: {path}")
  n_cls, names = packed_classes(path)
  if num_classes is not None and names and n_cls != num_classes:
    raise DataError(f"config.data.path: {path} names {n_cls} classes (class_names), "
                    f"{name} has {num_classes}")
  num_classes = n_cls if num_classes is None else num_classes
  if decode == "on_demand":
    full, test = (PackedJpegSource(path, s, num_classes, _file_key(path))
                  for s in ("train", "test"))
    return _with_holdout(name, full, test, num_classes=num_classes,
                         image_size=full.raw(0)[0].shape[0], mean=mean, std=std,
                         val_size=val_size, seed=seed, class_names=names)
  tr_x, tr_y, te_x, te_y = decode_packed_jpeg(path, cache_dir, num_classes)
  return _with_holdout(name, ArraySource(tr_x, tr_y), ArraySource(te_x, te_y),
                       num_classes=num_classes, image_size=tr_x.shape[1], mean=mean, std=std,
                       val_size=val_size, seed=seed, class_names=names)


def load_cifar10_npz(path: str, val_size: int = 5000, seed: int = 0,
                     cache_dir: str | None = None, decode: str = "once") -> Dataset:
  """CIFAR-10 from the packed file at ``path`` (:func:`load_packed_npz` with 10 classes)."""
  return load_packed_npz(path, "cifar10", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         val_size=val_size, seed=seed, cache_dir=cache_dir, decode=decode)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 as distributed, and image folders
# ----------------------------------------------------------------------------------------------
CIFAR = {"cifar10": (10, CIFAR10_MEAN, CIFAR10_STD), "cifar100": (100, CIFAR100_MEAN, CIFAR100_STD)}


def is_npz(path: str) -> bool:
  """Whether ``path`` is a zip file (what ``np.savez`` writes), by its first bytes."""
  try:
    with open(path, "rb") as f:
      return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
  except OSError:
    return False


def load_cifar(name: str, path: str, val_size: int = 5000, seed: int = 0,
               cache_dir: str | None = None, decode: str = "once") -> Dataset:
  """CIFAR-10 or CIFAR-100 (``name``) from ``path``: a packed ``.npz`` (told by its content), or
  an archive as distributed or its folder (:mod:`.cifar`; then ``cache_dir`` and ``decode`` do
  not apply: the pixels are stored raw).  ``val_size`` holdout images are carved from train."""
  from regnas_jax.data import cifar

  if name not in CIFAR:
    raise DataError(f"config.data.name: {name!r} is not one of {tuple(CIFAR)}")
  _check_decode(decode)
  num_classes, mean, std = CIFAR[name]
  path = os.fspath(path)
  if os.path.isfile(path) and is_npz(path):
    return load_packed_npz(path, name, num_classes=num_classes, mean=mean, std=std,
                           val_size=val_size, seed=seed, cache_dir=cache_dir, decode=decode)
  if os.path.isfile(path) and not cifar.is_tar(path):
    raise DataError(f"config.data.path: {path} is neither a packed .npz file nor a CIFAR "
                    f"archive (.tar.gz as distributed) nor its folder")
  a = cifar.read_cifar(path, name)
  return _with_holdout(name, ArraySource(a.train_images, a.train_labels),
                       ArraySource(a.test_images, a.test_labels), num_classes=num_classes,
                       image_size=32, mean=mean, std=std, val_size=val_size, seed=seed,
                       class_names=a.class_names)


def load_folder(path: str, image_size: int, val_size: int = 5000, seed: int = 0) -> Dataset:
  """An image folder (:mod:`.folder`: ``DIR/train/<class>/*``, ``DIR/val/<class>/*``), decoded
  on demand; ``get`` gives centre squares of side ``image_size``.  ``val_size`` holdout images
  are carved from ``train/``.  The first image of each split is decoded here, so a folder of
  unreadable files fails before a run starts; ImageNet's normalisation constants."""
  from regnas_jax.data import folder

  train, test, classes = folder.scan(path, image_size)
  train.raw(0), test.raw(0)
  return _with_holdout("folder", train, test, num_classes=len(classes),
                       image_size=int(image_size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       val_size=val_size, seed=seed, class_names=tuple(classes))


# ----------------------------------------------------------------------------------------------
# Random-access record sources: TensorFlow Datasets (imported lazily) and the user's own
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RecordSource:
  """A random-access sequence of records (``records[i]``: a dict with ``image_key`` and
  ``label_key``, or an ``(image, label)`` pair) read on demand; ``get`` gives images
  centre-cropped and resized to ``image_size``.  Wraps tfds and grain data sources."""
  records: Any
  image_size: int
  image_key: str = "image"
  label_key: str = "label"

  def __len__(self) -> int:
    return len(self.records)

  def _record(self, index):
    r = self.records[int(index)]
    if isinstance(r, dict):
      return np.asarray(r[self.image_key]), r[self.label_key]
    image, label = r
    return np.asarray(image), label

  def raw(self, index):
    """The stored image (any size, RGB) and its label, for host-side random-resized crops."""
    img, label = self._record(index)
    img = img.astype(np.uint8)[..., None] if img.ndim == 2 else img.astype(np.uint8)
    return (np.repeat(img, 3, -1) if img.shape[-1] == 1 else img), int(label)

  def get(self, indices):
    pairs = [self._record(i) for i in np.asarray(indices).reshape(-1)]
    imgs = [centre_square(np.asarray(img, np.uint8), self.image_size) for img, _ in pairs]
    return (np.stack(imgs) if imgs else np.zeros((0,) + (self.image_size,) * 2 + (3,), np.uint8),
            np.asarray([int(lab) for _, lab in pairs], np.int32))


def _tfds_not_prepared(name: str, data_dir: str | None) -> str:
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return (f"config.data.tfds_name: tfds dataset {name!r} is not prepared in {root} and "
          f"config.data.download is False: prepare it on a machine with TensorFlow "
          f"(tfds build {name} --data_dir {root} --file_format=array_record) and set "
          f"--config.data.tfds_dir, or pass --config.data.download=True")


def load_tfds(name: str, data_dir: str | None = None, image_size: int = 32, val_size: int = 5000,
              seed: int = 0, test_split: str | None = None, download: bool = False) -> Dataset:
  """A tfds dataset prepared by the user (``tfds build`` / ``download_and_prepare``, in the
  array_record file format), read through ``tfds.data_source``.

  ``download=False`` (the default) never downloads or prepares anything: an unprepared dataset
  is a DataError saying how to prepare it.  ``val_size`` training examples form the holdout;
  ``test_split`` defaults to ``'test'`` or, where there is none (ImageNet), ``'validation'``.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("data.name=tfds needs tensorflow-datasets: pip install -e '.[tfds]'") from None
  builder = None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    splits = builder.info.splits
    test_split = test_split or ("test" if "test" in splits else "validation")
    train_src, test_src = (tfds.data_source(name, split=s, data_dir=data_dir,
                                            download=bool(download))
                           for s in ("train", test_split))
    num_classes = builder.info.features["label"].num_classes
  except Exception as e:  # noqa: BLE001 - tfds raises many types for "not prepared"
    if builder is not None and not download and not builder.is_prepared():
      raise DataError(_tfds_not_prepared(name, data_dir)) from None
    raise DataError(f"config.data.tfds_name: cannot open tfds dataset {name!r} "
                    f"(data_dir={data_dir}): {str(e).splitlines()[0]}") from None
  mean, std = ((CIFAR10_MEAN, CIFAR10_STD) if name.startswith("cifar") else
               (IMAGENET_MEAN, IMAGENET_STD))
  return _with_holdout(name, RecordSource(train_src, image_size),
                       RecordSource(test_src, image_size), num_classes=num_classes,
                       image_size=image_size, mean=mean, std=std, val_size=val_size, seed=seed)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------
def epoch_batch_indices(n: int, batch_size: int, position: int, seed: int) -> np.ndarray:
  """Indices of the ``position``-th training batch (shuffled per epoch, last partial dropped).

  The order is a pure function of ``(seed, position)``, so a resumed run that restores the
  position reads exactly the batches an uninterrupted run would.
  """
  per_epoch = n // batch_size
  if per_epoch == 0:
    raise DataError(f"config.train.batch_size: {batch_size} exceeds the {n} training examples")
  epoch, b = divmod(position, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[b * batch_size:(b + 1) * batch_size]


@functools.partial(jax.jit, static_argnames=("resolution", "pad", "flip"))
def preprocess(images, mean, std, *, resolution: int, key=None, pad: int = 0, flip: bool = False):
  """uint8 ``(B, S, S, 3)`` -> float32 ``(B, R, R, 3)``: augment, resize, normalise.

  With ``key``: random crop after padding by ``pad`` black pixels and (if ``flip``) a random
  horizontal flip per image.  Resizing to ``resolution`` is bilinear; ``mean``/``std`` are in
  units of pixel/255.
  """
  x = images.astype(jnp.float32) / 255.0
  b, h, w, c = x.shape
  if key is not None and (pad or flip):
    k_crop, k_flip = jax.random.split(key)
    if pad:
      xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      off = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
      x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(xp, off)
    if flip:
      f = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
      x = jnp.where(f, x[:, :, ::-1], x)
  if (h, w) != (resolution, resolution):
    x = jax.image.resize(x, (b, resolution, resolution, c), "bilinear", antialias=True)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def eval_batches(src, resolution: int, mean, std, batch_size: int):
  """The split ``src`` streamed as ``(start, count, x, y)``: ``x`` normalised float32
  ``(batch_size, R, R, 3)`` on the device (the last batch padded with zero images, so one
  compiled program serves every batch), ``y`` the ``count`` int32 labels.

  Only one batch is decoded and preprocessed at a time, so host and device memory are bounded by
  the batch, not the split.  The pixels equal :func:`eval_images`' (same ``preprocess``, per
  image).
  """
  n = len(src)
  b = min(int(batch_size), n)
  for start in range(0, n, b):
    x, y = src.get(np.arange(start, min(start + b, n)))
    count = len(y)
    if count < b:
      x = np.concatenate([x, np.zeros((b - count,) + x.shape[1:], x.dtype)])
    yield start, count, preprocess(x, mean, std, resolution=resolution), y


def eval_images(src, resolution: int, mean, std, batch_size: int = 1024):
  """The whole split as normalised float32 ``(N, R, R, 3)`` plus labels (small splits only)."""
  imgs, labels = [], []
  for start in range(0, len(src), batch_size):
    x, y = src.get(np.arange(start, min(start + batch_size, len(src))))
    imgs.append(np.asarray(preprocess(x, mean, std, resolution=resolution)))
    labels.append(y)
  return np.concatenate(imgs), np.concatenate(labels)
