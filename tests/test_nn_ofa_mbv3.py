"""The masked OFA-MobileNetV3 supernet against exact-shape subnets sliced from it."""

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import costs
from regnas_jax.nn import OFAMobileNetV3, exact_module, extract, reorder_channels
from regnas_jax.nn.common import init_variables
from regnas_jax.nn.ofa_mbv3 import subnet_specs
from regnas_jax.spaces import MBV3Arch, OFAMobileNetV3Space, member

import helpers
from helpers import assert_close, exact_run, floor_variances, randomize

RES = 20  # odd sizes appear after stride 2 (20 -> 10 -> 5 -> 3) in the small stem


P = 22  # population size of every masked call below (one compile per setup)


def calibrated(model, variables, images):
  """Running statistics near the max net's batch statistics, the variances floored so that
  eval-mode BN stays well conditioned for every subnet.  Computed with the max subnet's exact
  model (its statistics tree is the supernet's)."""
  module, sv = extract(model, variables, model.space.max_arch())
  _, upd = module.clone(bn_momentum=0.0, depthwise_impl="xla").apply(
      sv, images, train=True, mutable=["batch_stats"])
  return dict(variables, batch_stats=floor_variances(upd["batch_stats"]))


class Env(NamedTuple):
  sp: OFAMobileNetV3Space
  net: OFAMobileNetV3
  v: dict
  vh: dict           # v as host numpy arrays: extraction is plain slicing, no dispatch
  images: jax.Array
  masked: Callable   # (v, images, pop[P]) -> eval logits, train logits, new stats (per member)
  single: Callable   # (v, images, arch) -> eval logits


def setup(stem="small", width=1.0, transform=True, res=RES, depths=(2, 3, 4)):
  return _setup(stem, width, transform, res, depths)


# The small stem has OFA's full layout (4 blocks per stage, depth 2/3/4); the ImageNet stem at
# width 1.2 without the kernel transform has 2 blocks per stage (depth 1/2): the same code paths,
# half the compile time.
IMAGENET = ("imagenet", 1.2, False, 32, (1, 2))


@functools.lru_cache(maxsize=None)
def _setup(stem, width, transform, res, depths):
  sp = OFAMobileNetV3Space(width_mult=width, stem=stem, num_classes=10, resolutions=(res,),
                           depth_choices=depths)
  net = OFAMobileNetV3(sp, depthwise_impl="shift", kernel_transform=transform)
  images = jax.random.normal(jax.random.key(1), (6, res, res, 3))
  v = randomize(init_variables(net, jax.random.key(0)), 0)
  v = calibrated(net, v, images)

  def f(v, x, a):
    ev = net.apply(v, x, a, train=False)
    tr, upd = net.apply(v, x, a, train=True, mutable=["batch_stats"])
    return ev, tr, upd["batch_stats"]

  def score(v, x, a):  # named as in test_scoring_different_archs_compiles_once, which compiles
    return net.apply(v, x, a)  # the same program: the persistent compilation cache serves both

  return Env(sp, net, v, jax.tree.map(np.asarray, v), images, jax.jit(jax.vmap(f, in_axes=(None, None, 0))),
             jax.jit(score))


def archs_for(sp, n=P - 2, seed=0):
  return helpers.archs_for(sp, n, seed)


@pytest.mark.parametrize("stem, width, transform", [("small", 1.0, True), pytest.param("imagenet", 1.2, False, marks=pytest.mark.slow)])
def test_masked_equals_extracted(stem, width, transform):
  """Min, max and random archs: logits in eval mode (same statistics) and in train mode
  (batch statistics), and the running statistics a train step writes."""
  env = setup(*IMAGENET) if stem == "imagenet" else setup(stem, width, transform)
  pop = archs_for(env.sp, seed=3)
  ev, tr, stats = env.masked(env.v, env.images, pop)
  n = 5 if stem == "small" else 3  # min, max and random archs (each compiles its exact model)
  for i in range(n):
    a = member(pop, i)
    module, sv = extract(env.net, env.vh, a)
    module = module.clone(depthwise_impl="xla")  # an independent depthwise implementation
    e_ev, e_tr, e_stats = exact_run(module, sv, env.images)
    assert_close(ev[i], e_ev)
    assert_close(tr[i], e_tr)
    # the exact subnet's new statistics are slices of the supernet's, member by member
    _, st_i = extract(env.net, {"params": env.vh["params"],
                                "batch_stats": jax.tree.map(np.asarray, member(stats, i))}, a)
    chex.assert_trees_all_close(st_i["batch_stats"], e_stats, rtol=1e-4, atol=1e-5)


