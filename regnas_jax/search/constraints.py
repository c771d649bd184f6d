"""Search constraints: a MACs window and REG-NAS weight inclusion, with feasible proposals.

MACs are multiply-accumulates of one forward pass of one image, counted as OFA counts them
(OFA prints the same number as "MFLOPs").  A candidate is feasible when its MACs lie in
``[macs_low, macs_high]`` and, if a reference is set, it contains the reference
(``space.contains(candidate, reference)``: it holds every weight the reference uses).

Proposals that break the inclusion constraint are either *repaired* (raised to the nearest
architecture containing the reference, ``space.grow_to_contain``) or *resampled*; proposals
outside the MACs window are always resampled, as OFA's evolution finder does.  The constraint is
never dropped: if too few feasible proposals are found, :class:`SearchError` says so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

from regnas_jax.errors import SearchError
from regnas_jax.spaces.base import pop_size

INCLUSION_MODES = ("repair", "resample")


@dataclasses.dataclass(frozen=True)
class Constraint:
  """Feasible set of a search.

  Attributes:
    macs_low, macs_high: the MACs window (per image, at the arch's resolution).
    reference: an architecture every candidate must contain, or ``None``.
    inclusion_mode: 'repair' or 'resample' (how proposals are brought inside the inclusion).
  """
  macs_low: float = 0.0
  macs_high: float = math.inf
  reference: Any = None
  inclusion_mode: str = "repair"

  def __post_init__(self):
    if self.inclusion_mode not in INCLUSION_MODES:
      raise ValueError(f"inclusion_mode: {self.inclusion_mode!r} is not one of {INCLUSION_MODES}")
    if not self.macs_low <= self.macs_high:
      raise ValueError(f"MACs window [{self.macs_low}, {self.macs_high}] is empty")

  def describe(self) -> str:
    w = f"MACs in [{self.macs_low / 1e6:.3f}M, {self.macs_high / 1e6:.3f}M]"
    return w + (" containing the reference" if self.reference is not None else "")

  def check(self, space, pop) -> np.ndarray:
    """Bool ``(P,)``: which members of ``pop`` are feasible."""
    pop = jax.tree.map(np.asarray, pop)
    macs = np.asarray(space.macs(pop), np.float64)
    ok = (macs >= self.macs_low) & (macs <= self.macs_high)
    if self.reference is not None:
      ok &= np.asarray(space.contains(pop, jax.tree.map(np.asarray, self.reference)), bool)
    return ok

  def repair(self, space, pop):
    """Proposals brought inside the inclusion constraint (mode 'repair'), else unchanged."""
    pop = jax.tree.map(np.asarray, pop)
    if self.reference is None or self.inclusion_mode != "repair":
      return pop
    ref = jax.tree.map(np.asarray, self.reference)
    return space.grow_to_contain(pop, jax.tree.map(
        lambda r, p: np.broadcast_to(r, p.shape), ref, pop))


def feasible(space, constraint: Constraint, propose: Callable[[jax.Array, int], Any], n: int,
             key: jax.Array, *, batch: int = 256, max_proposals: int = 100_000):
  """``n`` feasible architectures from ``propose(key, m)`` (m proposals as a population).

  Proposals are made ``batch`` at a time (round ``r`` with ``fold_in(key, r)``), repaired,
  checked, and the feasible ones kept in order, until ``n`` are found; raises
  :class:`SearchError` after ``max_proposals``.
  """
  return collect(lambda r, m: constraint.repair(space, propose(jax.random.fold_in(key, r), m)),
                 lambda pop: constraint.check(space, pop), n, batch=batch,
                 max_proposals=max_proposals, what=f"the constraint ({constraint.describe()})",
                 hint="; widen the MACs window (search.window) or change the budgets")


def collect(propose: Callable[[int, int], Any], ok: Callable[[Any], np.ndarray], n: int, *,
            batch: int, max_proposals: int, what: str, hint: str = ""):
  """The first ``n`` proposals that pass ``ok``: ``propose(r, batch)`` makes round ``r``'s
  proposals (a population), ``ok(pop) -> bool (P,)`` checks them.  Shared by every search's
  ``ask``; raises :class:`SearchError` naming ``what`` after ``max_proposals`` proposals."""
  found, made, r = [], 0, 0
  while sum(pop_size(f) for f in found) < n:
    if made >= max_proposals:
      got = sum(pop_size(f) for f in found)
      raise SearchError(f"only {got} of {n} proposals satisfied {what} after {made} tries{hint}")
    cand = jax.tree.map(np.asarray, propose(r, batch))
    keep = np.asarray(ok(cand), bool)
    made += batch
    r += 1
    if keep.any():
      found.append(jax.tree.map(lambda x: x[keep], cand))
  pop = jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *found)
  return jax.tree.map(lambda x: x.astype(np.int32), pop)
