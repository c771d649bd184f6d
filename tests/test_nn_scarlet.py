"""The SCARLET supernet (skips with and without ELS) against exported subnets with folded skips."""

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import costs
from regnas_jax.nn import ScarletSupernet, exact_module, extract, subnet_specs
from regnas_jax.nn.common import init_variables
from regnas_jax.spaces import ScarletArch, ScarletS1Space, ScarletS2Space, member, stack

from helpers import assert_close, exact_run, flat, floor_variances, randomize

# Quarter width on the small stem at 12 px: strides at layers 3, 7 and 15 give 12 -> 6 -> 3 -> 2,
# so a stride-2 skip subsamples an odd-sized map.
CONFIGS = {"s2_els": (ScarletS2Space, True), "s1_plain": (ScarletS1Space, False)}


class Env(NamedTuple):
  sp: ScarletS1Space
  net: ScarletSupernet
  v: dict
  vh: dict
  images: jax.Array
  pop: ScarletArch
  masked: Callable


def skip_heavy(sp, n, seed):
  """Random archs with about half the layers skipped (long runs of skips, every fold case)."""
  pop = sp.sample(jax.random.key(seed), n)
  rng = np.random.default_rng(seed)
  return pop._replace(op=np.where(rng.random(pop.op.shape) < 0.5, 0, np.asarray(pop.op)))


@functools.lru_cache(maxsize=None)
def setup(name):
  cls, els = CONFIGS[name]
  sp = cls(width_mult=0.25, stem="small", num_classes=10, resolutions=(12,), els=els)
  # XLA's depthwise conv: slow on CPU for large maps, but on 12 px the op-by-op exact runs
  # compile much faster than the shifted-taps loop.
  net = ScarletSupernet(sp, depthwise_impl="xla")
  images = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
  v = randomize(init_variables(net, jax.random.key(0)), 0)
  rng = np.random.default_rng(1)   # ELS maps far from their identity init, varied statistics

  def perturb(p, x):
    name = jax.tree_util.keystr(p)
    if "els" in name or "mean" in name:
      return x + 0.3 * rng.normal(size=x.shape).astype(np.float32)
    return x * (1 + 0.5 * rng.random(size=x.shape).astype(np.float32)) if "var" in name else x

  v = {k: jax.tree_util.tree_map_with_path(perturb, t) for k, t in v.items()}
  v["batch_stats"] = floor_variances(v["batch_stats"], 0.2)

  def f(v, x, a):
    ev = net.apply(v, x, a, train=False)
    tr, upd = net.apply(v, x, a, train=True, mutable=["batch_stats"])
    return ev, tr, upd["batch_stats"]

  rand = skip_heavy(sp, 4, seed=3)
  pop = stack([sp.min_arch(), sp.max_arch()] + [member(rand, i) for i in range(4)])
  return Env(sp, net, v, jax.tree.map(np.asarray, v), images, pop,
             jax.jit(jax.vmap(f, in_axes=(None, None, 0))))


@pytest.mark.parametrize("name, n", [("s2_els", 3), pytest.param("s1_plain", 3, marks=pytest.mark.slow)])
def test_masked_equals_extracted_with_folded_skips(name, n):
  """All-skip, largest and skip-heavy archs: eval logits, train logits and written statistics of
  the supernet equal those of the exported subnet, whose skips are plain and whose ELS (or
  zero-pad) maps are folded into the next convolution."""
  env = setup(name)
  ev, tr, stats = env.masked(env.v, env.images, env.pop)
  for i in range(n):
    a = member(env.pop, i)
    module, sv = extract(env.net, env.vh, a)
    assert not any("els" in k for k in flat(sv["params"]))
    e_ev, e_tr, e_stats = exact_run(module, sv, env.images)
    assert_close(ev[i], e_ev)
    assert_close(tr[i], e_tr)
    _, st_i = extract(env.net, {"params": env.vh["params"],
                                "batch_stats": jax.tree.map(np.asarray, member(stats, i))}, a)
    chex.assert_trees_all_close(st_i["batch_stats"], e_stats, rtol=1e-4, atol=1e-5)
  assert len({np.asarray(x).round(4).tobytes() for x in ev[:n]}) == n


def test_fold_cases_are_covered_and_skipped_layers_keep_statistics():
  env = setup("s2_els")
  kinds = set()
  for i in range(5):  # the members the masked == extracted test compares
    specs = subnet_specs(env.sp, member(env.pop, i))
    kinds |= {s.shortcut for s in specs if s.kind == "mb"}
    kinds |= {"skip_s2" for s in specs if s.kind == "skip" and s.stride == 2}
  assert {"conv", "identity", "none", "skip_s2"} <= kinds
  _, _, stats = env.masked(env.v, env.images, env.pop)
  a = jax.tree.map(np.asarray, member(env.pop, 2))
  new = member(stats, 2)
  for j, b in enumerate(env.sp.layers):
    same = all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)),
                                            new[b.name], env.v["batch_stats"][b.name])))
    assert same == (a.op[j] == 0), b.name


@pytest.mark.parametrize("els", [True, False])
def test_analytic_costs_equal_counted_costs(els):
  """space.macs / space.params == MACs counted off the exported module's program / its leaves,
  at 224 px on the ImageNet layout, for skip-heavy S2 archs (shortcut convs included)."""
  sp = ScarletS2Space(num_classes=1000, els=els)
  net = ScarletSupernet(sp)
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), sp.max_arch())
  pop = skip_heavy(sp, 6, seed=5)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  for i in range(6):
    a = jax.tree.map(np.asarray, member(pop, i))
    module = exact_module(net, a)
    sv = jax.eval_shape(lambda v: extract(net, v, a)[1], shapes)
    counted = costs.count_macs(lambda v, x: module.clone(depthwise_impl="xla").apply(v, x), sv, x)
    assert counted == sp.macs(a)
    assert costs.count_params(sv["params"]) == sp.params(a)
