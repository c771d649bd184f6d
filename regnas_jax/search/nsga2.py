"""Constrained, weighted NSGA-II (Deb et al. 2002; SCARLET-NAS's Algorithm 1) as init/ask/tell.

Every objective is *minimised* (pass ``-top1`` to maximise accuracy).  One generation:

1. ``ask``: offspring Q of ``population_size`` from binary tournaments on the current population P
   (lower non-domination rank wins, then the larger weighted crowding distance);
   ``mutation_ratio`` of them mutants of one winner (see *Mutation* below), the rest uniform
   crossovers of two.  The cheap constraint (e.g. a MACs limit) is checked *before* anything is
   evaluated: violating proposals are drawn again.
2. the caller evaluates Q (the expensive part) and says which members pass the expensive
   constraint (e.g. a minimum accuracy);
3. ``tell``: R = P ∪ {feasible members of Q}; non-dominated sorting of R; the next P takes whole
   fronts in rank order and fills the last one by the crowding distance, each objective's
   contribution multiplied by its weight ``w_m`` (SCARLET's "crowding distance weighted by w").

Generation 0 is ``population_size`` random proposals that pass the cheap constraint.  Randomness
is a function of ``(seed, generation)``, so a state saved after ``tell`` (:func:`state_to_dict`)
resumes exactly.  :func:`equispaced` picks K models spread along the final front.

*Mutation* (``cfg.mutation``): ``'space'`` is the space's own ``mutate`` with ``mutate_prob``;
``'hierarchical'`` (the default) is SCARLET-NAS's hierarchical mutation, with its Table 1
probabilities (p_rm 0.2, p_re 0.65, p_pr 0.15, p_M 0.7, p_K−M 0.3).  The paper names these
probabilities but does not define the operators; what follows is OUR reading, not the paper's:

* level 1: per offspring a roulette wheel picks the mutation type, random (p_rm), reinforced
  (p_re) or pruning (p_pr);
* the decisions to change: every element of every field with probability ``mutate_prob``, at
  least one per offspring (if none was drawn, one uniformly among all elements); elements of
  fields with a single choice have nothing to change and are never picked;
* random: each picked element takes a uniformly random *other* choice of its field, so a random
  mutant always differs from its parent;
* reinforced (a stand-in for MoreMNAS's RL-guided mutation that needs no extra model): per
  offspring a group of the current population P is drawn, with p_M the elite M = P's first
  non-dominated front, else (p_K−M) the rest of P, K−M members (M when the rest is empty); each
  picked element draws its choice from the group's choices at that element with add-one
  smoothing, ``P(c) = (count_c + 1) / (group size + number of choices)``, so unseen choices
  stay possible;
* pruning: on a space with a skip choice (``space.skip_field``: the field's name,
  ``space.skip_index``: the choice index meaning "skip this layer", optional
  ``space.skip_allowed``: bool of the field's shape), ONE element of that field, uniformly among
  those that may skip and do not skip yet, is set to skip: a shallower network (SCARLET's
  scalable spaces are about skips).  Without a skip notion or such an element: random mutation.

Random and reinforced mutation never put the skip choice where ``skip_allowed`` forbids it.
All of it runs on the host in numpy, vectorised over a batch of parents.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from regnas_jax.errors import SearchError
from regnas_jax.search.constraints import collect
from regnas_jax.spaces.base import InvalidArchError, concat, pop_size, take

PRNG_IMPL = "unsafe_rbg"
MUTATIONS = ("hierarchical", "space")
MUTATION_TYPES = ("random", "reinforced", "pruning")   # hierarchical_mutation's type indices


class NSGA2Config(NamedTuple):
  population_size: int = 70       # SCARLET Table 1
  mutation_ratio: float = 0.8     # share of offspring made by mutation (the rest: crossover)
  mutate_prob: float = 0.1        # per-decision probability of being mutated (both modes)
  generations: int = 100
  weights: tuple = ()             # per-objective crowding weights (empty: all 1)
  proposal_batch: int = 256
  max_proposals: int = 100_000
  mutation: str = "hierarchical"  # 'hierarchical' (SCARLET, module docstring) | 'space' (mutate)
  p_rm: float = 0.2               # hierarchical: P(random mutation)         } sum to 1
  p_re: float = 0.65              # hierarchical: P(reinforced mutation)     }
  p_pr: float = 0.15              # hierarchical: P(pruning mutation)        }
  p_m: float = 0.7                # reinforced: P(learn from the first front M)   } sum to 1
  p_k_m: float = 0.3              # reinforced: P(learn from the rest of P, K-M)  }

  def check(self, num_objectives: int | None = None) -> None:
    """Raise ``ValueError`` naming the first bad field."""
    for k in ("population_size", "proposal_batch", "max_proposals"):
      v = getattr(self, k)
      if not (isinstance(v, (int, np.integer)) and v >= 2):
        raise ValueError(f"{k}: must be an integer >= 2, got {v!r}")
    if not (isinstance(self.generations, (int, np.integer)) and self.generations >= 0):
      raise ValueError(f"generations: must be an integer >= 0, got {self.generations!r}")
    for k in ("mutation_ratio", "mutate_prob", "p_rm", "p_re", "p_pr", "p_m", "p_k_m"):
      v = getattr(self, k)
      if not (isinstance(v, (int, float)) and 0 <= v <= 1):
        raise ValueError(f"{k}: must be in [0, 1], got {v!r}")
    for names in (("p_rm", "p_re", "p_pr"), ("p_m", "p_k_m")):
      total = sum(getattr(self, k) for k in names)
      if abs(total - 1) > 1e-9:
        raise ValueError(f"{' + '.join(names)}: must sum to 1, got {total:g}")
    if self.mutation not in MUTATIONS:
      raise ValueError(f"mutation: must be one of {MUTATIONS}, got {self.mutation!r}")
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


# -- SCARLET's hierarchical mutation (host side, numpy) ------------------------------------------
def _draw(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
  """Per row of ``w`` (``(..., K)``, non-negative weights) an index drawn with probability
  proportional to its weight; ``-1`` where a row is all zero.  Returns ``w.shape[:-1]`` int."""
  cdf = np.cumsum(w, -1)
  total = cdf[..., -1]
  u = rng.random(total.shape) * total
  hit = cdf > u[..., None]
  # u rounded up to the total: the last index with a positive weight
  last = w.shape[-1] - 1 - np.argmax(w[..., ::-1] > 0, -1)
  idx = np.where(hit.any(-1), np.argmax(hit, -1), last)
  return np.where(total > 0, idx, -1)


def _skip_notion(space):
  """``(field name, skip index, allowed bool (field shape))`` of a space with a skip choice,
  ``None`` for a space without one."""
  name, skip = getattr(space, "skip_field", None), getattr(space, "skip_index", None)
  if name is None or skip is None:
    return None
  try:
    f = space.field(name)
  except KeyError:
    raise ValueError(f"skip_field: {name!r} is not a field of {space.name}") from None
  if not (isinstance(skip, (int, np.integer)) and 0 <= skip < f.size):
    raise ValueError(f"skip_index: must be a choice index of {name} (0..{f.size - 1}), "
                     f"got {skip!r}")
  allowed = getattr(space, "skip_allowed", None)
  allowed = np.ones(f.shape, bool) if allowed is None else np.asarray(allowed, bool)
  if allowed.shape != f.shape:
    raise ValueError(f"skip_allowed: expected shape {f.shape} (field {name}), got "
                     f"{allowed.shape}")
  return name, int(skip), allowed


def _expand(x, ndim):
  """``x`` (``(B,)``) with trailing singleton axes up to ``ndim`` dimensions."""
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def hierarchical_mutation(space, rng: np.random.Generator, parents, population, ranks,
                          cfg: NSGA2Config, *, return_types: bool = False):
  """SCARLET's hierarchical mutation (our reading, module docstring) of a batch of parents.

  ``parents``: arch pytree with leading axis B (the tournament winners); ``population``: the
  current P (leading axis N) and ``ranks``: its non-domination ranks ``(N,)``, which the
  reinforced mutation learns from.  Uses ``cfg.mutate_prob``, ``p_rm``, ``p_re``, ``p_pr``,
  ``p_m``, ``p_k_m``.  Returns the B mutants (numpy int32 arch pytree) and, with
  ``return_types``, also the type each one got, int ``(B,)`` indexing :data:`MUTATION_TYPES`
  (a pruning mutation that fell back to random counts as random).
  """
  cfg.check()
  fields = space.fields()
  par = {f.name: np.asarray(getattr(parents, f.name)).astype(np.int32) for f in fields}
  pop = {f.name: np.asarray(getattr(population, f.name)) for f in fields}
  ranks = np.asarray(ranks)
  b = len(par[fields[0].name])
  if ranks.shape != (len(pop[fields[0].name]),):
    raise ValueError(f"ranks: expected shape ({len(pop[fields[0].name])},), got {ranks.shape}")
  skip = _skip_notion(space)

  # level 1: the type of every offspring
  kind = _draw(rng, np.broadcast_to(np.array([cfg.p_rm, cfg.p_re, cfg.p_pr]), (b, 3)))
  # the decisions to change, flattened over all fields: (B, E); at least one per offspring
  sizes = [int(np.prod(f.shape, dtype=np.int64)) for f in fields]
  picked = np.concatenate([rng.random((b, n)) < cfg.mutate_prob for n in sizes], 1)
  movable = np.concatenate([np.full(n, f.size > 1) for f, n in zip(fields, sizes)])
  picked &= movable
  if movable.any():
    forced = np.flatnonzero(movable)[rng.integers(0, movable.sum(), b)]
    none = np.flatnonzero(~picked.any(1))
    picked[none, forced[none]] = True
  picked = dict(zip([f.name for f in fields], np.split(picked, np.cumsum(sizes)[:-1], 1)))

  # pruning: one allowed, not yet skipping element of the skip field per offspring
  prune_at = None
  if skip is not None:
    name, skip_index, allowed = skip
    ok = ((par[name] != skip_index) & allowed).reshape(b, -1)
    score = np.where(ok, rng.random(ok.shape), -1.0)
    prune_at = np.argmax(score, 1)
    kind = np.where((kind == 2) & ~ok.any(1), 0, kind)
  else:
    kind = np.where(kind == 2, 0, kind)

  # reinforced: the group each offspring learns from
  elite = ranks == 0
  rest = elite if elite.all() else ~elite
  use_elite = rng.random(b) < cfg.p_m

  out = {}
  for f in fields:
    x, k = par[f.name], f.size
    nd = x.ndim + 1
    onehot = x[..., None] == np.arange(k)                                   # (B, *shape, K)
    ban = np.zeros(f.shape + (k,), bool)                                     # choices forbidden
    if skip is not None and f.name == skip[0]:
      ban[..., skip[1]] = ~skip[2]
    # random: uniform over the other allowed choices
    w = np.where(onehot | ban, 0.0, 1.0)
    rand = _draw(rng, w)
    # reinforced: smoothed choice frequencies of the chosen group at every element
    pop_hot = pop[f.name][..., None] == np.arange(k)                        # (N, *shape, K)
    p_elite = (pop_hot[elite].sum(0) + 1) / (elite.sum() + k)
    p_rest = (pop_hot[rest].sum(0) + 1) / (rest.sum() + k)
    w = np.where(_expand(use_elite, nd), p_elite, p_rest) * ~ban
    reinf = _draw(rng, w)
    m = picked[f.name].reshape(x.shape)
    new = np.where(m & _expand(kind == 0, x.ndim) & (rand >= 0), rand, x)
    new = np.where(m & _expand(kind == 1, x.ndim) & (reinf >= 0), reinf, new)
    out[f.name] = new.astype(np.int32)
  if prune_at is not None:
    name, skip_index, _ = skip
    rows = np.flatnonzero(kind == 2)
    flat = out[name].reshape(b, -1)
    flat[rows, prune_at[rows]] = skip_index
    out[name] = flat.reshape(par[name].shape)
  arch = space.arch_type(**out)
  return (arch, kind) if return_types else arch


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
  Mutants come from :func:`hierarchical_mutation` (``cfg.mutation == 'hierarchical'``) or the
  space's ``mutate`` (``'space'``).  Raises :class:`SearchError` when ``max_proposals``
  proposals yield too few.
  """
  cfg.check()
  sample, mutate, cross = _variation(space, float(cfg.mutate_prob))
  n = cfg.population_size
  rng = np.random.default_rng([int(state.seed), int(state.generation), 7])
  if state.population is not None:
    ranks = non_dominated_sort(state.objectives)
    crowd = crowding_distance(state.objectives, ranks, cfg.weights)

  def propose(r, batch):
    key = _key(state, r + 1)
    if state.population is None:
      return sample(key, batch)
    k1, k2 = jax.random.split(key)
    n_mut = int(round(cfg.mutation_ratio * batch))
    p1 = take(state.population, _tournament(rng, ranks, crowd, batch))
    p2 = take(state.population, _tournament(rng, ranks, crowd, batch))
    if cfg.mutation == "hierarchical":
      mut = hierarchical_mutation(space, rng, p1, state.population, ranks, cfg)
    else:
      mut = mutate(jax.random.split(k1, batch), p1)
    crs = cross(jax.random.split(k2, batch), p1, p2)
    use_mut = np.arange(batch) < n_mut
    rng.shuffle(use_mut)
    return jax.tree.map(lambda m, c: np.where(
        use_mut.reshape((-1,) + (1,) * (np.ndim(m) - 1)), m, c), mut, crs)

  ok = (lambda pop: np.ones(pop_size(pop), bool)) if cheap_ok is None else cheap_ok
  return collect(propose, ok, n, batch=cfg.proposal_batch, max_proposals=cfg.max_proposals,
                 what="the cheap constraint (NSGA-II)")


