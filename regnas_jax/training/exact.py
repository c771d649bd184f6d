"""Training one exact-shape network from scratch, optionally with focal distillation.

The independent baselines of REG-NAS's tables (each family member trained on its own) and
TuNAS's retraining of searched architectures train an exact-shape module (what a supernet's
``exact_module(arch)`` returns) with the config's optimiser and schedule, in the shared resumable
loop (checkpoints, metrics, SIGTERM, finite-loss guard).

**Focal distillation** (Positive-Congruent Training, Yan et al., CVPR 2021) trains a new model
to agree with an old one where the old one was right.  Our reading, with the knobs as config
values (``FocalDistillation``): the loss is

  CE(new, y) + weight * mean_i [ (alpha + beta * 1[old_i correct]) * D(new_i, old_i) ]

with ``D`` either the temperature-scaled KL divergence ``T^2 KL(softmax(old/T) || softmax(new/T))``
(``kind='kl'``) or half the squared distance of the logits (``kind='logits'``, PCT's logit
matching).  ``alpha`` distils every sample a little, ``beta`` adds focus on the samples the old
model classifies correctly, whose flips are the negative flips.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regnas_jax import checkpoint as ckpt_lib
from regnas_jax import data as data_lib
from regnas_jax.data import pipeline
from regnas_jax import identity as identity_lib
from regnas_jax import persist
from regnas_jax.errors import ConfigError
from regnas_jax.progress import MetricsLog
from regnas_jax.training.loop import run_loop, step_key
from regnas_jax.training.supernet import Phase, make_optimizer, optimizer_state

FD_KINDS = ("kl", "logits")


class FocalDistillation(NamedTuple):
  """Focal distillation settings (module docstring); ``weight = 0`` turns it off."""
  weight: float = 1.0
  alpha: float = 1.0
  beta: float = 5.0
  temperature: float = 1.0
  kind: str = "kl"

  def check(self) -> None:
    if self.kind not in FD_KINDS:
      raise ConfigError(f"fd.kind: {self.kind!r} is not one of {FD_KINDS}")
    for k in ("weight", "alpha", "beta"):
      if not (np.isfinite(getattr(self, k)) and getattr(self, k) >= 0):
        raise ConfigError(f"fd.{k}: must be a finite number >= 0, got {getattr(self, k)!r}")
    if not (np.isfinite(self.temperature) and self.temperature > 0):
      raise ConfigError(f"fd.temperature: must be > 0, got {self.temperature!r}")


def focal_distillation(new_logits, old_logits, labels, fd: FocalDistillation):
  """The focal distillation term ``mean_i w_i D_i`` (no weight, no CE) of a batch.

  Args: ``new_logits``, ``old_logits``: ``(B, C)``; ``labels``: ``(B,)``.  The old model's
  logits are constants (no gradient flows to them).
  """
  old = jax.lax.stop_gradient(old_logits.astype(jnp.float32))
  new = new_logits.astype(jnp.float32)
  w = fd.alpha + fd.beta * (jnp.argmax(old, -1) == labels).astype(jnp.float32)
  if fd.kind == "kl":
    t = fd.temperature
    p_old = jax.nn.softmax(old / t, -1)
    d = t * t * (p_old * (jax.nn.log_softmax(old / t, -1) - jax.nn.log_softmax(new / t, -1))
                 ).sum(-1)
  else:
    d = 0.5 * ((new - old) ** 2).sum(-1)
  return (w * d).mean()


class ExactResult(NamedTuple):
  variables: dict
  steps: int
  seconds: float
  fingerprint: str   # the identity the weights were saved with and a hash of the arrays


def train_exact(cfg, module, dataset, workdir: str, *, resolution: int, seed: int,
                steps: int | None = None, teacher: tuple | None = None,
                fd: FocalDistillation | None = None, teacher_resolution: int | None = None,
                identity_extra: dict | None = None,
                log: Callable[[str], None] = print, desc: str = "train") -> ExactResult:
  """Train ``module`` (an exact-shape network) from scratch as ``cfg.train`` says.

  Args:
    cfg: the run config (``train``: optimiser, lr, batch size, augmentation, steps, ...).
    module: ``module.apply(variables, images, train=...)`` -> logits.
    dataset: a :class:`~regnas_jax.data.Dataset`; batches are a function of ``(seed, step)``.
    workdir: its checkpoints and ``metrics.jsonl`` (resumed when present).
    resolution: the input side.
    steps: optimiser steps (default ``cfg.train.steps``).
    teacher: ``(module, variables)`` of the old model for focal distillation (with ``fd``).
    teacher_resolution: the input side the old model was trained and is deployed at (default:
      ``resolution``).  It sees each augmented batch as the new model does (the same crop and
      flip, made at the source size) but resized to its own side: its predictions, and so the
      flips distillation guards against, are the ones it makes as deployed.
    identity_extra: what else the weights depend on (e.g. the architecture), checked on resume.
  """
  tc = cfg.train
  steps = int(tc.steps if steps is None else steps)
  if pipeline.settings(cfg)["augment"] != "pad_crop":
    raise ConfigError("config.input.augment: exact-network training supports 'pad_crop' only")
  if fd is not None:
    fd.check()
  phase = Phase("exact", steps=steps, allowed=(), sampler="max", num_subnets=1, distill="none",
                reorder_keep=None, lr=float(tc.lr),
                warmup_steps=min(int(tc.warmup_steps), steps - 1))
  tx, sched = make_optimizer(tc, phase)
  t_res = int(resolution if teacher_resolution is None else teacher_resolution)
  ident = identity_lib.exact(cfg, steps=steps, seed=seed, resolution=resolution,
                             fd=None if fd is None else fd._asdict(), teacher_resolution=t_res,
                             extra=identity_extra)
  ck = ckpt_lib.Checkpointer(f"{workdir}/checkpoints", ident, max_to_keep=tc.max_to_keep)
  v = module.init(jax.random.key(seed), jnp.zeros((1, resolution, resolution, 3)), train=False)
  fresh = (jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
           optimizer_state(tx, v["params"]))
  state, _, resumed = ck.restore_latest(fresh, warn=log)
  state = fresh if resumed is None else state
  metrics = MetricsLog(f"{workdir}/metrics.jsonl")
  metrics.truncate_after(int(state[0]))
  step_fn = _make_step(module, tx, tc, dataset, resolution=resolution, fd=fd, teacher=teacher,
                       t_res=t_res)
  base = jax.random.key(seed)
  n = len(dataset.train)

  def step(s, st):
    x, y = dataset.train.get(data_lib.epoch_batch_indices(n, tc.batch_size, s, seed))
    return step_fn(st, x, y, base)

  def record(s, host):
    m = host[-1]
    return {"loss": float(m["loss"]), "fd": float(m["fd"]), "acc": float(m["acc"]),
            "lr": float(sched(s - 1)), "time": time.time()}

  t0 = time.time()
  start = int(state[0])
  try:
    state = run_loop(state, step, start=start, total=steps, checkpointer=ck, metrics=metrics,
                     desc=desc, record=record, params_of=lambda st: st[1],
                     bar_fields=lambda r: dict(loss=r["loss"], acc=r["acc"]),
                     save_extra=lambda s: {"step": s}, checkpoint_every=tc.checkpoint_every,
                     log_every=tc.log_every, progress_every=tc.progress_every,
                     max_nonfinite=int(tc.get("max_nonfinite_steps", 0)),
                     lr_hint=f"; a smaller config.train.lr (now {tc.lr}) may help")
  finally:
    ck.close()
  secs = time.time() - t0
  if start < steps:
    log(f"{desc}: trained {steps - start} steps in {secs:.1f} s")
  variables = {"params": state[1], "batch_stats": state[2]}
  saved_with = ident if start < steps else ck.recorded_identity   # already trained: its own
  fp = persist.fingerprint({"training": saved_with,
                            "arrays": persist.array_fingerprint(variables)})
  return ExactResult(variables, steps, secs, fp)


def _make_step(module, tx, tc, dataset, resolution, fd, teacher, t_res: int):
  """The compiled step of :func:`train_exact`; ``t_res``: the old model's input side."""
  aug = functools.partial(data_lib.preprocess, mean=dataset.mean, std=dataset.std,
                          pad=tc.augment.pad, flip=tc.augment.flip)
  nc, smooth = dataset.num_classes, float(tc.label_smoothing)
  use_fd = fd is not None and teacher is not None and fd.weight > 0

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, images, labels, base_key):
    s, params, stats, opt_state = state
    key = step_key(base_key, s)
    x = aug(images, key=key, resolution=resolution)
    # the old model's view: the same crop and flip (made at the source size), its own side
    x_old = x if t_res == resolution else aug(images, key=key, resolution=t_res)

    def loss_fn(p):
      logits, upd = module.apply({"params": p, "batch_stats": stats}, x, train=True,
                                 mutable=["batch_stats"])
      onehot = optax.smooth_labels(jax.nn.one_hot(labels, nc), smooth)
      ce = -(onehot * jax.nn.log_softmax(logits.astype(jnp.float32), -1)).sum(-1).mean()
      term = jnp.float32(0.0)
      if use_fd:
        t_module, t_vars = teacher
        old = t_module.apply(t_vars, x_old, train=False)
        term = focal_distillation(logits, old, labels, fd)
      loss = ce + (fd.weight * term if use_fd else 0.0)
      return loss, (logits, upd["batch_stats"], term)

    (loss, (logits, new_stats, term)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt_state = tx.update(g, opt_state, params)
    acc = (jnp.argmax(logits, -1) == labels).mean()
    return ((s + 1, optax.apply_updates(params, upd), new_stats, opt_state),
            {"loss": loss, "fd": term, "acc": acc})

  return step


def evaluate_exact(module, variables, dataset, split: str, resolution: int,
                   batch: int = 500) -> np.ndarray:
  """Bool ``(N,)``: which samples of ``split`` the exact network classifies correctly (the
  split streamed in ``batch``-image batches: ``data.eval_batches``)."""
  fn = jax.jit(lambda v, x: jnp.argmax(module.apply(v, x, train=False), -1))
  out = []
  for _, count, x, y in data_lib.eval_batches(getattr(dataset, split), resolution, dataset.mean,
                                              dataset.std, batch):
    out.append(np.asarray(fn(variables, x))[:count] == y)
  return np.concatenate(out)
