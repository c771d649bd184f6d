"""OFA-ResNet50 specifics: channel re-ordering of the middle and the outer (residual) widths.

The supernet contract (masked == extracted, unused statistics kept, vmap, costs == counted,
literal inclusion) is tested for every space in ``test_contract_*.py``; the test below uses its
compiled programs (``contract.env``: ImageNet stem, one base block per stage).
"""

import jax
import numpy as np
import pytest

import contract
from contract import assert_close


def test_reorder_channels_preserves_max_net_and_kept_widths():
  e = contract.env("ofa_resnet50")
  sp, net = e.sp, e.net
  v = {"params": e.params, "batch_stats": e.stats}   # per-member statistics: (P, ...) leaves
  masked = lambda v: e.vmapped(v["params"], v["batch_stats"], e.images, e.pop)
  ev0, tr0, _ = contract.vmapped_run("ofa_resnet50")  # members [min, max, random...]
  new = jax.jit(net.reorder_channels)(v)
  ev1, tr1, _ = masked(new)
  assert_close(ev1[1], ev0[1], rtol=1e-5)              # member 1 is the max net
  assert_close(tr1[1], tr0[1])     # batch statistics of 4 images: float noise is amplified
  p0, p1 = new["params"], v["params"]
  # it sorted: middle channels by the L1 norm of the conv3 rows reading them, and the
  # residual stream of stage 2 by the L1 norm of every weight reading it
  for b in sp.blocks:
    imp = np.abs(np.asarray(p0[b.name]["conv3"]["kernel"])).sum((0, 1, 3))
    assert np.all(np.diff(imp) <= 1e-5)
  readers = [p0[b.name]["conv1"]["kernel"] for b in sp.blocks if b.stage == 1 and b.index > 0]
  readers += [p0["stage3_block1"]["conv1"]["kernel"], p0["stage3_block1"]["down"]["kernel"]]
  imp = sum(np.abs(np.asarray(k)).sum((0, 1, 3)) for k in readers)
  assert np.all(np.diff(imp) <= 1e-4)
  assert not np.array_equal(np.asarray(p0["stage2_block1"]["conv3"]["kernel"]),
                            np.asarray(p1["stage2_block1"]["conv3"]["kernel"]))
  assert not np.allclose(np.asarray(ev1[0]), np.asarray(ev0[0]), rtol=1e-3)   # min net moved
  # keeping every width and expand ratio: all subnets unchanged
  kept = jax.jit(lambda v: net.reorder_channels(v, keep_expands=sp.expand_choices[:-1],
                                            keep_widths=sp.width_choices[:-1]))(v)
  ev2, tr2, _ = masked(kept)
  assert_close(ev2, ev0)   # same function; sums over channels in another order
  assert_close(tr2, tr0)
  with pytest.raises(ValueError, match="keep_widths: 0.5 is not one of"):
    net.reorder_channels(v, keep_widths=(0.5,))
