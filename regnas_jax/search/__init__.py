"""Architecture search over a space: rewards, constraints and search algorithms.

Every algorithm is a triple of pure functions over a small state record, in the style of
optax's ``init``/``update`` pairs::

  state = evolution.init(space, constraint, cfg, seed)
  while not evolution.done(state, cfg):
    candidates = evolution.ask(space, constraint, cfg, state)   # arch population (numpy)
    state = evolution.tell(state, candidates, fitness_of(candidates))

Randomness is a function of ``(seed, generation)``, so a state saved after any ``tell``
(:func:`state_to_dict`) resumes to exactly the same result.  :mod:`family` runs the REG-NAS
family search on top: one constrained search per budget, each member containing the previous.
:mod:`nsga2` is the multi-objective search (constrained, weighted NSGA-II; SCARLET-NAS), with the
same ask/tell shape but a vector of objectives per candidate.  :mod:`tunas` holds TuNAS's policy
(independent categoricals, REINFORCE with a moving-average baseline, rewards, schedules).
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
