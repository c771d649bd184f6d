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
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regnas_jax import checkpoint as ckpt_lib
from regnas_jax import data as data_lib
from regnas_jax import fs, parallel, persist, runtime
from regnas_jax import identity as identity_lib
from regnas_jax.data import pipeline
from regnas_jax.errors import ConfigError
from regnas_jax.nn.common import init_variables
from regnas_jax.nn.supernet import Supernet
from regnas_jax.progress import MetricsLog
from regnas_jax.training.loop import run_loop, step_key

METHODS = ("sandwich", "uniform", "fair", "progressive")
SAMPLERS = ("max", "uniform", "sandwich", "fair")
DISTILL = ("none", "inplace", "teacher")
OPTIMIZERS = ("sgd", "rmsprop")


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
      ratios whose widths the re-ordering must keep (see ``Supernet.reorder_channels``).
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

  def to_dict(self) -> dict:
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


def build_phases(train_config, space) -> list[Phase]:
  """The training schedule of ``train_config`` (``config.train``) for ``space``."""
  tc = train_config
  if tc.method not in METHODS:
    raise ConfigError(f"config.train.method: {tc.method!r} is not one of {METHODS}")
  if not (isinstance(tc.steps, int) and tc.steps >= 1):
    raise ConfigError(f"config.train.steps: must be a positive integer, got {tc.steps!r}")
  warm = int(tc.warmup_steps)
  if tc.method in ("sandwich", "uniform", "fair"):
    s = int(tc.num_subnets)
    if s < (2 if tc.method == "sandwich" else 1):
      raise ConfigError(f"config.train.num_subnets: {tc.method} needs at least "
                             f"{2 if tc.method == 'sandwich' else 1}, got {s}")
    return [Phase(tc.method, steps=tc.steps, allowed=(), sampler=tc.method, num_subnets=s,
                  distill="inplace" if tc.method == "sandwich" and tc.kd_ratio > 0 else "none",
                  reorder_keep=None, lr=float(tc.lr), warmup_steps=min(warm, tc.steps - 1))]

  # Progressive shrinking (OFA): full -> kernel -> depth (one choice at a time) -> expand.
  names = {f.name: f for f in space.fields()}
  for need in ("kernel", "expand", "depth"):
    if need not in names:
      raise ConfigError(f"config.train.method: progressive shrinking needs a {need!r} field "
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
      raise ConfigError(f"config.train.{key}: needs 4 entries (full, kernel, depth, "
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
          name, steps=per[j], allowed=tuple(sorted(allowed.items())), sampler=sampler,
          num_subnets=1 if gname == "full" else int(subs[gi]),
          distill="none" if gname == "full" or tc.kd_ratio <= 0 else "teacher",
          reorder_keep=reorder, lr=float(tc.lr) * float(lrs[gi]),
          warmup_steps=min(warm, per[j] - 1)))
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


def make_optimizer(train_config, phase: Phase) -> tuple[optax.GradientTransformation, Callable]:
  """``(tx, schedule)`` for one phase: clipping, weight decay, SGD-Nesterov or RMSProp."""
  steps = max(phase.steps, 1)
  warm = min(phase.warmup_steps, steps - 1)
  if warm > 0:
    sched = optax.warmup_cosine_decay_schedule(0.0, phase.lr, warm, steps, 0.0)
  else:
    sched = optax.cosine_decay_schedule(phase.lr, steps)
  if train_config.optimizer == "sgd":
    opt = optax.sgd(sched, momentum=train_config.momentum, nesterov=train_config.nesterov)
  elif train_config.optimizer == "rmsprop":
    opt = optax.rmsprop(sched, decay=0.9, eps=1e-3, momentum=train_config.momentum)
  else:
    raise ConfigError(f"config.train.optimizer: {train_config.optimizer!r} is not one of "
                           f"('sgd', 'rmsprop')")
  parts = []
  if train_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
  if train_config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(train_config.weight_decay, _decay_mask))
  return optax.chain(*parts, opt), sched


def optimizer_state(tx: optax.GradientTransformation, params):
  """``tx.init(params)`` as one compiled program: run eagerly, every parameter shape compiles
  its own zeros (~60 small compiles for a digits supernet)."""
  return jax.jit(tx.init)(params)


class LossConfig(NamedTuple):
  """Static loss settings of a step (hashable)."""
  num_classes: int
  label_smoothing: float
  distill: str
  kd_ratio: float
  student_label_loss: bool


