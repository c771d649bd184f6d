"""The TuNAS supernet against exact-shape subnets sliced from it, costs against counted ones."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import costs
from regnas_jax.nn import TunasSupernet, exact_module, extract, subnet_specs
from regnas_jax.nn.tunas import OP_DECISIONS
from regnas_jax.spaces import get_space, member, stack

from helpers import assert_close, exact_run


def random_variables(net, seed):
  """Variables of the supernet's shapes (no init program to compile), every value random:
  kernels ~ N(0, 1/fan_in), BN scales around 1, biases and means around 0, variances > 0.3."""
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 12, 12, 3)),
                          net.space.max_arch())
  rng = np.random.default_rng(seed)

  def make(path, s):
    name = jax.tree_util.keystr(path)
    n = rng.normal(size=s.shape).astype(np.float32)
    if name.endswith("['scale']"):
      return 1.0 + 0.3 * n
    if name.endswith("['bias']") or name.endswith("['mean']"):
      return 0.2 * n
    if name.endswith("['var']"):
      return 0.3 + np.abs(n)
    return n / np.sqrt(np.prod(s.shape[:-1]))
  return jax.tree_util.tree_map_with_path(make, shapes)


@functools.lru_cache(maxsize=None)
def setup(name):
  """A tiny supernet with random parameters and statistics, and min, max and random archs."""
  sp = get_space(name, width_mult=0.25, stem="small", num_classes=10, resolutions=(12,))
  net = TunasSupernet(sp, depthwise_impl="xla")
  v = random_variables(net, 0)
  images = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
  pop = sp.sample(jax.random.key(3), 3)
  archs = stack([sp.min_arch(), sp.max_arch()] + [member(pop, i) for i in range(3)])
  return sp, net, jax.tree.map(np.asarray, v), images, archs


@functools.lru_cache(maxsize=None)
def masked_fn(net):
  """Eval logits, train logits and written statistics of the supernet (one compile per net)."""
  def run(v, x, a):
    ev = net.apply(v, x, a, train=False)
    tr, upd = net.apply(v, x, a, train=True, mutable=["batch_stats"])
    return ev, tr, upd["batch_stats"]
  return jax.jit(run)


def jit_exact_run(module, sv, x):
  """Eval logits, train logits and statistics of an exact subnet as one compiled program."""
  return jax.jit(lambda v, x: exact_run(module, v, x))(sv, x)


# MobileNetV3-Like covers widths, SE, the optional residual sepconv and the two-conv head; the
# Enlarged space the plain sepconv and head of the ProxylessNAS spaces.
@pytest.mark.parametrize("name, members", [pytest.param("mobilenet_v3_like", (1, 2, 3), marks=pytest.mark.slow),
                                           ("proxylessnas_enlarged", (0, 2))])
def test_masked_equals_extracted(name, members):
  """Smallest, largest and random archs (zero layers, every width group, SE, optional
  sepconv): eval logits, train logits and written statistics of the masked supernet equal those
  of the exact-shape subnet sliced from it."""
  sp, net, v, x, archs = setup(name)
  outs = []
  for i in members:
    a = member(archs, i)
    ev, tr, stats = masked_fn(net)(v, x, a)
    module, sv = extract(net, v, a)
    e_ev, e_tr, e_stats = jit_exact_run(module, sv, x)
    assert_close(ev, e_ev)
    assert_close(tr, e_tr)
    _, st = extract(net, {"params": v["params"], "batch_stats": stats}, a)
    chex.assert_trees_all_close(st["batch_stats"], e_stats, rtol=1e-4, atol=1e-5)
    outs.append(np.asarray(ev).round(4).tobytes())
  assert len(set(outs)) == len(members)
  spec = subnet_specs(sp, member(archs, 0))
  assert len(spec.layers) == len(sp.layers) - len(sp.optional_layers)  # zero layers left out


def test_op_averaging_is_the_mean_of_the_choices():
  """Op warmup: averaging {zero, IBN} of an optional layer gives the mean of the layer's output
  with the layer off and on; averaging its kernel choices gives the mean of the depthwise
  conv's outputs with each kernel size (same input: the layers before are unchanged)."""
  sp, net, v, x, archs = setup("mobilenet_v3_like")
  a = member(archs, 1)
  flags = {n: jnp.zeros(sp.field(n).shape, bool) for n in OP_DECISIONS}
  # Gate of an optional layer: averaging {zero, IBN} halves the branch.
  j = sp.optional_layers[0]
  opt = sp.layers[j].optional
  on_avg = dict(flags, on=flags["on"].at[opt].set(True))
  full = net.apply(v, x, a, average=on_avg, capture_intermediates=True,
                   mutable=["intermediates"])[1]["intermediates"]
  ref = net.apply(v, x, a, capture_intermediates=True, mutable=["intermediates"])[1]["intermediates"]
  off = net.apply(v, x, a._replace(on=a.on.at[opt].set(0) if hasattr(a.on, "at") else
                                   np.where(np.arange(len(a.on)) == opt, 0, a.on)),
                  capture_intermediates=True, mutable=["intermediates"])[1]["intermediates"]
  name = sp.layers[j].name
  got, y_on, y_off = (np.asarray(t[name]["__call__"][0]) for t in (full, ref, off))
  assert_close(got, 0.5 * (y_on + y_off))
  # Kernel choices: averaging the kernel of the layer = mean of its per-kernel outputs.
  k_avg = dict(flags, kernel=flags["kernel"].at[j].set(True))
  dw = lambda t: np.asarray(t[name]["dw"]["__call__"][0])
  mixed = dw(net.apply(v, x, a, average=k_avg, capture_intermediates=True,
                       mutable=["intermediates"])[1]["intermediates"])
  singles = [dw(net.apply(v, x, a._replace(kernel=np.where(np.arange(len(a.kernel)) == j, k,
                                                           a.kernel)),
                          capture_intermediates=True, mutable=["intermediates"])[1]["intermediates"])
             for k in range(3)]
  assert_close(mixed, np.mean(singles, 0))


@pytest.mark.parametrize("name", ["proxylessnas", "proxylessnas_enlarged", "mobilenet_v3_like"])
def test_analytic_costs_equal_counted_costs(name):
  """space.macs / space.params == MACs counted off the exact module's program / its leaves at
  224 px on the ImageNet layout, for the extremes and random archs."""
  sp = get_space(name, num_classes=1000)
  net = TunasSupernet(sp)
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), sp.max_arch())
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  pop = sp.sample(jax.random.key(5), 3)
  for a in [sp.min_arch(), sp.max_arch()] + [member(pop, i) for i in range(3)]:
    a = jax.tree.map(np.asarray, a)
    module = exact_module(net, a)
    sv = jax.eval_shape(lambda v: extract(net, v, a)[1], shapes)
    counted = costs.count_macs(lambda v, x: module.clone(depthwise_impl="xla").apply(v, x), sv, x)
    assert counted == sp.macs(a)
    assert costs.count_params(sv["params"]) == sp.params(a)
