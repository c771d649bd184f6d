"""Static shape envelopes: partitions of a population and the catalogue a scorer keeps."""

import jax
import numpy as np

from regnas_jax import envelopes
from regnas_jax.spaces import member


def _envelope_cost(sp, pop, groups):
  return sum(len(g) * float(sp.macs(sp.envelope(jax.tree.map(lambda x, g=g: np.asarray(x)[g],
                                                               pop)))) for g in groups)


def test_partition_into_envelopes_covers_the_members_and_costs_less_with_more_groups(tiny):
  sp = tiny[0]
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(8), 24))
  costs = []
  for k in (1, 2, 4, 8):
    groups = envelopes.partition(sp, pop, k)
    assert len(groups) <= k
    np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(24))
    costs.append(_envelope_cost(sp, pop, groups))
  own = sum(float(sp.macs(member(pop, i))) for i in range(24))
  assert costs == sorted(costs, reverse=True) and own <= costs[-1] < costs[0]
  assert costs[0] == 24 * float(sp.macs(sp.envelope(pop)))
