"""The TuNAS job (``search.algorithm='tunas'`` in ``run_search.py``): weights and policy trained
in alternation, then the argmax architecture against random search at the same cost.

One jit-compiled step does what one step of TuNAS's search does (facts in ``search/tunas.py``):

1. sample an architecture from the policy; with the warmup probability p (1 -> 0 over the
   first ``warmup_fraction`` of the search) widen its widths/expansions to the largest (filter
   warmup) and average the choices of its op decisions (op warmup), element by element;
2. one optimiser step of the shared weights on a training batch for that architecture;
3. quality Q = top-1 of the sampled architecture (no warmup) on one validation batch, with the
   updated weights and batch statistics (TuNAS's search uses stateless BN);
4. reward (``abs`` by default) of Q and the cost T (analytic MACs or a fitted latency model)
   against the target T0, and one REINFORCE step of the policy.

The state (weights, BN statistics, both optimiser states, the policy and its baseline; all
randomness derives from the step number) is checkpointed, so a killed search resumes exactly.
Outputs in the work directory: ``trajectory.jsonl`` (reward, Q, cost, policy entropy, ... per
logged step) and ``trajectory.png``, ``results.json`` / ``results.md`` (the argmax architecture,
its cost against the target, the policy, and the random-search baseline inside the same cost
window, all scored with re-calibrated BN on the validation and test splits, optionally also
trained from scratch), ``subnets/tunas`` (the exported argmax subnet) and, for the latency cost,
``latency.json`` (measurements and the fit).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regnas_jax import checkpoint as ckpt_lib
from regnas_jax import data as data_lib
from regnas_jax import export, latency, spaces
from regnas_jax import nn as nets
from regnas_jax import train as train_lib
from regnas_jax.nn.common import init_variables
from regnas_jax.pipeline import run_record, write_json_atomic  # (pipeline imports us lazily)
from regnas_jax.progress import MetricsLog, Progress
from regnas_jax.search import tunas

COSTS = ("macs", "latency")
TARGET_UNITS = ("fraction", "mmacs", "ms")


_STEPS: dict = {}   # compiled search steps by configuration (see run)


class SearchState(NamedTuple):
  """Everything a search step reads and writes (saved as the checkpoint)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ctrl: tunas.ControllerState


def controller_config(se) -> tunas.ControllerConfig:
  return tunas.ControllerConfig(
      learning_rate=float(se.rl_learning_rate), baseline_momentum=float(se.baseline_momentum),
      delay_fraction=float(se.rl_delay_fraction), increase=float(se.rl_increase),
      entropy_weight=float(se.entropy_weight))


def check_config(cfg, space, error) -> None:
  """Raise ``error(message)`` naming the first bad key of ``config.search`` / ``config.train``."""
  se = cfg.search
  if not hasattr(space, "choice_mask") or not hasattr(space, "active_decisions"):
    raise error(f"config.space.name: TuNAS needs one of its spaces (proxylessnas, "
                f"proxylessnas_enlarged, mobilenet_v3_like), got {space.name!r}")
  if se.reward not in tunas.REWARDS:
    raise error(f"config.search.reward: {se.reward!r} is not one of {tunas.REWARDS}")
  if se.cost not in COSTS:
    raise error(f"config.search.cost: {se.cost!r} is not one of {COSTS}")
  units = ("fraction", "ms") if se.cost == "latency" else ("fraction", "mmacs")
  if se.target_unit not in units:
    raise error(f"config.search.target_unit: {se.target_unit!r} does not fit cost "
                f"{se.cost!r} (use one of {units})")
  if not (isinstance(se.target, (int, float)) and se.target > 0):
    raise error(f"config.search.target: must be > 0, got {se.target!r}")
  if se.target_unit == "fraction" and se.target > 1:
    raise error(f"config.search.target: a fraction of the largest subnet's cost must be <= 1, "
                f"got {se.target}")
  if not se.beta < 0:
    raise error(f"config.search.beta: must be < 0 (a cost penalty), got {se.beta}")
  for k in ("warmup_fraction",):
    if not 0 <= se[k] <= se.rl_delay_fraction:
      raise error(f"config.search.{k}: must be in [0, rl_delay_fraction={se.rl_delay_fraction}] "
                  f"(TuNAS: warmup ends before the policy learns), got {se[k]}")
  try:
    controller_config(se).check()
  except ValueError as e:
    raise error(f"config.search.{e}") from None
  for k, lo in (("val_batch_size", 1), ("random_samples", 0), ("random_tries", 1),
                ("latency_samples", 4), ("latency_repeats", 1), ("latency_batch_size", 1),
                ("retrain_steps", 0)):
    v = se[k]
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
      raise error(f"config.search.{k}: must be an integer >= {lo}, got {v!r}")
  if not 0 < se.random_window < 1:
    raise error(f"config.search.random_window: must be in (0, 1), got {se.random_window!r}")


