"""The supernet contract, for every registered space and its supernet.

Parametrized over ``regnas_jax.spaces.SPACES`` (each with ``SUPERNETS[name]``) at the small
configurations of ``tests/contract.py``: a new space and supernet are tested by registering
them and adding their entry there.  Per space, one compiled program runs single subnets and
one a vmapped population (``contract.env``), both shared by the tests below; each exact subnet
compiles once.

* masked logits == extracted logits, eval mode and train mode, and the BN statistics a train
  step writes: the used entries equal the exact subnet's new statistics, every other entry
  keeps its value ("used" as in ``test_contract_spaces.py``: the entries ``extract`` slices);
* vmap over a population (archs and per-member statistics) == member by member, with one
  trace of the single-subnet program for all members;
* analytic ``macs`` / ``params`` == counted off the exact subnet's traced program
  (``regnas_jax.costs``) and its parameters, at the small configuration and at the space's
  default (ImageNet) one; the exact module's own init has the extracted shapes.
"""

import dataclasses
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import contract
from contract import assert_close
from regnas_jax import costs
from regnas_jax.nn.supernet import (SUPERNETS, Supernet, build_supernet, contract_problem,
                                    register_supernet)
from regnas_jax.spaces import SPACES, member
from regnas_jax.spaces.base import take

NAMES = contract.NAMES


def exact_outputs(module, variables, images):
  """Eval logits, train logits and new statistics of an exact subnet (one compile)."""
  module = contract.exact_clone(module)

  def run(v, x):
    ev = module.apply(v, x, train=False)
    tr, upd = module.apply(v, x, train=True, mutable=["batch_stats"])
    return ev, tr, upd["batch_stats"]
  return jax.tree.map(np.asarray, jax.jit(run)(variables, images))


@pytest.mark.parametrize("name", NAMES)
def test_masked_equals_extracted(name):
  """min, max and random archs: eval logits (running statistics), train logits (batch
  statistics) and the statistics a train step writes, against the exact subnet."""
  e = contract.env(name)
  coded = contract.index_coded(e.stats_of(0))
  flat = [np.asarray(c).astype(np.int64) for c in jax.tree.leaves(coded.tree)]
  outs = []
  for i in range(contract.EXACT):
    a = member(e.pop, i)
    stats = e.stats_of(i)
    ev, tr, new = contract.single_run(name, i)
    module, sv = e.net.extract({"params": e.params, "batch_stats": stats}, a)
    e_ev, e_tr, e_new = exact_outputs(module, sv, e.images)
    assert_close(ev, e_ev)
    assert_close(tr, e_tr)
    # the used entries of the new statistics are the exact subnet's new statistics...
    _, got = e.net.extract({"params": e.params, "batch_stats": new}, a)
    contract.assert_trees_close(got["batch_stats"], e_new)
    # ...and the unused ones keep their values
    _, used = e.net.extract({"params": e.params, "batch_stats": coded.tree}, a)
    used = contract.used_entries(coded, used["batch_stats"])
    for c, old, upd in zip(flat, jax.tree.leaves(stats), jax.tree.leaves(new)):
      keep = ~used[c]
      np.testing.assert_array_equal(upd[keep], old[keep])
    outs.append(ev.round(4).tobytes())
  assert len(set(outs)) == contract.EXACT   # the archs compute different functions


@pytest.mark.parametrize("name", NAMES)
def test_vmapped_population_equals_member_by_member(name):
  """Archs and per-member statistics vmapped == each member through the unvmapped program,
  which one trace serves for every arch (so does the vmapped one for every population)."""
  e = contract.env(name)
  ev, tr, new = contract.vmapped_run(name)
  for i in range(contract.P):
    s_ev, s_tr, s_new = contract.single_run(name, i)
    assert_close(ev[i], s_ev, rtol=1e-5)
    assert_close(tr[i], s_tr)      # batch statistics of 8 images: reductions in another order
    contract.assert_trees_close(jax.tree.map(lambda x: x[i], new), s_new)
  assert e.traces["single"] == 1
  n = e.traces["vmapped"]
  perm = np.arange(contract.P)[::-1].copy()                # another population
  ev_perm = e.vmapped(e.params, take(e.stats, perm), e.images, take(e.pop, perm))[0]
  assert e.traces["vmapped"] == n
  assert_close(ev_perm, ev[perm], rtol=1e-5)
  # the per-member statistics are used: member 1 (max) with member 0's statistics differs
  other = e.single(e.params, e.stats_of(0), e.images, member(e.pop, 1))[0]
  assert not np.allclose(np.asarray(other), ev[1], rtol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_switch_mode_equals_masked(name):
  """In switch mode (``clone(switch=True)``: each block runs its chosen branch by ``lax.switch``)
  members run one at a time under ``lax.map`` compute what the masked supernet computes: eval
  and train logits (so predictions and BN re-calibration, what scoring runs) and the whole
  written statistics tree."""
  e = contract.env(name)
  if not e.net.switches:
    pytest.skip(f"{type(e.net).__name__} has no switch mode (an optional part of the contract)")
  ev, tr, new = contract.vmapped_run(name)
  snet = e.net.clone(switch=True)
  s_ev, s_tr, s_new = jax.tree.map(np.asarray, jax.jit(
      lambda p, st, x, pop: jax.lax.map(lambda a: _run_fn(snet, p, a[1], x, a[0]), (pop, st)))(
          e.params, e.stats, e.images, e.pop))
  assert_close(s_ev, ev, rtol=1e-5)
  assert_close(s_tr, tr)
  contract.assert_trees_close(s_new, new)


def _run_fn(net, params, stats, x, a):
  v = {"params": params, "batch_stats": stats}
  ev = net.apply(v, x, a, train=False)
  tr, upd = net.apply(v, x, a, train=True, mutable=["batch_stats"])
  return ev, tr, upd["batch_stats"]


def _exact_shapes(net, shapes, arch):
  module = contract.exact_clone(net.exact_module(arch))
  return module, jax.eval_shape(lambda v: net.extract(v, arch)[1], shapes)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", ["small", "default"])
def test_analytic_costs_equal_counted_costs(name, which):
  """space.macs / space.params == MACs counted off the exact module's traced program / its
  parameters, for min, max and random archs (nothing is compiled).  At 128 px no depthwise
  kernel is wider than its feature map (``ops.depthwise_conv`` crops such kernels to the taps
  that read pixels; the analytic counts, as OFA's counter, count every tap)."""
  if which == "small":
    sp, net = contract.build(name, resolutions=(128,))
  else:   # the space's defaults: the ImageNet layout at full width, 1000 classes
    sp = SPACES[name]()
    net = build_supernet(sp, **contract.config(name).supernet)
  shapes = contract.shapes(name) if which == "small" else contract.param_shapes(net)
  pop = contract.population(sp, 6)
  for i in range(5):
    a = jax.tree.map(np.asarray, member(pop, i))
    module, sv = _exact_shapes(net, shapes, a)
    r = int(sp.resolutions[int(a.resolution)])
    x = jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)
    assert costs.count_macs(lambda v, x: module.apply(v, x), sv, x) == sp.macs(a)
    assert costs.count_params(sv["params"]) == sp.params(a)
    if i < 2 and which == "small":   # extract's variables are the exact module's own
      fresh = jax.eval_shape(module.init, jax.random.key(0), x)
      chex.assert_trees_all_equal_shapes(fresh, sv)
      assert jax.tree.structure(fresh) == jax.tree.structure(sv)


