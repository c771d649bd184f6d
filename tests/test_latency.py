"""The linear latency model: one-hot features and the least-squares fit on synthetic costs."""

import jax
import numpy as np
import pytest

from regnas_jax import latency
from regnas_jax.spaces import ScarletS2Space, member

SP = ScarletS2Space(width_mult=0.25, stem="small", resolutions=(24, 32))


def true_cost(pop, rng):
  """A known linear cost: one value per (layer, op) plus one per resolution, plus a constant."""
  per_op = rng.uniform(0.0, 2.0, size=(19, 13))
  per_res = np.array([0.0, 3.0])
  op, res = np.asarray(pop.op), np.asarray(pop.resolution)
  return per_op[np.arange(19), op].sum(-1) + per_res[res] + 5.0


def test_features_are_one_hot_per_decision():
  pop = SP.sample(jax.random.key(0), 7)
  f = np.asarray(latency.features(SP, pop))
  assert f.shape == (7, 2 + 19 * 13) and np.all(f.sum(1) == 1 + 19)
  one = np.asarray(latency.features(SP, member(pop, 3)))
  np.testing.assert_array_equal(one, f[3])
  assert one[2 + 13 * 4 + int(pop.op[3, 4])] == 1   # layer 5's chosen op


def test_fit_recovers_a_known_linear_cost():
  rng = np.random.default_rng(0)
  pop = SP.sample(jax.random.key(1), 600)
  y = true_cost(pop, rng)
  model = latency.fit(SP, pop, y, holdout=0.25)
  assert model.train_rmse < 1e-6 and model.test_rmse < 1e-6 and model.test_r2 > 0.999999
  fresh = SP.sample(jax.random.key(2), 50)
  np.testing.assert_allclose(np.asarray(model.predict(SP, fresh)),
                             true_cost(fresh, np.random.default_rng(0)), rtol=1e-4)
  # with measurement noise the reported error matches the noise level
  noisy = y + np.random.default_rng(3).normal(0, 0.2, len(y))
  m2 = latency.fit(SP, pop, noisy, holdout=0.25)
  assert 0.15 < m2.test_rmse < 0.35 and m2.test_r2 > 0.95 and m2.test_mape < 0.02
  assert set(m2.to_dict()) == {"weights", "bias", "train_rmse", "test_rmse", "test_r2",
                               "test_mape"}


def test_fit_errors():
  pop = SP.sample(jax.random.key(0), 4)
  with pytest.raises(ValueError, match="costs: 3 values for 4 architectures"):
    latency.fit(SP, pop, np.ones(3))
  with pytest.raises(ValueError, match="need at least 2"):
    latency.fit(SP, pop, np.ones(4), holdout=0.9)