# ----------------------------------------------------------------------------------------------
# Costs
# ----------------------------------------------------------------------------------------------
def measure_latency(net, space, archs, *, batch_size: int, repeats: int, resolution: int,
                    log=print) -> np.ndarray:
  """Median wall-clock milliseconds of one forward pass (eval mode, ``batch_size`` images) of
  every arch's exact-shape subnet on the default device: compiled once, two warm-up runs, then
  ``repeats`` timed runs.  Weights do not change the time, so fresh ones are used."""
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)),
                          space.max_arch())
  zeros = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
  x = jnp.ones((batch_size, resolution, resolution, 3), jnp.float32)
  out = []
  n = spaces.pop_size(archs)
  for i in range(n):
    a = jax.tree.map(np.asarray, spaces.member(archs, i))
    module, v = nets.extract(net, zeros, a)
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


def build_cost(cfg, net, space, workdir: str, log):
  """``(cost_fn, target, unit, info)``: ``cost_fn(arch)`` works under jit; ``target`` is T0 in
  the cost's unit."""
  se = cfg.search
  if se.cost == "macs":
    scale = 1e6 if se.target_unit == "mmacs" else float(space.macs(space.max_arch()))
    return (lambda a: space.macs(a) / 1e6), float(se.target) * scale / 1e6, "MMACs", {}
  path = os.path.join(workdir, "latency.json")
  ident = {"space": space.config(), "samples": se.latency_samples, "batch": se.latency_batch_size,
           "seed": cfg.seed, "backend": jax.default_backend()}
  rec = None
  if os.path.exists(path):
    with open(path) as f:
      rec = json.load(f)
    if rec.get("identity") != json.loads(json.dumps(ident)):
      rec = None
  if rec is None:
    r = max(space.resolutions)
    archs = spaces.base.concat(spaces.stack([space.min_arch(), space.max_arch()]),
                               space.sample(jax.random.key(cfg.seed + 101), se.latency_samples - 2))
    log(f"latency: timing {se.latency_samples} exact subnets at batch {se.latency_batch_size}, "
        f"{r} px on {jax.default_backend()}")
    ms = measure_latency(net, space, archs, batch_size=se.latency_batch_size,
                         repeats=se.latency_repeats, resolution=r, log=log)
    rec = {"identity": ident, "archs": space.population_to_json(archs), "ms": ms.tolist()}
  archs = space.population_from_json(rec["archs"])
  model = latency.fit(space, archs, np.asarray(rec["ms"]), holdout=0.25, seed=cfg.seed,
                      ridge=1e-3)
  rec["fit"] = {k: v for k, v in model.to_json().items() if k not in ("weights", "bias")}
  write_json_atomic(path, rec)
  log(f"latency model: held-out RMSE {model.test_rmse:.3f} ms, R^2 {model.test_r2:.3f}, "
      f"MAPE {100 * model.test_mape:.1f}% (train RMSE {model.train_rmse:.3f} ms)")
  predict = lambda a: model.predict(space, a)
  target = float(se.target) * (float(predict(space.max_arch())) if se.target_unit == "fraction"
                               else 1.0)
  return predict, target, "ms", rec["fit"]


# ----------------------------------------------------------------------------------------------
# The search step
# ----------------------------------------------------------------------------------------------
def warmup_arch(space, arch, p, key):
  """Filter warmup: each width and expansion element takes its largest choice with prob. p."""
  big = space.max_arch()
  k1, k2 = jax.random.split(key)
  pick = lambda k, a, b: jnp.where(jax.random.bernoulli(k, p, a.shape), b, a).astype(jnp.int32)
  return arch._replace(filters=pick(k1, arch.filters, big.filters),
                       expand=pick(k2, arch.expand, big.expand))


