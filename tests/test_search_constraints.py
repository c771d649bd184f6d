"""The MACs window and the weight-inclusion constraint: proposals always end up feasible."""

import jax
import numpy as np
import pytest

from regnas_jax import spaces
from regnas_jax.search import constraints
from regnas_jax.search.constraints import Constraint, SearchError

SP = spaces.OFAMobileNetV3Space(width_mult=0.5, stem="small", num_classes=10, resolutions=(8, 12))


def _member(pop, i):
  return jax.tree.map(lambda x: np.asarray(x)[i], pop)


@pytest.mark.parametrize("mode", ["repair", "resample"])
def test_feasible_proposals_satisfy_window_and_inclusion(mode):
  mx = float(SP.macs(SP.max_arch()))
  for seed in range(4):
    ref = _member(SP.sample(jax.random.key(100 + seed), 1), 0)
    if mode == "resample":  # a random sample rarely contains a random arch: a smaller reference
      ref = jax.tree.map(np.asarray, SP.min_arch())
      ref = ref._replace(depth=ref.depth.copy(), kernel=ref.kernel.copy())
      ref.depth[seed] = 1
      ref.kernel[5 * seed] = 1
    lo = max(float(SP.macs(ref)), 0.4 * mx)
    c = Constraint(lo, lo + 0.25 * mx, ref, mode)
    pop = constraints.feasible(SP, c, lambda k, m: SP.sample(k, m), 40, jax.random.key(seed),
                               batch=64, max_proposals=20_000)
    assert pop.depth.shape == (40, 5) and pop.kernel.dtype == np.int32
    macs = SP.macs(pop)
    assert np.all((macs >= lo) & (macs <= lo + 0.25 * mx))
    assert np.all(SP.contains(pop, jax.tree.map(lambda r: np.broadcast_to(r, (40,) + r.shape), ref)))
    assert np.all(c.check(SP, pop))


def test_repair_is_the_nearest_containing_arch():
  pop = jax.tree.map(np.asarray, SP.sample(jax.random.key(0), 64))
  small = jax.tree.map(np.asarray, SP.sample(jax.random.key(1), 64))
  grown = SP.grow_to_contain(pop, small)
  assert np.all(SP.contains(grown, small))
  used = SP.block_active(small)
  # only what small relies on moves, and only upwards
  for f in ("kernel", "expand"):
    g, p = getattr(grown, f), getattr(pop, f)
    assert np.all(g >= p) and np.all(g[~used] == p[~used])
  np.testing.assert_array_equal(grown.resolution, pop.resolution)
  # archs that already contain small are unchanged
  again = SP.grow_to_contain(grown, small)
  jax.tree.map(np.testing.assert_array_equal, again, grown)


def test_impossible_window_is_an_error_not_a_dropped_constraint():
  ref = jax.tree.map(np.asarray, SP.max_arch())
  c = Constraint(0, float(SP.macs(SP.min_arch())) * 1.5, ref)  # containing max is never cheap
  with pytest.raises(SearchError, match="satisfied the constraint"):
    constraints.feasible(SP, c, lambda k, m: SP.sample(k, m), 4, jax.random.key(0), batch=32,
                         max_proposals=128)
  with pytest.raises(ValueError, match="inclusion_mode"):
    Constraint(inclusion_mode="ignore")
