"""Supernet training: the multi-subnet step against one-by-one gradients, schedules, samplers."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import nn as nets
from regnas_jax import spaces
from regnas_jax import training as train
from regnas_jax.errors import ConfigError
from regnas_jax.defaults import train_defaults


def _ref_loss(logits, labels, smoothing, soft, kd_weight, label_weight):
  """Plain-jnp losses written independently of train.subnet_losses:
  ``kd_weight * KD(soft) + label_weight * CE(smoothed labels)``."""
  c = logits.shape[-1]
  y = jax.nn.one_hot(labels, c) * (1 - smoothing) + smoothing / c
  logp = logits - jax.scipy.special.logsumexp(logits, -1, keepdims=True)
  ce = -jnp.mean(jnp.sum(y * logp, -1))
  kd = -jnp.mean(jnp.sum(soft * logp, -1))
  return kd_weight * kd + label_weight * ce


@functools.partial(jax.jit, static_argnums=0)
@functools.partial(jax.value_and_grad, argnums=1, has_aux=True)
def _ref_member(net, params, batch_stats, x, arch, labels, smoothing, soft, kd_weight,
                label_weight):
  """One subnet run alone in train mode: ``(loss, (logits, new batch_stats)), d loss / d params``.

  The loss weights are arguments, so every reference below (teacher, student, distillation
  with labels, any label smoothing) is this one compiled program."""
  out, upd = net.apply({"params": params, "batch_stats": batch_stats}, x, arch, train=True,
                       mutable=["batch_stats"])
  return _ref_loss(out, labels, smoothing, soft, kd_weight, label_weight), (out, upd["batch_stats"])


def _tree_close(a, b, rtol=2e-4, atol=2e-6):
  """Leaf-wise closeness; float32 sums in another order differ by ~1e-5 of a leaf's scale."""
  for (p, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    y = np.asarray(y)
    np.testing.assert_allclose(np.asarray(x), y, rtol=rtol,
                               atol=max(atol, 5e-5 * float(np.abs(y).max(initial=0.0))),
                               err_msg=jax.tree_util.keystr(p))


@pytest.mark.parametrize("loop", [pytest.param("vmap", marks=pytest.mark.slow), "scan",
                                  "switch"])
def test_multi_subnet_grads_equal_sum_of_one_by_one_grads(tiny, loop):
  """The sandwich's summed gradients (vmapped members, a scan over them, or a scan in switch
  mode) against each member's loss differentiated alone with the masked supernet."""
  sp, net, v, x = tiny
  step_net = train.switch_model(net, "scan") if loop == "switch" else net
  assert (step_net is not net) == (loop == "switch")
  labels = jnp.array([0, 3, 7, 3, 9])
  archs = spaces.stack([sp.max_arch(), sp.min_arch(),
                        spaces.member(sp.sample(jax.random.key(5), 1), 0)])
  lc = train.LossConfig(10, 0.1, "inplace", 1.0, False)
  grads, (losses, logits, stats) = jax.jit(
      lambda p: train.subnet_grads(step_net, p, v["batch_stats"], images=x, labels=labels,
                                   archs=archs, key=jax.random.key(0), loss_config=lc,
                                   loop="scan" if loop == "switch" else loop))(v["params"])

  # member 0 (the teacher) learns from the labels alone; its logits are the students' targets,
  # which learn from them alone (kd_ratio 1, no label loss)
  uniform = jnp.full((5, 10), 0.1)
  ref, ref_losses, soft = None, [], None
  for i in range(3):
    a = spaces.member(archs, i)
    soft_i, kd_weight, label_weight = (uniform, 0.0, 1.0) if i == 0 else (soft, 1.0, 0.0)
    (loss, (out, st)), g = _ref_member(net, v["params"], v["batch_stats"], x, a, labels,
                                       smoothing=0.1, soft=soft_i, kd_weight=kd_weight,
                                       label_weight=label_weight)
    if i == 0:
      soft = jax.nn.softmax(out)
    ref = g if ref is None else jax.tree.map(jnp.add, ref, g)
    ref_losses.append(loss)
    _tree_close(jax.tree.map(lambda s: s[i], stats), st)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  _tree_close(grads, ref)


def test_teacher_distillation_with_labels_matches_reference(tiny):
  sp, net, v, x = tiny
  labels = jnp.array([1, 2, 3, 4, 5])
  archs = sp.sample(jax.random.key(9), 2)
  teacher = jax.nn.softmax(jax.random.normal(jax.random.key(3), (5, 10)))
  lc = train.LossConfig(10, 0.0, "teacher", 0.5, True)
  grads, (losses, _, _) = jax.jit(lambda p: train.subnet_grads(
      net, p, v["batch_stats"], images=x, labels=labels, archs=archs, key=jax.random.key(0),
      loss_config=lc, teacher_probs=teacher, loop="vmap"))(v["params"])
  ref, ref_losses = None, []
  for i in range(2):   # every member: 0.5 * KD(teacher) + CE(labels)
    (loss, _), g = _ref_member(net, v["params"], v["batch_stats"], x, spaces.member(archs, i),
                               labels, smoothing=0.0, soft=teacher, kd_weight=0.5,
                               label_weight=1.0)
    ref = g if ref is None else jax.tree.map(jnp.add, ref, g)
    ref_losses.append(loss)
  _tree_close(grads, ref)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_progressive_shrinking_phases_follow_ofa_order():
  sp = spaces.OFAMobileNetV3Space(width_mult=0.5, stem="small", resolutions=(12,))
  tc = train_defaults()
  tc.method, tc.steps = "progressive", 120
  phases = train.build_phases(tc, sp)
  assert [p.name for p in phases] == ["full", "kernel", "depth-1", "depth-2", "expand-1",
                                      "expand-2"]
  assert sum(p.steps for p in phases) == 120
  al = [p.allowed_dict() for p in phases]
  assert al[0]["kernel"] == (2,) and al[0]["depth"] == (2,) and al[0]["expand"] == (2,)
  assert al[1]["kernel"] == (0, 1, 2) and al[1]["depth"] == (2,)
  assert al[2]["depth"] == (1, 2) and al[3]["depth"] == (0, 1, 2) and al[3]["expand"] == (2,)
  assert al[4]["expand"] == (1, 2) and al[5]["expand"] == (0, 1, 2)
  # Channels are re-ordered when the expand choices grow, keeping widths trained before (OFA).
  assert [p.reorder_keep for p in phases] == [None, None, None, None, (), (4,)]
  assert phases[0].sampler == "max" and phases[0].distill == "none"
  assert all(p.distill == "teacher" and p.sampler == "uniform" for p in phases[1:])
  assert [p.num_subnets for p in phases] == [1, 1, 2, 2, 4, 4]


def test_sandwich_and_uniform_phases_and_bad_config():
  sp = spaces.OFAMobileNetV3Space(width_mult=0.5, stem="small", resolutions=(12,))
  tc = train_defaults()
  (p,) = train.build_phases(tc, sp)
  assert (p.sampler, p.distill, p.num_subnets, p.steps) == ("sandwich", "inplace", 4, tc.steps)
  tc.method = "uniform"
  assert train.build_phases(tc, sp)[0].distill == "none"
  tc.method = "shrink"
  with pytest.raises(ConfigError, match="config.train.method: 'shrink'"):
    train.build_phases(tc, sp)


def test_sample_subnets_respect_the_unlocked_choices():
  sp = spaces.OFAMobileNetV3Space(width_mult=0.5, stem="small", resolutions=(12,))
  phase = train.Phase("p", steps=1,
                      allowed=(("depth", (1, 2)), ("expand", (2,)), ("kernel", (0, 1))),
                      sampler="sandwich", num_subnets=6, distill="inplace", reorder_keep=None,
                      lr=0.1, warmup_steps=0)
  a = jax.tree.map(np.asarray, train.sample_subnets(sp, phase, jax.random.key(0)))
  assert a.kernel.shape == (6, 20)
  assert set(np.unique(a.depth)) <= {1, 2} and set(np.unique(a.expand)) == {2}
  assert set(np.unique(a.kernel)) <= {0, 1}
  assert (a.kernel[0] == 1).all() and (a.depth[0] == 2).all()     # largest allowed
  assert (a.kernel[1] == 0).all() and (a.depth[1] == 1).all()     # smallest allowed
  assert len({tuple(k) for k in a.kernel[2:]}) > 1


def test_merge_batch_stats_averages_over_the_subnets_that_updated_a_channel():
  old = {"m": jnp.array([1.0, 1.0, 1.0])}
  new = {"m": jnp.array([[2.0, 1.0, 1.0], [4.0, 3.0, 1.0]])}
  np.testing.assert_allclose(train.merge_batch_stats(old, new)["m"], [3.0, 3.0, 1.0])


def test_phase_at_and_step_split():
  sp = spaces.OFAMobileNetV3Space(width_mult=0.5, stem="small", resolutions=(12,))
  tc = train_defaults()
  tc.method, tc.steps = "progressive", 10
  phases = train.build_phases(tc, sp)
  starts = np.cumsum([0] + [p.steps for p in phases])
  for i, s in enumerate(starts[:-1]):
    assert train.phase_at(phases, int(s)) == (i, 0)
  assert train.phase_at(phases, 10) == (len(phases), 0)


def test_auto_subnet_loop_follows_the_supernet_on_cpu(tiny):
  """'auto' is vmap on accelerators; on CPU the supernet's preference (scan for MobileNetV3,
  vmap for ResNet50, whose 3x3 convolutions XLA:CPU runs slowly inside a loop body)."""
  _, net, _, _ = tiny
  res = nets.OFAResNet50(spaces.OFAResNet50Space(stem="small", width_mult=0.25))
  cpu = jax.default_backend() == "cpu"
  assert train.resolve_subnet_loop("auto", net) == ("scan" if cpu else "vmap")
  assert train.resolve_subnet_loop("auto", res) == "vmap"
  assert train.resolve_subnet_loop("scan", res) == "scan"
  with pytest.raises(ConfigError, match="config.train.subnet_loop: 'loop'"):
    train.resolve_subnet_loop("loop", net)


def test_fair_sampling_trains_every_choice_once_per_step():
  """FairNAS's strict fairness: with as many subnets as choices, every decision takes each of
  its choices exactly once; with fewer, no choice repeats within a decision."""
  from regnas_jax.spaces import ScarletS1Space

  sp = ScarletS1Space(width_mult=0.25, stem="small", resolutions=(8,))
  for seed in range(3):
    pop = jax.tree.map(np.asarray, train.fair_sample(sp, jax.random.key(seed), 7))
    sp.validate(pop, population=True)
    assert all(sorted(pop.op[:, j]) == list(range(7)) for j in range(19))
    assert np.all(pop.resolution == 0)
  few = np.asarray(train.fair_sample(sp, jax.random.key(9), 3).op)
  assert all(len(set(few[:, j])) == 3 for j in range(19))
  many = np.asarray(train.fair_sample(sp, jax.random.key(9), 14).op)
  assert all(np.bincount(many[:, j], minlength=7).tolist() == [2] * 7 for j in range(19))
  # the step changes the permutation
  assert not np.array_equal(np.asarray(train.fair_sample(sp, jax.random.key(1), 7).op),
                            np.asarray(train.fair_sample(sp, jax.random.key(2), 7).op))


def _sandwich(n):
  tc = train_defaults()
  tc.update(dict(method="sandwich", num_subnets=n, steps=10))
  return tc


def test_train_step_refuses_images_of_another_resolution(tiny):
  """The step's archs carry the resolution it was built for: images of another side are a
  ``ValueError`` naming both sizes when the step is traced (before any compile), and so is a
  side that is not a resolution of the space; images of the built-for side trace, also with a
  teacher (whose largest arch names the largest resolution until the step sets it)."""
  sp, net, v, x = tiny
  sp2 = dataclasses.replace(sp, resolutions=(12, 16))
  net2 = net.clone(space=sp2)
  phase = train.build_phases(_sandwich(2), sp2)[0]
  tx, _ = train.make_optimizer(_sandwich(2), phase)
  lc = train.LossConfig(10, 0.1, phase.distill, 1.0, False)
  state = train.TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
                           tx.init(v["params"]), None)
  labels = jnp.zeros((5,), jnp.int32)
  trace = lambda step, images: jax.eval_shape(step, state, images, labels, jax.random.key(0))
  step = train.make_train_step(net2, sp2, tx, phase, lc, "scan", resolution=16)
  with pytest.raises(ValueError, match=r"train step: the arch's resolution is 16 px .* images "
                                       r"are 12 px"):
    trace(step, x)
  with pytest.raises(ValueError, match=r"20 px is not one of the resolutions \(12, 16\)"):
    trace(train.make_train_step(net2, sp2, tx, phase, lc, "scan"), jnp.zeros((5, 20, 20, 3)))
  out, _ = trace(train.make_train_step(net2, sp2, tx, phase, lc, "scan", resolution=12), x)
  assert jax.tree.structure(out) == jax.tree.structure(state)
  # with a teacher (progressive shrinking): the largest arch runs at the images' side too
  tc = train_defaults()
  tc.update(dict(method="progressive", steps=8))
  teach = next(p for p in train.build_phases(tc, sp2) if p.distill == "teacher")
  step = train.make_train_step(net2, sp2, tx, teach, lc._replace(distill="teacher"), "scan",
                               resolution=12)
  state = state._replace(teacher=v)
  assert jax.tree.structure(trace(step, x)[0]) == jax.tree.structure(state)


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_optimizer_state_in_one_program_equals_optax_eager_init(optimizer):
  """``optimizer_state`` (one compiled program) gives the state ``tx.init`` builds op by op:
  the same tree, shapes, dtypes and values, clipping and weight decay included."""
  tc = train_defaults()
  tc.update(dict(optimizer=optimizer, weight_decay=1e-4, grad_clip_norm=1.0))
  phase = train.Phase("p", steps=10, allowed=(), sampler="max", num_subnets=1, distill="none",
                      reorder_keep=None, lr=0.1, warmup_steps=2)
  tx, _ = train.make_optimizer(tc, phase)
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
            "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}
  want, got = tx.init(params), train.optimizer_state(tx, params)
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