def subnet_losses(logits, labels, loss_config: LossConfig, teacher_probs=None):
  """Per-subnet losses ``(S,)`` from logits ``(S, B, C)`` and labels ``(B,)``.

  The largest subnet (member 0 with ``distill='inplace'``) and every subnet without
  distillation learn from the (smoothed) labels.  Students learn from the soft targets --
  member 0's detached softmax (``'inplace'``) or ``teacher_probs`` (``'teacher'``) -- with weight
  ``kd_ratio``, plus the label loss when ``student_label_loss``.
  """
  onehot = optax.smooth_labels(jax.nn.one_hot(labels, loss_config.num_classes),
                               loss_config.label_smoothing)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  ce = -(onehot[None] * logp).sum(-1).mean(-1)
  if loss_config.distill == "none":
    return ce
  if loss_config.distill == "inplace":
    soft = jax.lax.stop_gradient(jnp.exp(logp[0]))
    student = jnp.arange(logits.shape[0]) > 0
  else:
    soft = jax.lax.stop_gradient(teacher_probs)
    student = jnp.ones(logits.shape[0], bool)
  kd = -(soft[None] * logp).sum(-1).mean(-1)
  student_loss = loss_config.kd_ratio * kd + (ce if loss_config.student_label_loss else 0.0)
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


def resolve_subnet_loop(loop: str, model: Supernet | None = None) -> str:
  """``'auto'``: ``vmap`` on accelerators; on CPU the supernet's ``cpu_subnet_loop`` (the
  contract's default ``scan``, one subnet after another).  Measured on 2 cores (docs/benchmarks.md): scan is 1.6x
  faster than vmap for OFA-MBv3 (depthwise taps and 1x1 dots), but about 4x *slower* for
  OFA-ResNet50 (5.40 vs 1.33 s per step), whose 3x3 convolutions XLA:CPU runs far slower inside
  a loop body."""
  if loop not in SUBNET_LOOPS:
    raise ConfigError(f"config.train.subnet_loop: {loop!r} is not one of {SUBNET_LOOPS}")
  if loop == "auto":
    if jax.default_backend() != "cpu":
      return "vmap"
    return (Supernet if model is None else model).cpu_subnet_loop
  return loop


def switch_model(model, loop: str, enabled: bool = True):
  """``model.clone(switch=True)`` for the training step where members run one at a time
  (``loop`` resolves to ``'scan'``) and the supernet has a switch mode (``nn/supernet.py``);
  else ``model``.  The same losses and gradients; each member's blocks run only their chosen
  branch (``config.train.switch``)."""
  if enabled and model.switches and resolve_subnet_loop(loop, model) == "scan":
    return model.clone(switch=True)
  return model


def subnet_grads(model, params, batch_stats, images, labels, archs, key,
                 loss_config: LossConfig, teacher_probs=None, loop: str = "vmap"):
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
      losses = subnet_losses(logits, labels, loss_config, teacher_probs)
      return losses.sum(), (losses, logits, stats)

    return jax.grad(loss_fn, has_aux=True)(params)

  # One loop body for every member keeps the compiled program one subnet long.  The carry holds
  # the soft targets: the teacher's, or (in-place) those member 0 produces in iteration 0.
  inplace = loss_config.distill == "inplace"
  nc = loss_config.num_classes
  soft0 = (teacher_probs if loss_config.distill == "teacher" else
           jnp.full((labels.shape[0], nc), 1.0 / nc, jnp.float32))
  student_lc = loss_config._replace(
      distill="teacher" if loss_config.distill != "none" else "none")
  label_lc = loss_config._replace(distill="none")

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