def test_inactive_blocks_and_channels_keep_their_statistics():
  env = setup()
  pop = archs_for(env.sp, seed=3)
  _, _, stats = env.masked(env.v, env.images, pop)
  a, new = jax.tree.map(np.asarray, member(pop, 0)), member(stats, 0)   # the min arch
  active = env.sp.block_active(a)
  for i, b in enumerate(env.sp.blocks):
    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), new[b.name], env.v["batch_stats"][b.name])
    assert all(jax.tree.leaves(same)) == (not active[i]), b.name
  mid = int(env.sp.mid_channels(a)[0])
  got = np.asarray(new["stage1_block1"]["dw_bn"]["mean"])
  old = np.asarray(env.v["batch_stats"]["stage1_block1"]["dw_bn"]["mean"])
  assert np.all(got[mid:] == old[mid:]) and np.all(got[:mid] != old[:mid])


@pytest.mark.slow
def test_vmapped_population_equals_member_by_member():
  env = setup()
  pop = archs_for(env.sp, seed=4)
  vm = env.masked(env.v, env.images, pop)[0]
  for i in range(0, P, 3):
    assert_close(vm[i], env.single(env.v, env.images, member(pop, i)), rtol=1e-5)
  # per-member BN statistics (e.g. re-calibrated per subnet) vmapped along with the archs
  scale = 1.0 + 0.1 * jnp.arange(P, dtype=jnp.float32)[:, None]
  stats = jax.tree.map(lambda s: jnp.broadcast_to(s, (P,) + s.shape) * scale, env.v["batch_stats"])
  per = jax.jit(jax.vmap(lambda p, s, x, a: env.net.apply({"params": p, "batch_stats": s}, x, a),
                         in_axes=(None, 0, None, 0)))(env.v["params"], stats, env.images, pop)
  for i in range(0, P, 3):
    vi = {"params": env.v["params"], "batch_stats": member(stats, i)}
    assert_close(per[i], env.single(vi, env.images, member(pop, i)), rtol=1e-5)
  assert not np.allclose(np.asarray(per[3]), np.asarray(vm[3]))


def test_scoring_different_archs_compiles_once():
  env = setup()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def score(v, x, a):
    return env.net.apply(v, x, a)

  chex.clear_trace_counter()
  pop = archs_for(env.sp, 3, seed=5)
  outs = [score(env.v, env.images, member(pop, i)) for i in range(5)]
  assert len({np.asarray(o).tobytes() for o in outs}) == 5  # five different subnets

  @jax.jit
  @chex.assert_max_traces(n=1)
  def score_pop(v, x, pop):
    return jax.vmap(lambda a: env.net.apply(v, x, a))(pop)

  score_pop(env.v, env.images, env.sp.sample(jax.random.key(0), 4))
  score_pop(env.v, env.images, env.sp.sample(jax.random.key(1), 4))


@pytest.mark.parametrize("stem, width, res", [("imagenet", 1.0, 224), ("imagenet", 1.2, 160),
                                              ("small", 1.0, 32), ("small", 0.75, 28)])
