"""Negative flip rates (NFR, relative NFR, the NFR matrix) against hand-computed values."""

import numpy as np

from regnas_jax import metrics


def test_nfr_and_relative_nfr_hand_computed():
  old = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1], bool)   # 7/10 right
  new = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1, 1], bool)   # 7/10 right; flips at 1 and 6
  assert metrics.nfr(new, old) == 0.2                    # 2 of all 10 samples
  assert metrics.nfr(old, new) == 0.2                    # positive flips of new: 4 and 7
  assert metrics.nfr(old, old) == 0.0
  np.testing.assert_allclose(metrics.relative_nfr(new, old), 0.2 / (0.7 * 0.3))
  # perfect new model: no flips; expected flips 0 -> nan, not a division error
  assert np.isnan(metrics.relative_nfr(np.ones(10, bool), old))
  batch = metrics.nfr(np.stack([new, old]), old)         # broadcasting over members
  np.testing.assert_allclose(batch, [0.2, 0.0])


def test_nfr_matrix_equals_pairwise_loop():
  ok = np.random.default_rng(0).random((4, 50)) < [[0.6], [0.7], [0.8], [0.9]]
  mat = metrics.nfr_matrix(ok)
  for i in range(4):
    for j in range(4):
      flips = sum(ok[i, s] and not ok[j, s] for s in range(50)) / 50
      assert mat[i, j] == flips
  assert np.all(np.diag(mat) == 0)
