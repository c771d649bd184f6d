"""OFA's evolutionary search ("a single roll-out of regularized evolution") as init/ask/tell.

Generation 0 is ``population_size`` random feasible architectures (proposals: half uniform,
half tilted towards small or large choices, see ``_proposers``).  Every later generation keeps
the best ``parent_ratio * population_size`` evaluated architectures as parents and asks for
``population_size`` children: ``mutation_ratio`` of them mutants of a random parent (each block
re-samples its choices with ``mutate_prob``, each stage its depth, the resolution with
``resolution_mutate_prob``), the rest uniform crossovers of two random parents.  Every child is
brought inside the constraint (see :mod:`constraints`).  Defaults are OFA's
(``ofa/nas/search_algorithm/evolution.py``): population 100, parents 25%, mutants 50%, mutation
probability 0.1, resolution mutation 0.5, 500 generations.

Evaluations: ``population_size * (generations + 1)``.  Randomness is a function of
``(seed, generation)`` only, so a state saved after ``tell`` resumes exactly.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax.search import constraints as cons
from regnas_jax.spaces.base import concat, take


PRNG_IMPL = "unsafe_rbg"  # proposals only: compiles several times faster on CPU than threefry


class EvolutionConfig(NamedTuple):
  population_size: int = 100
  parent_ratio: float = 0.25
  mutation_ratio: float = 0.5
  mutate_prob: float = 0.1
  resolution_mutate_prob: float = 0.5
  generations: int = 500
  proposal_batch: int = 256       # proposals checked at once against the constraint
  max_proposals: int = 100_000    # per ask: give up (SearchError) after this many

  def check(self) -> None:
    """Raise ``ValueError`` naming the first bad field."""
    for k in ("population_size", "generations", "proposal_batch", "max_proposals"):
      v = getattr(self, k)
      if not (isinstance(v, (int, np.integer)) and v >= (0 if k == "generations" else 1)):
        raise ValueError(f"{k}: must be an integer >= {0 if k == 'generations' else 1}, got {v!r}")
    for k in ("parent_ratio", "mutation_ratio", "mutate_prob", "resolution_mutate_prob"):
      v = getattr(self, k)
      if not (isinstance(v, (int, float)) and 0 <= v <= 1):
        raise ValueError(f"{k}: must be in [0, 1], got {v!r}")
    if self.num_parents < 1:
      raise ValueError(f"parent_ratio: {self.parent_ratio} x population {self.population_size} "
                       f"leaves no parent")

  @property
  def num_parents(self) -> int:
    return int(round(self.parent_ratio * self.population_size))

  @property
  def num_mutants(self) -> int:
    return int(round(self.mutation_ratio * self.population_size))

  @property
  def evaluations(self) -> int:
    return self.population_size * (self.generations + 1)


class SearchState(NamedTuple):
  """What a search needs to continue; plain values, saved as JSON after every ``tell``.

  ``population``/``fitness``: the evaluated architectures kept for the next generation (for
  evolution: the parents of the last generation plus its children), numpy, leading axis.
  ``history``: the best fitness after every generation.
  """
  algorithm: str
  seed: int
  generation: int = 0
  population: Any = None
  fitness: Any = None
  history: tuple = ()
  evaluations: int = 0

  @property
  def best_index(self) -> int:
    return int(np.argmax(self.fitness))  # first of ties: stable

  def best(self):
    """``(arch, fitness)`` of the best evaluated architecture so far."""
    i = self.best_index
    return jax.tree.map(lambda x: x[i], self.population), float(self.fitness[i])


def init(seed: int) -> SearchState:
  return SearchState("evolution", int(seed))


def done(state: SearchState, cfg: EvolutionConfig) -> bool:
  return state.generation > cfg.generations


def _key(state: SearchState) -> jax.Array:
  return jax.random.fold_in(jax.random.key(state.seed, impl=PRNG_IMPL), state.generation)


@functools.lru_cache(maxsize=32)
def _proposers(space, mutate_prob: float, resolution_prob: float):
  """Jitted proposal functions of a space (one compile per proposal batch size)."""
  mutate = jax.vmap(lambda k, a: space.mutate(k, a, mutate_prob, resolution_prob))
  cross = jax.vmap(space.crossover)

  def sample(key, m):
    """Half uniform samples, half tilted ones: per arch a tilt t ~ U(-4, 4) makes choice index
    i of every field likelier by exp(t * i / (n - 1)), so proposals also reach the cheap and
    the expensive ends of the space, where uniform samples almost never fall (a MACs window
    near the largest subnet would otherwise be found by rejection only after ~1e5 tries)."""
    ku, kt, kc = jax.random.split(key, 3)
    half = m // 2
    uni = space.sample(ku, m - half)
    tilt = jax.random.uniform(kt, (half,), minval=-4.0, maxval=4.0)
    out = {}
    for f, k in zip(space.fields(), jax.random.split(kc, len(space.fields()))):
      idx = jnp.arange(f.size) / max(f.size - 1, 1)
      logits = tilt.reshape((half,) + (1,) * (len(f.shape) + 1)) * idx
      logits = jnp.broadcast_to(logits, (half,) + f.shape + (f.size,))
      out[f.name] = jax.random.categorical(k, logits).astype(jnp.int32)
    tilted = space.arch_type(**out)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), uni, tilted)

  def mutants(key, m, par):
    kp, km = jax.random.split(key)
    n_par = len(jax.tree.leaves(par)[0])
    pick = jax.random.randint(kp, (m,), 0, n_par)
    return mutate(jax.random.split(km, m), jax.tree.map(lambda x: x[pick], par))

  def crossovers(key, m, par):
    ka, kb, kc = jax.random.split(key, 3)
    n_par = len(jax.tree.leaves(par)[0])
    a = jax.tree.map(lambda x: x[jax.random.randint(ka, (m,), 0, n_par)], par)
    b = jax.tree.map(lambda x: x[jax.random.randint(kb, (m,), 0, n_par)], par)
    return cross(jax.random.split(kc, m), a, b)

  return (jax.jit(sample, static_argnums=1), jax.jit(mutants, static_argnums=1),
          jax.jit(crossovers, static_argnums=1))


def random_candidates(space, constraint, cfg: EvolutionConfig, key, n: int):
  """``n`` uniform random feasible architectures."""
  sample = _proposers(space, cfg.mutate_prob, cfg.resolution_mutate_prob)[0]
  return cons.feasible(space, constraint, sample, n, key, batch=cfg.proposal_batch,
                       max_proposals=cfg.max_proposals)


def parents(state: SearchState, cfg: EvolutionConfig):
  """The ``num_parents`` best architectures of the state (ties: earlier first)."""
  order = np.argsort(-np.asarray(state.fitness), kind="stable")[:cfg.num_parents]
  return take(state.population, order)


def ask(space, constraint, cfg: EvolutionConfig, state: SearchState):
  """The next ``population_size`` candidates to evaluate (a numpy arch population)."""
  key = _key(state)
  if state.generation == 0:
    return random_candidates(space, constraint, cfg, key, cfg.population_size)
  par = parents(state, cfg)
  _, mutants, crossovers = _proposers(space, cfg.mutate_prob, cfg.resolution_mutate_prob)
  km, kc = jax.random.split(key)
  n_mut = cfg.num_mutants
  out = []
  if n_mut:
    out.append(cons.feasible(space, constraint, lambda k, m: mutants(k, m, par), n_mut, km,
                             batch=cfg.proposal_batch, max_proposals=cfg.max_proposals))
  if cfg.population_size - n_mut:
    out.append(cons.feasible(space, constraint, lambda k, m: crossovers(k, m, par),
                             cfg.population_size - n_mut, kc, batch=cfg.proposal_batch,
                             max_proposals=cfg.max_proposals))
  return concat(*out)


def tell(state: SearchState, candidates, fitness, cfg: EvolutionConfig) -> SearchState:
  """The state after evaluating ``candidates`` (fitness: higher is better, ``(P,)``)."""
  fitness = np.asarray(fitness, np.float64)
  if state.generation == 0 or state.population is None:
    pop, fit = candidates, fitness
  else:
    order = np.argsort(-np.asarray(state.fitness), kind="stable")[:cfg.num_parents]
    pop = concat(take(state.population, order), candidates)
    fit = np.concatenate([np.asarray(state.fitness)[order], fitness])
  best = float(np.max(fit))
  return state._replace(generation=state.generation + 1, population=jax.tree.map(np.asarray, pop),
                        fitness=fit, history=state.history + (best,),
                        evaluations=state.evaluations + len(fitness))


def state_to_dict(state: SearchState) -> dict:
  pop = None if state.population is None else {
      k: np.asarray(v).tolist() for k, v in state.population._asdict().items()}
  return {"algorithm": state.algorithm, "seed": state.seed, "generation": state.generation,
          "population": pop,
          "fitness": None if state.fitness is None else [float(f) for f in state.fitness],
          "history": list(state.history), "evaluations": state.evaluations}


def state_from_dict(space, obj: dict) -> SearchState:
  pop = obj.get("population")
  if pop is not None:
    pop = space.validate({k: np.asarray(v) for k, v in pop.items()}, population=True)
  fit = obj.get("fitness")
  return SearchState(obj["algorithm"], int(obj["seed"]), int(obj["generation"]), pop,
                     None if fit is None else np.asarray(fit, np.float64),
                     tuple(float(h) for h in obj.get("history", ())), int(obj["evaluations"]))