def tell(state: NSGA2State, candidates, objectives, cfg: NSGA2Config,
         feasible=None) -> NSGA2State:
  """Merge the evaluated candidates that pass the expensive constraint (``feasible``, bool
  ``(P,)``, default all) into the population and keep ``population_size`` survivors."""
  f = np.asarray(objectives, np.float64)
  if f.ndim != 2 or len(f) != pop_size(candidates):
    raise ValueError(f"objectives: expected shape ({pop_size(candidates)}, M), got {f.shape}")
  cfg.check(f.shape[1])
  keep = np.ones(len(f), bool) if feasible is None else np.asarray(feasible, bool)
  cand, f = take(candidates, np.flatnonzero(keep)), f[keep]
  if state.population is None:
    pop, obj = cand, f
  else:
    pop, obj = concat(state.population, cand), np.concatenate([state.objectives, f])
  if len(obj) == 0:
    raise SearchError("NSGA-II: no candidate passed the expensive constraint in generation "
                      f"{state.generation}")
  idx = survivors(obj, cfg.population_size, cfg.weights)
  pop, obj = take(pop, idx), obj[idx]
  first = obj[non_dominated_sort(obj) == 0]
  return state._replace(generation=state.generation + 1, population=pop, objectives=obj,
                        evaluations=state.evaluations + len(keep),
                        history=state.history + (first.tolist(),))


