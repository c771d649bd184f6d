"""Scoring populations of subnets with one compiled call.

A population is an arch pytree with a leading axis.  Its members share the supernet's
parameters; ``jax.vmap`` folds them into one program, and ``chunk_size`` bounds memory by
running ``chunk_size`` members at a time with ``lax.map``.  Members must share the input
resolution (the image shape is static): group a population by resolution first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("model", "train", "chunk_size", "member_stats"))
def population_logits(model, variables, images, population, *, train: bool = False,
                      chunk_size: int | None = None, member_stats: bool = False):
  """Logits ``(P, N, classes)`` of every member of ``population`` on ``images`` ``(N, R, R, 3)``.

  Args:
    model: a supernet module (static: one compile per model, input shape and population size).
    variables: supernet variables; with ``member_stats=True`` their ``batch_stats`` carry one
      set of statistics per member on a leading axis (e.g. after per-subnet re-calibration).
    train: use batch statistics in BN (the running statistics are not updated).
    chunk_size: members per step of ``lax.map`` (``None``: all at once).
  """
  params, stats = variables["params"], variables.get("batch_stats")

  def one(arch_and_stats):
    arch, st = arch_and_stats
    v = {"params": params, "batch_stats": st}
    if train:
      return model.apply(v, images, arch, train=True, mutable=["batch_stats"])[0]
    return model.apply(v, images, arch, train=False)

  if member_stats:
    fn, xs = one, (population, stats)
  else:
    fn, xs = (lambda a: one((a, stats))), population
  if chunk_size is None:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk_size)


def population_correct(model, variables, images, labels, population, **kw) -> np.ndarray:
  """Bool ``(P, N)``: which samples each member classifies correctly."""
  logits = population_logits(model, variables, images, population, **kw)
  return np.asarray(jnp.argmax(logits, -1) == jnp.asarray(labels)[None])


@functools.partial(jax.jit, static_argnames=("model", "chunk_size"))
def recalibrate_bn(model, variables, calib_images, population, *, chunk_size: int | None = None):
  """Per-member BN statistics re-computed on a fixed calibration set (OFA's BN reset).

  For every member, each BN layer's statistics become the plain average, over the ``K``
  calibration batches, of that batch's mean and (biased) variance of the member's active
  channels -- an exact average, not a moving one; channels and blocks the member does not use
  keep their old values (they are masked anyway).

  Args:
    model: the supernet module (static).
    variables: supernet variables (shared parameters and statistics).
    calib_images: ``(K, B, R, R, 3)`` normalised calibration batches (e.g. 2,000 training images).
    population: arch pytree with a leading axis ``P``.
    chunk_size: members per ``lax.map`` step (``None``: all at once with ``vmap``).
  Returns:
    ``batch_stats`` with a leading ``P`` axis, for ``population_logits(..., member_stats=True)``.
  """
  frozen = model.clone(bn_momentum=0.0, dropout_rate=0.0)  # running stats := batch stats
  params, stats = variables["params"], variables["batch_stats"]
  k = calib_images.shape[0]

  def one(arch):
    def body(acc, x):
      _, upd = frozen.apply({"params": params, "batch_stats": stats}, x, arch, train=True,
                            mutable=["batch_stats"])
      return jax.tree.map(jnp.add, acc, upd["batch_stats"]), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, stats), calib_images)
    return jax.tree.map(lambda t: t / k, total)

  if chunk_size is None:
    return jax.vmap(one)(population)
  return jax.lax.map(one, population, batch_size=chunk_size)


def calibration_batches(images: np.ndarray, num_images: int, batch_size: int, seed: int):
  """A fixed random subset of ``images`` as ``(K, B, ...)`` batches (``K*B <= num_images``)."""
  n = min(num_images, len(images))
  b = min(batch_size, n)
  k = n // b
  idx = np.random.default_rng(seed).permutation(len(images))[:k * b]
  return np.asarray(images)[idx].reshape((k, b) + images.shape[1:])


def score_population(model, variables, population, calib_images, images, labels, *,
                     chunk_size: int | None = None, batch_size: int = 500) -> np.ndarray:
  """Bool ``(P, N)`` correctness after per-member BN re-calibration on ``calib_images``.

  Images are scored ``batch_size`` at a time (the last batch padded to the same shape, so one
  compiled program serves all batches), which bounds memory for large evaluation splits.
  """
  stats = recalibrate_bn(model, variables, calib_images, population, chunk_size=chunk_size)
  v = {"params": variables["params"], "batch_stats": stats}
  images, labels = np.asarray(images), np.asarray(labels)
  n = len(labels)
  b = min(batch_size, n)
  out = []
  for start in range(0, n, b):
    x, y = images[start:start + b], labels[start:start + b]
    k = len(y)
    if k < b:
      x = np.concatenate([x, np.zeros((b - k,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros(b - k, y.dtype)])
    out.append(population_correct(model, v, x, y, population, train=False,
                                  chunk_size=chunk_size, member_stats=True)[:, :k])
  return np.concatenate(out, axis=1)
