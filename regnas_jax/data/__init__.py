"""Datasets: one interface, three sources, and the on-device batch pipeline.

Every source gives a :class:`Dataset`: ``train`` / ``val`` / ``test`` splits of uint8 RGB images
plus labels, the number of classes and the normalisation constants.  ``val`` is a holdout carved
from the training data (the search only ever looks at it); ``test`` is for reporting.

* ``load_digits``: the offline default, scikit-learn's 1,797 real 8x8 handwritten digits
  (they ship inside scikit-learn), upscaled to a size the small-image stem takes.
* ``load_cifar10_npz``: CIFAR-10 from a local file in the packed JPEG format (``train_jpeg``,
  ``train_offsets``, ``train_labels``, ``test_*``), decoded once and cached as uint8 arrays, or
  (``decode='on_demand'``) kept as JPEG bytes and decoded per read by :class:`PackedJpegSource`,
  so decoding runs in the input pipeline's workers (``regnas_jax/pipeline.py``).
* ``load_tfds``: a dataset the user prepared with TensorFlow Datasets, read through
  ``tfds.data_source`` (array_record; TensorFlow itself is not needed).  tfds is imported only
  here.  Images are read lazily, so ImageNet-sized datasets need not fit in memory.

A split is a *source*: ``len(split)`` and ``split.get(indices) -> (images, labels)`` with images
``(B, S, S, 3)`` uint8 and labels ``(B,)`` int32; ``split.raw(i) -> (image (H, W, 3) uint8,
label)`` is one example as stored (any size: what a random-resized crop starts from).
:class:`ArraySource` holds arrays in memory; :class:`PackedJpegSource` and :class:`TfdsSource`
decode on demand.  ``preprocess`` (random crop + flip, resize to the step's resolution,
normalise) runs on the device and is deterministic given its key; ``eval_batches`` streams a split
as fixed-size normalised batches, so scoring never holds a whole split as float32.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
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
  return Dataset("digits", mk(tr), mk(va), mk(te), 10, image_size, (0.3,) * 3, (0.38,) * 3)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 from the packed JPEG file
# ----------------------------------------------------------------------------------------------
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_NPZ_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets",
             "test_labels")


def _decode_one(jpeg: np.ndarray, i: int, where: str) -> np.ndarray:
  """One JPEG (a 1-D uint8 array) as ``(H, W, 3)`` uint8 RGB; PIL's faults as one DataError."""
  import io

  from PIL import Image

  try:
    with Image.open(io.BytesIO(jpeg.tobytes())) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  except Exception as e:  # noqa: BLE001 - PIL raises several types for bad data
    raise DataError(f"{where}: image {i} cannot be decoded ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _stack(images: list, where: str) -> np.ndarray:
  shapes = {a.shape for a in images}
  if len(shapes) > 1:
    raise DataError(f"{where}: images of different shapes in one split: {sorted(shapes)[:3]}")
  return np.stack(images)


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, where: str) -> np.ndarray:
  return _stack([_decode_one(blob[offsets[i]:offsets[i + 1]], i, where)
                 for i in range(len(offsets) - 1)], where)


def _file_key(path: str) -> str:
  st = os.stat(path)
  return hashlib.sha1(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _read_npz(path: str, keys, what: str) -> dict:
  """The arrays ``keys`` of an ``.npz`` file (no pickles); any damage is one DataError line."""
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in keys if k not in z.files]
      if missing:
        raise DataError(f"{what}: {path} lacks array {missing[0]!r} of the packed JPEG format "
                        f"(has {', '.join(z.files)})")
      return {k: z[k] for k in keys}
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


@functools.lru_cache(maxsize=2)
def decode_packed_jpeg(path: str, cache_dir: str | None = None, num_classes: int = 10):
  """``(train_images, train_labels, test_images, test_labels)`` uint8/int32 from a packed file.

  Decoding happens once per file: the arrays are kept in memory and, with ``cache_dir``, also
  written there as ``.npz`` (keyed by path, size and modification time) for later processes.
  Every fault of the file or the cache is one :class:`DataError` line.
  """
  if not os.path.isfile(path):
    raise DataError(f"config.data.path: no such file: {path}")
  cached = None
  if cache_dir:
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
      raise DataError(f"config.data.cache_dir: {cache_dir} exists and is not a directory")
    cached = os.path.join(cache_dir, f"decoded-{os.path.basename(path)}-{_file_key(path)}.npz")
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


_PACKED: dict = {}   # (path, split) -> (jpeg bytes, offsets, labels), read once per process


@dataclasses.dataclass(frozen=True)
class PackedJpegSource:
  """One split (``'train'`` / ``'test'``) of a packed JPEG file, decoded image by image on read.

  It holds only the path and the split's name, so it pickles cheaply to the input pipeline's
  worker processes; each process reads the split's compressed bytes (about 25 MB per CIFAR-10
  split) once, on first use.  The pixels are exactly those of :func:`decode_packed_jpeg`.
  """
  path: str
  split: str
  num_classes: int = 10

  def _arrays(self):
    key = (self.path, self.split)
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
    return (_decode_one(blob[off[i]:off[i + 1]], i, f"config.data.path: {self.path}: {self.split}"),
            int(labels[i]))

  def get(self, indices):
    pairs = [self.raw(i) for i in np.asarray(indices).reshape(-1)]
    return (_stack([p[0] for p in pairs], f"config.data.path: {self.path}: {self.split}"),
            np.asarray([p[1] for p in pairs], np.int32))