def test_analytic_costs_equal_counted_costs(stem, width, res):
  """space.macs / space.params == MACs counted off the exact module's program / its leaves."""
  sp = OFAMobileNetV3Space(width_mult=width, stem=stem, num_classes=10, resolutions=(res,))
  net = OFAMobileNetV3(sp)
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), sp.max_arch())
  pop = archs_for(sp, 8, seed=6)
  x = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  for i in range(10):
    a = jax.tree.map(np.asarray, member(pop, i))
    module = exact_module(net, a)
    sv = jax.eval_shape(lambda v: extract(net, v, a)[1], shapes)   # shapes only
    counted = costs.count_macs(lambda v, x: module.clone(depthwise_impl="xla").apply(v, x), sv, x)
    assert counted == sp.macs(a)
    assert costs.count_params(sv["params"]) == sp.params(a)


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
  d/dW sum_leaves(R * extract(W)) for random R.  Base weights only: the kernel transform
  matrices are layer-wide operators shared by every subnet that uses a smaller kernel."""
  rng = np.random.default_rng(0)
  _, sv = extract(net, variables, arch)
  r = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32), sv["params"])

  def total(params, r):
    _, sub = extract(net, {"params": params}, arch)
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
  env = setup()
  sp = env.sp
  window = np.array([k if k == max(sp.kernel_choices) else sorted(sp.kernel_choices)[-2]
                     for k in sp.kernel_choices])
  support, verdicts = {}, []
  for big, small in inclusion_pairs(sp, 4, seed=7):
    sb, ss = (support.setdefault(_key(a), used_support(env.net, env.vh, a)) for a in (big, small))
    included = all(np.all(ss[k] <= sb[k]) for k in ss)
    used = sp.block_active(small)
    predicted = bool(np.all(big.depth >= small.depth) and np.all(
        ~used | ((window[big.kernel] >= window[small.kernel]) & (big.expand >= small.expand))))
    assert included == predicted
    if sp.contains(big, small):
      assert included
    verdicts.append(included)
  assert any(verdicts) and not all(verdicts)


@pytest.mark.slow
def test_contains_equals_literal_slicing_without_kernel_transform():
  """With plain centre-crop kernels, every parameter of small's exact subnet is a slice
  (prefix channels, centre taps) of big's, exactly when contains(big, small)."""
  env = setup(*IMAGENET)
  verdicts = []
  for big, small in inclusion_pairs(env.sp, 10, seed=8):
    _, pb = extract(env.net, env.vh, big)
    _, ps = extract(env.net, env.vh, small)
    fb = dict((jax.tree_util.keystr(p), x) for p, x in jax.tree.flatten_with_path(pb["params"])[0])
    ok = True
    for p, x in jax.tree.flatten_with_path(ps["params"])[0]:
      y = fb.get(jax.tree_util.keystr(p))
      if y is None or any(a > b for a, b in zip(x.shape, y.shape)):
        ok = False
        break
      if x.ndim == 4 and x.shape[2] == 1 and x.shape[0] > 1:  # depthwise: centre taps
        s = (y.shape[0] - x.shape[0]) // 2
        y = y[s:s + x.shape[0], s:s + x.shape[1]]
      ok &= np.array_equal(np.asarray(x), np.asarray(y[tuple(slice(0, n) for n in x.shape)]))
    assert bool(env.sp.contains(big, small)) == ok
    verdicts.append(ok)
  assert any(verdicts) and not all(verdicts)


def test_reorder_channels_preserves_max_net_and_kept_widths():
  env = setup()
  sp, net, v = env.sp, env.net, env.v
  pop = archs_for(sp, seed=9)                 # [min, max, random...]
  ev0, tr0, _ = env.masked(v, env.images, pop)
  new = jax.jit(lambda v: reorder_channels(net, v))(v)
  ev1, tr1, _ = env.masked(new, env.images, pop)
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
  kept = jax.jit(lambda v: reorder_channels(net, v, keep_expands=(3, 4)))(v)
  ev2, tr2, _ = env.masked(kept, env.images, pop)
  assert_close(ev2, ev0, rtol=1e-5)
  assert_close(tr2, tr0, rtol=1e-5)
  with pytest.raises(ValueError, match="keep_expands: 5 is not one of"):
    reorder_channels(net, v, keep_expands=(5,))


def test_extracted_module_is_standalone():
  """The exact subnet is an ordinary Flax module: a fresh init has the extracted shapes."""
  env = setup()
  a = member(archs_for(env.sp, 1, seed=10), 2)
  module, sv = extract(env.net, env.vh, a)
  fresh = jax.eval_shape(module.init, jax.random.key(3), env.images)
  chex.assert_trees_all_equal_shapes(fresh, sv)
  specs = subnet_specs(env.sp, a)
  assert len(module.blocks) == len(specs) == int(env.sp.block_active(jax.tree.map(np.asarray, a)).sum())
  assert jax.eval_shape(module.apply, sv, env.images).shape == (env.images.shape[0], 10)