def op_average(space, p, key):
  """Op warmup flags: each op decision element averages its choices with probability p."""
  out = {}
  for k, name in zip(jax.random.split(key, len(nets.tunas.OP_DECISIONS)), nets.tunas.OP_DECISIONS):
    out[name] = jax.random.bernoulli(k, p, space.field(name).shape)
  return out


def make_search_step(model, space, tx, cost_fn, target: float, total: int, cfg, lc, augment,
                     val_augment):
  """A jit-compiled ``step(state, images, labels, val_images, val_labels, base_key)``."""
  se = cfg.search
  ccfg = controller_config(se)

  def step(state: SearchState, images, labels, val_images, val_labels, base_key):
    k_aug, k_arch, k_fw, k_ow, k_drop = jax.random.split(train_lib.step_key(base_key, state.step), 5)
    arch = tunas.sample(space, state.ctrl.logits, k_arch, ccfg.temperature)
    p = tunas.warmup_probability(state.step, total, float(se.warmup_fraction))
    train_arch = warmup_arch(space, arch, p, k_fw) if se.filter_warmup else arch
    average = op_average(space, p, k_ow) if se.op_warmup else None
    x = augment(images, k_aug)

    def loss_fn(params):
      logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                train_arch, train=True, average=average,
                                mutable=["batch_stats"], rngs={"dropout": k_drop})
      losses = train_lib.subnet_losses(logits[None], labels, lc)
      return losses[0], (logits, upd["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Q: the sampled arch on one validation batch, batch statistics (stateless BN).
    v_logits, _ = model.apply({"params": params, "batch_stats": stats}, val_augment(val_images),
                              arch, train=True, mutable=["batch_stats"])
    q = (jnp.argmax(v_logits, -1) == val_labels).mean()
    cost = cost_fn(arch)
    r = tunas.reward(se.reward, q, cost, target, float(se.beta))
    ctrl, cm = tunas.update(space, state.ctrl, arch, r, total, ccfg)
    best = tunas.argmax_arch(space, ctrl.logits)
    metrics = {"reward": r, "quality": q, "cost": cost, "loss": loss,
               "train_acc": (jnp.argmax(logits, -1) == labels).mean(),
               "policy_entropy": tunas.policy_entropy(space, ctrl.logits, ccfg.temperature),
               "argmax_cost": cost_fn(best), "warmup_p": p, "rl_lr": cm["lr"],
               "baseline": cm["baseline"], "advantage": cm["advantage"]}
    return SearchState(state.step + 1, params, stats, opt_state, ctrl), metrics

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


def retrain(cfg, net, space, arch, dataset, steps: int, seed: int, log) -> dict:
  """Train the exact-shape subnet ``arch`` from scratch for ``steps`` (the config's optimiser,
  a cosine schedule, the same batches for every arch) and report its test top-1."""
  tc = cfg.train
  module = nets.exact_module(net, arch)
  r = int(space.resolutions[int(np.asarray(arch.resolution))])
  v = module.init(jax.random.key(seed), jnp.zeros((1, r, r, 3)), train=False)
  phase = train_lib.Phase("retrain", steps, (), "max", 1, "none", None, float(tc.lr),
                          min(int(tc.warmup_steps), steps - 1))
  tx, _ = train_lib.make_optimizer(tc, phase)
  lc = train_lib.LossConfig(dataset.num_classes, float(tc.label_smoothing), "none", 0.0, True)
  aug = functools.partial(data_lib.preprocess, mean=dataset.mean, std=dataset.std, resolution=r,
                          pad=tc.augment.pad, flip=tc.augment.flip)

  @jax.jit
  def step(params, stats, opt_state, images, labels, key):
    x = aug(images, key=key)

    def loss_fn(p):
      logits, upd = module.apply({"params": p, "batch_stats": stats}, x, train=True,
                                 mutable=["batch_stats"])
      return train_lib.subnet_losses(logits[None], labels, lc)[0], upd["batch_stats"]

    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, upd), stats, opt_state, loss

  params, stats = v["params"], v["batch_stats"]
  opt_state = tx.init(params)
  n = len(dataset.train)
  t = time.time()
  for s in range(steps):
    x, y = dataset.train.get(data_lib.epoch_batch_indices(n, tc.batch_size, s, seed))
    params, stats, opt_state, loss = step(params, stats, opt_state, x, y,
                                          jax.random.fold_in(jax.random.key(seed), s))
  xt, yt = data_lib.eval_images(dataset.test, r, dataset.mean, dataset.std)
  pred = np.concatenate([np.asarray(jnp.argmax(module.apply(
      {"params": params, "batch_stats": stats}, xt[i:i + 500], train=False), -1))
      for i in range(0, len(xt), 500)])
  top1 = float((pred == yt).mean())
  log(f"retrained {space.format(arch)[:60]}... for {steps} steps in {time.time() - t:.0f} s: "
      f"test top-1 {100 * top1:.2f}%")
  return {"steps": steps, "test_top1": top1, "final_loss": float(loss) if steps else None}


def plot_trajectory(path: str, records: list[dict], target: float, unit: str) -> None:
  """Reward, Q, cost (sampled and argmax) against the target and policy entropy per step."""
  from regnas_jax.report import _plt
  plt = _plt()
  steps = [r["step"] for r in records]
  fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
  panels = [("reward", ["reward", "baseline"]), ("quality Q (val batch top-1)", ["quality"]),
            (f"cost ({unit})", ["cost", "argmax_cost"]), ("policy entropy (nats)",
                                                          ["policy_entropy"])]
  for ax, (title, keys) in zip(axes.flat, panels):
    for k in keys:
      ax.plot(steps, [r[k] for r in records], lw=1.2, label=k)
    if "cost" in keys:
      ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(keys) > 1 or "cost" in keys:
      ax.legend(fontsize=8)
  for ax in axes[1]:
    ax.set_xlabel("search step")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
def run(cfg, workdir: str, stop_after: str, *, space, net, dataset, scorer_cls, error,
        log=print) -> dict:
  """The TuNAS search of ``cfg`` in ``workdir`` (called by ``pipeline.run``)."""
  se, tc = cfg.search, cfg.train
  check_config(cfg, space, error)
  total = int(tc.steps)
  if total < 1:
    raise error(f"config.train.steps: must be a positive integer, got {total!r}")
  n_val = len(dataset.val)
  if se.val_batch_size > n_val:
    raise error(f"config.search.val_batch_size: {se.val_batch_size} exceeds the {n_val} "
                f"validation images")
  try:
    data_lib.epoch_batch_indices(len(dataset.train), tc.batch_size, 0, cfg.seed)
  except data_lib.DataError as e:
    raise error(str(e)) from None
  os.makedirs(workdir, exist_ok=True)
  cost_fn, target, unit, cost_info = build_cost(cfg, net, space, workdir, log)
  lo_c, hi_c = float(cost_fn(space.min_arch())), float(cost_fn(space.max_arch()))
  if not lo_c <= target <= hi_c:
    raise error(f"config.search.target: {target:.4g} {unit} is outside the space's range "
                f"[{lo_c:.4g}, {hi_c:.4g}] {unit}")
  log(f"TuNAS search: {total} steps, reward {se.reward} (beta {se.beta}), cost {se.cost}, "
      f"target {target:.4g} {unit} (space range [{lo_c:.4g}, {hi_c:.4g}])")

  phase = train_lib.Phase("tunas", total, (), "policy", 1, "none", None, float(tc.lr),
                          min(int(tc.warmup_steps), total - 1))
  tx, sched = train_lib.make_optimizer(tc, phase)
  ccfg = controller_config(se)
  ident = {"space": space.config(), "supernet": cfg.supernet.to_dict(),
           "train": {k: v for k, v in tc.to_dict().items()
                     if k not in ("log_every", "checkpoint_every", "max_to_keep",
                                  "progress_every", "calib_images", "calib_batch_size")},
           "search": {k: v for k, v in se.to_dict().items()
                      if k not in ("random_samples", "random_tries", "retrain_steps")},
           "seed": cfg.seed,
           "data": {k: v for k, v in cfg.data.to_dict().items() if k != "cache_dir"}}
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), ident,
                             max_to_keep=tc.max_to_keep)
  traj = MetricsLog(os.path.join(workdir, "trajectory.jsonl"))
  base_key = jax.random.key(cfg.seed)
  k_init, k_steps = jax.random.split(base_key)
  v = init_variables(net, k_init)
  state = SearchState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
                      tx.init(v["params"]), tunas.init(space, ccfg))
  try:
    resumed = ck.latest_step()
    if resumed is not None:
      state, _ = ck.restore(state, resumed)
      log(f"resumed from {ck.directory}/{resumed} (step {int(state.step)}/{total})")
      traj.truncate_after(int(state.step))
  except ckpt_lib.CheckpointError as e:
    raise error(str(e)) from None
  # Fresh and restored states as the same kind of array (uncommitted, on the default device):
  # jit's cache key includes it, so a resumed search in the same process compiles nothing.
  state = jax.device_put(jax.tree.map(np.asarray, state))

  r = max(space.resolutions)
  lc = train_lib.LossConfig(dataset.num_classes, float(tc.label_smoothing), "none", 0.0, True)
  aug = functools.partial(data_lib.preprocess, mean=dataset.mean, std=dataset.std, resolution=r,
                          pad=tc.augment.pad, flip=tc.augment.flip)
  val_aug = functools.partial(data_lib.preprocess, mean=dataset.mean, std=dataset.std,
                              resolution=r)
  # One compiled step per configuration and process: a search resumed in the same process (or
  # run again, e.g. from a notebook) reuses it instead of compiling again.
  cache_key = json.dumps([ident, target, cost_info, [np.asarray(dataset.mean).tolist(),
                                                      np.asarray(dataset.std).tolist()]],
                         sort_keys=True, default=str)
  if cache_key not in _STEPS:
    _STEPS[cache_key] = make_search_step(net, space, tx, cost_fn, target, total, cfg, lc,
                                         lambda x, k: aug(x, key=k), val_aug)
  step_fn = _STEPS[cache_key]
  n_train = len(dataset.train)
  start = int(state.step)
  t0 = time.time()
  pending: list = []
  if start < total:
    log(f"searching steps {start}..{total}, batch {tc.batch_size}, validation batch "
        f"{se.val_batch_size}")
  with train_lib._SigtermFlag() as term, Progress(total, "tunas", start=start,
                                                  every=tc.progress_every) as bar:
    s = start
    while s < total:
      x, y = dataset.train.get(data_lib.epoch_batch_indices(n_train, tc.batch_size, s, cfg.seed))
      vx, vy = dataset.val.get(data_lib.epoch_batch_indices(n_val, se.val_batch_size, s,
                                                            cfg.seed + 1))
      state, m = step_fn(state, x, y, vx, vy, k_steps)
      s += 1
      pending.append(m)
      if s % tc.log_every == 0 or s == total:
        host = jax.tree.map(np.asarray, pending)
        rec = {"step": s, "lr": float(sched(s - 1)), "time": time.time()}
        for k in host[0]:
          rec[k] = round(float(np.mean([h[k] for h in host])), 6)
        traj.write(rec)
        pending = []
        bar.update(s, reward=rec["reward"], Q=rec["quality"], cost=rec["cost"],
                   H=rec["policy_entropy"], argmax=rec["argmax_cost"])
      else:
        bar.update(s)
      if s % tc.checkpoint_every == 0 or s == total or term.raised:
        ck.save(s, state, {"step": s})
      if term.raised and s < total:
        ck.close()
        raise train_lib.Preempted(s, ck.directory)
  ck.close()
  search_seconds = time.time() - t0
  if start < total:
    log(f"searched {total - start} steps in {search_seconds:.1f} s")
  if stop_after == "train":
    return {"training": {"steps": total, "seconds_this_process": search_seconds}}

  # -- the argmax architecture and the random baseline -------------------------------------
  logits = jax.tree.map(np.asarray, state.ctrl.logits)
  best = jax.tree.map(np.asarray, space.canonicalize(tunas.argmax_arch(space, logits)))
  best_cost = float(cost_fn(best))
  rel = best_cost / target - 1.0
  log(f"argmax architecture: {space.format(best)}")
  log(f"argmax cost {best_cost:.4g} {unit} = target {'+' if rel >= 0 else ''}{100 * rel:.2f}%")
  rand, drawn = random_in_window(space, cost_fn, target, float(se.random_window),
                                 int(se.random_samples), int(se.random_tries), cfg.seed + 7)
  log(f"random search: {len(rand)} of {drawn} uniform samples within +-"
      f"{100 * se.random_window:.1f}% of the target")
  archs = [best] + rand
  pop = spaces.stack(archs)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  scorer = scorer_cls(cfg, net, space, variables, dataset)
  val_ok, test_ok = scorer.correct(pop, "val"), scorer.correct(pop, "test")
  rows = []
  for i, a in enumerate(archs):
    rows.append({"name": "TuNAS argmax" if i == 0 else f"random {i}", "arch": space.to_json(a),
                 "summary": space.format(a), "cost": float(cost_fn(a)),
                 "macs": int(space.macs(a)), "params": int(space.params(a)),
                 "val_top1": float(val_ok[i].mean()), "test_top1": float(test_ok[i].mean())})
  if se.retrain_steps:
    for i, a in enumerate(archs):
      rows[i]["retrain"] = retrain(cfg, net, space, a, dataset, int(se.retrain_steps),
                                   cfg.seed + 1000, log)
  stats = scorer.stats(spaces.stack([best]))
  module_vars = {"params": state.params, "batch_stats": jax.tree.map(lambda s: s[0], stats)}
  _, ev = nets.extract(net, module_vars, best)
  export.save_subnet(os.path.join(workdir, "subnets", "tunas"), space, best,
                     cfg.supernet.to_dict(), ev,
                     metrics={k: rows[0][k] for k in ("val_top1", "test_top1", "macs", "params",
                                                       "cost")})
  records = traj.read()
  plot_trajectory(os.path.join(workdir, "trajectory.png"), records, target, unit)
  rnd = rows[1:]
  summary = {
      "target": target, "unit": unit, "argmax_cost": best_cost, "argmax_cost_rel": rel,
      "within_5_percent": abs(rel) <= 0.05,
      "random_window": float(se.random_window), "random_found": len(rand),
      "random_drawn": drawn,
      "random_mean_test_top1": float(np.mean([x["test_top1"] for x in rnd])) if rnd else None,
      "random_best_test_top1": float(np.max([x["test_top1"] for x in rnd])) if rnd else None}
  results = run_record(cfg, space, None, None,
                       "MACs per image (multiply-accumulates; OFA prints them as MFLOPs)")
  results.update({"tunas": summary, "models": rows, "cost_model": cost_info,
                  "policy": tunas.probabilities(space, logits),
                  "search": {"steps": total, "seconds_this_process": round(search_seconds, 2),
                             "final": records[-1] if records else None}})
  table = results_table(rows, summary, bool(se.retrain_steps))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  print(table)
  log(f"wrote results.json, results.md, trajectory.jsonl, trajectory.png and subnets/tunas to "
      f"{workdir}")
  return results