DECODES = ("once", "on_demand")


def load_cifar10_npz(path: str, val_size: int = 5000, seed: int = 0,
                     cache_dir: str | None = None, decode: str = "once") -> Dataset:
  """CIFAR-10 from the packed JPEG file at ``path``; ``val_size`` holdout images from train.

  ``decode='once'`` decodes the whole file into uint8 arrays (cached, see
  :func:`decode_packed_jpeg`); ``'on_demand'`` keeps the JPEG bytes and decodes per read (the
  same pixels; what the grain pipeline's workers parallelise).
  """
  if decode not in DECODES:
    raise DataError(f"config.input.decode: {decode!r} is not one of {DECODES}")
  path = os.fspath(path)
  if decode == "on_demand":
    if not os.path.isfile(path):
      raise DataError(f"config.data.path: no such file: {path}")
    full, test = PackedJpegSource(path, "train"), PackedJpegSource(path, "test")
    tr, va = holdout_split(len(full), val_size, seed)
    return Dataset("cifar10", SubsetSource(full, tr), SubsetSource(full, va), test, 10,
                   full.raw(0)[0].shape[0], CIFAR10_MEAN, CIFAR10_STD)
  tr_x, tr_y, te_x, te_y = decode_packed_jpeg(path, cache_dir)
  tr, va = holdout_split(len(tr_y), val_size, seed)
  return Dataset("cifar10", ArraySource(tr_x[tr], tr_y[tr]), ArraySource(tr_x[va], tr_y[va]),
                 ArraySource(te_x, te_y), 10, tr_x.shape[1], CIFAR10_MEAN, CIFAR10_STD)


# ----------------------------------------------------------------------------------------------
# TensorFlow Datasets (array_record), imported lazily
# ----------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _centre_square(img: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop resized to ``size`` (PIL bilinear); greyscale becomes RGB."""
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, -1)
  h, w = img.shape[:2]
  if (h, w) == (size, size):
    return img
  from PIL import Image

  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  im = Image.fromarray(img[y:y + s, x:x + s])
  return np.asarray(im.resize((size, size), Image.BILINEAR), np.uint8)


@dataclasses.dataclass
class TfdsSource:
  """A tfds split read on demand; images centre-cropped and resized to ``image_size``."""
  records: Any
  image_size: int
  image_key: str = "image"
  label_key: str = "label"

  def __len__(self) -> int:
    return len(self.records)

  def raw(self, index):
    """The stored image (any size, RGB) and its label, for host-side random-resized crops."""
    r = self.records[int(index)]
    img = np.asarray(r[self.image_key], np.uint8)
    img = img[..., None] if img.ndim == 2 else img
    return (np.repeat(img, 3, -1) if img.shape[-1] == 1 else img), int(r[self.label_key])

  def get(self, indices):
    recs = [self.records[int(i)] for i in np.asarray(indices)]
    imgs = np.stack([_centre_square(np.asarray(r[self.image_key]), self.image_size) for r in recs])
    return imgs, np.asarray([r[self.label_key] for r in recs], np.int32)


def load_tfds(name: str, data_dir: str | None = None, image_size: int = 32, val_size: int = 5000,
              seed: int = 0, test_split: str | None = None) -> Dataset:
  """A tfds dataset prepared by the user (``tfds build`` / ``download_and_prepare``).

  ``val_size`` training examples form the holdout; ``test_split`` defaults to ``'test'`` or,
  where there is none (ImageNet), ``'validation'``.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("data.name=tfds needs tensorflow-datasets: pip install -e '.[tfds]'") from None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    splits = builder.info.splits
    test_split = test_split or ("test" if "test" in splits else "validation")
    train_src = tfds.data_source(name, split="train", data_dir=data_dir)
    test_src = tfds.data_source(name, split=test_split, data_dir=data_dir)
    num_classes = builder.info.features["label"].num_classes
  except Exception as e:  # noqa: BLE001 - tfds raises many types for "not prepared"
    raise DataError(f"config.data.tfds_name: cannot open tfds dataset {name!r} "
                    f"(data_dir={data_dir}): {str(e).splitlines()[0]}") from None
  tr, va = holdout_split(len(train_src), val_size, seed)
  full = TfdsSource(train_src, image_size)
  mean, std = ((CIFAR10_MEAN, CIFAR10_STD) if name.startswith("cifar") else
               (IMAGENET_MEAN, IMAGENET_STD))
  return Dataset(name, SubsetSource(full, tr), SubsetSource(full, va),
                 TfdsSource(test_src, image_size), num_classes, image_size, mean, std)


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
