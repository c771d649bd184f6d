"""Constrained weighted NSGA-II: sorting and crowding against hand-made cases, ZDT1/ZDT2
convergence (inverted generational distance) with both mutation modes, constraints,
determinism, SCARLET's hierarchical mutation (type frequencies, reinforced and pruning
mutation against their formulas), the JSON state."""

import dataclasses
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.search import SearchError, nsga2
from regnas_jax.spaces import base

import helpers


class Box(NamedTuple):
  x: jax.Array  # (n,) level indices


@dataclasses.dataclass(frozen=True)
class IntBox(helpers.ToySpaceBase):
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


class Net(NamedTuple):
  op: jax.Array     # (6,) layer operators; index 3 = skip
  width: jax.Array  # (2,)


@dataclasses.dataclass(frozen=True)
class SkipNet(helpers.ToySpaceBase):
  """Two stages of three layers; the first layer of a stage may not be skipped."""
  name = "skip_net"
  arch_type = Net
  skip_field = "op"
  skip_index = 3
  skip_allowed = np.array([False, True, True, False, True, True])

  def fields(self):
    return (base.Field("op", (6,), (0, 1, 2, 3)), base.Field("width", (2,), (16, 24, 32)))


def hm_cfg(**kw):
  return nsga2.NSGA2Config(**{"p_rm": 0.0, "p_re": 0.0, "p_pr": 0.0, **kw})


def close(freq, p, n):
  """``freq`` within 5 standard deviations of a binomial proportion ``p`` from ``n`` draws."""
  return abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12


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


def run(which, seed=0, gens=40, cheap=None, expensive=None, weights=(), mutation="hierarchical"):
  sp = IntBox()
  cfg = nsga2.NSGA2Config(population_size=40, mutation_ratio=0.5, mutate_prob=0.2,
                          generations=gens, weights=weights, proposal_batch=64,
                          mutation=mutation)
  state = nsga2.init(seed)
  asked = []
  while not nsga2.done(state, cfg):
    cand = nsga2.ask(sp, cfg, state, cheap)
    asked.append(cand)
    f = zdt(which, cand, sp.levels)
    state = nsga2.tell(state, cand, f, cfg, None if expensive is None else expensive(f))
  return sp, cfg, state, asked


