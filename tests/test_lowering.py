"""Accelerator readiness without an accelerator: the programs a TPU or GPU run compiles first --
the supernet training step, TuNAS's search step and population scoring (BN re-calibration and
predictions, masked and switch mode) -- lowered for ``tpu`` and ``cuda`` from this CPU with
``jax.export``'s cross-platform lowering, so a pod run does not meet its first lowering error
(an op without a lowering there, a host callback, a CPU-only code path) after its queue wait.

Lowering only: nothing is compiled for those platforms (this machine has neither), so a backend
compiler's own limits (memory, a slow compile) stay untested.  Each program is built the way the
jobs build it, from the shipped ``:smoke`` digits configs (8 px, quarter width), and checked to
be the real program: the export's inputs are the arguments given, its outputs are what
``jax.eval_shape`` gives on CPU and what the step's contract says (the new state shaped like the
old one, predictions ``(P, N)``), and its StableHLO holds the depthwise convolutions as grouped
convolutions.

Which program: ``depthwise_impl='auto'`` and ``subnet_loop='auto'`` are decided when the
program is *traced*, from ``jax.default_backend()`` of the tracing process -- here CPU, whatever
``platforms`` the export names (``test_auto_choices_follow_the_tracing_backend``).  A TPU or GPU
process resolves them to ``'xla'`` (grouped convolutions) and ``'vmap'``, so the configs here
name those choices outright: what is lowered is the program the accelerator run itself traces.
"""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import evaluate, parallel, spaces, training
from regnas_jax import identity as identity_lib
from regnas_jax.configs import digits_mbv3, digits_tunas
from regnas_jax.jobs import build
from regnas_jax.jobs import tunas as tunas_job
from regnas_jax.jobs.base import JobContext
from regnas_jax.nn import ops
from regnas_jax.nn.common import init_variables
from regnas_jax.search import tunas
from regnas_jax.training import supernet as train_lib

ACCELERATORS = ("tpu", "cuda")
KEY = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)   # the steps' base key (typed, threefry)


def shapes(tree) -> list:
  """``[(shape, dtype)]`` of ``tree``'s leaves (arrays, ``ShapeDtypeStruct`` or avals)."""
  return [(tuple(x.shape), x.dtype) for x in jax.tree.leaves(tree)]


def exported(jitted, *args):
  """``(Exported, CPU output shapes)``: ``jitted`` lowered for TPU and CUDA on ``args``, checked
  to be that program (its inputs are ``args``, its outputs ``jax.eval_shape``'s on CPU)."""
  exp = jax.export.export(jitted, platforms=ACCELERATORS)(*args)
  assert exp.platforms == ACCELERATORS
  assert shapes(exp.in_avals) == shapes(args)
  want = jax.eval_shape(jitted, *args)
  assert exp.out_tree == jax.tree.structure(want)
  assert shapes(exp.out_avals) == shapes(want)
  return exp, want


def ops_of(exp) -> collections.Counter:
  """How often each StableHLO op occurs in the exported module's text."""
  return collections.Counter(re.findall(r"\b(stablehlo\.\w+)", exp.mlir_module()))


def depthwise_widths(exp) -> set:
  """Channel counts of the module's grouped (depthwise) convolutions, ``feature_group_count > 1``:
  empty when depthwise convolutions are shifted multiply-adds (``'shift'``)."""
  return {int(g) for g in re.findall(r"feature_group_count = (\d+)", exp.mlir_module())} - {1}


def accelerator_setup(config, **train):
  """``(cfg, space, net, dataset)`` of ``config``'s smoke variant with the choices an accelerator
  process makes for ``'auto'`` (grouped depthwise convolutions, the vmapped subnet loop) and
  ``train`` written out."""
  cfg = config.get_config("smoke")
  with cfg.unlocked():
    cfg.supernet.depthwise_impl = "xla"
    cfg.train.update({"subnet_loop": "vmap", **train})
  space = build.build_space(cfg)
  net = build.build_supernet(cfg, space)
  return cfg, space, net, build.load_dataset(cfg, space)


def abstract_variables(net):
  """The supernet's ``{'params', 'batch_stats'}`` as ``ShapeDtypeStruct`` (nothing computed)."""
  return jax.eval_shape(lambda k: init_variables(net, k), jax.random.key(0))


