"""An image-folder tree (ImageNet as it is usually unpacked), read image by image.

::

  DIR/train/<class>/*.jpg     training images (the holdout-validation split is carved from them)
  DIR/val/<class>/*.jpg       the test split (``val/``, else ``validation/`` or ``test/``)

Classes are the sub-folders of ``train/`` sorted by name (label ``i`` is the ``i``-th); a class
folder of the test split must be one of them (it may lack some).  Image files are those ending in
one of :data:`IMAGE_EXTENSIONS` (any case); other files and hidden ones are ignored.  Images may
have any size and mode (greyscale and palette images become RGB).

Nothing is decoded when the tree is listed: :class:`FolderSource` holds the file names (one
bytes blob and offsets, so it pickles cheaply to the input pipeline's workers) and decodes an
image when it is read -- ``raw(i)`` as stored (what the Inception random-resized crop of
``config.input.augment='inception'`` starts from), ``get(indices)`` centre-cropped to a square
and resized to ``image_size`` (evaluation, and training with ``'pad_crop'``).  A file that cannot
be decoded is a :class:`~regnas_jax.errors.DataError` naming it, when it is read.

What a run on a folder needs (``--config.data.name=folder --config.data.path=DIR``):
``config.space.num_classes`` equal to the number of class folders; ``config.data.image_size``
the side of the evaluation images (0: the space's largest resolution); ``config.data.val_size``
below the number of training images (0 means 5,000).  The default training augmentation
(``config.input.augment='pad_crop'``) pads and crops those centre squares on the device, which
suits small images; for ImageNet-sized ones set ``--config.input.augment=inception`` (random-
resized crops of the stored image at each step's resolution) and ``--config.input.workers=N``
(decoding in N processes), as the ImageNet configs' ``train`` variants do.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from regnas_jax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
TEST_DIRS = ("val", "validation", "test")
WHERE = "config.data.path"
LAYOUT = ("an image folder needs DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (classes "
          "sorted by folder name)")


def _is_image(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(path: str) -> list[str]:
  with os.scandir(path) as it:   # (scandir: no stat per entry, for ImageNet's 1.3 M files)
    return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def _images_in(path: str) -> list[str]:
  with os.scandir(path) as it:
    return sorted(e.name for e in it if _is_image(e.name) and e.is_file())


def list_split(split_dir: str, classes: list[str] | None) -> tuple[list[str], list[str], list]:
  """``(classes, files, labels)`` of one split folder: ``files`` relative to ``split_dir``.

  ``classes`` None: this split defines them (its sub-folders, sorted); else every sub-folder
  must be one of them.  Empty folders and a split of loose images are DataErrors.
  """
  found = _subdirs(split_dir)
  if not found:
    loose = len(_images_in(split_dir))
    extra = (f"; its {loose} images are not sorted into class folders" if loose else "")
    raise DataError(f"{WHERE}: {split_dir} has no class folders{extra} ({LAYOUT})")
  if classes is None:
    classes = found
  unknown = [c for c in found if c not in classes]
  if unknown:
    raise DataError(f"{WHERE}: {os.path.join(split_dir, unknown[0])} is not a class of the "
                    f"training split ({len(classes)} classes in train/)")
  index = {c: i for i, c in enumerate(classes)}
  files, labels = [], []
  for c in found:
    names = _images_in(os.path.join(split_dir, c))
    if not names:
      raise DataError(f"{WHERE}: {os.path.join(split_dir, c)} holds no images "
                      f"({', '.join(IMAGE_EXTENSIONS)})")
    files += [f"{c}/{n}" for n in names]
    labels += [index[c]] * len(names)
  return classes, files, labels


def find_test_dir(root: str) -> str:
  for d in TEST_DIRS:
    if os.path.isdir(os.path.join(root, d)):
      return os.path.join(root, d)
  raise DataError(f"{WHERE}: {root} has no {'/, '.join(TEST_DIRS)}/ folder ({LAYOUT})")


def _pack(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
  enc = [n.encode("utf-8", "surrogateescape") for n in names]
  blob = np.frombuffer(b"".join(enc), np.uint8) if enc else np.zeros(0, np.uint8)
  return blob, np.concatenate([[0], np.cumsum([len(e) for e in enc])]).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSource:
  """One split of an image folder, decoded on read (module docstring).

  ``names``/``offsets``: file ``i`` is ``root/names[offsets[i]:offsets[i+1]]`` (UTF-8);
  ``labels`` ``(N,)`` int32; ``image_size``: the side of ``get``'s images.
  """
  root: str
  names: np.ndarray
  offsets: np.ndarray
  labels: np.ndarray
  image_size: int

  @classmethod
  def from_files(cls, root: str, files: list[str], labels, image_size: int) -> "FolderSource":
    blob, off = _pack(files)
    return cls(root, blob, off, np.asarray(labels, np.int32), int(image_size))

  def __len__(self) -> int:
    return len(self.labels)

  def path(self, index: int) -> str:
    i = int(index)
    rel = self.names[self.offsets[i]:self.offsets[i + 1]].tobytes()
    return os.path.join(self.root, rel.decode("utf-8", "surrogateescape"))

  def raw(self, index):
    """The stored image ``(H, W, 3)`` uint8 RGB and its label."""
    from regnas_jax import data as data_lib   # (the package this module is part of)

    path = self.path(index)
    try:
      with open(path, "rb") as f:
        blob = np.frombuffer(f.read(), np.uint8)
    except OSError as e:
      raise DataError(f"{WHERE}: cannot read {path} ({e.strerror})") from None
    return data_lib.decode_image(blob, f"{WHERE}: {path}"), int(self.labels[int(index)])

  def get(self, indices):
    """``(images (B, S, S, 3) uint8, labels (B,) int32)``: centre squares resized to ``S``."""
    from regnas_jax import data as data_lib

    idx = np.asarray(indices).reshape(-1)
    imgs = [data_lib.centre_square(self.raw(i)[0], self.image_size) for i in idx]
    if not imgs:
      return np.zeros((0, self.image_size, self.image_size, 3), np.uint8), np.zeros(0, np.int32)
    return np.stack(imgs), self.labels[idx]


def scan(root: str, image_size: int) -> tuple[FolderSource, FolderSource, list[str]]:
  """``(train, test, classes)`` of the image folder ``root`` (listed, nothing decoded)."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"{WHERE}: no such folder: {root} ({LAYOUT})")
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise DataError(f"{WHERE}: {root} has no train/ folder ({LAYOUT})")
  te_dir = find_test_dir(root)
  try:
    classes, tr_files, tr_labels = list_split(train_dir, None)
    _, te_files, te_labels = list_split(te_dir, classes)
  except OSError as e:
    raise DataError(f"{WHERE}: cannot list {e.filename or root} ({e.strerror})") from None
  return (FolderSource.from_files(train_dir, tr_files, tr_labels, image_size),
          FolderSource.from_files(te_dir, te_files, te_labels, image_size), classes)
