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