# -- the supernet training step --------------------------------------------------------------------
@functools.cache
def train_step_export(loop: str, switch: bool):
  """``(Exported, CPU outputs, state, step model, phase)`` of digits_mbv3:smoke's first training
  step, built by the training loop's own ``_StepRunner`` (one-device mesh, state shardings,
  augmentation inside the step): state ``TrainState``, images uint8 ``(32, 8, 8, 3)``, labels
  int32 ``(32,)``, a key."""
  cfg, space, net, ds = accelerator_setup(digits_mbv3, subnet_loop=loop, switch=switch)
  tc = cfg.train
  phases, res = train_lib.check_schedule(tc, net, space)
  mc = parallel.mesh_config(cfg)
  lc_base = dict(num_classes=ds.num_classes, label_smoothing=float(tc.label_smoothing),
                 kd_ratio=float(tc.kd_ratio), student_label_loss=bool(tc.student_label_loss))
  runner = train_lib._StepRunner(cfg, net, space, ds, phases=phases, res_list=res,
                                 lc_base=lc_base, k_steps=None, log=print,
                                 mesh=parallel.make_mesh(mc), mc=mc)
  try:
    tx, _ = train_lib.make_optimizer(tc, phases[0])
    v = abstract_variables(net)
    state = train_lib.TrainState(jax.ShapeDtypeStruct((), jnp.int32), v["params"],
                                 v["batch_stats"], jax.eval_shape(tx.init, v["params"]), None)
    images, labels = ds.train.get(np.arange(tc.batch_size))
    exp, want = exported(runner._fn(0, res[0], tx, state), state, images, labels, KEY)
  finally:
    runner.close()
  return exp, want, state, runner.step_model, phases[0]


@pytest.mark.parametrize("loop,switch", [("vmap", False), ("scan", True)],
                         ids=["vmap-masked", "scan-switch"])
def test_supernet_train_step_lowers(loop, switch):
  """The sandwich step (S = 3 subnets, in-place distillation) lowers: ``'vmap'`` masked, what
  ``'auto'`` runs on an accelerator, and ``'scan'`` with ``config.train.switch`` (members one at
  a time, each block by ``lax.switch``).  It returns a state shaped like the one it takes (so
  the loop can donate and feed it back) and metrics ``loss``/``grad_norm`` ``()``,
  ``losses``/``acc`` ``(S,)``."""
  exp, (new, metrics), state, model, phase = train_step_export(loop, switch)
  assert model.switch == switch
  assert shapes(new) == shapes(state) and jax.tree.structure(new) == jax.tree.structure(state)
  s = phase.num_subnets
  assert shapes(metrics) == shapes({"acc": jnp.zeros(s), "grad_norm": jnp.zeros(()),
                                    "loss": jnp.zeros(()), "losses": jnp.zeros(s)})
  assert depthwise_widths(exp)
  assert (ops_of(exp)["stablehlo.while"] > 0) == (loop == "scan")   # the subnet loop


# -- TuNAS's search step ------------------------------------------------------------------------
def test_tunas_search_step_lowers(monkeypatch):
  """digits_tunas:smoke's search step as the TuNAS job compiles it (``_compiled_step``: MACs
  cost, one shard): state ``SearchState``, training images uint8 ``(64, 8, 8, 3)`` and labels,
  RL images ``(64, 8, 8, 3)`` and labels, a key -> the next state shaped like this one and
  scalar metrics."""
  monkeypatch.setattr(tunas_job, "_STEPS", {})   # the job's step cache, left as it was
  cfg, space, net, ds = accelerator_setup(digits_tunas)
  tc, se = cfg.train, cfg.search
  total = int(tc.steps)
  phase = training.Phase("tunas", steps=total, allowed=(), sampler="policy", num_subnets=1,
                         distill="none", reorder_keep=None, lr=float(tc.lr) * tunas_job.lr_scale(cfg),
                         warmup_steps=min(int(tc.warmup_steps), total - 1))
  tx, _ = training.make_optimizer(tc, phase)
  cost_fn, target, _, fit = tunas_job.macs_cost(cfg, space)
  shards = tunas_job.shard_count(cfg)
  step = tunas_job.TunasJob()._compiled_step(
      JobContext(cfg, "unused", space, net, ds), tx, cost_fn=cost_fn, target=target, fit=fit,
      ident=identity_lib.tunas(cfg, space, shards=shards), total=total, shards=shards,
      mesh=None, mesh_config=None)
  v = abstract_variables(net)
  state = tunas_job.SearchState(
      jax.ShapeDtypeStruct((), jnp.int32), v["params"], v["batch_stats"],
      jax.eval_shape(tx.init, v["params"]),
      jax.eval_shape(lambda: tunas.init(space, tunas_job.controller_config(se))))
  x, y = ds.train.get(np.arange(tc.batch_size))
  vx, vy = ds.val.get(np.arange(tunas_job.rl_batch_size(cfg)))
  exp, (new, metrics) = exported(step, state, x, y, vx, vy, KEY)
  assert shapes(new) == shapes(state) and jax.tree.structure(new) == jax.tree.structure(state)
  assert {k: m.shape for k, m in metrics.items()} == {k: () for k in metrics} and metrics
  assert depthwise_widths(exp)


