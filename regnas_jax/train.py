"""Supernet training: several subnets per jit-compiled step, sandwich rule, progressive shrinking.

One training step samples ``S`` subnets (archs are data), runs them with ``jax.vmap`` over the
shared parameters, and takes one optimiser step on the *sum* of their losses -- so the update
is the sum of the per-subnet gradients, as when OFA or AttentiveNAS accumulate gradients over
subnets in a loop, but in one compiled program.

A run is a list of :class:`Phase` records (built from the config by :func:`build_phases`):

* ``sandwich``: one phase; per step the largest and the smallest subnet plus ``S - 2`` random
  ones, the others distilled in place from the largest one's (detached) predictions
  (BigNAS / AttentiveNAS).
* ``uniform``: one phase; ``S`` subnets sampled uniformly, labels only (the simple baseline).
* ``progressive``: OFA's progressive shrinking -- full network, then elastic kernel, then depth
  (unlocking one smaller choice at a time), then expand ratio; each phase samples only from the
  unlocked choices, distils from a frozen copy of the full network (the teacher, taken when the
  full-network phase ends), and re-orders middle channels by importance when the expand choices
  grow (keeping the widths trained before, as OFA does).

Each phase gets a fresh optimiser state and its own warmup + cosine schedule (OFA restarts each
phase from the previous checkpoint with a new schedule).  Everything random is a pure function
of ``(seed, step)``: the data order, augmentation, the resolution of a step and the subnets
sampled.  A checkpoint therefore needs only the arrays and the step to resume exactly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regnas_jax import checkpoint as ckpt_lib
from regnas_jax import data as data_lib
from regnas_jax.progress import MetricsLog, Progress

METHODS = ("sandwich", "uniform", "fair", "progressive")
SAMPLERS = ("max", "uniform", "sandwich", "fair")
DISTILL = ("none", "inplace", "teacher")


class TrainConfigError(ValueError):
  """A training configuration that cannot run; the message names the key."""


class Preempted(RuntimeError):
  """Raised after SIGTERM once the checkpoint of the current step is saved."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by SIGTERM after step {step}; checkpoint saved in {directory}; "
                     f"run the same command again to resume")
    self.step = step


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stretch of training with a fixed set of unlocked choices.

  Attributes:
    name: e.g. ``'sandwich'``, ``'kernel'``, ``'depth-2'``.
    steps: number of optimiser steps.
    allowed: ``((field, (choice indices...)), ...)``: what the sampler may pick.
    sampler: ``'max'`` (the largest allowed subnet), ``'uniform'`` or ``'sandwich'``.
    num_subnets: subnets per step (``S``).
    distill: ``'none'``, ``'inplace'`` (from this step's largest subnet, which must be member
      0) or ``'teacher'`` (from the frozen full network).
    reorder_keep: ``None``: no channel re-ordering when the phase starts; otherwise the expand
      ratios whose widths the re-ordering must keep (see ``nn.reorder_channels``).
    lr: peak learning rate; warmup_steps: linear warmup, then cosine decay to 0.
  """
  name: str
  steps: int
  allowed: tuple
  sampler: str
  num_subnets: int
  distill: str
  reorder_keep: tuple | None
  lr: float
  warmup_steps: int

  def allowed_dict(self) -> dict:
    return {k: v for k, v in self.allowed}

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["allowed"] = {k: list(v) for k, v in self.allowed}
    return d


def _count(n_total: int, fractions) -> list[int]:
  """Split ``n_total`` steps by ``fractions`` (largest-remainder rounding, sums exactly)."""
  f = np.asarray(fractions, float)
  raw = n_total * f / f.sum()
  out = np.floor(raw).astype(int)
  for i in np.argsort(-(raw - out))[: n_total - out.sum()]:
    out[i] += 1
  return [int(x) for x in out]


def build_phases(tc, space) -> list[Phase]:
  """The training schedule of config section ``tc`` (``config.train``) for ``space``."""
  if tc.method not in METHODS:
    raise TrainConfigError(f"config.train.method: {tc.method!r} is not one of {METHODS}")
  if not (isinstance(tc.steps, int) and tc.steps >= 1):
    raise TrainConfigError(f"config.train.steps: must be a positive integer, got {tc.steps!r}")
  warm = int(tc.warmup_steps)
  if tc.method in ("sandwich", "uniform", "fair"):
    s = int(tc.num_subnets)
    if s < (2 if tc.method == "sandwich" else 1):
      raise TrainConfigError(f"config.train.num_subnets: {tc.method} needs at least "
                             f"{2 if tc.method == 'sandwich' else 1}, got {s}")
    return [Phase(tc.method, tc.steps, (), tc.method, s,
                  "inplace" if tc.method == "sandwich" and tc.kd_ratio > 0 else "none", None,
                  float(tc.lr), min(warm, tc.steps - 1))]

  # Progressive shrinking (OFA): full -> kernel -> depth (one choice at a time) -> expand.
  names = {f.name: f for f in space.fields()}
  for need in ("kernel", "expand", "depth"):
    if need not in names:
      raise TrainConfigError(f"config.train.method: progressive shrinking needs a {need!r} field "
                             f"in space {space.name}")
  top = {n: (f.size - 1,) for n, f in names.items() if n != "resolution"}
  groups = [("full", [dict(top)])]
  groups.append(("kernel", [dict(top, kernel=tuple(range(names["kernel"].size)))]))
  k_all = tuple(range(names["kernel"].size))
  nd, ne = names["depth"].size, names["expand"].size
  groups.append(("depth", [dict(top, kernel=k_all, depth=tuple(range(nd - j - 1, nd)))
                           for j in range(1, nd)]))
  d_all = tuple(range(nd))
  groups.append(("expand", [dict(top, kernel=k_all, depth=d_all,
                                 expand=tuple(range(ne - j - 1, ne))) for j in range(1, ne)]))
  fr, subs, lrs = tuple(tc.ps_fractions), tuple(tc.ps_subnets), tuple(tc.ps_lr_scale)
  for key, v in (("ps_fractions", fr), ("ps_subnets", subs), ("ps_lr_scale", lrs)):
    if len(v) != 4:
      raise TrainConfigError(f"config.train.{key}: needs 4 entries (full, kernel, depth, "
                             f"expand), got {v}")
  group_steps = _count(tc.steps, fr)
  phases, prev_expand = [], None
  for gi, (gname, allowed_list) in enumerate(groups):
    per = _count(group_steps[gi], [1] * len(allowed_list))
    for j, allowed in enumerate(allowed_list):
      if per[j] == 0:
        continue
      exp = allowed["expand"]
      reorder = None
      if prev_expand is not None and len(exp) > len(prev_expand):
        keep = [space.field("expand").choices[i] for i in prev_expand[:-1]]
        reorder = tuple(keep)
      prev_expand = exp
      name = gname if len(allowed_list) == 1 else f"{gname}-{j + 1}"
      sampler = "max" if gname == "full" else "uniform"
      phases.append(Phase(
          name, per[j], tuple(sorted(allowed.items())), sampler,
          1 if gname == "full" else int(subs[gi]),
          "none" if gname == "full" or tc.kd_ratio <= 0 else "teacher", reorder,
          float(tc.lr) * float(lrs[gi]), min(warm, per[j] - 1)))
  return phases


# ----------------------------------------------------------------------------------------------
# Optimiser, losses, one step
# ----------------------------------------------------------------------------------------------
def _decay_mask(params):
  """Weight decay on conv/dense kernels and transform matrices, not on BN or biases (OFA)."""
  def keep(path, leaf):
    names = [getattr(p, "key", "") for p in path]
    return not (any(str(n).endswith("_bn") or str(n) == "bn" for n in names)
                or names[-1] in ("bias", "scale"))
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(tc, phase: Phase) -> tuple[optax.GradientTransformation, Callable]:
  """``(tx, schedule)`` for one phase: clipping, weight decay, SGD-Nesterov or RMSProp."""
  steps = max(phase.steps, 1)
  warm = min(phase.warmup_steps, steps - 1)
  if warm > 0:
    sched = optax.warmup_cosine_decay_schedule(0.0, phase.lr, warm, steps, 0.0)
  else:
    sched = optax.cosine_decay_schedule(phase.lr, steps)
  if tc.optimizer == "sgd":
    opt = optax.sgd(sched, momentum=tc.momentum, nesterov=tc.nesterov)
  elif tc.optimizer == "rmsprop":
    opt = optax.rmsprop(sched, decay=0.9, eps=1e-3, momentum=tc.momentum)
  else:
    raise TrainConfigError(f"config.train.optimizer: {tc.optimizer!r} is not one of "
                           f"('sgd', 'rmsprop')")
  parts = []
  if tc.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(tc.grad_clip_norm))
  if tc.weight_decay > 0:
    parts.append(optax.add_decayed_weights(tc.weight_decay, _decay_mask))
  return optax.chain(*parts, opt), sched


class LossConfig(NamedTuple):
  """Static loss settings of a step (hashable)."""
  num_classes: int
  label_smoothing: float
  distill: str
  kd_ratio: float
  student_label_loss: bool


def subnet_losses(logits, labels, lc: LossConfig, teacher_probs=None):
  """Per-subnet losses ``(S,)`` from logits ``(S, B, C)`` and labels ``(B,)``.

  The largest subnet (member 0 with ``distill='inplace'``) and every subnet without
  distillation learn from the (smoothed) labels.  Students learn from the soft targets --
  member 0's detached softmax (``'inplace'``) or ``teacher_probs`` (``'teacher'``) -- with weight
  ``kd_ratio``, plus the label loss when ``student_label_loss``.
  """
  onehot = optax.smooth_labels(jax.nn.one_hot(labels, lc.num_classes), lc.label_smoothing)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  ce = -(onehot[None] * logp).sum(-1).mean(-1)
  if lc.distill == "none":
    return ce
  if lc.distill == "inplace":
    soft = jax.lax.stop_gradient(jnp.exp(logp[0]))
    student = jnp.arange(logits.shape[0]) > 0
  else:
    soft = jax.lax.stop_gradient(teacher_probs)
    student = jnp.ones(logits.shape[0], bool)
  kd = -(soft[None] * logp).sum(-1).mean(-1)
  student_loss = lc.kd_ratio * kd + (ce if lc.student_label_loss else 0.0)
  return jnp.where(student, student_loss, ce)


def sample_subnets(space, phase: Phase, key):
  """The ``S`` archs a step trains (a population pytree), member 0 the largest for sandwich."""
  allowed = phase.allowed_dict()
  if phase.sampler == "max":
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (phase.num_subnets,) + x.shape),
                        space.max_arch(allowed))
  if phase.sampler == "uniform":
    return space.sample(key, phase.num_subnets, allowed)
  if phase.sampler == "fair":
    return fair_sample(space, key, phase.num_subnets)
  ends = [space.max_arch(allowed), space.min_arch(allowed)]
  rand = space.sample(key, phase.num_subnets - 2, allowed)
  return jax.tree.map(lambda a, b, r: jnp.concatenate([a[None], b[None], r]), *ends, rand)


def fair_sample(space, key, n: int):
  """FairNAS's strict fairness (Chu et al. 2019): ``n`` archs in which every decision takes each
  of its choices equally often -- per decision element a random permutation of its choices,
  repeated to length ``n``.  With ``n`` = the number of choices (7 for SCARLET's S1) every choice
  block of every layer is trained exactly once per step."""
  out = {}
  for k, f in zip(jax.random.split(key, len(space.fields())), space.fields()):
    m = int(np.prod(f.shape, dtype=int))
    perms = jax.vmap(lambda kk: jax.random.permutation(kk, f.size))(jax.random.split(k, m))
    seq = jnp.tile(perms, (1, -(-n // f.size)))[:, :n]             # (m, n)
    out[f.name] = seq.T.reshape((n,) + f.shape).astype(jnp.int32)
  return space.arch_type(**out)


def merge_batch_stats(old, new):
  """Fold the per-subnet running statistics ``new`` (leading ``S`` axis) back into one set.

  Each subnet updated only its active channels; a channel's new value is the average over the
  subnets that updated it (unchanged where none did).
  """
  def merge(o, n):
    changed = n != o[None]
    cnt = changed.sum(0)
    tot = jnp.where(changed, n, 0.0).sum(0)
    return jnp.where(cnt > 0, tot / jnp.maximum(cnt, 1), o)
  return jax.tree.map(merge, old, new)


SUBNET_LOOPS = ("vmap", "scan", "auto")


def resolve_subnet_loop(loop: str, model=None) -> str:
  """``'auto'``: ``vmap`` on accelerators; on CPU the supernet's ``cpu_subnet_loop`` (default
  ``scan``, one subnet after another).  Measured on 2 cores (docs/benchmarks.md): scan is 1.6x
  faster than vmap for OFA-MBv3 (depthwise taps and 1x1 dots), but about 4x *slower* for
  OFA-ResNet50 (5.40 vs 1.33 s per step), whose 3x3 convolutions XLA:CPU runs far slower inside
  a loop body."""
  if loop not in SUBNET_LOOPS:
    raise TrainConfigError(f"config.train.subnet_loop: {loop!r} is not one of {SUBNET_LOOPS}")
  if loop == "auto":
    if jax.default_backend() != "cpu":
      return "vmap"
    return getattr(model, "cpu_subnet_loop", "scan")
  return loop


def subnet_grads(model, params, batch_stats, images, labels, archs, key, lc: LossConfig,
                 teacher_probs=None, loop: str = "vmap"):
  """Gradient of the summed subnet losses w.r.t. the shared ``params``.

  ``loop='vmap'`` runs the ``S`` subnets as one vmapped program (parallel work for an
  accelerator); ``loop='scan'`` runs them one after another in a ``lax.scan`` inside the same
  compiled step, accumulating gradients (less memory, and faster on a 2-core CPU).  Both give
  the same sum.  With in-place distillation member 0 is computed first and its detached
  predictions are the students' soft targets.
  Returns ``(grads, (losses (S,), logits (S, B, C), per-subnet batch_stats))``.
  """
  n = jax.tree.leaves(archs)[0].shape[0]
  keys = jax.random.split(key, n)

  def member(p, arch, k):
    logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, images, arch,
                              train=True, mutable=["batch_stats"], rngs={"dropout": k})
    return logits, upd["batch_stats"]

  if resolve_subnet_loop(loop, model) == "vmap":
    def loss_fn(p):
      logits, stats = jax.vmap(lambda a, k: member(p, a, k))(archs, keys)
      losses = subnet_losses(logits, labels, lc, teacher_probs)
      return losses.sum(), (losses, logits, stats)

    return jax.grad(loss_fn, has_aux=True)(params)

  # One loop body for every member keeps the compiled program one subnet long.  The carry holds
  # the soft targets: the teacher's, or (in-place) those member 0 produces in iteration 0.
  inplace = lc.distill == "inplace"
  nc = lc.num_classes
  soft0 = (teacher_probs if lc.distill == "teacher" else
           jnp.full((labels.shape[0], nc), 1.0 / nc, jnp.float32))
  student_lc = lc._replace(distill="teacher" if lc.distill != "none" else "none")
  label_lc = lc._replace(distill="none")

  def body(carry, xs):
    acc, soft = carry
    arch, k, i = xs

    def loss_fn(p):
      logits, stats = member(p, arch, k)
      as_student = subnet_losses(logits[None], labels, student_lc, soft)[0]
      if inplace:
        as_teacher = subnet_losses(logits[None], labels, label_lc)[0]
        as_student = jnp.where(i == 0, as_teacher, as_student)
      return as_student, (as_student, logits, stats)

    g, (loss, logits, stats) = jax.grad(loss_fn, has_aux=True)(params)
    if inplace:
      soft = jnp.where(i == 0, jax.nn.softmax(logits.astype(jnp.float32)), soft)
    return (jax.tree.map(jnp.add, acc, g), soft), (loss, logits, stats)

  init = (jax.tree.map(jnp.zeros_like, params), soft0)
  (grads, _), aux = jax.lax.scan(body, init, (archs, keys, jnp.arange(n)))
  return grads, aux


class TrainState(NamedTuple):
  """Everything a step reads and writes (a pytree; saved as the checkpoint)."""
  step: jax.Array        # int32 scalar: optimiser steps done (over all phases)
  params: Any
  batch_stats: Any
  opt_state: Any
  teacher: Any           # frozen {'params','batch_stats'} for distill='teacher', else None


def step_key(base_key, step):
  """The key of global step ``step``: subnet sampling, augmentation and dropout derive from it."""
  return jax.random.fold_in(base_key, step)


def make_train_step(model, space, tx, phase: Phase, lc: LossConfig, loop: str = "vmap", *,
                    augment: Callable | None = None):
  """A jit-compiled ``step(state, images, labels, base_key) -> (state, metrics)`` for one phase.

  ``augment(images, key) -> inputs`` (e.g. :func:`data.preprocess` with the step's resolution)
  runs inside the compiled step, so a step dispatches one program and nothing else; all
  randomness comes from ``step_key(base_key, state.step)``.  Without ``augment`` the images
  are used as given.
  """
  max_arch = space.max_arch()

  def step(state: TrainState, images, labels, base_key):
    k_aug, k_arch, k_drop = jax.random.split(step_key(base_key, state.step), 3)
    if augment is not None:
      images = augment(images, k_aug)
    archs = sample_subnets(space, phase, k_arch)
    teacher_probs = None
    if lc.distill == "teacher":
      teacher_probs = jax.nn.softmax(model.apply(state.teacher, images, max_arch, train=False))
    grads, (losses, logits, stats) = subnet_grads(
        model, state.params, state.batch_stats, images, labels, archs, k_drop, lc, teacher_probs,
        loop)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    acc = (jnp.argmax(logits, -1) == labels[None]).mean(-1)
    new = TrainState(state.step + 1, params, merge_batch_stats(state.batch_stats, stats),
                     opt_state, state.teacher)
    return new, {"loss": losses.sum(), "losses": losses, "acc": acc,
                 "grad_norm": optax.global_norm(grads)}

  return jax.jit(step, donate_argnums=0)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
class TrainResult(NamedTuple):
  variables: dict          # {'params', 'batch_stats'} of the trained supernet
  steps: int
  seconds: float           # wall time of this process's training (0 when already finished)
  resumed_from: int | None
  phases: list


def _identity(cfg, space, phases) -> dict:
  tc = {k: v for k, v in cfg.train.to_dict().items()
        if k not in ("log_every", "checkpoint_every", "max_to_keep", "calib_images",
                     "calib_batch_size", "progress_every")}
  return {"space": space.config(), "supernet": cfg.supernet.to_dict(), "train": tc,
          "phases": [p.to_json() for p in phases], "seed": cfg.seed,
          "data": {k: v for k, v in cfg.data.to_dict().items() if k != "cache_dir"}}


class _SigtermFlag:
  def __init__(self):
    self.raised = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, no graceful stop
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def phase_at(phases, step: int) -> tuple[int, int]:
  """(phase index, step within the phase) of global step ``step``."""
  start = 0
  for i, p in enumerate(phases):
    if step < start + p.steps:
      return i, step - start
    start += p.steps
  return len(phases), 0


def train(cfg, model, space, dataset: data_lib.Dataset, workdir: str,
          init_fn: Callable, reorder_fn: Callable | None = None,
          log: Callable[[str], None] = print,
          on_start: Callable[[], Any] | None = None) -> TrainResult:
  """Train ``model`` on ``dataset`` as ``cfg.train`` says, resuming from ``workdir``.

  Args:
    cfg: the run config (``seed``, ``train``, ``supernet``, ``data``, ``space``).
    model, space: the supernet and its search space.
    dataset: a :class:`data.Dataset`.
    workdir: checkpoints go to ``workdir/checkpoints``, metrics to ``workdir/metrics.jsonl``.
    init_fn: ``key -> variables`` (fresh supernet variables).
    reorder_fn: ``(variables, keep_expands) -> variables`` channel re-ordering (needed by
      progressive shrinking).
    log: where one-line status messages go.
    on_start: called once the state is initialised or restored, before the first step (e.g.
      to start compiling other programs while the training step compiles).
  Returns:
    A :class:`TrainResult`.  Raises :class:`Preempted` after saving when SIGTERM arrives.
  """
  tc = cfg.train
  phases = build_phases(tc, space)
  total = sum(p.steps for p in phases)
  res_list = tuple(tc.resolutions) if tc.resolutions else tuple(space.resolutions)
  bad = [r for r in res_list if r not in space.resolutions]
  if bad:
    raise TrainConfigError(f"config.train.resolutions: {bad[0]} is not a resolution of the "
                           f"space {tuple(space.resolutions)}")
  if any(p.reorder_keep is not None for p in phases) and reorder_fn is None:
    raise TrainConfigError("config.train.method: progressive shrinking needs channel re-ordering, "
                           "which this supernet does not provide")
  needs_teacher = any(p.distill == "teacher" for p in phases)
  lc_base = dict(num_classes=dataset.num_classes, label_smoothing=float(tc.label_smoothing),
                 kd_ratio=float(tc.kd_ratio), student_label_loss=bool(tc.student_label_loss))
  n_train = len(dataset.train)
  data_lib.epoch_batch_indices(n_train, tc.batch_size, 0, cfg.seed)  # validates batch size

  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             _identity(cfg, space, phases), max_to_keep=tc.max_to_keep)
  metrics = MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  base_key = jax.random.key(cfg.seed)
  k_init, k_steps = jax.random.split(base_key)

  def fresh_state():
    v = init_fn(k_init)
    tx0, _ = make_optimizer(tc, phases[0])
    teacher = (jax.tree.map(jnp.copy, {"params": v["params"], "batch_stats": v["batch_stats"]})
               if needs_teacher else None)
    return TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
                      tx0.init(v["params"]), teacher)

  state = fresh_state()
  resumed = ck.latest_step()
  if resumed is not None:
    state, extra = ck.restore(state, resumed)
    log(f"resumed from {ck.directory}/{resumed} (step {int(state.step)}/{total}, "
        f"data position {extra.get('data_position')})")
    metrics.truncate_after(int(state.step))
  start = int(state.step)
  if start >= total:
    ck.close()
    return TrainResult({"params": state.params, "batch_stats": state.batch_stats}, total, 0.0,
                       resumed, phases)

  def host_batch(s):
    return dataset.train.get(data_lib.epoch_batch_indices(n_train, tc.batch_size, s, cfg.seed))

  def res_at(s):
    return res_list[int(np.random.default_rng([cfg.seed, 7, s]).integers(len(res_list)))]

  step_fns: dict[tuple, Any] = {}
  lr_tables: dict[int, np.ndarray] = {}
  if on_start is not None:
    on_start()
  pool = concurrent.futures.ThreadPoolExecutor(1)
  nxt = pool.submit(host_batch, start)
  t0, seen, last_log = time.time(), 0, time.time()
  log(f"training {total} steps in {len(phases)} phase(s) "
      f"({', '.join(f'{p.name}:{p.steps}' for p in phases)}), batch {tc.batch_size}, "
      f"resolutions {res_list}")
  s = start
  try:
    with _SigtermFlag() as term, Progress(total, "train", start=start,
                                          every=tc.progress_every) as bar:
      while s < total:
        pi, local = phase_at(phases, s)
        phase = phases[pi]
        tx, sched = make_optimizer(tc, phase)
        if pi not in lr_tables:  # host copy of the schedule, for the logs
          lr_tables[pi] = np.asarray(jax.jit(jax.vmap(sched))(jnp.arange(phase.steps)))
        if local == 0:  # phase start (never part of a saved state: saves follow steps)
          params, stats, teacher = state.params, state.batch_stats, state.teacher
          if phase.distill == "teacher" and pi > 0 and phases[pi - 1].distill != "teacher":
            teacher = jax.tree.map(jnp.copy, {"params": params, "batch_stats": stats})
            log(f"phase {phase.name}: teacher = the network after phase {phases[pi - 1].name}")
          if phase.reorder_keep is not None:
            v = reorder_fn({"params": params, "batch_stats": stats}, phase.reorder_keep)
            params, stats = v["params"], v["batch_stats"]
            log(f"phase {phase.name}: channels re-ordered by importance "
                f"(kept widths of expand {list(phase.reorder_keep)})")
          state = TrainState(state.step, params, stats, tx.init(params), teacher)
        res = res_at(s)
        if (pi, res) not in step_fns:
          lc = LossConfig(distill=phase.distill, **lc_base)
          aug = functools.partial(data_lib.preprocess, mean=dataset.mean, std=dataset.std,
                                  resolution=res, pad=tc.augment.pad, flip=tc.augment.flip)
          step_fns[pi, res] = make_train_step(model, space, tx, phase, lc, tc.subnet_loop,
                                              augment=lambda x, k, f=aug: f(x, key=k))
        imgs, labels = nxt.result()
        if s + 1 < total:
          nxt = pool.submit(host_batch, s + 1)
        state, m = step_fns[pi, res](state, imgs, labels, k_steps)
        s += 1
        seen += len(labels)
        end_of_phase = local + 1 == phase.steps
        if s % tc.log_every == 0 or s == total or end_of_phase:
          acc = np.asarray(m["acc"])
          now = time.time()
          rec = {"step": s, "phase": phase.name, "loss": float(m["loss"]),
                 "losses": np.asarray(m["losses"]).round(5).tolist(),
                 "acc": acc.round(4).tolist(), "grad_norm": float(m["grad_norm"]),
                 "lr": float(lr_tables[pi][local]), "images_per_s": seen / max(now - last_log, 1e-9),
                 "resolution": res_at(s - 1), "time": now}
          metrics.write(rec)
          seen, last_log = 0, now
          bar.update(s, phase=phase.name, loss=rec["loss"], acc_max=float(acc[0]),
                     acc_last=float(acc[-1]), img_s=round(rec["images_per_s"]))
        else:
          bar.update(s)
        if s % tc.checkpoint_every == 0 or s == total or end_of_phase or term.raised:
          ck.save(s, state, {"data_position": s, "phase": phase.name, "phase_index": pi})
        if term.raised and s < total:
          raise Preempted(s, ck.directory)
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
    ck.close()
  secs = time.time() - t0
  log(f"trained {total - start} steps in {secs:.1f} s")
  return TrainResult({"params": state.params, "batch_stats": state.batch_stats}, total, secs,
                     resumed, phases)
