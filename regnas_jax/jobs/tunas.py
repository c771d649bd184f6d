"""The TuNAS job (``search.algorithm='tunas'``): weights and policy trained in alternation, then
the argmax architecture against random search at the same cost.

One jit-compiled step does what one step of TuNAS's search does (facts in ``search/tunas.py``):

1. sample an architecture from the policy; with the warmup probability p (1 -> 0 over the
   first ``warmup_fraction`` of the search) widen its ``space.warmup_fields`` to the largest
   choice (filter warmup) and average the choices of its op decisions (op warmup), element by
   element;
2. one optimiser step of the shared weights on a training batch for that architecture;
3. quality Q = top-1 of the sampled architecture (no warmup) on one validation batch, with the
   updated weights and batch statistics (TuNAS's search uses stateless BN);
4. reward (``abs`` by default) of Q and the cost T against the target T0, and one REINFORCE
   step of the policy.  T (``search.cost``): analytic MACs (``'macs'``), TuNAS's released
   Pixel-1 latency model of the space (``'tunas'``, milliseconds; ``regnas_jax.latency_tunas``)
   or a linear latency model fitted to subnets timed on this machine (``'latency'``).

The steps run in the shared resumable loop (:func:`regnas_jax.training.run_loop`): the state
(weights, BN statistics, both optimiser states, the policy and its baseline; all randomness
derives from the step number) is checkpointed, so a killed search resumes exactly.  Outputs:
``trajectory.jsonl`` / ``trajectory.png`` (the search's progress), ``training.png`` (the
weights' loss, training-batch top-1 and learning rate), ``results.json`` / ``results.md`` (the
argmax architecture, its cost against the target, the policy, and the random-search baseline
inside the same cost window, all scored with re-calibrated BN, optionally also trained from
scratch),
``subnets/tunas`` and, for the latency cost, ``latency.json``.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regnas_jax import checkpoint as ckpt_lib
from regnas_jax import data as data_lib
from regnas_jax import identity as identity_lib
from regnas_jax.data import pipeline
from regnas_jax import (evaluate, latency, latency_tunas, parallel, persist, report, runtime,
                        spaces, training)
from regnas_jax.errors import ConfigError, InvalidSpaceError
from regnas_jax.jobs import supernet
from regnas_jax.jobs.base import (Job, JobContext, register_job, run_record, training_plot,
                                  write_results)
from regnas_jax.nn.common import init_variables
from regnas_jax.nn.supernet import SUPERNETS
from regnas_jax.progress import MetricsLog
from regnas_jax.search import tunas
from regnas_jax.spaces import PolicySpace

COSTS = ("macs", "tunas", "latency")
MACS_NOTE = "MACs per image (multiply-accumulates; OFA prints them as MFLOPs)"
_STEPS: dict = {}   # compiled search steps by configuration (a resumed search reuses its step)


class SearchState(NamedTuple):
  """Everything a search step reads and writes (saved as the checkpoint)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ctrl: tunas.ControllerState


def lr_scale(cfg) -> float:
  """``train.batch_size / 256`` when ``search.scale_lr_by_batch`` (TuNAS gives both learning
  rates per 256 images and multiplies them by the global batch over 256), else 1."""
  return cfg.train.batch_size / 256 if cfg.search.get("scale_lr_by_batch", False) else 1.0


def shard_count(cfg, mesh=None) -> int:
  """Architectures sampled per step (``search.shards``; 0: one per device of the mesh)."""
  s = int(cfg.search.get("shards", 1))
  return s if s > 0 else (parallel.size(mesh) if mesh is not None else
                          parallel.size(parallel.make_mesh(parallel.mesh_config(cfg))))


def rl_batch_size(cfg) -> int:
  """Validation (RL) images per step: ``rl_batch_size_multiplier`` x the training batch when
  set (TuNAS: 4), else ``val_batch_size``."""
  m = float(cfg.search.get("rl_batch_size_multiplier", 0) or 0)
  return int(round(m * cfg.train.batch_size)) if m > 0 else int(cfg.search.val_batch_size)


