"""Evolution and random search (ask/tell): constraints hold every generation, results are a
function of the seed, and a state saved as JSON resumes to the same result."""

import json

import jax
import numpy as np
import pytest

from regnas_jax import spaces
from regnas_jax.search import Constraint, EvolutionConfig, evolution, random_search

SP = spaces.OFAMobileNetV3Space(width_mult=0.5, stem="small", num_classes=10, resolutions=(8, 12))
CFG = EvolutionConfig(population_size=12, generations=6, proposal_batch=64, max_proposals=20_000)


def fitness(pop):
  """A synthetic objective: larger kernels early, smaller expand ratios late."""
  return (np.asarray(pop.kernel)[:, :8].sum(1) - np.asarray(pop.expand)[:, 10:].sum(1)
          + 0.1 * np.asarray(pop.depth).sum(1)).astype(np.float64)


def run(algo, constraint, cfg=CFG, seed=0, stop_after=None, state=None, seen=None):
  state = state or algo.init(seed)
  while not algo.done(state, cfg):
    if stop_after is not None and state.generation == stop_after:
      return state
    cand = algo.ask(SP, constraint, cfg, state)
    if seen is not None:
      seen.append(cand)
    state = algo.tell(state, cand, fitness(cand), cfg)
  return state


def window_and_ref(mode="repair"):
  ref = jax.tree.map(lambda x: np.asarray(x)[0], SP.sample(jax.random.key(7), 1))
  if mode == "resample":  # random samples rarely contain a random arch: a smaller reference
    ref = jax.tree.map(np.asarray, SP.min_arch())
    ref = ref._replace(depth=np.array([1, 0, 1, 0, 0], np.int32), kernel=ref.kernel.copy())
    ref.kernel[[0, 8]] = 1
  lo = float(SP.macs(ref))
  return Constraint(lo, lo + 0.3 * float(SP.macs(SP.max_arch())), ref, mode)


@pytest.mark.parametrize("algo", [evolution, random_search])
@pytest.mark.parametrize("mode", ["repair", "resample"])
def test_constraint_never_violated_over_generations(algo, mode):
  c = window_and_ref(mode)
  seen = []
  state = run(algo, c, seen=seen)
  assert len(seen) == CFG.generations + 1 and state.evaluations == CFG.evaluations
  for cand in seen:
    assert spaces.pop_size(cand) == CFG.population_size
    assert c.check(SP, cand).all()
  hist = np.asarray(state.history)
  assert np.all(np.diff(hist) >= 0)                      # elitist: the best never gets worse
  best, fit = state.best()
  assert fit == hist[-1] == max(fitness(c_).max() for c_ in seen)
  assert c.check(SP, jax.tree.map(lambda x: np.asarray(x)[None], best)).all()


def test_evolution_improves_on_its_random_start():
  state = run(evolution, Constraint(), EvolutionConfig(population_size=16, generations=8))
  assert state.history[-1] > state.history[0]


def test_same_seed_same_result_other_seed_other_result():
  c = window_and_ref()
  a, b, other = run(evolution, c), run(evolution, c), run(evolution, c, seed=1)
  jax.tree.map(np.testing.assert_array_equal, a.population, b.population)
  assert a.history == b.history
  assert not all(np.array_equal(x, y) for x, y in zip(a.population, other.population))


@pytest.mark.parametrize("algo", [evolution, random_search])
def test_json_state_resumes_to_the_same_result(algo):
  c = window_and_ref()
  whole = run(algo, c)
  part = run(algo, c, stop_after=3)
  restored = evolution.state_from_dict(SP, json.loads(json.dumps(evolution.state_to_dict(part))))
  resumed = run(algo, c, state=restored)
  jax.tree.map(np.testing.assert_array_equal, resumed.population, whole.population)
  np.testing.assert_array_equal(resumed.fitness, whole.fitness)
  assert resumed.history == whole.history and resumed.evaluations == whole.evaluations


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match="parent_ratio"):
    EvolutionConfig(population_size=2, parent_ratio=0.1).check()
  with pytest.raises(ValueError, match="mutate_prob"):
    EvolutionConfig(mutate_prob=1.5).check()
