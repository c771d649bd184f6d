"""Random search, the baseline: every generation ``population_size`` uniform random feasible
architectures, the same ask/tell interface and number of evaluations as :mod:`evolution`."""

from __future__ import annotations

import numpy as np

from regnas_jax.search.evolution import (EvolutionConfig, SearchState, _key, done,
                                         random_candidates)
from regnas_jax.spaces.base import concat, take

__all__ = ["ask", "done", "init", "tell"]


def init(seed: int) -> SearchState:
  return SearchState("random", int(seed))


def ask(space, constraint, cfg: EvolutionConfig, state: SearchState):
  return random_candidates(space, constraint, cfg, _key(state), cfg.population_size)


def tell(state: SearchState, candidates, fitness, cfg: EvolutionConfig) -> SearchState:
  """Keep the best architecture so far and the latest candidates."""
  fitness = np.asarray(fitness, np.float64)
  if state.population is None:
    pop, fit = candidates, fitness
  else:
    i = state.best_index
    pop = concat(take(state.population, [i]), candidates)
    fit = np.concatenate([np.asarray(state.fitness)[[i]], fitness])
  return state._replace(generation=state.generation + 1, population=pop, fitness=fit,
                        history=state.history + (float(np.max(fit)),),
                        evaluations=state.evaluations + len(fitness))