def controller_config(search_config, scale: float = 1.0) -> tunas.ControllerConfig:
  return tunas.ControllerConfig(
      learning_rate=float(search_config.rl_learning_rate) * scale,
      baseline_momentum=float(search_config.baseline_momentum),
      delay_fraction=float(search_config.rl_delay_fraction),
      increase=float(search_config.rl_increase),
      entropy_weight=float(search_config.entropy_weight))


def check_search(cfg, space) -> None:
  """``config.search`` of a TuNAS run (module docstring); errors name the key."""
  if pipeline.settings(cfg)["augment"] != "pad_crop":  # (its step reads batches without grain)
    raise ConfigError("config.input.augment: the TuNAS job supports 'pad_crop' only")
  se = cfg.search
  if se.reward not in tunas.REWARDS:
    raise ConfigError(f"config.search.reward: {se.reward!r} is not one of {tunas.REWARDS}")
  if se.cost not in COSTS:
    raise ConfigError(f"config.search.cost: {se.cost!r} is not one of {COSTS}")
  units = ("fraction", "mmacs") if se.cost == "macs" else ("fraction", "ms")
  if se.target_unit not in units:
    raise ConfigError(f"config.search.target_unit: {se.target_unit!r} does not fit cost "
                      f"{se.cost!r} (use one of {units})")
  if not (isinstance(se.target, (int, float)) and se.target > 0):
    raise ConfigError(f"config.search.target: must be > 0, got {se.target!r}")
  if se.target_unit == "fraction" and se.target > 1:
    raise ConfigError(f"config.search.target: a fraction of the largest subnet's cost must be "
                      f"<= 1, got {se.target}")
  if not se.beta < 0:
    raise ConfigError(f"config.search.beta: must be < 0 (a cost penalty), got {se.beta}")
  if not 0 <= se.warmup_fraction <= se.rl_delay_fraction:
    raise ConfigError(f"config.search.warmup_fraction: must be in [0, rl_delay_fraction="
                      f"{se.rl_delay_fraction}] (TuNAS: warmup ends before the policy learns), "
                      f"got {se.warmup_fraction}")
  try:
    controller_config(se).check()
  except ValueError as e:
    raise ConfigError(f"config.search.{e}") from None
  for k, lo in (("val_batch_size", 1), ("random_samples", 0), ("random_tries", 1),
                ("latency_samples", 4), ("latency_repeats", 1), ("latency_batch_size", 1),
                ("retrain_steps", 0)):
    v = se[k]
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
      raise ConfigError(f"config.search.{k}: must be an integer >= {lo}, got {v!r}")
  check_shards(cfg)
  if not 0 < se.random_window < 1:
    raise ConfigError(f"config.search.random_window: must be in (0, 1), got {se.random_window!r}")
  if se.cost != "latency":   # the fitted model's target is checked once it is fitted
    cost, target, unit, _ = macs_cost(cfg, space) if se.cost == "macs" else tunas_cost(cfg, space)
    check_target(cost, target, unit, space)


def check_shards(cfg) -> None:
  """``search.shards``, ``rl_batch_size_multiplier`` and ``scale_lr_by_batch`` (errors name the
  key): both batches must split evenly into the shards and over the mesh's devices."""
  se = cfg.search
  s = se.get("shards", 1)
  if isinstance(s, bool) or not isinstance(s, int) or s < 0:
    raise ConfigError(f"config.search.shards: must be an integer >= 0 (0: one per device), "
                      f"got {s!r}")
  m = se.get("rl_batch_size_multiplier", 0)
  if isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0:
    raise ConfigError(f"config.search.rl_batch_size_multiplier: must be a number >= 0 (0: use "
                      f"val_batch_size), got {m!r}")
  if not isinstance(se.get("scale_lr_by_batch", False), bool):
    raise ConfigError(f"config.search.scale_lr_by_batch: must be true or false, got "
                      f"{se.scale_lr_by_batch!r}")
  mesh = parallel.make_mesh(parallel.mesh_config(cfg))
  n = shard_count(cfg, mesh)
  for what, b in (("config.train.batch_size", int(cfg.train.batch_size)),
                  ("the RL batch (config.search.val_batch_size or rl_batch_size_multiplier x "
                   "config.train.batch_size)", rl_batch_size(cfg))):
    if b < 1 or b % n:
      raise ConfigError(f"{what}: {b} does not split into the {n} shards of "
                        f"config.search.shards")
    parallel.check_batch(b, mesh, what)