# -- JSON state ------------------------------------------------------------------------------------
_JSON_KEYS = ("algorithm", "seed", "generation", "population", "objectives", "evaluations",
              "history")


def state_to_dict(state: NSGA2State) -> dict:
  """The state as plain JSON values: the population as each field's choice-index lists, the
  objectives ``(N, M)`` and every generation's first front as lists of lists of floats."""
  pop = None if state.population is None else {
      k: np.asarray(v).tolist() for k, v in state.population._asdict().items()}
  obj = None if state.objectives is None else np.asarray(state.objectives, np.float64).tolist()
  return {"algorithm": "nsga2", "seed": int(state.seed), "generation": int(state.generation),
          "population": pop, "objectives": obj, "evaluations": int(state.evaluations),
          "history": [np.asarray(h, np.float64).tolist() for h in state.history]}


def _json_matrix(value, where: str) -> np.ndarray:
  """A non-empty ``(N, M)`` float64 array from a JSON list of equally long lists of numbers."""
  if not isinstance(value, (list, tuple)) or not value or not all(
      isinstance(r, (list, tuple)) for r in value):
    raise ValueError(f"{where}: expected a non-empty list of lists of numbers, got "
                     f"{str(value)[:60]}")
  bad = [x for r in value for x in r if isinstance(x, bool) or not isinstance(x, (int, float))]
  if bad:
    raise ValueError(f"{where}: {bad[0]!r} is not a number")
  widths = sorted({len(r) for r in value})
  if len(widths) > 1 or widths[0] == 0:
    raise ValueError(f"{where}: rows must have one common non-zero length, got {widths}")
  a = np.asarray(value, np.float64)
  if np.isnan(a).any():
    raise ValueError(f"{where}: NaN is not an objective value")
  return a