# -- population scoring ----------------------------------------------------------------------------
MODES = {"masked-vmap": (None, False), "masked-map": (1, False), "switch": (1, True)}


@functools.cache
def scoring_exports(mode: str):
  """``(recalibration, predictions)`` as ``(Exported, CPU outputs)`` of the two programs the
  ``Scorer`` runs per member block of digits_mbv3:smoke (``score.block_size`` 4 members):
  ``recalibrate_bn`` on calibration batches ``(2, 128, 8, 8, 3)`` -> per-member statistics, and
  ``_member_predictions`` on an evaluation batch ``(128, 8, 8, 3)`` -> int32 ``(4, 128)``;
  ``mode``: ``chunk_size`` ``None`` (vmap) or 1 (``lax.map``), switch mode on or off."""
  chunk, switch = MODES[mode]
  cfg, space, net, _ = accelerator_setup(digits_mbv3)
  model = evaluate.switch_mode(net, chunk, switch)   # the Scorer's member_net
  assert model.switch == switch
  r, tc, sc = space.resolutions[0], cfg.train, cfg.score
  pop = spaces.stack([space.max_arch(), space.min_arch()] * (sc.block_size // 2))
  v = abstract_variables(net)
  calib = jax.ShapeDtypeStruct((tc.calib_images // tc.calib_batch_size, tc.calib_batch_size,
                                r, r, 3), jnp.float32)
  recal = exported(jax.jit(functools.partial(evaluate.recalibrate_bn, model, chunk_size=chunk)),
                   v, calib, pop)
  images = jax.ShapeDtypeStruct((sc.batch_size, r, r, 3), jnp.float32)
  pred = exported(jax.jit(functools.partial(evaluate._member_predictions, model,
                                            chunk_size=chunk)),
                  {"params": v["params"], "batch_stats": recal[1]}, images, pop)
  return recal, pred, v, pop


@pytest.mark.parametrize("mode", list(MODES))
def test_population_scoring_lowers(mode):
  """Both scoring programs of a member block lower: statistics ``(P,) +`` each supernet
  statistic's shape, predictions int32 ``(P, 128)`` (``P`` = 4 members, 128 images)."""
  (_, stats), (pred_exp, pred), v, pop = scoring_exports(mode)
  p = spaces.pop_size(pop)
  assert shapes(stats) == [((p,) + s, d) for s, d in shapes(v["batch_stats"])]
  assert shapes(pred) == [((p, 128), jnp.dtype(jnp.int32))]
  assert depthwise_widths(pred_exp)


def test_switch_mode_lowers_exact_shapes():
  """Switch mode's program is not the masked one relabelled: each member's blocks run their
  chosen branch at exact widths, so its depthwise convolutions come in more widths than the
  masked program's, which run every block at its largest width."""
  masked = depthwise_widths(scoring_exports("masked-map")[1][0])
  switch = depthwise_widths(scoring_exports("switch")[1][0])
  assert masked < switch


# -- what 'auto' means -------------------------------------------------------------------------------
def test_auto_choices_follow_the_tracing_backend(monkeypatch):
  """``'auto'`` is resolved from the backend of the process that traces, not from the export's
  platforms: traced here, a depthwise convolution lowered for TPU and CUDA is the CPU's shifted
  multiply-adds; a TPU or GPU process picks grouped convolutions and the vmapped subnet loop
  (what the tests above lower), and no switch-mode clone for training."""
  x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 1, 16), jnp.float32)

  def widths(impl):
    fn = jax.jit(functools.partial(ops.depthwise_conv, impl=impl))
    return depthwise_widths(jax.export.export(fn, platforms=ACCELERATORS)(x, k))

  assert widths("xla") == {16} and widths("shift") == set()
  assert widths("auto") == (set() if jax.default_backend() == "cpu" else {16})
  cfg = digits_mbv3.get_config("smoke")
  net = build.build_supernet(cfg, build.build_space(cfg))
  for backend in ("tpu", "gpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert ops.resolve_depthwise_impl("auto") == "xla"
    assert widths("auto") == {16}
    assert train_lib.resolve_subnet_loop("auto", net) == "vmap"
    assert train_lib.switch_model(net, "auto", enabled=True) is net