def macs_cost(cfg, space):
  se = cfg.search
  scale = 1e6 if se.target_unit == "mmacs" else float(space.macs(space.max_arch()))
  return (lambda a: space.macs(a) / 1e6), float(se.target) * scale / 1e6, "MMACs", {}


def tunas_cost(cfg, space):
  """``(cost_fn, target, 'ms', info)``: TuNAS's released Pixel-1 latency model of the space
  (``regnas_jax.latency_tunas``); ``info`` names the model and its source."""
  se = cfg.search
  if space.name not in latency_tunas.SPACE_CLASSES:
    raise ConfigError(f"config.search.cost: 'tunas' has models of "
                      f"{', '.join(latency_tunas.SPACE_CLASSES)} only, not {space.name!r}")
  if len(space.resolutions) != 1:
    raise ConfigError(f"config.space.resolutions: TuNAS's latency model (cost 'tunas') has no "
                      f"resolution term; search one resolution, got {tuple(space.resolutions)}")
  try:
    fn = latency_tunas.cost_fn(space)
  except InvalidSpaceError as e:
    raise ConfigError(f"config.space.{e}") from None
  target = float(se.target) * (float(fn(space.max_arch())) if se.target_unit == "fraction"
                               else 1.0)
  info = {"model": "tunas", "space": space.name, "default_target_ms":
          latency_tunas.TARGET_MS[space.name], "source": latency_tunas.source()}
  return fn, target, "ms", info


def check_target(cost_fn, target: float, unit: str, space) -> None:
  lo, hi = float(cost_fn(space.min_arch())), float(cost_fn(space.max_arch()))
  if not lo <= target <= hi:
    raise ConfigError(f"config.search.target: {target:.4g} {unit} is outside the space's range "
                      f"[{lo:.4g}, {hi:.4g}] {unit}")


