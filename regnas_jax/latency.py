"""A linear latency model over one-hot choice features (TuNAS's cost model, refitted here).

TuNAS estimates a subnet's latency as ``features(arch) . w + b`` with one-hot features of every
decision (its released weights were fitted to Pixel-1 measurements; the fitting code was not
released).  Here the model is fitted by least squares to latencies of exact-shape subnets
measured on the machine at hand, and the fit reports its error on held-out subnets, so a search
can use the predicted latency as its cost ``T``.  TuNAS's released models themselves, with its
coupled (width x choice) features: ``regnas_jax.latency_tunas``.

Features of an arch: for every element of every field a one-hot vector over that field's choices,
concatenated (``(F,)`` with ``F = sum(field elements x choices)``).  One-hot blocks are
collinear with the bias; the minimum-norm least-squares solution handles that (predictions are
unique even where weights are not).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LinearCostModel(NamedTuple):
  weights: np.ndarray   # (F,)
  bias: float
  train_rmse: float
  test_rmse: float      # on the held-out subnets (nan without any)
  test_r2: float
  test_mape: float      # mean absolute percentage error on the held-out subnets

  def predict(self, space, pop):
    """Predicted cost per member (works under ``jit``/``vmap`` on a single arch too)."""
    return features(space, pop) @ jnp.asarray(self.weights, jnp.float32) + self.bias

  def to_dict(self) -> dict:
    return {"weights": np.asarray(self.weights).tolist(), "bias": float(self.bias),
            "train_rmse": self.train_rmse, "test_rmse": self.test_rmse, "test_r2": self.test_r2,
            "test_mape": self.test_mape}


def features(space, pop):
  """One-hot choice features ``(..., F)`` of an arch or population (float32)."""
  cols = []
  for f in space.fields():
    x = jnp.asarray(getattr(pop, f.name))
    lead = x.shape[:x.ndim - len(f.shape)]
    cols.append(jax.nn.one_hot(x, f.size, dtype=jnp.float32).reshape(lead + (-1,)))
  return jnp.concatenate(cols, -1)


def fit(space, pop, costs, *, holdout: float = 0.2, seed: int = 0, ridge: float = 0.0):
  """Least-squares fit of ``costs`` (``(P,)``, e.g. milliseconds) on the features of ``pop``.

  A random ``holdout`` share of the members is kept out of the fit and used to report the error
  (RMSE, R², mean absolute percentage error).  ``ridge > 0`` adds an L2 penalty on the weights.
  """
  x = np.asarray(features(space, pop), np.float64)
  y = np.asarray(costs, np.float64)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"costs: {y.shape[0]} values for {x.shape[0]} architectures")
  perm = np.random.default_rng(seed).permutation(len(y))
  n_test = int(round(holdout * len(y)))
  test, train = perm[:n_test], perm[n_test:]
  if len(train) < 2:
    raise ValueError(f"fit: need at least 2 architectures to fit, got {len(train)}")
  xa = np.concatenate([x[train], np.ones((len(train), 1))], 1)
  if ridge > 0:
    reg = np.sqrt(ridge) * np.eye(xa.shape[1])[:-1]   # bias not penalised
    sol = np.linalg.lstsq(np.concatenate([xa, reg]), np.concatenate([y[train],
                                                                     np.zeros(len(reg))]),
                          rcond=None)[0]
  else:
    sol = np.linalg.lstsq(xa, y[train], rcond=None)[0]
  w, b = sol[:-1], float(sol[-1])
  rmse = lambda idx: float(np.sqrt(np.mean((x[idx] @ w + b - y[idx]) ** 2)))
  if n_test:
    pred = x[test] @ w + b
    ss = float(((y[test] - y[test].mean()) ** 2).sum())
    r2 = 1.0 - float(((pred - y[test]) ** 2).sum()) / ss if ss > 0 else float("nan")
    mape = float(np.mean(np.abs(pred - y[test]) / np.abs(y[test])))
    test_rmse = rmse(test)
  else:
    r2 = mape = test_rmse = float("nan")
  return LinearCostModel(w.astype(np.float32), b, rmse(train), test_rmse, r2, mape)