def state_from_dict(space, obj: Mapping) -> NSGA2State:
  """The state written by :func:`state_to_dict`; the population is validated against ``space``.

  A malformed object raises ``ValueError`` (the population's errors as
  :class:`InvalidArchError`) with one line naming the bad entry.
  """
  def fail(msg):
    raise ValueError(f"NSGA-II state: {msg}") from None

  if not isinstance(obj, Mapping):
    fail(f"expected a JSON object, got {type(obj).__name__}")
  extra = sorted(set(obj) - set(_JSON_KEYS))
  if extra:
    fail(f"{extra[0]}: unknown key (allowed: {', '.join(_JSON_KEYS)})")
  missing = [k for k in _JSON_KEYS[1:] if k not in obj]
  if missing:
    fail(f"{missing[0]}: missing")
  if obj.get("algorithm", "nsga2") != "nsga2":
    fail(f"algorithm: expected 'nsga2', got {obj['algorithm']!r}")
  ints = {}
  for k in ("seed", "generation", "evaluations"):
    v = obj[k]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      fail(f"{k}: expected a non-negative integer, got {v!r}")
    ints[k] = v
  gen, pop, f = ints["generation"], obj["population"], obj["objectives"]
  if (pop is None) != (gen == 0) or (f is None) != (gen == 0):
    fail(f"population and objectives: must be null exactly at generation 0 (generation {gen})")
  if pop is not None:
    try:
      pop = space.validate(pop, population=True)
    except InvalidArchError as e:
      raise InvalidArchError(f"NSGA-II state: population.{e}") from None
    except ValueError as e:     # e.g. numpy on ragged lists
      fail(f"population: {e}")
  try:
    if pop is not None:
      f = _json_matrix(f, "objectives")
      if len(f) != pop_size(pop):
        raise ValueError(f"objectives: {len(f)} rows for a population of {pop_size(pop)}")
    hist = obj["history"]
    if not isinstance(hist, (list, tuple)) or len(hist) != gen:
      raise ValueError(f"history: expected a list of {gen} fronts (one per generation), got "
                       f"{len(hist) if isinstance(hist, (list, tuple)) else type(hist).__name__}")
    hist = tuple(_json_matrix(h, f"history[{i}]") for i, h in enumerate(hist))
    for i, h in enumerate(hist):
      if h.shape[1] != f.shape[1]:
        raise ValueError(f"history[{i}]: {h.shape[1]} objectives, the population has "
                         f"{f.shape[1]}")
  except ValueError as e:
    fail(str(e))
  return NSGA2State(ints["seed"], gen, pop, f, ints["evaluations"],
                    tuple(h.tolist() for h in hist))
