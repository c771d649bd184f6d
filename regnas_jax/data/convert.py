"""Write a packed ``.npz`` (the format of :mod:`regnas_jax.data`) from any supported source.

  python -m regnas_jax.data.convert cifar-10-python.tar.gz cifar10.npz
  python -m regnas_jax.data.convert cifar-100-binary.tar.gz cifar100.npz
  python -m regnas_jax.data.convert /data/flowers flowers.npz --image_size 64   # an image folder

The source is told by its content: a CIFAR-10 or CIFAR-100 archive as distributed (binary or
python version) or the folder it unpacks to, or an image folder (``DIR/train/<class>/*``,
``DIR/val/<class>/*``).  Pixels (CIFAR) are encoded as PNG, lossless, so loading the file gives
back exactly the arrays read from the source (``--format jpeg --quality Q`` for smaller files);
an image folder's files are packed as they are (their own bytes), or, with ``--image_size S``,
centre-cropped, resized to ``S`` and encoded.  ``class_names`` are written where the source has
them.  The whole dataset is built in memory: this is for datasets of CIFAR's size, not ImageNet
(read that as ``--config.data.name=folder``).

The output is written to a temporary file beside it and renamed into place, so a failed
conversion leaves an existing output untouched.  Bad input is one ``error:`` line and exit
status 2.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

from regnas_jax import data as data_lib  # (the package this module is part of)
from regnas_jax.errors import DataError, RegnasError, one_line

FORMATS = ("png", "jpeg")


def encode(image: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
  """One ``(H, W, 3)`` uint8 image as PNG or JPEG bytes."""
  from PIL import Image

  buf = io.BytesIO()
  opts = {"quality": int(quality)} if image_format == "jpeg" else {}
  Image.fromarray(np.ascontiguousarray(image)).save(buf, image_format.upper(), **opts)
  return buf.getvalue()


def _pack(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """``(bytes (total,) uint8, offsets (N + 1,) int64)`` of encoded images."""
  off = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
  return np.frombuffer(b"".join(blobs), np.uint8).copy(), off


def write_packed(out: str, train: tuple, test: tuple, class_names=()) -> None:
  """Write ``out`` from ``train``/``test`` = ``(list of encoded images, labels)`` atomically
  (a temporary file renamed into place)."""
  arrays = {}
  for split, (blobs, labels) in (("train", train), ("test", test)):
    arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = _pack(blobs)
    labels = np.asarray(labels)
    arrays[f"{split}_labels"] = labels.astype(np.uint8 if labels.max(initial=0) < 256
                                              else np.int32)
  if class_names:
    arrays["class_names"] = np.asarray([str(c) for c in class_names])
  tmp = f"{out}.tmp-{os.getpid()}.npz"
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
  except OSError as e:
    raise DataError(f"output: cannot write {out} ({e.strerror})") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _from_cifar(src: str, fmt: str, quality: int) -> tuple:
  from regnas_jax.data import cifar

  a = cifar.read_cifar(src)
  return ((([encode(x, fmt, quality) for x in a.train_images], a.train_labels),
           ([encode(x, fmt, quality) for x in a.test_images], a.test_labels)), a.class_names)


def _from_folder(src: str, fmt: str, quality: int, image_size: int | None) -> tuple:
  """Every image of the folder, checked by decoding it: its own bytes, or (``image_size``) its
  centre square at that size encoded as ``fmt``."""
  from regnas_jax.data import folder

  train, test, classes = folder.scan(src, image_size or 1)
  splits = []
  for s in (train, test):
    blobs, shapes = [], set()
    for i in range(len(s)):
      img = s.raw(i)[0]   # decodes: an unreadable file is a DataError naming it
      if image_size:
        blobs.append(encode(data_lib.centre_square(img, image_size), fmt, quality))
      else:
        shapes.add(img.shape)
        with open(s.path(i), "rb") as f:
          blobs.append(f.read())
    if len(shapes) > 1:
      raise DataError(f"source: {s.root}: images of different sizes ({sorted(shapes)[:2]}, "
                      f"...): give --image_size to pack them at one size")
    splits.append((blobs, s.labels))
  return tuple(splits), tuple(classes)


def convert(src: str, out: str, image_format: str = "png", quality: int = 95,
            image_size: int | None = None) -> dict:
  """Convert ``src`` (module docstring) into the packed file ``out``; returns a summary
  ``{'source', 'train', 'test', 'classes'}``."""
  from regnas_jax.data import cifar

  if image_format not in FORMATS:
    raise DataError(f"--format: {image_format!r} is not one of {FORMATS}")
  if os.path.isdir(src) and os.path.isdir(os.path.join(src, "train")):
    kind = "image folder"
    (train, test), names = _from_folder(src, image_format, quality, image_size)
  elif os.path.isdir(src) or (os.path.isfile(src) and cifar.is_tar(src)):
    kind = "CIFAR"
    (train, test), names = _from_cifar(src, image_format, quality)
  elif os.path.isfile(src) and data_lib.is_npz(src):
    raise DataError(f"source: {src} is already a packed .npz file")
  elif os.path.exists(src):
    raise DataError(f"source: {src} is neither a CIFAR archive (.tar.gz as distributed) or its "
                    f"folder, nor an image folder (DIR/train/<class>/*, DIR/val/<class>/*)")
  else:
    raise DataError(f"source: no such file or folder: {src}")
  write_packed(out, train, test, names)
  return {"source": kind, "train": len(train[1]), "test": len(test[1]),
          "classes": len(names) or int(max(np.max(train[1]), np.max(test[1]))) + 1}


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m regnas_jax.data.convert",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("source", help="a CIFAR-10/100 archive or its folder, or an image folder")
  p.add_argument("output", help="the packed .npz file to write")
  p.add_argument("--format", default="png", help=f"encoding of pixels: {' or '.join(FORMATS)}")
  p.add_argument("--quality", type=int, default=95, help="JPEG quality (--format jpeg)")
  p.add_argument("--image_size", type=int, default=None,
                 help="image folder: centre-crop and resize every image to this side")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(argv)
  try:
    s = convert(args.source, args.output, args.format, args.quality, args.image_size)
  except RegnasError as e:
    print(f"error: {one_line(e).replace('config.data.path: ', 'source: ', 1)}", file=sys.stderr)
    return 2
  print(f"wrote {args.output}: {s['source']}, {s['train']} train / {s['test']} test images, "
        f"{s['classes']} classes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
