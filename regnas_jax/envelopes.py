"""Static shape envelopes: which members of a population share which compiled shapes.

A supernet run inside an *envelope* -- an arch of its space, ``space.envelope(members)``, given
as ``model.clone(envelope=envelope_key(env))`` (``regnas_jax.nn.supernet``) -- slices its
variables to the envelope's shapes and masks inside them: each member costs its envelope, not
the largest network, and one compiled program serves every member the envelope holds.  This
module chooses the envelopes: :func:`partition` cuts a population into at most ``k`` groups of
least total cost, :class:`EnvelopeCatalogue` keeps the envelopes a scorer has compiled and
sends later members to them, so that a search compiles a few envelopes and reuses them.
"""

from __future__ import annotations

import jax
import numpy as np

from regnas_jax.spaces.base import envelope_arch, envelope_key, pop_size


def _cost(space, env) -> float:
  return float(space.macs(env))


def group_block(block_size: int | None, n: int) -> int | None:
  """Members per compiled call for an envelope's group of ``n``: ``block_size``, or the power
  of two at least ``n`` when smaller (few programs, little padding)."""
  b = block_size
  return b if not b or n >= b else min(b, 1 << (n - 1).bit_length())


def partition(space, pop, k: int) -> list[np.ndarray]:
  """Up to ``k`` groups of the members of ``pop`` (one resolution) whose envelopes
  (``space.envelope``) cost little in total, ``sum_g |g| * macs(envelope(g))``, by greedy
  cuts: members sorted by their own MACs, then the group whose best cut into two saves most is
  cut, until ``k`` groups or no cut saves anything (about ``2 k P`` envelopes priced on the
  host; not the optimum, which would price every contiguous run).  Returns member indices per
  group (each sorted)."""
  n = pop_size(pop)
  own = np.array([_cost(space, jax.tree.map(lambda x, i=i: np.asarray(x)[i], pop))
                  for i in range(n)])
  order = np.argsort(own, kind="stable")
  env_cost = lambda idx: _cost(space, space.envelope(jax.tree.map(lambda x: np.asarray(x)[idx],
                                                                  pop)))
  groups = [(order, len(order) * env_cost(order))]

  def best_cut(idx):
    best = (0.0, None)
    whole = len(idx) * env_cost(idx)
    for c in range(1, len(idx)):
      if own[idx[c]] == own[idx[c - 1]] and c < len(idx) - 1:
        continue   # equal costs: cut between different ones only (fewer envelopes to price)
      saving = whole - c * env_cost(idx[:c]) - (len(idx) - c) * env_cost(idx[c:])
      if saving > best[0]:
        best = (saving, c)
    return best

  cuts = {}
  while len(groups) < k:
    for j, (idx, _) in enumerate(groups):
      if j not in cuts:
        cuts[j] = best_cut(idx) if len(idx) > 1 else (0.0, None)
    j = max(cuts, key=lambda j: cuts[j][0])
    saving, c = cuts[j]
    if c is None or saving <= 0:
      break
    idx = groups[j][0]
    groups[j:j + 1] = [(idx[:c], 0.0), (idx[c:], 0.0)]
    cuts = {i if i < j else i + 1: v for i, v in cuts.items() if i != j}
  return [np.sort(idx) for idx, _ in groups]


class EnvelopeCatalogue:
  """The shape envelopes a scorer has compiled, per resolution, and which one each member runs
  in.  A population's members go to the cheapest catalogued envelope that holds them; when
  that costs more than ``refresh`` times a fresh :func:`partition` into ``k`` groups (at most
  one per ``min_group`` members), or some member fits none, the fresh envelopes join the
  catalogue -- so a search compiles a few envelopes early and reuses them while its population
  moves, instead of one program per generation.  ``k`` 0: no envelopes (every member at the
  largest shapes, key ``None``)."""

  def __init__(self, space, k: int, refresh: float = 1.25, min_group: int = 4):
    self.space, self.k, self.refresh, self.min_group = space, int(k), refresh, min_group
    self.envs: dict[int, list[tuple[tuple, float]]] = {}   # resolution index -> (key, macs)

  def _holds(self, env, arch) -> bool:
    both = jax.tree.map(lambda e, a: np.stack([np.asarray(e), np.asarray(a)]), env, arch)
    return all(np.array_equal(x, y) for x, y in zip(self.space.envelope(both), env))

  def assign(self, r_i: int, pop) -> np.ndarray:
    """Per member the index of the cheapest catalogued envelope holding it (-1: none)."""
    envs = [(envelope_arch(self.space, key), c) for key, c in self.envs.get(r_i, [])]
    out = np.full(pop_size(pop), -1)
    for m in range(len(out)):
      a = jax.tree.map(lambda x, m=m: np.asarray(x)[m], pop)
      fits = [(c, e_i) for e_i, (env, c) in enumerate(envs) if self._holds(env, a)]
      if fits:
        out[m] = min(fits)[1]
    return out

  def groups(self, r_i: int, pop) -> list[tuple[tuple | None, np.ndarray]]:
    """``[(envelope key or None, member indices)]`` for a population of one resolution."""
    n = pop_size(pop)
    if self.k <= 0:
      return [(None, np.arange(n))]
    assign = self.assign(r_i, pop)
    cat = self.envs.get(r_i, [])
    # a new envelope is a new program: worth it for groups of several members only
    fresh = partition(self.space, pop, min(self.k, max(1, n // self.min_group)))
    fresh_cost = sum(len(g) * _cost(self.space, self.space.envelope(
        jax.tree.map(lambda x, g=g: np.asarray(x)[g], pop))) for g in fresh)
    if (assign < 0).any() or sum(cat[e][1] for e in assign) > self.refresh * fresh_cost:
      for g in fresh:
        env = self.space.envelope(jax.tree.map(lambda x, g=g: np.asarray(x)[g], pop))
        key = envelope_key(env)
        if key not in [c[0] for c in cat]:
          cat.append((key, _cost(self.space, env)))
      self.envs[r_i] = cat
      assign = self.assign(r_i, pop)
    return [(cat[e][0], np.flatnonzero(assign == e)) for e in np.unique(assign)]
