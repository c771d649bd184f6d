"""Architecture search over a space: rewards, constraints and search algorithms.

Every algorithm is a set of pure functions over a small state record, in the style of
optax's ``init``/``update`` pairs (:data:`ALGORITHMS`: evolution and random search)::

  state = evolution.init(seed)
  while not evolution.done(state, cfg):
    candidates = evolution.ask(space, constraint, cfg, state)   # arch population (numpy)
    state = evolution.tell(state, candidates, fitness_of(candidates), cfg)

Randomness is a function of ``(seed, generation)``, so a state saved after any ``tell``
(:func:`evolution.state_to_dict`) resumes to exactly the same result.  :mod:`family` runs the
REG-NAS family search on top: one constrained search per budget, each member containing the
previous.  :mod:`nsga2` is the multi-objective search (constrained, weighted NSGA-II;
SCARLET-NAS) with the same shape and a vector of objectives per candidate:
``nsga2.init(seed)``, ``nsga2.ask(space, cfg, state, cheap_ok)``, ``nsga2.tell(state,
candidates, objectives, cfg, feasible)``.  :mod:`tunas` holds TuNAS's policy (independent
categoricals, REINFORCE with a moving-average baseline, rewards, schedules):
``tunas.init(space, cfg)``, ``tunas.sample(space, logits, key)``, ``tunas.update(space, state,
arch, rew, total_steps, cfg)``.
"""

from regnas_jax.search import (constraints, evolution, family, nsga2, random_search, rewards,
                               tunas)
from regnas_jax.search.constraints import Constraint, SearchError
from regnas_jax.search.evolution import EvolutionConfig, SearchState
from regnas_jax.search.rewards import PRESETS, parse_reward, reward

ALGORITHMS = {"evolution": evolution, "random": random_search}

__all__ = ["ALGORITHMS", "Constraint", "EvolutionConfig", "PRESETS", "SearchError", "SearchState",
           "constraints", "evolution", "family", "nsga2", "parse_reward", "random_search", "reward",
           "rewards", "tunas"]
