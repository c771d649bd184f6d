"""Data sources, splits, the packed-JPEG reader, batch order and on-device preprocessing."""

import os

import jax
import numpy as np
import pytest

import helpers

from regnas_jax import data


def test_digits_splits_are_fixed_disjoint_and_complete():
  s = data.load_digits(16, seed=0)
  assert s.num_classes == 10 and s.image_size == 16
  n = len(s.train) + len(s.val) + len(s.test)
  assert n == 1797
  assert s.train.images.shape[1:] == (16, 16, 3) and s.train.images.dtype == np.uint8
  tr, va, te = data.split_indices(1797, (0.15, 0.2), 0)
  assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
  again = data.load_digits(16, seed=0)
  np.testing.assert_array_equal(again.val.images, s.val.images)
  other = data.load_digits(16, seed=1)
  assert not np.array_equal(other.val.labels, s.val.labels)
  assert set(np.unique(s.val.labels)) == set(range(10))
  # At the native 8x8 the pixels are sklearn's 0..16 grey levels, scaled to 0..255.
  from sklearn.datasets import load_digits
  raw = load_digits()
  native = data.load_digits(8, seed=0)
  _, va8, _ = data.split_indices(1797, (0.15, 0.2), 0)
  np.testing.assert_array_equal(native.val.images[..., 0],
                                np.round(raw.images[va8] / 16 * 255).astype(np.uint8))
  np.testing.assert_array_equal(native.val.labels, raw.target[va8])


def test_resize_bilinear_preserves_constants_and_mean():
  img = np.random.default_rng(0).uniform(size=(2, 8, 8))
  up = data.resize_bilinear(img, 32)
  assert up.shape == (2, 32, 32)
  np.testing.assert_allclose(up.mean((1, 2)), img.mean((1, 2)), rtol=0.02)
  np.testing.assert_allclose(data.resize_bilinear(np.ones((1, 8, 8)), 20), 1.0)
  np.testing.assert_allclose(data.resize_bilinear(img, 8), img, atol=1e-12)


def test_digits_rejects_too_small_images():
  with pytest.raises(data.DataError, match="digits are 8x8"):
    data.load_digits(4)


def test_holdout_split_is_fixed_and_disjoint():
  tr, va = data.holdout_split(100, 20, seed=3)
  assert len(va) == 20 and len(tr) == 80 and not set(tr) & set(va)
  assert sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
  np.testing.assert_array_equal(data.holdout_split(100, 20, seed=3)[1], va)
  with pytest.raises(data.DataError, match="data.val_size: must be between 1 and 99"):
    data.holdout_split(100, 100, 0)


def test_packed_jpeg_file_decodes_and_caches(tmp_path, monkeypatch):
  path = tmp_path / "c.npz"
  arrays, decoded = helpers.packed_npz(path)
  cache = tmp_path / "cache"
  ds = data.load_cifar10_npz(str(path), val_size=4, seed=0, cache_dir=str(cache))
  assert len(ds.train) == 8 and len(ds.val) == 4 and len(ds.test) == 5 and ds.image_size == 8
  tr, va = data.holdout_split(12, 4, 0)
  np.testing.assert_array_equal(ds.val.images, decoded["train"][va])
  np.testing.assert_array_equal(ds.train.labels, arrays["train_labels"][tr])
  np.testing.assert_array_equal(ds.test.images, decoded["test"])
  assert ds.test.labels.dtype == np.int32
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith(".npz")
  # A later process reads the decoded cache instead of the JPEGs (the in-memory cache cleared).
  data.decode_packed_jpeg.cache_clear()

  def no_decoding(*a):
    raise AssertionError("decoded the JPEGs again")

  monkeypatch.setattr(data, "_decode_jpegs", no_decoding)
  again = data.decode_packed_jpeg(str(path), str(cache))
  np.testing.assert_array_equal(again[2], decoded["test"])


