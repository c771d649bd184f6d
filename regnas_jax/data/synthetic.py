"""Write a small generated image-folder tree: ImageNet's layout without ImageNet.

  python -m regnas_jax.data.synthetic /tmp/tiny_imagenet
  regnas-search --config imagenet_tunas:smoke --config.data.path=/tmp/tiny_imagenet

The ImageNet configs' ``:smoke`` variants read an image folder (``config.data.name='folder'``,
:mod:`.folder`), so that they run on a CPU without ImageNet; this command writes one::

  DIR/train/class00/0000.jpg ... DIR/train/class09/0007.jpg    (--per_class TRAIN images each)
  DIR/val/class00/0000.jpg ...                                  (--per_class VAL images each)
  DIR/synthetic.json                                            the settings it was written with

The defaults (10 classes, 8 + 4 images per class, 48x64 px) fit every smoke variant: 10
classes, 80 training images (its 16-image holdout carved from them) and 40 test images.  The
images are random but a function of ``(seed, split, class, index)`` alone, and class-dependent:
each class has its own colour and the orientation and frequency of a sinusoidal grating, under
a random phase, brightness and pixel noise per image, so a model can learn a little from them.
They are plumbing data: a run on them says that the job works, not how well a network does.

The tree is written beside ``DIR`` and renamed into place, so ``DIR`` is either complete or not
there.  Running the command again with the same settings leaves the folder as it is (exit 0); a
``DIR`` written with other settings, or one that holds anything else, is refused.  Bad input is
one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import shutil
import sys

import numpy as np

from regnas_jax.data.convert import encode
from regnas_jax.errors import DataError, RegnasError, one_line

SPLITS = ("train", "val")
MARKER = "synthetic.json"
MAX_CLASSES = 1000
MAX_SIDE = 1024


def class_image(seed: int, split: int, label: int, index: int, classes: int,
                size: tuple[int, int]) -> np.ndarray:
  """Image ``index`` of class ``label`` in split ``split`` (0 train, 1 val): ``(H, W, 3)`` uint8.

  Class ``label`` fixes a colour (hue ``label / classes``), a grating orientation (``pi * label
  / classes``) and a frequency (2, 3 or 4 cycles across the image); the image draws its phase,
  brightness and Gaussian pixel noise from ``(seed, split, label, index)``.
  """
  rng = np.random.default_rng([seed, split, label, index])
  h, w = size
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  angle = np.pi * label / classes
  cycles = 2 + label % 3
  wave = np.sin(2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle))
                + rng.uniform(0, 2 * np.pi))                              # (H, W) in [-1, 1]
  colour = np.asarray(colorsys.hsv_to_rgb(label / classes, 0.8, 1.0)) * 2 - 1   # (3,)
  img = (128 + rng.uniform(-30, 30) + 70 * wave[..., None] * colour
         + rng.normal(0, 12, (h, w, 3)))
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def settings(classes: int = 10, per_class: tuple[int, int] = (8, 4),
             size: tuple[int, int] = (48, 64), seed: int = 0) -> dict:
  """The checked settings as written to ``DIR/synthetic.json``; a DataError names a bad one."""
  def ints(v, n):
    return (isinstance(v, (tuple, list)) and len(v) == n
            and all(isinstance(a, int) and not isinstance(a, bool) for a in v))

  if not ints([classes], 1) or not 1 <= classes <= MAX_CLASSES:
    raise DataError(f"--classes: must be an integer in [1, {MAX_CLASSES}], got {classes!r}")
  if not ints(per_class, 2) or min(per_class) < 1:
    raise DataError(f"--per_class: must be two positive integers TRAIN,VAL, got {per_class!r}")
  if not ints(size, 2) or not (8 <= min(size) and max(size) <= MAX_SIDE):
    raise DataError(f"--size: must be two integers H,W in [8, {MAX_SIDE}], got {size!r}")
  if not ints([seed], 1) or seed < 0:
    raise DataError(f"--seed: must be an integer >= 0, got {seed!r}")
  return {"classes": classes, "per_class": list(per_class), "size": list(size), "seed": seed}


def _existing(root: str, want: dict) -> bool:
  """True when ``root`` is this command's folder with the settings ``want``; False when it does
  not exist or is an empty folder; a DataError when it is anything else."""
  if not os.path.lexists(root):
    return False
  if not os.path.isdir(root):
    raise DataError(f"DIR: {root} exists and is not a folder")
  entries = os.listdir(root)
  if not entries:
    return False
  try:
    with open(os.path.join(root, MARKER)) as f:
      got = json.load(f)
  except (OSError, ValueError):
    raise DataError(f"DIR: {root} exists and holds other files (no {MARKER}): choose a new or "
                    f"empty folder") from None
  if got != want:
    raise DataError(f"DIR: {root} was generated with other settings ({json.dumps(got)}): remove "
                    f"it or choose another folder")
  return True


def _write_tree(tmp: str, s: dict) -> None:
  """Every image of settings ``s`` under ``tmp``, then the marker file."""
  width = max(2, len(str(s["classes"] - 1)))
  names = [f"class{c:0{width}d}" for c in range(s["classes"])]
  for split, (name, count) in enumerate(zip(SPLITS, s["per_class"])):
    for label, cls in enumerate(names):
      folder = os.path.join(tmp, name, cls)
      os.makedirs(folder)
      for i in range(count):
        img = class_image(s["seed"], split, label, i, s["classes"], tuple(s["size"]))
        with open(os.path.join(folder, f"{i:04d}.jpg"), "wb") as f:
          f.write(encode(img, "jpeg", 90))
  with open(os.path.join(tmp, MARKER), "w") as f:
    json.dump(s, f)


def generate(root: str, classes: int = 10, per_class: tuple[int, int] = (8, 4),
             size: tuple[int, int] = (48, 64), seed: int = 0) -> dict:
  """Write the tree of the module docstring at ``root``; returns its settings plus ``written``
  (False when ``root`` already held the same tree).  A DataError names a bad setting or a
  ``root`` that cannot be used; nothing is left behind then."""
  s = settings(classes, per_class, size, seed)
  root = os.path.abspath(root)
  if _existing(root, s):
    return dict(s, written=False)
  parent, tmp = os.path.dirname(root), f"{root}.tmp-{os.getpid()}"
  try:
    shutil.rmtree(tmp, ignore_errors=True)     # (left by a killed run of the same pid)
    os.makedirs(tmp)
  except OSError as e:
    raise DataError(f"DIR: cannot write in {parent} ({e.strerror})") from None
  try:
    _write_tree(tmp, s)
    if os.path.isdir(root):
      os.rmdir(root)          # empty (checked above)
    os.rename(tmp, root)
  except OSError as e:
    raise DataError(f"DIR: cannot write {root} ({e.strerror})") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dict(s, written=True)


class _Parser(argparse.ArgumentParser):
  """argparse whose usage errors are one ``error:`` line and exit status 2."""

  def error(self, message):
    print(f"error: {message} (--help lists the arguments)", file=sys.stderr)
    sys.exit(2)


def _pair(text: str, flag: str) -> tuple[int, int]:
  try:
    a, b = (int(t) for t in text.split(","))
  except ValueError:
    raise DataError(f"{flag}: must be two integers separated by a comma, got {text!r}") from None
  return a, b


def main(argv=None) -> int:
  p = _Parser(prog="python -m regnas_jax.data.synthetic", description=__doc__.split("\n\n")[0])
  p.add_argument("dir", metavar="DIR", help="the folder to write (new or empty)")
  p.add_argument("--classes", type=int, default=10, metavar="N",
                 help="number of classes (default 10)")
  p.add_argument("--per_class", default="8,4", metavar="TRAIN,VAL",
                 help="images per class in train/ and val/ (default 8,4)")
  p.add_argument("--size", default="48,64", metavar="H,W",
                 help="image height and width in pixels (default 48,64)")
  p.add_argument("--seed", type=int, default=0, metavar="S", help="the images' seed (default 0)")
  args = p.parse_args(argv)
  try:
    s = generate(args.dir, args.classes, _pair(args.per_class, "--per_class"),
                 _pair(args.size, "--size"), args.seed)
  except RegnasError as e:
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
  (train, val), (h, w) = s["per_class"], s["size"]
  verb = "wrote" if s["written"] else "already there, unchanged:"
  print(f"{verb} {args.dir}: {s['classes']} classes, {train * s['classes']} train / "
        f"{val * s['classes']} val JPEGs of {h}x{w} px, seed {s['seed']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