def make_train_step(model, space, tx, phase: Phase, loss_config: LossConfig,
                    loop: str = "vmap", *, augment: Callable | None = None,
                    shardings: Any = None, resolution: int | None = None):
  """A jit-compiled ``step(state, images, labels, base_key) -> (state, metrics)`` for one phase.

  The step's archs (and the teacher's) carry ``resolution`` (default: the side of the images it
  trains on, after ``augment``), which must be one of the space's; images of another side are
  a ``ValueError`` when the step is traced.

  ``augment(images, key) -> inputs`` (e.g. :func:`data.preprocess` with the step's resolution)
  runs inside the compiled step, so a step dispatches one program and nothing else; all
  randomness comes from ``step_key(base_key, state.step)``.  Without ``augment`` the images
  are used as given.  ``shardings`` (a tree of ``NamedSharding`` shaped like the state, see
  :func:`regnas_jax.parallel.state_shardings`) keeps the new state where the old one lives; the
  batch may be split over the mesh (the compiler then averages gradients and BN moments across
  it, so the result is the one-device step's).
  """
  max_arch = space.max_arch()

  def step(state: TrainState, images, labels, base_key):
    k_aug, k_arch, k_drop = jax.random.split(step_key(base_key, state.step), 3)
    if augment is not None:
      images = augment(images, k_aug)
    side = images.shape[1]
    archs = space.at_resolution(sample_subnets(space, phase, k_arch), resolution or side)
    space.check_resolution(archs, side, "train step")
    teacher_probs = None
    if loss_config.distill == "teacher":
      teacher = space.at_resolution(max_arch, side)
      teacher_probs = jax.nn.softmax(model.apply(state.teacher, images, teacher, train=False))
    grads, (losses, logits, stats) = subnet_grads(
        model, state.params, state.batch_stats, images=images, labels=labels, archs=archs,
        key=k_drop, loss_config=loss_config, teacher_probs=teacher_probs, loop=loop)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    acc = (jnp.argmax(logits, -1) == labels[None]).mean(-1)
    new = TrainState(state.step + 1, params, merge_batch_stats(state.batch_stats, stats),
                     opt_state, state.teacher)
    if shardings is not None:
      new = jax.lax.with_sharding_constraint(new, shardings)
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
  fingerprint: str         # identifies these weights: the identity they were saved with,
                           # steps, array bytes (regnas_jax.identity)


def phase_at(phases, step: int) -> tuple[int, int]:
  """(phase index, step within the phase) of global step ``step``."""
  start = 0
  for i, p in enumerate(phases):
    if step < start + p.steps:
      return i, step - start
    start += p.steps
  return len(phases), 0


def check_resolutions(train_config, space) -> tuple:
  """The training resolutions of ``config.train`` (default: all of the space's)."""
  res = tuple(train_config.resolutions) if train_config.resolutions else tuple(space.resolutions)
  bad = [r for r in res if r not in space.resolutions]
  if bad:
    raise ConfigError(f"config.train.resolutions: {bad[0]} is not a resolution of the "
                      f"space {tuple(space.resolutions)}")
  return res


def check_schedule(train_config, model, space) -> tuple[list[Phase], tuple]:
  """``(phases, resolutions)`` of ``config.train`` for ``model``: raises :class:`ConfigError`
  for a schedule this space or supernet cannot run (before anything is written)."""
  phases = build_phases(train_config, space)
  res = check_resolutions(train_config, space)
  if any(p.reorder_keep is not None for p in phases) and not model.can_reorder:
    raise ConfigError("config.train.method: progressive shrinking needs channel re-ordering, "
                      "which this supernet does not provide")
  return phases, res