def test_packed_jpeg_errors_name_the_problem(tmp_path):
  with pytest.raises(data.DataError, match="data.path: no such file"):
    data.load_cifar10_npz(str(tmp_path / "missing.npz"))
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(data.DataError, match="is not a readable .npz file"):
    data.load_cifar10_npz(str(bad))
  partial = tmp_path / "partial.npz"
  np.savez(partial, train_jpeg=np.zeros(3, np.uint8))
  with pytest.raises(data.DataError, match="lacks array 'train_offsets'"):
    data.load_cifar10_npz(str(partial))


@pytest.mark.skipif(not os.path.isfile(helpers.CIFAR10_NPZ),
                    reason=f"no packed CIFAR-10 file at {helpers.CIFAR10_NPZ} (set REGNAS_CIFAR10_NPZ)")
def test_real_cifar10_file():
  ds = data.load_cifar10_npz(helpers.CIFAR10_NPZ, val_size=5000)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (45000, 5000, 10000)
  assert ds.train.images.shape[1:] == (32, 32, 3)
  assert np.bincount(ds.test.labels).tolist() == [1000] * 10


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_tfds("mnist", image_size=16, val_size=5)
    assert len(ds.train) == 15 and len(ds.val) == 5 and ds.num_classes == 10
    x, y = ds.train.get(np.arange(3))
  assert x.shape == (3, 16, 16, 3) and x.dtype == np.uint8 and y.shape == (3,)


def test_tfds_missing_gives_a_clear_error(monkeypatch):
  import builtins
  real = builtins.__import__

  def fake(name, *a, **k):
    if name.startswith("tensorflow_datasets"):
      raise ImportError(name)
    return real(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", fake)
  with pytest.raises(data.DataError, match=r"pip install -e '.\[tfds\]'"):
    data.load_tfds("cifar10")


def test_epoch_batches_cover_each_epoch_once_and_depend_only_on_position():
  n, b = 50, 8
  per_epoch = n // b
  first = np.concatenate([data.epoch_batch_indices(n, b, p, 1) for p in range(per_epoch)])
  assert len(set(first.tolist())) == per_epoch * b
  second = np.concatenate([data.epoch_batch_indices(n, b, p, 1)
                           for p in range(per_epoch, 2 * per_epoch)])
  assert not np.array_equal(first, second)
  np.testing.assert_array_equal(data.epoch_batch_indices(n, b, 9, 1),
                                data.epoch_batch_indices(n, b, 9, 1))
  with pytest.raises(data.DataError, match="batch_size: 64 exceeds the 50"):
    data.epoch_batch_indices(n, 64, 0, 1)


def test_preprocess_normalises_crops_and_flips_deterministically():
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  plain = np.asarray(data.preprocess(imgs, mean, std, resolution=8))
  np.testing.assert_allclose(plain, (imgs / 255.0 - np.array(mean)) / np.array(std), rtol=1e-5,
                             atol=1e-5)
  key = jax.random.key(4)
  a = np.asarray(data.preprocess(imgs, mean, std, resolution=8, key=key, pad=2, flip=True))
  b = np.asarray(data.preprocess(imgs, mean, std, resolution=8, key=key, pad=2, flip=True))
  np.testing.assert_array_equal(a, b)
  c = np.asarray(data.preprocess(imgs, mean, std, resolution=8, key=jax.random.key(5), pad=2,
                                 flip=True))
  assert not np.array_equal(a, c)
  # Every augmented image is a (possibly flipped) 8x8 window of the image padded with black.
  black = (0.0 - np.array(mean)) / np.array(std)
  padded = np.pad(plain, ((0, 0), (2, 2), (2, 2), (0, 0)))
  padded[:, :2], padded[:, -2:], padded[:, :, :2], padded[:, :, -2:] = black, black, black, black
  for i in range(6):
    windows = [w for dy in range(5) for dx in range(5)
               for w in (padded[i, dy:dy + 8, dx:dx + 8], padded[i, dy:dy + 8, dx:dx + 8][:, ::-1])]
    assert min(np.abs(a[i] - w).max() for w in windows) < 1e-5
  up = np.asarray(data.preprocess(imgs, mean, std, resolution=12))
  assert up.shape == (6, 12, 12, 3)
