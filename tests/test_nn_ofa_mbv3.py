"""OFA-MobileNetV3 specifics: costs against OFA's own counter and published figures, weight
inclusion under the kernel transform, channel re-ordering.

The supernet contract (masked == extracted, vmap, costs == counted, literal inclusion without
the kernel transform) is tested for every space in ``test_contract_*.py``; the tests below use
its compiled programs (``contract.env``).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import contract
from contract import assert_close
from regnas_jax.nn.common import init_variables
from regnas_jax.spaces import MBV3Arch, OFAMobileNetV3Space, member


# OFA's own counter run on OFA's own code (commit f03b267, torch 2.13 CPU): OFAMobileNetV3(ks
# [3,5,7], e [3,4,6], d [2,3,4], 1000 classes) -> set_active_subnet -> get_active_subnet ->
# ofa.utils.pytorch_utils.count_net_flops (flops_counter.profile) and count_parameters.
# OFA sums the counts in float32 tensors, so its MACs carry float32 rounding (spacing 64 here).
OFA_COUNTED = {  # (width, arch, resolution): (MACs, params)
    (1.0, "max", 224): (566_170_688, 7_664_760),
    (1.0, "min", 224): (121_278_672, 3_410_792),
    (1.2, "max", 224): (843_101_056, 10_701_632),
    (1.2, "min", 224): (193_078_208, 4_602_456),
}


@pytest.mark.parametrize("key", list(OFA_COUNTED))
def test_ofa_mbv3_costs_match_ofa(key):
  width, which, res = key
  sp = OFAMobileNetV3Space(width_mult=width, resolutions=(res,))
  a = sp.max_arch() if which == "max" else sp.min_arch()
  macs, params = OFA_COUNTED[key]
  assert abs(int(sp.macs(a)) - macs) <= 64 and int(sp.params(a)) == params


def test_ofa_mbv3_cost_range_matches_published_figures():
  """Published anchors: OFA's tutorial finds a w1.2 subnet of 599.1 MFLOPs (= MACs) at <= 224 px
  and suggests FLOPs constraints in [150, 600] M for r in {160, ..., 224} (tutorial/ofa.ipynb,
  ofa/tutorial/evolution_finder.py); REG-NAS (supplementary, sec. D) says the w1.0 OFA-MBv3 space
  "cannot search sub-networks larger than 600 Mflops"."""
  w12 = OFAMobileNetV3Space(width_mult=1.2, resolutions=(160, 176, 192, 208, 224))
  lo = w12.macs(w12.min_arch()._replace(resolution=jnp.int32(0)))
  hi = w12.macs(w12.max_arch())
  assert lo <= 150e6 and hi >= 599.1e6
  w10 = OFAMobileNetV3Space(width_mult=1.0, resolutions=(224,))
  assert 500e6 < w10.macs(w10.max_arch()) < 600e6


def used_support(net, variables, arch):
  """Which supernet weights reach the exact subnet's parameters: the nonzero pattern of
  d/dW sum_leaves(R * net.extract(W)) for random R.  Base weights only: the kernel transform
  matrices are layer-wide operators shared by every subnet that uses a smaller kernel."""
  rng = np.random.default_rng(0)
  _, sv = net.extract(variables, arch)
  r = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32), sv["params"])

  def total(params, r):
    _, sub = net.extract({"params": params}, arch)
    return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(sub["params"]), jax.tree.leaves(r)))

  g = jax.jit(jax.grad(total))(variables["params"], r)  # one compile beats op-by-op dispatch
  flat = jax.tree.flatten_with_path(g)[0]
  return {jax.tree_util.keystr(p): np.asarray(x) != 0 for p, x in flat
          if "matrix" not in jax.tree_util.keystr(p)}


def inclusion_pairs(sp, n, seed):
  """Pairs (big, small): contained by construction, random, and contained-then-broken."""
  rng = np.random.default_rng(seed)
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(seed), n))
  pairs = []
  for i in range(n):
    small = member(pop, i)
    big = MBV3Arch(*[np.minimum(x + rng.integers(0, 2, x.shape), f.size - 1).astype(np.int32)
                     for x, f in zip(small, sp.fields())])
    pairs.append((big, small))
    pairs.append((member(pop, (i + 1) % n), small))
    broken = big._replace(kernel=big.kernel.copy(), expand=big.expand.copy(), depth=big.depth.copy())
    used = np.flatnonzero(sp.block_active(small))
    j = rng.choice(used)
    kind = rng.integers(3)
    if kind == 0 and small.kernel[j] > 0:
      broken.kernel[j] = small.kernel[j] - 1
    elif kind == 1 and small.expand[j] > 0:
      broken.expand[j] = small.expand[j] - 1
    elif small.depth[sp.blocks[j].stage] > 0:
      broken.depth[sp.blocks[j].stage] = small.depth[sp.blocks[j].stage] - 1
    pairs.append((broken, small))
  return pairs


def _key(a):
  return b"".join(np.asarray(x).tobytes() for x in a)


def test_contains_implies_weight_inclusion_under_kernel_transform():
  """With OFA's kernel transform every smaller kernel is computed from the centre crop at the
  second-largest size (k=3 and k=5 both read the central 5x5 of the 7x7 weight), so the base
  weights a subnet reads nest by depth, expand and that crop window.  contains(big, small) must
  imply that big reads every base weight small reads."""
  e = contract.env("ofa_mbv3")
  sp = e.sp
  window = np.array([k if k == max(sp.kernel_choices) else sorted(sp.kernel_choices)[-2]
                     for k in sp.kernel_choices])
  support, verdicts = {}, []
  for big, small in inclusion_pairs(sp, 4, seed=7):
    sb, ss = (support.setdefault(_key(a), used_support(e.net, {"params": e.params}, a))
              for a in (big, small))
    included = all(np.all(ss[k] <= sb[k]) for k in ss)
    used = sp.block_active(small)
    predicted = bool(np.all(big.depth >= small.depth) and np.all(
        ~used | ((window[big.kernel] >= window[small.kernel]) & (big.expand >= small.expand))))
    assert included == predicted
    if sp.contains(big, small):
      assert included
    verdicts.append(included)
  assert any(verdicts) and not all(verdicts)


def test_reorder_channels_preserves_max_net_and_kept_widths():
  e = contract.env("ofa_mbv3")
  sp, net = e.sp, e.net
  v = {"params": e.params, "batch_stats": e.stats}   # per-member statistics: (P, ...) leaves
  masked = lambda v: e.vmapped(v["params"], v["batch_stats"], e.images, e.pop)
  ev0, tr0, _ = contract.vmapped_run("ofa_mbv3")     # members [min, max, random...]
  new = jax.jit(net.reorder_channels)(v)
  ev1, tr1, _ = masked(new)
  assert_close(ev1[1], ev0[1], rtol=1e-5)
  assert_close(tr1[1], tr0[1], rtol=1e-5)
  # it did sort: importance (L1 of projection rows) descending in every block
  for b in sp.blocks:
    imp = np.abs(np.asarray(new["params"][b.name]["proj"]["kernel"])).sum((0, 1, 3))
    old = np.abs(np.asarray(v["params"][b.name]["proj"]["kernel"])).sum((0, 1, 3))
    assert np.all(np.diff(imp) <= 1e-6) and not np.array_equal(imp, old)
  # without keeping, smaller widths take other channels and change
  assert not np.allclose(np.asarray(ev1[0]), np.asarray(ev0[0]), rtol=1e-3)
  # keep_expands=(3, 4): permutations stay inside the 3/4/6 segments -> every subnet unchanged
  kept = jax.jit(lambda v: net.reorder_channels(v, keep_expands=(3, 4)))(v)
  ev2, tr2, _ = masked(kept)
  assert_close(ev2, ev0, rtol=1e-5)
  assert_close(tr2, tr0, rtol=1e-5)
  with pytest.raises(ValueError, match="keep_expands: 5 is not one of"):
    net.reorder_channels(v, keep_expands=(5,))


def test_init_variables_traces_under_eval_shape(tiny):
  """``jax.eval_shape`` of ``init_variables`` (orbax's abstract restore) traces instead of
  compiling, and gives the tree, shapes and dtypes of the real call."""
  sp, net, v, _ = tiny
  abstract = jax.eval_shape(lambda k: init_variables(net, k), jax.random.key(0))
  assert jax.tree.structure(abstract) == jax.tree.structure(v)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, v)