def train(cfg, model, space, dataset: data_lib.Dataset, workdir: str,
          init_fn: Callable | None = None, log: Callable[[str], None] = print,
          on_start: Callable[[], Any] | None = None, init_identity=None,
          put: Callable | None = None) -> TrainResult:
  """Train ``model`` on ``dataset`` as ``cfg.train`` says, resuming from ``workdir``.

  Args:
    cfg: the run config (``seed``, ``train``, ``supernet``, ``data``, ``space``).
    model, space: the supernet and its search space.
    dataset: a :class:`data.Dataset`.
    workdir: checkpoints go to ``workdir/checkpoints``, metrics to ``workdir/metrics.jsonl``.
    init_fn: ``key -> variables`` of a fresh run (default: the supernet's initialisation;
      e.g. imported weights for ``config.supernet.init_from``).
    init_identity: JSON identifying those imported weights (part of the checkpoint identity).
    log: where one-line status messages go.
    on_start: called once the state is initialised or restored, before the first step (e.g.
      to start compiling other programs while the training step compiles).
    put: with the grain pipeline (``config.input``), ``{'images', 'labels'}`` numpy host batch
      -> device arrays, run for the next batch while a step computes (default
      ``jax.device_put``; e.g. ``jax.make_array_from_process_local_data`` on a mesh).
  Returns:
    A :class:`TrainResult`.  Raises :class:`~regnas_jax.stopping.Preempted` after saving when
    SIGTERM arrives, :class:`~regnas_jax.training.loop.NonFiniteError` on a diverging run.
  """
  tc = cfg.train
  phases, res_list = check_schedule(tc, model, space)
  total = sum(p.steps for p in phases)
  init_fn = init_fn or (lambda key: init_variables(model, key))
  lc_base = dict(num_classes=dataset.num_classes, label_smoothing=float(tc.label_smoothing),
                 kd_ratio=float(tc.kd_ratio), student_label_loss=bool(tc.student_label_loss))
  n_train = len(dataset.train)
  data_lib.epoch_batch_indices(n_train, tc.batch_size, 0, cfg.seed)  # validates batch size
  mc = parallel.mesh_config(cfg)
  mesh = parallel.make_mesh(mc)
  parallel.check_batch(tc.batch_size, mesh, "config.train.batch_size")

  ident = identity_lib.supernet(cfg, space, phases, init_from=init_identity,
                                augment=pipeline.settings(cfg)["augment"])
  ck = ckpt_lib.Checkpointer(fs.join(workdir, "checkpoints"), ident,
                             max_to_keep=tc.max_to_keep)
  k_init, k_steps = jax.random.split(jax.random.key(cfg.seed))
  state, resumed, extra = _initial_state(ck, init_fn, k_init, tc, phases=phases, log=log,
                                         mesh=mesh, mc=mc)
  start = int(state.step)
  metrics = MetricsLog(fs.join(workdir, "metrics.jsonl"), runtime.tensorboard_dir(cfg, workdir))
  metrics.truncate_after(start)   # lines of steps after the checkpoint (or of an older run)
  if start >= total:   # already trained: fingerprinted with the identity saved with them
    ck.close()
    return _result(state, ck.recorded_identity, total, 0.0, resumed, phases)

  steps = _StepRunner(cfg, model, space, dataset, phases=phases, res_list=res_list,
                      lc_base=lc_base, k_steps=k_steps, log=log, mesh=mesh, mc=mc, put=put,
                      input_state=extra.get("input_state"))
  if on_start is not None:
    on_start()
  log(f"training {total} steps in {len(phases)} phase(s) "
      f"({', '.join(f'{p.name}:{p.steps}' for p in phases)}), batch {tc.batch_size}, "
      f"resolutions {res_list}")
  t0 = time.time()
  try:
    state = run_loop(
        state, steps, start=start, total=total, checkpointer=ck, metrics=metrics, desc="train",
        record=steps.record, bar_fields=_bar_fields, save_extra=steps.extra,
        must_save=steps.end_of_phase, checkpoint_every=tc.checkpoint_every,
        log_every=tc.log_every, progress_every=tc.progress_every,
        max_nonfinite=int(tc.get("max_nonfinite_steps", 0)),
        lr_hint=f"; a smaller config.train.lr (now {tc.lr}) may help",
        profile=runtime.ProfileWindow(cfg, workdir, log), compile_clock=steps.clock)
  finally:
    steps.close()
    metrics.close()
    ck.close()
  secs = time.time() - t0
  log(f"trained {total - start} steps in {secs:.1f} s")
  return _result(state, ident, total, secs, resumed, phases)


def _result(state, ident, total, secs, resumed, phases) -> TrainResult:
  # several processes: FSDP-split arrays gathered, so every process scores the same weights
  v = parallel.host_values({"params": state.params, "batch_stats": state.batch_stats})
  fp = persist.fingerprint({"training": ident, "steps": total,
                            "arrays": persist.array_fingerprint(v)})
  return TrainResult(v, total, secs, resumed, phases, fp)


def _initial_state(ck, init_fn, k_init, tc, phases, log, mesh, mc):
  """``(state, resumed step or None, extra)``: the newest intact checkpoint (and the metadata
  saved with it), else a fresh state; laid out on ``mesh`` as ``config.mesh`` says (a
  checkpoint restores straight into that layout)."""
  v = init_fn(k_init)
  tx0, _ = make_optimizer(tc, phases[0])
  teacher = (jax.tree.map(jnp.copy, {"params": v["params"], "batch_stats": v["batch_stats"]})
             if any(p.distill == "teacher" for p in phases) else None)
  fresh = TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
                     optimizer_state(tx0, v["params"]), teacher)
  fresh = parallel.place(fresh, parallel.state_shardings(fresh, mesh, mc))
  state, extra, resumed = ck.restore_latest(fresh, warn=log)
  if resumed is None:
    return fresh, None, {}
  log(f"resumed from {ck.directory}/{resumed} (step {int(state.step)}/"
      f"{sum(p.steps for p in phases)}, data position {extra.get('data_position')})")
  return state, resumed, extra or {}


