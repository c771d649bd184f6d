"""The masked OFA-ResNet50 supernet against exact-shape subnets sliced from it."""

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import costs
from regnas_jax.nn import OFAResNet50, exact_module, extract, reorder_channels, subnet_specs
from regnas_jax.nn.common import init_variables
from regnas_jax.spaces import OFAResNet50Space, ResNetArch, member

import helpers
from helpers import assert_close, exact_run, flat, floor_variances, randomize

# Small stem, width 0.25 (stages 64..512 channels), the full 18-block layout; 12 px gives the
# odd sizes 3 -> 2 at a stride-2 stage, so the ceil-mode average pool of the shortcut is used.
# ImageNet stem at width 0.75 (distinct stem widths), one base block per stage, 36 px:
# 18 -> 9 after the max-pool, then 5, 3, 2.
CONFIGS = {"small": dict(stem="small", width_mult=0.25, res=12, pop=14),
           "imagenet": dict(stem="imagenet", width_mult=0.75, res=36, pop=6,
                            base_depths=(1, 1, 1, 1))}


class Env(NamedTuple):
  sp: OFAResNet50Space
  net: OFAResNet50
  v: dict
  vh: dict           # v as host numpy arrays: extraction is plain slicing, no dispatch
  images: jax.Array
  pop: ResNetArch
  masked: Callable   # (v, images, pop) -> eval logits, train logits, new stats (per member)
  single: Callable   # (v, images, arch) -> eval logits


@functools.lru_cache(maxsize=None)
def setup(name="small"):
  c = dict(CONFIGS[name])
  res, n = c.pop("res"), c.pop("pop")
  sp = OFAResNet50Space(num_classes=10, resolutions=(res,), **c)
  net = OFAResNet50(sp)
  images = jax.random.normal(jax.random.key(1), (6, res, res, 3))
  v = randomize(init_variables(net, jax.random.key(0)), 0)
  module, sv = extract(net, v, sp.max_arch())          # running stats near the batch stats
  _, upd = module.clone(bn_momentum=0.0).apply(sv, images, train=True, mutable=["batch_stats"])
  v = dict(v, batch_stats=floor_variances(upd["batch_stats"]))

  def f(v, x, a):
    ev = net.apply(v, x, a, train=False)
    tr, upd = net.apply(v, x, a, train=True, mutable=["batch_stats"])
    return ev, tr, upd["batch_stats"]

  def score(v, x, a):  # named as in test_scoring_different_archs_compiles_once, which compiles
    return net.apply(v, x, a)  # the same program: the persistent compilation cache serves both

  pop = helpers.archs_for(sp, n - 2, seed=3)
  return Env(sp, net, v, jax.tree.map(np.asarray, v), images, pop, jax.jit(jax.vmap(f, in_axes=(None, None, 0))),
             jax.jit(score))


@pytest.mark.parametrize("name, n", [pytest.param("small", 5, marks=pytest.mark.slow), ("imagenet", 3)])
def test_masked_equals_extracted(name, n):
  """Min, max and random archs: eval logits (same statistics), train logits (batch
  statistics) and the running statistics a train step writes."""
  env = setup(name)
  ev, tr, stats = env.masked(env.v, env.images, env.pop)
  for i in range(n):
    a = member(env.pop, i)
    module, sv = extract(env.net, env.vh, a)
    e_ev, e_tr, e_stats = exact_run(module, sv, env.images)
    assert_close(ev[i], e_ev)
    assert_close(tr[i], e_tr)
    _, st_i = extract(env.net, {"params": env.vh["params"],
                                "batch_stats": jax.tree.map(np.asarray, member(stats, i))}, a)
    chex.assert_trees_all_close(st_i["batch_stats"], e_stats, rtol=1e-4, atol=1e-5)
  # the archs differ in what they compute
  assert len({np.asarray(x).round(4).tobytes() for x in ev[:n]}) == n


@pytest.mark.slow
def test_unused_blocks_stem_layer_and_channels_keep_their_statistics():
  env = setup("small")
  _, _, stats = env.masked(env.v, env.images, env.pop)
  a, new = jax.tree.map(np.asarray, member(env.pop, 0)), member(stats, 0)   # the min arch
  active = env.sp.block_active(a)
  for i, b in enumerate(env.sp.blocks):
    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), new[b.name],
                        env.v["batch_stats"][b.name])
    assert all(jax.tree.leaves(same)) == (not active[i]), b.name
  assert a.stem_depth == 0 and np.array_equal(new["stem_bn2"]["mean"],
                                              env.v["batch_stats"]["stem_bn2"]["mean"])
  c = int(env.sp.stage_channels(a)[0])
  got, old = (np.asarray(t["stage1_block1"]["bn3"]["mean"]) for t in (new, env.v["batch_stats"]))
  assert np.all(got[c:] == old[c:]) and np.all(got[:c] != old[:c])