# ----------------------------------------------------------------------------------------------
# Latency cost
# ----------------------------------------------------------------------------------------------
def measure_latency(net, space, archs, *, batch_size: int, repeats: int, resolution: int,
                    log=print) -> np.ndarray:
  """Median wall-clock milliseconds of one forward pass (eval mode, ``batch_size`` images) of
  every arch's exact-shape subnet on the default device: compiled once, two warm-up runs, then
  ``repeats`` timed runs.  Weights do not change the time, so constant ones are used."""
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)),
                          space.max_arch())
  const = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
  x = jnp.ones((batch_size, resolution, resolution, 3), jnp.float32)
  out = []
  n = spaces.pop_size(archs)
  for i in range(n):
    module, v = net.extract(const, jax.tree.map(np.asarray, spaces.member(archs, i)))
    fn = jax.jit(functools.partial(module.apply, train=False))
    for _ in range(2):
      jax.block_until_ready(fn(v, x))
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      jax.block_until_ready(fn(v, x))
      times.append(time.perf_counter() - t)
    out.append(1e3 * float(np.median(times)))
    if (i + 1) % max(1, n // 5) == 0 or i + 1 == n:
      log(f"latency: measured {i + 1}/{n} subnets (last {out[-1]:.3f} ms)")
  return np.asarray(out)


def latency_cost(ctx: JobContext):
  """``(cost_fn, target, 'ms', fit)`` from a linear model fitted to exact subnets timed here;
  the measurements are kept in ``latency.json`` (reused on resume, re-measured when their
  identity differs)."""
  cfg, space, se = ctx.cfg, ctx.space, ctx.cfg.search
  path = ctx.path("latency.json")
  ident = {"space": space.config(), "samples": se.latency_samples, "batch": se.latency_batch_size,
           "seed": cfg.seed, "backend": jax.default_backend()}

  def parse(saved):
    archs = space.population_from_dicts(saved["archs"])
    ms = np.asarray(saved["ms"], np.float64)
    if ms.shape != (spaces.pop_size(archs),) or not np.all(np.isfinite(ms)):
      raise ValueError("'ms' must hold one finite time per architecture")
    return archs, ms

  loaded = persist.read_state(path, ident, parse, other_run="ignore")  # other settings: measure
  if loaded is None:
    archs = spaces.base.concat(spaces.stack([space.min_arch(), space.max_arch()]),
                               space.sample(jax.random.key(cfg.seed + 101), se.latency_samples - 2))
    r = max(space.resolutions)
    ctx.log(f"latency: timing {se.latency_samples} exact subnets at batch "
            f"{se.latency_batch_size}, {r} px on {jax.default_backend()}")
    ms = measure_latency(ctx.net, space, archs, batch_size=se.latency_batch_size,
                         repeats=se.latency_repeats, resolution=r, log=ctx.log)
  else:
    archs, ms = loaded
  model = latency.fit(space, archs, ms, holdout=0.25, seed=cfg.seed, ridge=1e-3)
  fit = {k: v for k, v in model.to_dict().items() if k not in ("weights", "bias")}
  persist.save_state(path, ident, archs=space.population_to_dicts(archs), ms=ms.tolist(), fit=fit)
  ctx.log(f"latency model: held-out RMSE {model.test_rmse:.3f} ms, R^2 {model.test_r2:.3f}, "
          f"MAPE {100 * model.test_mape:.1f}% (train RMSE {model.train_rmse:.3f} ms)")
  predict = lambda a: model.predict(space, a)
  target = float(se.target) * (float(predict(space.max_arch())) if se.target_unit == "fraction"
                               else 1.0)
  check_target(predict, target, "ms", space)
  return predict, target, "ms", fit


# ----------------------------------------------------------------------------------------------
# The search step
# ----------------------------------------------------------------------------------------------
def warmup_arch(space, arch, p, key):
  """Filter warmup: each element of ``space.warmup_fields`` takes its largest choice with
  probability p."""
  big = space.max_arch()
  keys = jax.random.split(key, len(space.warmup_fields))
  pick = lambda k, a, b: jnp.where(jax.random.bernoulli(k, p, a.shape), b, a).astype(jnp.int32)
  return arch._replace(**{f: pick(k, getattr(arch, f), getattr(big, f))
                          for k, f in zip(keys, space.warmup_fields)})


def op_average(net, space, p, key):
  """Op warmup flags: each op decision element averages its choices with probability p."""
  names = net.op_decisions
  return {n: jax.random.bernoulli(k, p, space.field(n).shape)
          for k, n in zip(jax.random.split(key, len(names)), names)}


def _keys(key, n: int):
  """``n`` keys from ``key``; one shard keeps ``key`` itself (a one-shard step is the step of
  a single-architecture search, draw for draw)."""
  return key[None] if n == 1 else jax.random.split(key, n)


def make_search_step(model, space, tx, cost_fn, target: float, total: int, cfg, loss_config,
                     augment, val_augment, shards: int = 1, state_sharding=None):
  """A jit-compiled ``step(state, images, labels, val_images, val_labels, base_key)``.

  ``shards`` (S) is TuNAS's one architecture per accelerator core: the training batch ``(B, ...)``
  and the RL batch ``(V, ...)`` are cut into S equal slices; shard ``s`` samples its own
  architecture, computes the weight gradient and its BN statistics on its training slice and
  its reward on its RL slice.  The weights take the mean of the shards' gradients (a
  cross-replica mean), BN statistics the mean of theirs, and the policy one
  :func:`tunas.update_shards` step.  On a mesh the slices are laid out along its ``data`` axis
  (contiguous rows per device), so shard ``s`` runs where its images are; ``state_sharding``
  keeps the new state where the old one lives.
  """
  se = cfg.search
  ccfg = controller_config(se, lr_scale(cfg))
  n = int(shards)

  def step(state: SearchState, images, labels, val_images, val_labels, base_key):
    k_aug, k_arch, k_fw, k_ow, k_drop = jax.random.split(training.step_key(base_key, state.step), 5)
    logits_now = state.ctrl.logits
    archs = jax.vmap(lambda k: tunas.sample(space, logits_now, k, ccfg.temperature))(
        _keys(k_arch, n))
    p = tunas.warmup_probability(state.step, total, float(se.warmup_fraction))
    train_archs = (jax.vmap(lambda a, k: warmup_arch(space, a, p, k))(archs, _keys(k_fw, n))
                   if se.filter_warmup else archs)
    average = (jax.vmap(lambda k: op_average(model, space, p, k))(_keys(k_ow, n))
               if se.op_warmup else None)
    cut = lambda t: t.reshape((n, t.shape[0] // n) + t.shape[1:])
    xs, ys = cut(augment(images, k_aug)), cut(labels)

    def shard_loss(params, arch, avg, x, y, k):
      logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                arch, train=True, average=avg, mutable=["batch_stats"],
                                rngs={"dropout": k})
      return (training.subnet_losses(logits[None], y, loss_config)[0],
              (logits, upd["batch_stats"]))

    def loss_fn(params):
      losses, (logits, stats) = jax.vmap(shard_loss, in_axes=(None, 0, 0, 0, 0, 0))(
          params, train_archs, average, xs, ys, _keys(k_drop, n))
      return losses.mean(), (logits, jax.tree.map(lambda t: t.mean(0), stats))

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    # Q: each shard's arch on its slice of the RL batch, batch statistics (stateless BN).
    def quality(arch, vx, vy):
      v_logits, _ = model.apply({"params": params, "batch_stats": stats}, vx, arch, train=True,
                                mutable=["batch_stats"])
      return (jnp.argmax(v_logits, -1) == vy).mean()

    q = jax.vmap(quality)(archs, cut(val_augment(val_images)), cut(val_labels))
    cost = jax.vmap(cost_fn)(archs)
    r = tunas.reward(se.reward, q, cost, target, float(se.beta))
    ctrl, cm = tunas.update_shards(space, state.ctrl, archs, r, total, ccfg)
    metrics = {"reward": r.mean(), "quality": q.mean(), "cost": cost.mean(), "loss": loss,
               "train_acc": (jnp.argmax(logits, -1) == ys).mean(),
               "policy_entropy": tunas.policy_entropy(space, ctrl.logits, ccfg.temperature),
               "argmax_cost": cost_fn(tunas.argmax_arch(space, ctrl.logits)), "warmup_p": p,
               "rl_lr": cm["lr"], "baseline": cm["baseline"], "advantage": cm["advantage"]}
    new = SearchState(state.step + 1, params, stats, opt_state, ctrl)
    if state_sharding is not None:
      new = jax.lax.with_sharding_constraint(new, state_sharding)
    return new, metrics

  return jax.jit(step, donate_argnums=0)


# ----------------------------------------------------------------------------------------------
# After the search
# ----------------------------------------------------------------------------------------------
def random_in_window(space, cost_fn, target: float, window: float, n: int, tries: int, seed: int):
  """Up to ``n`` distinct uniform samples whose cost lies in ``target * [1 - w, 1 + w]``
  (TuNAS's random baseline: rejection sampling on the cost), and how many were drawn."""
  costs = jax.jit(jax.vmap(cost_fn))
  keep, seen, drawn = [], set(), 0
  key = jax.random.key(seed)
  batch = 1024
  while len(keep) < n and drawn < tries:
    key, k = jax.random.split(key)
    pop = jax.tree.map(np.asarray, space.canonicalize(space.sample(k, batch)))
    c = np.asarray(costs(pop))
    drawn += batch
    for i in np.flatnonzero(np.abs(c / target - 1.0) <= window):
      a = spaces.member(pop, int(i))
      h = b"".join(np.asarray(x).tobytes() for x in a)
      if h not in seen:
        seen.add(h)
        keep.append(a)
      if len(keep) == n:
        break
  return keep, drawn


def retrain(ctx: JobContext, arch, name: str, steps: int, seed: int) -> dict:
  """Train the exact-shape subnet ``arch`` from scratch for ``steps`` (the config's optimiser,
  a cosine schedule, the same batches for every arch; resumable in ``retrain/<name>``) and
  report its test top-1."""
  space = ctx.space
  module = ctx.net.exact_module(arch)
  r = int(space.resolutions[int(np.asarray(arch.resolution))])
  res = training.train_exact(ctx.cfg, module, ctx.dataset, ctx.path("retrain", name),
                             resolution=r, seed=seed, steps=steps, log=ctx.log,
                             identity_extra={"arch": space.arch_to_dict(arch)},
                             desc=f"retrain {name}")
  top1 = float(training.evaluate_exact(module, res.variables, ctx.dataset, "test", r).mean())
  ctx.log(f"retrained {name} ({space.format(arch)[:50]}...) for {steps} steps: test top-1 "
          f"{100 * top1:.2f}%")
  return {"steps": steps, "test_top1": top1}


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
class TunasJob(Job):
  algorithms = ("tunas",)

  def check(self, cfg, space) -> None:
    net_cls = SUPERNETS.get(space.name)
    if not isinstance(space, PolicySpace) or net_cls is None or not net_cls.op_average:
      raise ConfigError(f"config.space.name: TuNAS needs one of its spaces (proxylessnas, "
                        f"proxylessnas_enlarged, mobilenet_v3_like), got {space.name!r}")
    if not (isinstance(cfg.train.steps, int) and cfg.train.steps >= 1):
      raise ConfigError(f"config.train.steps: must be a positive integer, got "
                        f"{cfg.train.steps!r}")
    check_search(cfg, space)

  def check_data(self, cfg, space, dataset) -> None:
    n_val, n_rl = len(dataset.val), rl_batch_size(cfg)
    if n_rl > n_val:
      key = ("rl_batch_size_multiplier" if cfg.search.get("rl_batch_size_multiplier", 0)
             else "val_batch_size")
      raise ConfigError(f"config.search.{key}: an RL batch of {n_rl} exceeds the {n_val} "
                        f"validation images")

  def run(self, ctx: JobContext) -> dict:
    cfg, space, se, tc = ctx.cfg, ctx.space, ctx.cfg.search, ctx.cfg.train
    cost_fn, target, unit, fit = (macs_cost(cfg, space) if se.cost == "macs" else
                                  tunas_cost(cfg, space) if se.cost == "tunas" else
                                  latency_cost(ctx))
    lo, hi = float(cost_fn(space.min_arch())), float(cost_fn(space.max_arch()))
    ctx.log(f"TuNAS search: {tc.steps} steps, reward {se.reward} (beta {se.beta}), cost {se.cost}, "
            f"target {target:.4g} {unit} (space range [{lo:.4g}, {hi:.4g}])")
    t0 = time.time()
    state, start = self.search(ctx, cost_fn, target, fit)
    seconds = time.time() - t0
    if start < tc.steps:
      ctx.log(f"searched {tc.steps - start} steps in {seconds:.1f} s")
    if ctx.stop_after == "train":
      return {"training": {"steps": int(tc.steps), "seconds_this_process": seconds}}
    return self.report(ctx, state, cost_fn, target, unit, fit, seconds)

  def search(self, ctx: JobContext, cost_fn, target, fit):
    """``(final state, start step)``: the alternating search, resumed from the work dir."""
    cfg, space, net, ds = ctx.cfg, ctx.space, ctx.net, ctx.dataset
    se, tc = cfg.search, cfg.train
    total = int(tc.steps)
    phase = training.Phase("tunas", steps=total, allowed=(), sampler="policy", num_subnets=1,
                           distill="none", reorder_keep=None, lr=float(tc.lr) * lr_scale(cfg),
                           warmup_steps=min(int(tc.warmup_steps), total - 1))
    tx, sched = training.make_optimizer(tc, phase)
    mc = parallel.mesh_config(cfg)
    mesh = ctx.mesh if ctx.mesh is not None else parallel.make_mesh(mc)
    shards = shard_count(cfg, mesh)
    init, init_ident = supernet.initial_weights(ctx)
    ident = identity_lib.tunas(cfg, space, shards=shards, init_from=init_ident)
    ck = ckpt_lib.Checkpointer(ctx.path("checkpoints"), ident, max_to_keep=tc.max_to_keep)
    k_init, k_steps = jax.random.split(jax.random.key(cfg.seed))
    init = init or (lambda k: init_variables(net, k))
    v = init(k_init)
    fresh = SearchState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
                        training.optimizer_state(tx, v["params"]),
                        tunas.init(space, controller_config(se)))
    restored, _, resumed = ck.restore_latest(fresh, warn=ctx.log)
    traj = MetricsLog(ctx.path("trajectory.jsonl"), runtime.tensorboard_dir(cfg, ctx.workdir))
    if resumed is not None:
      ctx.log(f"resumed from {ck.directory}/{resumed} (step {int(restored.step)}/{total})")
    traj.truncate_after(int(restored.step) if resumed is not None else 0)
    # Fresh and restored states as the same kind of array (uncommitted, on the default device):
    # jit's cache key includes it, so a resumed search in the same process compiles nothing.
    state = restored if resumed is not None else fresh
    if parallel.size(mesh) == 1:
      state, sharding, put = evaluate.uncommitted(state), None, (lambda b: b)
    else:  # replicated (or FSDP-split) on the mesh; each process reads its part of a batch
      sharding = parallel.state_shardings(state, mesh, mc)
      state = parallel.place(jax.tree.map(np.asarray, state), sharding)
      put = lambda b: parallel.put_batch(b, mesh)
    start = int(state.step)
    step_fn = self._compiled_step(ctx, tx, cost_fn=cost_fn, target=target, fit=fit, ident=ident,
                                  total=total, shards=shards, mesh=mesh, mesh_config=mc,
                                  sharding=sharding)
    n_train, n_val, n_rl = len(ds.train), len(ds.val), rl_batch_size(cfg)

    def batch(split, n, size, s, seed):
      idx = data_lib.epoch_batch_indices(n, size, s, seed)
      return put(split.get(idx[parallel.process_slice(len(idx))]))

    clock = runtime.CompileClock()

    def step(s, st):
      x, y = batch(ds.train, n_train, tc.batch_size, s, cfg.seed)
      vx, vy = batch(ds.val, n_val, n_rl, s, cfg.seed + 1)
      if s == start:   # compiles (or loads) the step: not part of the time left
        return clock.timed_first(lambda: step_fn(st, x, y, vx, vy, k_steps), 1)[0]
      return step_fn(st, x, y, vx, vy, k_steps)

    def record(s, host):
      rec = {"lr": float(sched(s - 1)), "time": time.time()}
      for k in host[0]:
        rec[k] = round(float(np.mean([h[k] for h in host])), 6)
      return rec

    if start < total:
      ctx.log(f"searching steps {start}..{total}, batch {tc.batch_size}, RL batch {n_rl}, "
              f"{shards} architecture(s) per step on {parallel.size(mesh)} device(s)")
    try:
      state = training.run_loop(
          state, step, start=start, total=total, checkpointer=ck, metrics=traj, desc="tunas",
          record=record, bar_fields=lambda r: dict(
              reward=r["reward"], Q=r["quality"], cost=r["cost"], H=r["policy_entropy"],
              argmax=r["argmax_cost"]),
          save_extra=lambda s: {"step": s}, checkpoint_every=tc.checkpoint_every,
          log_every=tc.log_every, progress_every=tc.progress_every,
          max_nonfinite=int(tc.get("max_nonfinite_steps", 0)),
          lr_hint=f"; a smaller config.train.lr (now {tc.lr}) may help",
          profile=runtime.ProfileWindow(cfg, ctx.workdir, ctx.log), compile_clock=clock)
    finally:
      traj.close()
      ck.close()
    return state, start

  def _compiled_step(self, ctx, tx, cost_fn, target, fit, ident, total, shards, mesh,
                     mesh_config, sharding=None):
    """The search step, compiled once per configuration and layout: the key is the run's
    identity (which holds the shard count), the data statistics, and the mesh's devices with
    ``mesh_config`` (``config.mesh``; one device: no sharding; several: replicated or
    FSDP-split state)."""
    ds, tc = ctx.dataset, ctx.cfg.train
    layout = None if sharding is None else ([d.id for d in mesh.devices.flat],
                                            mesh_config.params, mesh_config.fsdp_min_size)
    key = json.dumps([ident, target, fit, [np.asarray(ds.mean).tolist(),
                                           np.asarray(ds.std).tolist()], layout],
                     sort_keys=True, default=str)
    if key not in _STEPS:
      r = max(ctx.space.resolutions)
      lc = training.LossConfig(ds.num_classes, float(tc.label_smoothing), "none", 0.0, True)
      aug = functools.partial(data_lib.preprocess, mean=ds.mean, std=ds.std, resolution=r,
                              pad=tc.augment.pad, flip=tc.augment.flip)
      val_aug = functools.partial(data_lib.preprocess, mean=ds.mean, std=ds.std, resolution=r)
      _STEPS[key] = make_search_step(ctx.net, ctx.space, tx=tx, cost_fn=cost_fn, target=target,
                                     total=total, cfg=ctx.cfg, loss_config=lc,
                                     augment=lambda x, k: aug(x, key=k), val_augment=val_aug,
                                     shards=shards, state_sharding=sharding)
    return _STEPS[key]

  def report(self, ctx: JobContext, state, cost_fn, target, unit, fit, seconds) -> dict:
    """The argmax architecture against random ones in the cost window, scored and exported."""
    cfg, space, se = ctx.cfg, ctx.space, ctx.cfg.search
    logits = jax.tree.map(np.asarray, state.ctrl.logits)
    best = jax.tree.map(np.asarray, space.canonicalize(tunas.argmax_arch(space, logits)))
    best_cost = float(cost_fn(best))
    rel = best_cost / target - 1.0
    ctx.log(f"argmax architecture: {space.format(best)}")
    ctx.log(f"argmax cost {best_cost:.4g} {unit} = target {100 * rel:+.2f}%")
    rand, drawn = random_in_window(space, cost_fn, target, float(se.random_window),
                                   int(se.random_samples), int(se.random_tries), cfg.seed + 7)
    ctx.log(f"random search: {len(rand)} of {drawn} uniform samples within +-"
            f"{100 * se.random_window:.1f}% of the target")
    archs = [best] + rand
    pop = spaces.stack(archs)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scorer = evaluate.Scorer.from_config(cfg, ctx.net, space, variables, ctx.dataset,
                                         mesh=ctx.mesh)
    val_ok, test_ok = scorer.correct(pop, "val"), scorer.correct(pop, "test")
    rows = [{"name": "TuNAS argmax" if i == 0 else f"random {i}", "arch": space.arch_to_dict(a),
             "summary": space.format(a), "cost": float(cost_fn(a)), "macs": int(space.macs(a)),
             "params": int(space.params(a)), "val_top1": float(val_ok[i].mean()),
             "test_top1": float(test_ok[i].mean())} for i, a in enumerate(archs)]
    for i, a in enumerate(archs if se.retrain_steps else []):
      rows[i]["retrain"] = retrain(ctx, a, "argmax" if i == 0 else f"random{i}",
                                   int(se.retrain_steps), cfg.seed + 1000)
    supernet.export_subnets(ctx, variables, scorer.stats(spaces.stack([best])), [best],
                            [dict(rows[0], name="tunas")],
                            ("val_top1", "test_top1", "macs", "params", "cost"))
    records = MetricsLog(ctx.path("trajectory.jsonl")).read()
    rnd = [x["test_top1"] for x in rows[1:]]
    summary = {"target": target, "unit": unit, "argmax_cost": best_cost, "argmax_cost_rel": rel,
               "within_5_percent": abs(rel) <= 0.05, "random_window": float(se.random_window),
               "random_found": len(rand), "random_drawn": drawn,
               "random_mean_test_top1": float(np.mean(rnd)) if rnd else None,
               "random_best_test_top1": float(np.max(rnd)) if rnd else None}
    results = run_record(ctx, MACS_NOTE)
    results.update({"tunas": summary, "models": rows, "cost_model": fit,
                    "policy": tunas.probabilities(space, logits),
                    "search": {"steps": int(cfg.train.steps),
                               "shards": shard_count(cfg, ctx.mesh),
                               "batch": int(cfg.train.batch_size), "rl_batch": rl_batch_size(cfg),
                               "lr": float(cfg.train.lr) * lr_scale(cfg),
                               "rl_learning_rate": float(se.rl_learning_rate) * lr_scale(cfg),
                               "seconds_this_process": round(seconds, 2),
                               "final": records[-1] if records else None}})
    write_results(ctx, results, report.tunas_table(rows, summary, bool(se.retrain_steps)),
                  plots={"trajectory.png": lambda p: report.plot_trajectory(
                      p, records, target, unit, f"{cfg.name} ({ctx.dataset.name}): TuNAS search"),
                         **training_plot(ctx, "trajectory.jsonl")},
                  also=("trajectory.jsonl", "subnets/tunas"))
    return results


register_job(TunasJob())
