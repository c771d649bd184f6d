"""Constrained weighted NSGA-II: sorting and crowding against hand-made cases, ZDT1/ZDT2
convergence (inverted generational distance), constraints, determinism."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.search import SearchError, nsga2
from regnas_jax.spaces import base


class Box(NamedTuple):
  x: jax.Array  # (n,) level indices


@dataclasses.dataclass(frozen=True)
class IntBox(base.SearchSpace):
  """Decision vectors on a grid: x_i = level_i / (levels - 1) in [0, 1] (ZDT's box)."""
  name = "int_box"
  arch_type = Box
  n: int = 6
  levels: int = 21

  def fields(self):
    return (base.Field("x", (self.n,), tuple(range(self.levels))),)

  def mutate(self, key, arch, prob=0.1, **kw):
    k1, k2 = jax.random.split(key)
    flip = jax.random.bernoulli(k1, prob, arch.x.shape)
    return Box(jnp.where(flip, jax.random.randint(k2, arch.x.shape, 0, self.levels),
                         arch.x).astype(jnp.int32))


def zdt(which, pop, levels):
  """ZDT1 / ZDT2 (Zitzler, Deb & Thiele 2000) on grid points; both objectives minimised."""
  x = np.asarray(pop.x, np.float64) / (levels - 1)
  f1 = x[:, 0]
  g = 1 + 9 * x[:, 1:].mean(1)
  h = 1 - np.sqrt(f1 / g) if which == "zdt1" else 1 - (f1 / g) ** 2
  return np.stack([f1, g * h], 1)


def true_front(which, k=200):
  f1 = np.linspace(0, 1, k)
  return np.stack([f1, 1 - np.sqrt(f1) if which == "zdt1" else 1 - f1 ** 2], 1)


def test_non_dominated_sort_hand_made():
  f = [(1, 4), (2, 2), (4, 1), (3, 3), (4, 4), (2, 2), (1, 5)]
  assert nsga2.non_dominated_sort(f).tolist() == [0, 0, 0, 1, 2, 0, 1]


def test_non_dominated_sort_matches_the_definition():
  f = np.random.default_rng(0).integers(0, 6, (60, 3)).astype(float)
  r = nsga2.non_dominated_sort(f)
  dom = lambda a, b: np.all(a <= b) and np.any(a < b)
  for i in range(60):
    same_or_worse = [j for j in range(60) if r[j] >= r[i]]
    assert not any(dom(f[j], f[i]) for j in same_or_worse)          # non-dominated in its layer
    if r[i] > 0:
      assert any(dom(f[j], f[i]) for j in range(60) if r[j] == r[i] - 1)


def test_weighted_crowding_distance_hand_made():
  f = np.array([(0, 4), (1, 2), (3, 1), (4, 0)], float)
  ranks = np.zeros(4, int)
  d = nsga2.crowding_distance(f, ranks)
  assert np.isinf(d[[0, 3]]).all() and np.allclose(d[1:3], [0.75 + 0.75, 0.75 + 0.5])
  d = nsga2.crowding_distance(f, ranks, weights=(0, 2))
  assert np.isinf(d[[0, 3]]).all() and np.allclose(d[1:3], [2 * 0.75, 2 * 0.5])
  d = nsga2.crowding_distance(f, ranks, weights=(1, 0))
  assert np.allclose(d[1:3], [0.75, 0.75])
  # the last front is cut by crowding: with weight on f2 only, (1, 2) beats (3, 1)
  assert nsga2.survivors(f, 3, weights=(0, 1)).tolist() == [0, 1, 3]
  assert nsga2.survivors(np.vstack([f, [[5, 5]]]), 4).tolist() == [0, 1, 2, 3]


def run(which, seed=0, gens=40, cheap=None, expensive=None, weights=()):
  sp = IntBox()
  cfg = nsga2.NSGA2Config(population_size=40, mutation_ratio=0.5, mutate_prob=0.2,
                          generations=gens, weights=weights, proposal_batch=64)
  state = nsga2.init(seed)
  asked = []
  while not nsga2.done(state, cfg):
    cand = nsga2.ask(sp, cfg, state, cheap)
    asked.append(cand)
    f = zdt(which, cand, sp.levels)
    state = nsga2.tell(state, cand, f, cfg, None if expensive is None else expensive(f))
  return sp, cfg, state, asked


@pytest.mark.parametrize("which", ["zdt1", "zdt2"])
def test_converges_towards_the_true_front(which):
  sp, cfg, state, _ = run(which)
  front = state.objectives[nsga2.non_dominated_sort(state.objectives) == 0]
  start = np.asarray(state.history[0])
  ref = true_front(which)
  print(f"{which}: IGD {nsga2.igd(start, ref):.4f} after generation 0, "
        f"{nsga2.igd(front, ref):.4f} after {cfg.generations}")
  assert nsga2.igd(front, ref) < 0.05 < nsga2.igd(start, ref)
  assert state.evaluations == cfg.population_size * (cfg.generations + 1)


def test_constraints_are_never_violated():
  cheap = lambda pop: np.asarray(pop.x)[:, 0] <= 14       # f1 <= 0.7, before evaluation
  expensive = lambda f: f[:, 1] <= 2.5                   # after evaluation
  _, _, state, asked = run("zdt1", gens=8, cheap=cheap, expensive=expensive)
  assert all(np.all(np.asarray(c.x)[:, 0] <= 14) for c in asked)
  assert np.all(state.objectives[:, 0] <= 0.7) and np.all(state.objectives[:, 1] <= 2.5)
  with pytest.raises(SearchError, match="cheap constraint"):
    nsga2.ask(IntBox(), nsga2.NSGA2Config(population_size=4, max_proposals=64, proposal_batch=32),
              nsga2.init(0), lambda pop: np.zeros(len(pop.x), bool))


def test_same_seed_same_result_and_resume_from_a_saved_state():
  _, cfg, a, _ = run("zdt2", seed=3, gens=4)
  _, _, b, _ = run("zdt2", seed=3, gens=4)
  assert np.array_equal(a.objectives, b.objectives)
  sp = IntBox()
  # stop after generation 2 (as a saved state would), continue: the same end
  state = nsga2.init(3)
  for _ in range(3):
    cand = nsga2.ask(sp, cfg, state)
    state = nsga2.tell(state, cand, zdt("zdt2", cand, sp.levels), cfg)
  saved = state._replace(population=jax.tree.map(np.copy, state.population),
                         objectives=state.objectives.copy())
  while not nsga2.done(saved, cfg):
    cand = nsga2.ask(sp, cfg, saved)
    saved = nsga2.tell(saved, cand, zdt("zdt2", cand, sp.levels), cfg)
  assert np.array_equal(saved.objectives, a.objectives)


def test_equispaced_models_span_the_front():
  f1 = np.linspace(0, 1, 21)
  front = np.stack([f1, 1 - np.sqrt(f1)], 1)
  f = np.vstack([front, front + 0.3])
  idx = nsga2.equispaced(f, 5)
  assert len(idx) == 5 and np.all(idx < 21)
  assert np.allclose(f[idx, 0], [0, 0.25, 0.5, 0.75, 1.0])
  with pytest.raises(ValueError, match="weights: 3 given for 2 objectives"):
    nsga2.tell(nsga2.init(0), Box(np.zeros((2, 6), np.int32)), np.zeros((2, 2)),
               nsga2.NSGA2Config(weights=(1, 1, 1)))
