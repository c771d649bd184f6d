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

from regnas_jax.spaces.base import pop_size


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


def _padded_blocks(population, block_size: int | None):
  """Split a population into blocks of exactly ``block_size`` members (the last one padded by
  repeating its first member), so one compiled program serves populations of any size.

  Yields ``(start, count, idx, block)``: ``idx`` are the members' positions in ``population``.
  """
  n = pop_size(population)
  b = n if not block_size else int(block_size)
  for start in range(0, n, b):
    count = min(b, n - start)
    idx = np.arange(start, start + b)
    idx[count:] = start  # padding: repeat the block's first member
    yield start, count, idx, jax.tree.map(lambda x: np.asarray(x)[idx], population)


def recalibrate_population(model, variables, calib_images, population, *,
                           block_size: int | None = None, chunk_size: int | None = None):
  """:func:`recalibrate_bn` over a population of any size in fixed blocks of members.

  Returns per-member ``batch_stats`` with a leading ``P`` axis (numpy arrays).
  """
  parts = []
  for _, count, _, block in _padded_blocks(population, block_size):
    st = recalibrate_bn(model, variables, calib_images, block, chunk_size=chunk_size)
    parts.append(jax.tree.map(lambda s, c=count: np.asarray(s)[:c], st))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


@functools.partial(jax.jit, static_argnames=("model", "chunk_size"))
def _member_predictions(model, variables, images, population, *, chunk_size=None):
  logits = population_logits(model, variables, images, population, chunk_size=chunk_size,
                             member_stats=True)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def population_predictions(model, params, member_stats, population, images, *,
                           block_size: int | None = None, chunk_size: int | None = None,
                           batch_size: int = 500) -> np.ndarray:
  """Int32 ``(P, N)`` predicted classes of every member (eval-mode BN with its own statistics).

  ``member_stats`` carry a leading ``P`` axis (:func:`recalibrate_population`).  Members run in
  blocks of ``block_size`` and images in batches of ``batch_size`` (the last of each padded), so
  one compiled program serves any population and split size.
  """
  n = len(images)
  b = min(batch_size, n)
  batches = []  # on the device once (a jax array stays where it is), the last one padded
  for i in range(0, n, b):
    x = jnp.asarray(images[i:i + b])
    if len(x) < b:
      x = jnp.concatenate([x, jnp.zeros((b - len(x),) + x.shape[1:], x.dtype)])
    batches.append((i, min(b, n - i), x))
  out = np.zeros((pop_size(population), n), np.int32)
  for start, count, idx, block in _padded_blocks(population, block_size):
    # the block's statistics go to the device once, not once per image batch
    v = {"params": params,
         "batch_stats": jax.device_put(jax.tree.map(lambda s: np.asarray(s)[idx], member_stats))}
    for i, k, x in batches:
      pred = _member_predictions(model, v, x, block, chunk_size=chunk_size)
      out[start:start + count, i:i + k] = np.asarray(pred)[:count, :k]
  return out


def score_population(model, variables, population, calib_images, images, labels, *,
                     chunk_size: int | None = None, batch_size: int = 500,
                     block_size: int | None = None) -> np.ndarray:
  """Bool ``(P, N)`` correctness after per-member BN re-calibration on ``calib_images``.

  Images are scored ``batch_size`` at a time and members ``block_size`` at a time (the last
  batch/block padded to the same shape, so one compiled program serves all of them), which
  bounds memory for large evaluation splits and compiles once for any population size.
  """
  stats = recalibrate_population(model, variables, calib_images, population,
                                 block_size=block_size, chunk_size=chunk_size)
  pred = population_predictions(model, variables["params"], stats, population, images,
                                block_size=block_size, chunk_size=chunk_size,
                                batch_size=batch_size)
  return pred == np.asarray(labels)[None]


# -- regression metrics ------------------------------------------------------------------------
def top1(correct) -> np.ndarray:
  """Accuracy per member: the mean of bool ``correct`` ``(..., N)`` over samples."""
  return np.asarray(correct, bool).mean(-1)


def nfr(new_correct, old_correct) -> np.ndarray:
  """Negative flip rate NFR(new, old): the fraction of *all* N samples that the old model gets
  right and the new one gets wrong (Yan et al., CVPR 2021, as used by REG-NAS).

  Bool ``(..., N)`` inputs broadcast against each other.
  """
  new, old = np.asarray(new_correct, bool), np.asarray(old_correct, bool)
  return (old & ~new).mean(-1)


def relative_nfr(new_correct, old_correct) -> np.ndarray:
  """NFR divided by the NFR expected if the two models erred independently,
  ``acc_old * (1 - acc_new)``; ``nan`` where that product is 0."""
  expected = top1(old_correct) * (1.0 - top1(new_correct))
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(expected > 0, nfr(new_correct, old_correct) / np.where(expected > 0, expected, 1),
                    np.nan)


def nfr_matrix(correct) -> np.ndarray:
  """``(k, k)`` pairwise NFR of a family: entry ``[i, j]`` = NFR(new=j, old=i), i.e. the
  fraction of samples member ``i`` gets right and member ``j`` gets wrong (diagonal 0).

  For a family ordered small to large the upper triangle holds the regressions that matter.
  """
  c = np.asarray(correct, bool)
  return (c[:, None, :] & ~c[None, :, :]).mean(-1)