@pytest.mark.parametrize("name", NAMES)
def test_registered_supernet_fulfils_the_contract(name):
  """Every registered class derives from the contract and states its capabilities as the base
  declares them; its host methods run outside any Flax scope (no method wrapping)."""
  cls = SUPERNETS[name]
  assert issubclass(cls, Supernet) and contract_problem(cls) is None
  sp, net = contract.build(name)
  assert isinstance(cls.can_reorder, bool) and isinstance(cls.switches, bool)
  assert cls.cpu_subnet_loop in ("scan", "vmap") and isinstance(cls.op_average, bool)
  assert cls.switches == ("switch" in {f.name for f in dataclasses.fields(cls)})
  fields = {f.name for f in sp.fields()}
  assert bool(cls.op_decisions) == cls.op_average and set(cls.op_decisions) <= fields
  assert net.subnet_specs(sp.min_arch())
  if not cls.can_reorder:
    with pytest.raises(NotImplementedError, match=cls.__name__):
      net.reorder_channels({})


def _stub(drop=(), **attrs):
  """A :class:`Supernet` subclass with the contract's fields and methods, less ``drop``, plus
  ``attrs``."""
  body = {"__annotations__": {"space": Any, "bn_momentum": float, "bn_epsilon": float,
                              "dropout_rate": float, "dtype": Any},
          "bn_momentum": 0.9, "bn_epsilon": 1e-5, "dropout_rate": 0.0, "dtype": jnp.float32,
          "forward": lambda self, images, arch, train=False: images,
          "subnet_specs": lambda self, arch: (), "exact_module": lambda self, arch: None,
          "extract": lambda self, variables, arch: (None, variables)}
  for k in drop:
    body.pop(k, None)
    body["__annotations__"].pop(k, None)
  body.update(attrs)
  return type("Stub", (Supernet,), body)


def test_register_supernet_names_what_a_class_misses():
  """``register_supernet`` takes a complete ``Supernet`` subclass and refuses, with a
  ``TypeError`` naming the gap, a class of another base, a missing method or field, and a
  declared capability without its method or field."""
  assert register_supernet("_test_stub", _stub()) is SUPERNETS.pop("_test_stub")
  cases = [(type("Plain", (flax.linen.Module,), {}), "Plain does not derive from"),
           (_stub(drop=("extract",)), "Stub has no method 'extract'"),
           (_stub(drop=("forward",)), "Stub has no method 'forward'"),
           (_stub(drop=("bn_epsilon",)), "Stub has no field 'bn_epsilon'"),
           (_stub(can_reorder=True), "Stub has no method 'reorder_channels'"),
           (_stub(switches=True), "Stub has no field 'switch'")]
  for cls, msg in cases:
    with pytest.raises(TypeError, match=f"^register_supernet: {msg}"):
      register_supernet("_test_stub", cls)
  assert "_test_stub" not in SUPERNETS


@pytest.mark.parametrize("name", NAMES)
def test_apply_refuses_a_concrete_arch_of_another_resolution(name):
  """Calling the supernet with a concrete arch whose ``resolution`` names another side than
  the images' is a ``ValueError`` naming both sizes (also for an arch a traced function closes
  over); the matching arch traces.  (Traced archs are checked by scoring and training:
  ``test_evaluate.py``, ``test_train.py``.)"""
  r = contract.config(name).space["resolutions"][0]
  sp, net = contract.build(name, resolutions=(r, r + 4))
  x = jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)
  run = lambda a: jax.eval_shape(lambda v, x: net.apply(v, x, a), contract.shapes(name), x)
  with pytest.raises(ValueError, match=rf"^{type(net).__name__}: the arch's resolution is "
                                       rf"{r + 4} px \(index 1 of .*\) but the images are {r} px"):
    run(sp.at_resolution(sp.max_arch(), r + 4))
  assert run(sp.at_resolution(sp.min_arch(), r)).shape == (1, sp.num_classes)