def subnet_roles(phase: Phase) -> list[str]:
  """The role of each of a phase's ``S`` subnets per step, as its metrics are named
  (``acc/largest``, ``loss/random``, ...): ``largest`` (member 0 of the sandwich rule and the
  ``max`` sampler), ``smallest`` (member 1 of the sandwich rule) or ``random``."""
  n = phase.num_subnets
  if phase.sampler == "max":
    return ["largest"] * n
  if phase.sampler == "sandwich":
    return ["largest", "smallest"] + ["random"] * (n - 2)
  return ["random"] * n


def by_role(name: str, values, roles: list[str], digits: int) -> dict:
  """``{name/role: mean of the values of the subnets in that role}`` in the roles' order."""
  v = np.asarray(values, np.float64)
  return {f"{name}/{r}": round(float(v[[i for i, x in enumerate(roles) if x == r]].mean()), digits)
          for r in dict.fromkeys(roles)}


def _bar_fields(rec: dict) -> dict:
  accs = {f"acc_{k[4:]}": v for k, v in rec.items() if k.startswith("acc/")}
  return dict(phase=rec["phase"], loss=rec["loss"], **accs,
              img_s=round(rec["images_per_s"]) if rec["images_per_s"] is not None else "-")


class _StepRunner:
  """One training step of global step ``s`` for :func:`run_loop`: the phase's compiled step at
  the step's resolution, phase starts (fresh optimiser, teacher, channel re-ordering) and the
  next host batch prefetched in a thread -- or, with ``config.input`` asking for it, from the
  grain pipeline (``data/pipeline.py``), whose iterator state is saved with each checkpoint."""

  def __init__(self, cfg, model, space, dataset, phases, res_list, lc_base, k_steps, log,
               mesh, mc, put=None, input_state=None):
    self.cfg, self.model, self.space, self.dataset = cfg, model, space, dataset
    self.mesh, self.mc = mesh, mc
    self.phases, self.res_list, self.lc_base, self.k_steps, self.log = (
        phases, res_list, lc_base, k_steps, log)
    self.fns: dict[tuple, Any] = {}
    self.lr_tables: dict[int, np.ndarray] = {}
    self.step_model = switch_model(model, cfg.train.subnet_loop, cfg.train.get("switch", False))
    self.pool = concurrent.futures.ThreadPoolExecutor(1)
    self.next = None
    self.clock = runtime.CompileClock()
    # -- input pipeline hook (config.input) --
    self.input = pipeline.settings(cfg)
    self.batches, self.input_state = None, input_state
    self.put = put or (lambda b: parallel.put_batch(b, mesh))
    self.use_grain = pipeline.uses_grain(cfg)

  def grain_batch(self, s):
    """``(images, labels)`` of step ``s`` from the grain pipeline, started at the checkpoint's
    iterator state (or at ``s``; again at ``s`` if that state disagrees with the step)."""
    for state in (self.input_state, None):
      if self.batches is None:
        self.batches = pipeline.train_batches(self.cfg, self.dataset, s,
                                              sum(p.steps for p in self.phases),
                                              resolutions=self.res_list, put=self.put,
                                              state=state)
      step, b = self.batches.next()
      self.input_state = None
      if step == s:
        return b["images"], b["labels"]
      self.batches.close()
      self.batches = None
    raise RuntimeError(f"input pipeline: the batch of step {step} came at step {s}")

  def host_batch(self, s):
    """Step ``s``'s batch as global arrays split over the mesh (each process reads its part)."""
    tc = self.cfg.train
    idx = data_lib.epoch_batch_indices(len(self.dataset.train), tc.batch_size, s, self.cfg.seed)
    return parallel.put_batch(self.dataset.train.get(idx[parallel.process_slice(len(idx))]),
                              self.mesh)

  def res_at(self, s):
    return pipeline.step_resolution(self.cfg.seed, self.res_list, s)

  def end_of_phase(self, s) -> bool:
    pi, local = phase_at(self.phases, s - 1)
    return local + 1 == self.phases[pi].steps

  def extra(self, s) -> dict:
    pi, _ = phase_at(self.phases, s - 1)
    out = {"data_position": s, "phase": self.phases[pi].name, "phase_index": pi}
    if self.batches is not None:
      out["input_state"] = self.batches.state()
    return out

  def _start_phase(self, pi, state, tx):
    phase, phases = self.phases[pi], self.phases
    params, stats, teacher = state.params, state.batch_stats, state.teacher
    if phase.distill == "teacher" and pi > 0 and phases[pi - 1].distill != "teacher":
      teacher = jax.tree.map(jnp.copy, {"params": params, "batch_stats": stats})
      self.log(f"phase {phase.name}: teacher = the network after phase {phases[pi - 1].name}")
    if phase.reorder_keep is not None:
      v = self.model.reorder_channels({"params": params, "batch_stats": stats},
                                      phase.reorder_keep)
      params, stats = v["params"], v["batch_stats"]
      self.log(f"phase {phase.name}: channels re-ordered by importance "
               f"(kept widths of expand {list(phase.reorder_keep)})")
    new = TrainState(state.step, params, stats, optimizer_state(tx, params), teacher)
    return jax.device_put(new, parallel.state_shardings(new, self.mesh, self.mc))

  def _fn(self, pi, res, tx, state):
    if (pi, res) not in self.fns:
      tc, ds = self.cfg.train, self.dataset
      lc = LossConfig(distill=self.phases[pi].distill, **self.lc_base)
      on_device = self.input["augment"] == "pad_crop"  # else cropped + flipped on the host
      aug = functools.partial(data_lib.preprocess, mean=ds.mean, std=ds.std, resolution=res,
                              pad=tc.augment.pad if on_device else 0,
                              flip=tc.augment.flip and on_device)
      self.fns[pi, res] = make_train_step(
          self.step_model, self.space, tx, self.phases[pi], lc, tc.subnet_loop,
          augment=lambda x, k, f=aug: f(x, key=k),
          shardings=parallel.state_shardings(state, self.mesh, self.mc), resolution=res)
    return self.fns[pi, res]

  def __call__(self, s, state):
    pi, local = phase_at(self.phases, s)
    phase = self.phases[pi]
    tx, sched = make_optimizer(self.cfg.train, phase)
    if pi not in self.lr_tables:  # host copy of the schedule, for the logs
      self.lr_tables[pi] = np.asarray(jax.jit(jax.vmap(sched))(jnp.arange(phase.steps)))
    if local == 0:  # phase start (never part of a saved state: saves follow steps)
      state = self._start_phase(pi, state, tx)
    res = self.res_at(s)
    first = (pi, res) not in self.fns
    fn = self._fn(pi, res, tx, state)
    if self.use_grain:
      imgs, labels = self.grain_batch(s)
    else:
      if self.next is None:
        self.next = self.pool.submit(self.host_batch, s)
      imgs, labels = self.next.result()
      total = sum(p.steps for p in self.phases)
      self.next = self.pool.submit(self.host_batch, s + 1) if s + 1 < total else None
    # -- compile time apart from throughput: a program's first step is compile-bound ---------
    if first:
      (state, m), secs = self.clock.timed_first(
          lambda: fn(state, imgs, labels, self.k_steps), len(labels))
      self.log(f"train step of phase {phase.name} at resolution {res}: compiled and run once "
               f"in {secs:.1f} s")
    else:
      state, m = fn(state, imgs, labels, self.k_steps)
    self.clock.count(len(labels))
    return state, m

  def record(self, s, host) -> dict:
    pi, local = phase_at(self.phases, s - 1)
    m = host[-1]
    compile_s, run_s, images = self.clock.take()   # images/s without the compile-bound steps
    roles = subnet_roles(self.phases[pi])
    # compile_s and resolution: facts of the record, not TensorBoard scalars (progress.py)
    return {"phase": self.phases[pi].name, "loss": float(m["loss"]),
            **by_role("loss", m["losses"], roles, 5), **by_role("acc", m["acc"], roles, 4),
            "grad_norm": float(m["grad_norm"]), "lr": float(self.lr_tables[pi][local]),
            "images_per_s": images / max(run_s, 1e-9) if images else None,
            "compile_s": round(compile_s, 3), "resolution": self.res_at(s - 1),
            "time": time.time()}

  def close(self):
    self.pool.shutdown(wait=False, cancel_futures=True)
    if self.batches is not None:
      self.batches.close()