@pytest.mark.parametrize("mutation", ["hierarchical", "space"])
@pytest.mark.parametrize("which", ["zdt1", "zdt2"])
def test_converges_towards_the_true_front(which, mutation):
  sp, cfg, state, _ = run(which, mutation=mutation)
  front = state.objectives[nsga2.non_dominated_sort(state.objectives) == 0]
  start = np.asarray(state.history[0])
  ref = true_front(which)
  print(f"{which}, {mutation} mutation: IGD {nsga2.igd(start, ref):.4f} after generation 0, "
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


# -- hierarchical mutation ------------------------------------------------------------------------
@pytest.mark.parametrize("probs", [(0.2, 0.65, 0.15), (0.5, 0.1, 0.4)])
def test_mutation_types_follow_the_roulette_wheel(probs):
  sp, b = SkipNet(), 20000
  rng = np.random.default_rng(0)
  parents = Net(rng.integers(0, 3, (b, 6)).astype(np.int32),   # no skip yet: pruning applies
                rng.integers(0, 3, (b, 2)).astype(np.int32))
  cfg = nsga2.NSGA2Config(p_rm=probs[0], p_re=probs[1], p_pr=probs[2])
  _, kinds = nsga2.hierarchical_mutation(sp, rng, parents, parents, np.zeros(b, int), cfg,
                                         return_types=True)
  for t, p in enumerate(probs):
    assert close(np.mean(kinds == t), p, b), (nsga2.MUTATION_TYPES[t], np.mean(kinds == t), p)


def test_random_mutation_changes_at_least_one_decision():
  b, rng = 6000, np.random.default_rng(1)
  sp = IntBox(n=6, levels=2)
  parents = Box(rng.integers(0, 2, (b, 6)).astype(np.int32))
  mutate = lambda sp, par, **kw: nsga2.hierarchical_mutation(
      sp, rng, par, par, np.zeros(b, int), hm_cfg(p_rm=1.0, **kw), return_types=True)
  # nothing drawn: exactly one decision, uniformly placed, flips to the other choice
  child, kinds = mutate(sp, parents, mutate_prob=0.0)
  diff = child.x != parents.x
  assert np.all(kinds == 0) and np.all(diff.sum(1) == 1)
  assert all(close(f, 1 / 6, b) for f in diff.mean(0))
  # every decision drawn: with two choices every element flips
  child, _ = mutate(sp, parents, mutate_prob=1.0)
  assert np.array_equal(child.x, 1 - parents.x)
  # on average 6 p changes, plus the one forced when none was drawn (probability (1 - p)^6)
  child, _ = mutate(sp, parents, mutate_prob=0.3)
  changes = (child.x != parents.x).sum(1)
  assert changes.min() >= 1
  assert abs(changes.mean() - (6 * 0.3 + 0.7 ** 6)) < 0.05
  # a new choice is uniform over the other choices
  sp = IntBox(n=6, levels=5)
  child, _ = mutate(sp, Box(np.zeros((b, 6), np.int32)), mutate_prob=1.0)
  assert child.x.dtype == np.int32 and child.x.min() >= 1
  assert all(close(np.mean(child.x == c), 1 / 4, b * 6) for c in range(1, 5))


def test_reinforced_mutation_draws_from_the_smoothed_front_statistics():
  b, k, rng = 5000, 5, np.random.default_rng(2)
  sp = IntBox(n=4, levels=k)
  # P: a first front of 10 that all chose 2, 20 dominated members that all chose 0
  f = np.vstack([np.stack([np.arange(10.0), 10 - np.arange(10.0)], 1), np.full((20, 2), 20.0)])
  ranks = np.array([0] * 10 + [1] * 20)
  assert np.array_equal(nsga2.non_dominated_sort(f), ranks)
  pop = Box(np.array([[2] * 4] * 10 + [[0] * 4] * 20, np.int32))
  parents = Box(rng.integers(0, k, (b, 4)).astype(np.int32))

  def freq(population, ranks, p_m):
    child, kinds = nsga2.hierarchical_mutation(
        sp, rng, parents, population, ranks, hm_cfg(p_re=1.0, p_m=p_m, p_k_m=1 - p_m,
                                                     mutate_prob=1.0), return_types=True)
    assert np.all(kinds == 1)
    return np.array([np.mean(child.x == c) for c in range(k)])

  # add-one smoothing: P(c) = (count_c + 1) / (group size + k)
  elite = np.array([1, 1, 11, 1, 1]) / (10 + k)
  rest = np.array([21, 1, 1, 1, 1]) / (20 + k)
  n = b * 4
  for p_m, want in [(1.0, elite), (0.0, rest), (0.5, 0.5 * elite + 0.5 * rest)]:
    got = freq(pop, ranks, p_m)
    assert all(close(g, w, n) for g, w in zip(got, want)), (p_m, got, want)
  # no K-M members: the rest's share learns from M as well
  got = freq(base.take(pop, np.arange(10)), np.zeros(10, int), 0.0)
  assert all(close(g, w, n) for g, w in zip(got, elite)), got


def test_pruning_mutation_skips_one_allowed_layer():
  sp, b, rng = SkipNet(), 4000, np.random.default_rng(3)
  allowed = SkipNet.skip_allowed
  op = rng.integers(0, 4, (b, 6))
  op[:, ~allowed] = rng.integers(0, 3, (b, 2))       # valid parents: no skip where forbidden
  op[:200, allowed] = 3                              # nothing left to prune: random instead
  parents = Net(op.astype(np.int32), rng.integers(0, 3, (b, 2)).astype(np.int32))
  child, kinds = nsga2.hierarchical_mutation(sp, rng, parents, parents, np.zeros(b, int),
                                             hm_cfg(p_pr=1.0, mutate_prob=0.2),
                                             return_types=True)
  can_prune = ((op != 3) & allowed).any(1)
  assert np.array_equal(kinds, np.where(can_prune, 2, 0)) and not can_prune[:200].any()
  pruned = kinds == 2
  diff = child.op != parents.op
  assert np.all(diff[pruned].sum(1) == 1)
  assert np.array_equal(child.width[pruned], parents.width[pruned])
  assert np.all(child.op[diff & pruned[:, None]] == 3)
  assert not (diff[pruned][:, ~allowed]).any()
  assert np.all(diff[pruned][:, allowed].sum(0) > 0)            # every allowed layer is hit
  # the fall-back is random mutation: something changes, never a forbidden skip
  changed = diff.any(1) | (child.width != parents.width).any(1)
  assert np.all(changed[~pruned]) and not (child.op[~pruned][:, ~allowed] == 3).any()
  # random and reinforced mutation keep skips where allowed only, and do use them there
  child = nsga2.hierarchical_mutation(sp, rng, parents, parents, np.zeros(b, int),
                                      hm_cfg(p_rm=0.5, p_re=0.5, mutate_prob=1.0))
  assert not (child.op[:, ~allowed] == 3).any() and (child.op[:, allowed] == 3).any()
  # a space without a skip notion: every pruning mutation falls back to random mutation
  box = Box(np.zeros((b, 6), np.int32))
  child, kinds = nsga2.hierarchical_mutation(IntBox(), rng, box, box, np.zeros(b, int),
                                             hm_cfg(p_pr=1.0), return_types=True)
  assert np.all(kinds == 0) and np.all((child.x != 0).any(1))


@pytest.mark.parametrize("kw, match", [
    (dict(p_rm=0.3), r"p_rm \+ p_re \+ p_pr: must sum to 1, got 1.1"),
    (dict(p_rm=0.35, p_re=-0.1, p_pr=0.75), r"p_re: must be in \[0, 1\]"),
    (dict(p_pr=1.5, p_rm=0, p_re=-0.5), r"p_re: must be in \[0, 1\]"),
    (dict(p_m=0.5), r"p_m \+ p_k_m: must sum to 1, got 0.8"),
    (dict(p_m=-0.3, p_k_m=1.3), r"p_m: must be in \[0, 1\]"),
    (dict(mutation="random"), r"mutation: must be one of \('hierarchical', 'space'\)"),
])
def test_bad_mutation_settings_are_rejected(kw, match):
  cfg = nsga2.NSGA2Config(**kw)
  with pytest.raises(ValueError, match=match):
    cfg.check()
  with pytest.raises(ValueError, match=match):
    nsga2.ask(IntBox(), cfg, nsga2.init(0))


# -- JSON state -----------------------------------------------------------------------------------
def test_json_state_round_trip_resumes_exactly():
  _, cfg, a, _ = run("zdt1", seed=5, gens=5)
  sp = IntBox()
  state = nsga2.init(5)
  for g in range(6):
    back = nsga2.state_from_dict(sp, json.loads(json.dumps(nsga2.state_to_dict(state))))
    assert (back.seed, back.generation, back.evaluations, back.history) == (
        state.seed, state.generation, state.evaluations, state.history)
    if g:
      assert back.population.x.dtype == np.int32
      assert np.array_equal(back.population.x, state.population.x)
      assert np.array_equal(back.objectives, state.objectives)
    cand = nsga2.ask(sp, cfg, back)
    assert np.array_equal(cand.x, nsga2.ask(sp, cfg, state).x)
    state = nsga2.tell(back, cand, zdt("zdt1", cand, sp.levels), cfg)
  assert nsga2.done(state, cfg) and np.array_equal(state.objectives, a.objectives)
  assert state.history == a.history


def _corrupt(obj, key, value):
  obj = json.loads(json.dumps(obj))
  if value is KeyError:
    del obj[key]
  elif key == "x":
    obj["population"]["x"] = value
  else:
    obj[key] = value
  return obj


@pytest.mark.parametrize("key, value, match", [
    ("seed", KeyError, r"seed: missing"),
    ("colour", 1, r"colour: unknown key"),
    ("algorithm", "evolution", r"algorithm: expected 'nsga2'"),
    ("seed", "3", r"seed: expected a non-negative integer, got '3'"),
    ("generation", -1, r"generation: expected a non-negative integer"),
    ("population", None, r"population and objectives: must be null exactly at generation 0"),
    ("population", [[0] * 6] * 4, r"population\.int_box: an architecture must be a Box"),
    ("x", [[0] * 6] * 3 + [[0, 0, 0, 0, 0, 21]], r"population\.x\[3, 5\]: choice index 21"),
    ("x", [[0] * 6] * 3 + [[0] * 5], r"population: .*inhomogeneous"),
    ("objectives", [[0.0, 1.0]] * 3, r"objectives: 3 rows for a population of 4"),
    ("objectives", [[0.0, "1"]] * 4, r"objectives: '1' is not a number"),
    ("objectives", [[0.0, 1.0]] * 3 + [[0.0]], r"objectives: rows must have one common"),
    ("history", [[[0.0, 1.0]]], r"history: expected a list of 2 fronts"),
    ("history", [[[0.0, 1.0]], [[0.0, 1.0, 2.0]]], r"history\[1\]: 3 objectives"),
])
def test_malformed_json_state_is_rejected(key, value, match):
  sp = IntBox()
  cfg = nsga2.NSGA2Config(population_size=4, proposal_batch=8, generations=1)
  state = nsga2.init(1)
  for _ in range(2):
    cand = nsga2.ask(sp, cfg, state)
    state = nsga2.tell(state, cand, zdt("zdt1", cand, sp.levels), cfg)
  good = nsga2.state_to_dict(state)
  nsga2.state_from_dict(sp, good)
  with pytest.raises(ValueError, match=match) as e:
    nsga2.state_from_dict(sp, _corrupt(good, key, value))
  assert "\n" not in str(e.value) and str(e.value).startswith("NSGA-II state: ")
  with pytest.raises(ValueError, match="expected a JSON object, got list"):
    nsga2.state_from_dict(sp, [good])