def results_table(rows: list[dict], summary: dict, retrained: bool) -> str:
  unit = summary["unit"]
  head = f"| model | cost ({unit}) | MMACs | params (M) | val top-1 | test top-1 |"
  sep = "|---|---:|---:|---:|---:|---:|"
  if retrained:
    head += " retrained test top-1 |"
    sep += "---:|"
  lines = [f"TuNAS search: target {summary['target']:.4g} {unit}, argmax at "
           f"{100 * summary['argmax_cost_rel']:+.2f}% of it; random search: "
           f"{summary['random_found']} archs within +-{100 * summary['random_window']:.1f}% "
           f"(of {summary['random_drawn']} drawn)", "", head, sep]
  for r in rows:
    ln = (f"| {r['name']} | {r['cost']:.4g} | {r['macs'] / 1e6:.3f} | {r['params'] / 1e6:.3f} | "
          f"{100 * r['val_top1']:.2f}% | {100 * r['test_top1']:.2f}% |")
    if retrained:
      ln += f" {100 * r['retrain']['test_top1']:.2f}% |"
    lines.append(ln)
  if summary["random_mean_test_top1"] is not None:
    lines.append(f"\nrandom search mean / best test top-1: "
                 f"{100 * summary['random_mean_test_top1']:.2f}% / "
                 f"{100 * summary['random_best_test_top1']:.2f}% (shared weights, re-calibrated BN)")
  return "\n".join(lines)
