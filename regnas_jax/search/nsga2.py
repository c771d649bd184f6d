"""Constrained, weighted NSGA-II (Deb et al. 2002; SCARLET-NAS's Algorithm 1) as init/ask/tell.

Every objective is *minimised* (pass ``-top1`` to maximise accuracy).  One generation:

1. ``ask``: offspring Q of ``population_size`` from binary tournaments on the current population P
   (lower non-domination rank wins, then the larger weighted crowding distance);
   ``mutation_ratio`` of them mutants of one winner (``space.mutate``), the rest uniform
   crossovers of two.  The cheap constraint (e.g. a MACs limit) is checked *before* anything is
   evaluated: violating proposals are drawn again.
2. the caller evaluates Q (the expensive part) and says which members pass the expensive
   constraint (e.g. a minimum accuracy);
3. ``tell``: R = P ∪ {feasible members of Q}; non-dominated sorting of R; the next P takes whole
   fronts in rank order and fills the last one by the crowding distance, each objective's
   contribution multiplied by its weight ``w_m`` (SCARLET's "crowding distance weighted by w").

Generation 0 is ``population_size`` random proposals that pass the cheap constraint.  Randomness
is a function of ``(seed, generation)``, so a state saved after ``tell`` resumes exactly.
:func:`equispaced` picks K models spread along the final front.

SCARLET's hierarchical mutation (Table 1: p_rm, p_re, p_pr, p_M, p_K−M) is not implemented yet;
mutation here is the space's own ``mutate`` with ``mutate_prob``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from regnas_jax.search.constraints import SearchError
from regnas_jax.search.evolution import _concat, _take
from regnas_jax.spaces.base import pop_size

PRNG_IMPL = "unsafe_rbg"


class NSGA2Config(NamedTuple):
  population_size: int = 70       # SCARLET Table 1
  mutation_ratio: float = 0.8     # share of offspring made by mutation (the rest: crossover)
  mutate_prob: float = 0.1        # per-decision resampling probability of space.mutate
  generations: int = 100
  weights: tuple = ()             # per-objective crowding weights (empty: all 1)
  proposal_batch: int = 256
  max_proposals: int = 100_000

  def check(self, num_objectives: int | None = None) -> None:
    """Raise ``ValueError`` naming the first bad field."""
    for k in ("population_size", "proposal_batch", "max_proposals"):
      v = getattr(self, k)
      if not (isinstance(v, (int, np.integer)) and v >= 2):
        raise ValueError(f"{k}: must be an integer >= 2, got {v!r}")
    if not (isinstance(self.generations, (int, np.integer)) and self.generations >= 0):
      raise ValueError(f"generations: must be an integer >= 0, got {self.generations!r}")
    for k in ("mutation_ratio", "mutate_prob"):
      v = getattr(self, k)
      if not (isinstance(v, (int, float)) and 0 <= v <= 1):
        raise ValueError(f"{k}: must be in [0, 1], got {v!r}")
    w = tuple(self.weights)
    if any(not (isinstance(x, (int, float)) and x >= 0) for x in w):
      raise ValueError(f"weights: must be non-negative numbers, got {w}")
    if w and num_objectives is not None and len(w) != num_objectives:
      raise ValueError(f"weights: {len(w)} given for {num_objectives} objectives")


class NSGA2State(NamedTuple):
  seed: int
  generation: int = 0
  population: Any = None     # arch pytree with a leading axis (numpy), the current P
  objectives: Any = None     # float64 (n, M), minimised
  evaluations: int = 0
  history: tuple = ()        # per generation: the first front's objectives (lists)


# -- the two NSGA-II primitives ------------------------------------------------------------------
def non_dominated_sort(objectives) -> np.ndarray:
  """Front index of every point (0 = non-dominated), all objectives minimised.

  ``a`` dominates ``b`` iff ``a <= b`` in every objective and ``a < b`` in at least one; equal
  points share a front.  ``objectives``: ``(N, M)``.  O(M N^2) time and N^2 memory.
  """
  f = np.asarray(objectives, np.float64)
  if f.ndim != 2:
    raise ValueError(f"objectives: expected shape (N, M), got {f.shape}")
  le = np.all(f[:, None, :] <= f[None, :, :], axis=-1)
  lt = np.any(f[:, None, :] < f[None, :, :], axis=-1)
  dom = le & lt                          # dom[i, j]: i dominates j
  count = dom.sum(0)                     # how many dominate j
  ranks = np.full(len(f), -1, np.int64)
  front, r = np.flatnonzero(count == 0), 0
  while front.size:
    ranks[front] = r
    count = count - dom[front].sum(0)
    count[ranks >= 0] = -1
    front, r = np.flatnonzero(count == 0), r + 1
  return ranks


def crowding_distance(objectives, ranks, weights: Sequence[float] = ()) -> np.ndarray:
  """Weighted crowding distance of every point within its front.

  Per front and objective m, points sorted by f_m get ``w_m * (f_m[next] - f_m[prev]) /
  (max f_m - min f_m)`` (normalised by the front's range); the two extremes of any objective with
  ``w_m > 0`` get ``inf``.  Weights (default 1) let the survivors spread more along the objectives
  that matter (SCARLET).  Returns ``(N,)`` float64.
  """
  f = np.asarray(objectives, np.float64)
  ranks = np.asarray(ranks)
  n, m = f.shape
  w = np.ones(m) if not len(weights) else np.asarray(weights, np.float64)
  out = np.zeros(n)
  for r in np.unique(ranks):
    idx = np.flatnonzero(ranks == r)
    for j in range(m):
      if w[j] == 0:
        continue
      order = idx[np.argsort(f[idx, j], kind="stable")]
      vals = f[order, j]
      span = vals[-1] - vals[0]
      out[order[0]] = out[order[-1]] = np.inf
      if len(order) > 2 and span > 0:
        out[order[1:-1]] += w[j] * (vals[2:] - vals[:-2]) / span
  return out


def survivors(objectives, n: int, weights: Sequence[float] = ()) -> np.ndarray:
  """Indices of the ``n`` points NSGA-II keeps: whole fronts by rank, the last front cut by
  descending weighted crowding distance (ties by index, so the choice is deterministic)."""
  ranks = non_dominated_sort(objectives)
  crowd = crowding_distance(objectives, ranks, weights)
  order = np.lexsort((np.arange(len(ranks)), -crowd, ranks))
  return np.sort(order[:n])


def equispaced(objectives, k: int, axis: int = 0) -> np.ndarray:
  """K indices of the first front spread evenly along objective ``axis`` (SCARLET: "K
  equispaced models near the Pareto front"): for K targets equally spaced between the front's
  extremes, the nearest front point not taken yet."""
  f = np.asarray(objectives, np.float64)
  front = np.flatnonzero(non_dominated_sort(f) == 0)
  front = front[np.argsort(f[front, axis], kind="stable")]
  if k >= len(front):
    return front
  targets = np.linspace(f[front[0], axis], f[front[-1], axis], k)
  taken = []
  for t in targets:
    free = [i for i in front if i not in taken]
    taken.append(min(free, key=lambda i: abs(f[i, axis] - t)))
  return np.array(sorted(taken, key=lambda i: f[i, axis]))


def igd(front, reference) -> float:
  """Inverted generational distance: mean over the reference front's points of the distance to
  the nearest point of ``front`` (0 when the reference is covered)."""
  a, b = np.asarray(front, np.float64), np.asarray(reference, np.float64)
  d = np.sqrt(((b[:, None, :] - a[None, :, :]) ** 2).sum(-1))
  return float(d.min(1).mean())


# -- init / ask / tell ----------------------------------------------------------------------------
def init(seed: int) -> NSGA2State:
  return NSGA2State(int(seed))


def done(state: NSGA2State, cfg: NSGA2Config) -> bool:
  return state.generation > cfg.generations


def _key(state: NSGA2State, salt: int = 0):
  k = jax.random.fold_in(jax.random.key(state.seed, impl=PRNG_IMPL), state.generation)
  return jax.random.fold_in(k, salt)


@functools.lru_cache(maxsize=None)
def _variation(space, mutate_prob: float):
  sample = jax.jit(lambda k, n: space.sample(k, n), static_argnums=1)
  mutate = jax.jit(jax.vmap(lambda k, a: space.mutate(k, a, mutate_prob)))
  cross = jax.jit(jax.vmap(space.crossover))
  return sample, mutate, cross


def _tournament(rng, ranks, crowd, n):
  """Winners of ``n`` binary tournaments (lower rank, then larger crowding distance)."""
  a, b = rng.integers(0, len(ranks), n), rng.integers(0, len(ranks), n)
  a_wins = (ranks[a] < ranks[b]) | ((ranks[a] == ranks[b]) & (crowd[a] >= crowd[b]))
  return np.where(a_wins, a, b)


def ask(space, cfg: NSGA2Config, state: NSGA2State,
        cheap_ok: Callable[[Any], np.ndarray] | None = None):
  """``population_size`` new candidates (numpy arch pytree) that pass ``cheap_ok``.

  ``cheap_ok(pop) -> bool (P,)`` is the constraint checked before evaluation (default: none).
  Raises :class:`SearchError` when ``max_proposals`` proposals yield too few.
  """
  cfg.check()
  sample, mutate, cross = _variation(space, float(cfg.mutate_prob))
  n, batch = cfg.population_size, cfg.proposal_batch
  rng = np.random.default_rng([int(state.seed), int(state.generation), 7])
  if state.population is not None:
    ranks = non_dominated_sort(state.objectives)
    crowd = crowding_distance(state.objectives, ranks, cfg.weights)
  kept, proposed, salt = [], 0, 0
  while sum(pop_size(k) for k in kept) < n:
    if proposed >= cfg.max_proposals:
      raise SearchError(f"NSGA-II: {proposed} proposals gave only "
                        f"{sum(pop_size(k) for k in kept)} of {n} candidates that pass the "
                        f"cheap constraint")
    salt += 1
    key = _key(state, salt)
    if state.population is None:
      cand = sample(key, batch)
    else:
      k1, k2 = jax.random.split(key)
      n_mut = int(round(cfg.mutation_ratio * batch))
      p1 = _take(state.population, _tournament(rng, ranks, crowd, batch))
      p2 = _take(state.population, _tournament(rng, ranks, crowd, batch))
      mut = mutate(jax.random.split(k1, batch), p1)
      crs = cross(jax.random.split(k2, batch), p1, p2)
      use_mut = np.arange(batch) < n_mut
      rng.shuffle(use_mut)
      cand = jax.tree.map(lambda m, c: np.where(
          use_mut.reshape((-1,) + (1,) * (np.ndim(m) - 1)), m, c), mut, crs)
    cand = jax.tree.map(np.asarray, cand)
    proposed += batch
    ok = np.ones(batch, bool) if cheap_ok is None else np.asarray(cheap_ok(cand), bool)
    if ok.any():
      kept.append(_take(cand, np.flatnonzero(ok)))
  return _take(_concat(*kept), np.arange(n))


def tell(state: NSGA2State, candidates, objectives, cfg: NSGA2Config,
         feasible=None) -> NSGA2State:
  """Merge the evaluated candidates that pass the expensive constraint (``feasible``, bool
  ``(P,)``, default all) into the population and keep ``population_size`` survivors."""
  f = np.asarray(objectives, np.float64)
  if f.ndim != 2 or len(f) != pop_size(candidates):
    raise ValueError(f"objectives: expected shape ({pop_size(candidates)}, M), got {f.shape}")
  cfg.check(f.shape[1])
  keep = np.ones(len(f), bool) if feasible is None else np.asarray(feasible, bool)
  cand, f = _take(candidates, np.flatnonzero(keep)), f[keep]
  if state.population is None:
    pop, obj = cand, f
  else:
    pop, obj = _concat(state.population, cand), np.concatenate([state.objectives, f])
  if len(obj) == 0:
    raise SearchError("NSGA-II: no candidate passed the expensive constraint in generation "
                      f"{state.generation}")
  idx = survivors(obj, cfg.population_size, cfg.weights)
  pop, obj = _take(pop, idx), obj[idx]
  first = obj[non_dominated_sort(obj) == 0]
  return state._replace(generation=state.generation + 1, population=pop, objectives=obj,
                        evaluations=state.evaluations + len(keep),
                        history=state.history + (first.tolist(),))