def test_vmapped_population_equals_member_by_member():
  env = setup("small")
  vm = env.masked(env.v, env.images, env.pop)[0]
  n = len(env.pop.depth)
  for i in range(0, n, 3):
    assert_close(vm[i], env.single(env.v, env.images, member(env.pop, i)), rtol=1e-5)
  scale = 1.0 + 0.1 * jnp.arange(n, dtype=jnp.float32)[:, None]
  stats = jax.tree.map(lambda s: jnp.broadcast_to(s, (n,) + s.shape) * scale, env.v["batch_stats"])
  per = jax.jit(jax.vmap(lambda p, s, x, a: env.net.apply({"params": p, "batch_stats": s}, x, a),
                         in_axes=(None, 0, None, 0)))(env.v["params"], stats, env.images, env.pop)
  for i in range(1, n, 4):
    vi = {"params": env.v["params"], "batch_stats": member(stats, i)}
    assert_close(per[i], env.single(vi, env.images, member(env.pop, i)), rtol=1e-5)
  assert not np.allclose(np.asarray(per[3]), np.asarray(vm[3]))


def test_scoring_different_archs_compiles_once():
  env = setup("small")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def score(v, x, a):
    return env.net.apply(v, x, a)

  chex.clear_trace_counter()
  outs = [score(env.v, env.images, member(env.pop, i)) for i in range(5)]
  assert len({np.asarray(o).tobytes() for o in outs}) == 5


@pytest.mark.parametrize("stem, width, res", [("imagenet", 1.0, 224), ("imagenet", 1.0, 144),
                                              ("small", 0.5, 32)])
def test_analytic_costs_equal_counted_costs(stem, width, res):
  """space.macs / space.params == MACs counted off the exact module's program / its leaves
  (144 px gives odd sizes: 36 -> 18 -> 9 -> 5 in the stages)."""
  sp = OFAResNet50Space(width_mult=width, stem=stem, num_classes=1000, resolutions=(res,))
  net = OFAResNet50(sp)
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), sp.max_arch())
  pop = helpers.archs_for(sp, 8, seed=6)
  x = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  for i in range(10):
    a = jax.tree.map(np.asarray, member(pop, i))
    module = exact_module(net, a)
    sv = jax.eval_shape(lambda v: extract(net, v, a)[1], shapes)   # shapes only
    counted = costs.count_macs(lambda v, x: module.apply(v, x), sv, x)
    assert counted == sp.macs(a)
    assert costs.count_params(sv["params"]) == sp.params(a)


def test_contains_equals_literal_slicing():
  """Every parameter of small's exact subnet is a prefix slice of big's parameter of the same
  name, exactly when contains(big, small)."""
  env = setup("imagenet")
  sp = env.sp
  rng = np.random.default_rng(8)
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(8), 10))
  verdicts = []
  for i in range(10):
    small = member(pop, i)
    grown = ResNetArch(*[np.minimum(x + rng.integers(0, 2, x.shape), f.size - 1).astype(np.int32)
                         for x, f in zip(small, sp.fields())])
    for big in (grown, member(pop, (i + 1) % 10)):
      fb = flat(extract(env.net, env.vh, big)[1]["params"])
      ok = True
      for k, x in flat(extract(env.net, env.vh, small)[1]["params"]).items():
        y = fb.get(k)
        if y is None or any(p > q for p, q in zip(x.shape, y.shape)):
          ok = False
          break
        ok &= np.array_equal(np.asarray(x), np.asarray(y[tuple(slice(0, n) for n in x.shape)]))
      assert bool(sp.contains(big, small)) == ok
      verdicts.append(ok)
  assert any(verdicts) and not all(verdicts)


def test_reorder_channels_preserves_max_net_and_kept_widths():
  env = setup("small")
  sp, net, v = env.sp, env.net, env.v
  ev0, tr0, _ = env.masked(v, env.images, env.pop)
  new = jax.jit(lambda v: reorder_channels(net, v))(v)
  ev1, tr1, _ = env.masked(new, env.images, env.pop)
  assert_close(ev1[1], ev0[1], rtol=1e-5)              # member 1 is the max net
  assert_close(tr1[1], tr0[1])     # batch statistics of 6 images: float noise is amplified
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
  kept = jax.jit(lambda v: reorder_channels(net, v, keep_expands=sp.expand_choices[:-1],
                                            keep_widths=sp.width_choices[:-1]))(v)
  ev2, tr2, _ = env.masked(kept, env.images, env.pop)
  assert_close(ev2, ev0)   # same function; sums over channels in another order
  assert_close(tr2, tr0)
  with pytest.raises(ValueError, match="keep_widths: 0.5 is not one of"):
    reorder_channels(net, v, keep_widths=(0.5,))


def test_extracted_module_is_standalone():
  env = setup("imagenet")
  a = member(env.pop, 3)
  module, sv = extract(env.net, env.vh, a)
  fresh = jax.eval_shape(module.init, jax.random.key(3), env.images)
  chex.assert_trees_all_equal_shapes(fresh, sv)
  specs = subnet_specs(env.sp, a)
  assert len(module.blocks) == len(specs) == int(env.sp.block_active(
      jax.tree.map(np.asarray, a)).sum())
  assert jax.eval_shape(module.apply, sv, env.images).shape == (env.images.shape[0], 10)
