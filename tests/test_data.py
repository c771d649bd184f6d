"""The offline default dataset."""

import numpy as np
import pytest

from regnas_jax import data


def test_digits_splits_are_fixed_disjoint_and_complete():
  s = data.load_digits(16, seed=0)
  assert s.num_classes == 10
  n = len(s.train.labels) + len(s.val.labels) + len(s.test.labels)
  assert n == 1797
  assert s.train.images.shape[1:] == (16, 16, 3) and s.train.images.dtype == np.float32
  tr, va, te = data.split_indices(1797, (0.15, 0.2), 0)
  assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
  again = data.load_digits(16, seed=0)
  np.testing.assert_array_equal(again.val.images, s.val.images)
  other = data.load_digits(16, seed=1)
  assert not np.array_equal(other.val.labels, s.val.labels)
  assert set(np.unique(s.val.labels)) == set(range(10))


def test_resize_bilinear_preserves_constants_and_mean():
  img = np.random.default_rng(0).uniform(size=(2, 8, 8))
  up = data.resize_bilinear(img, 32)
  assert up.shape == (2, 32, 32)
  np.testing.assert_allclose(up.mean((1, 2)), img.mean((1, 2)), rtol=0.02)
  np.testing.assert_allclose(data.resize_bilinear(np.ones((1, 8, 8)), 20), 1.0)
  same = data.resize_bilinear(img, 8)
  np.testing.assert_allclose(same, img, atol=1e-12)


def test_digits_rejects_too_small_images():
  with pytest.raises(ValueError, match="digits are 8x8"):
    data.load_digits(4)
