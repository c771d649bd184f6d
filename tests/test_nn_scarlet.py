"""SCARLET specifics: the exported subnets' plain skips and the fold cases the contract covers.

The supernet contract (masked == extracted with folded skips, skipped layers keep their
statistics, vmap, costs == counted, literal inclusion without the ELS) is tested for every space
in ``test_contract_*.py``: S1 with zero-pad skips, S2 with the ELS, on skip-heavy archs.
"""

import jax
import numpy as np

import contract
from helpers import flat
from regnas_jax.nn.blocks import IBNSpec
from regnas_jax.nn.scarlet import SkipSpec
from regnas_jax.spaces import member


def test_contract_archs_cover_every_fold_case_and_export_plain_skips():
  """The members the contract compares with their exported subnets (S2, ELS) hold every kind
  of layer the folding produces: a residual shortcut holding a folded map (``conv``), plain
  residual and non-residual bottlenecks, and a stride-2 skip (subsampling an odd-sized map at
  12 px); the exported parameters hold no ELS (it is folded)."""
  sp, net = contract.build("scarlet_s2")
  assert sp.els
  pop = contract.population(sp, 3)
  v = contract.random_variables("scarlet_s2", 0)
  kinds = set()
  for i in range(contract.EXACT):
    a = member(pop, i)
    specs = net.subnet_specs(a)
    kinds |= {s.shortcut for s in specs if isinstance(s, IBNSpec)}
    kinds |= {"skip_s2" for s in specs if isinstance(s, SkipSpec) and s.stride == 2}
    _, sv = net.extract(jax.tree.map(np.asarray, v), a)
    assert not any("els" in k for k in flat(sv["params"]))
  assert {"conv", "identity", "none", "skip_s2"} <= kinds
