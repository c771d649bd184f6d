"""Datasets as in-memory arrays.

``load_digits`` is the offline default: scikit-learn's handwritten digits (1,797 real 8x8
grayscale images that ship inside scikit-learn), upscaled to the small-image stem's input size,
with a fixed train / holdout-validation / test split.  The search only ever looks at the
validation split; the test split is for reporting.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DIGITS_MEAN, DIGITS_STD = 0.3, 0.38  # of the 0..1-scaled digits pixels (whole set)


class Split(NamedTuple):
  images: np.ndarray  # (N, R, R, 3) float32, normalised
  labels: np.ndarray  # (N,) int32


class Splits(NamedTuple):
  train: Split
  val: Split
  test: Split
  num_classes: int


def split_indices(n: int, fractions: tuple[float, float], seed: int):
  """Deterministic disjoint index sets (train, val, test) covering ``range(n)``."""
  perm = np.random.default_rng(seed).permutation(n)
  n_val, n_test = int(round(n * fractions[0])), int(round(n * fractions[1]))
  return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


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
                test_fraction: float = 0.2) -> Splits:
  """scikit-learn's digits as RGB float images of side ``image_size`` with a fixed split."""
  from sklearn.datasets import load_digits as _load  # ships its data, works offline

  if image_size < 8:
    raise ValueError(f"image_size: digits are 8x8, got {image_size}")
  d = _load()
  imgs = resize_bilinear(d.images.astype(np.float32) / 16.0, image_size)
  imgs = ((imgs - DIGITS_MEAN) / DIGITS_STD).astype(np.float32)
  imgs = np.repeat(imgs[..., None], 3, axis=-1)
  labels = d.target.astype(np.int32)
  tr, va, te = split_indices(len(labels), (val_fraction, test_fraction), seed)
  mk = lambda idx: Split(imgs[idx], labels[idx])
  return Splits(mk(tr), mk(va), mk(te), 10)
