"""Scoring populations of subnets with one compiled call.

A population is an arch pytree with a leading axis.  Its members share the supernet's
parameters; ``jax.vmap`` folds them into one program, and ``chunk_size`` bounds memory by
running ``chunk_size`` members at a time with ``lax.map``.  Members must share the input
resolution (the image shape is static): group a population by resolution first.

:class:`Scorer` is what the jobs use: per-member BN re-calibration on a fixed calibration set,
then predictions on a split, for populations of any size and mixed resolutions.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import data as data_lib

from regnas_jax.metrics import nfr, nfr_matrix, relative_nfr, top1  # noqa: F401 (re-exported)
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


def streamed_predictions(model, params, member_stats, population, batches, n: int, *,
                         block_size: int | None = None,
                         chunk_size: int | None = None) -> np.ndarray:
  """Int32 ``(P, N)`` as :func:`population_predictions`, with the images streamed: ``batches``
  yields ``(start, count, x, _)`` (``data.eval_batches``: fixed-size normalised batches, the last
  one padded), each scored by every member block before the next is read.  Memory is bounded by
  one image batch; every (block, batch) call is the one ``population_predictions`` makes.
  """
  blocks = [(start, count, block, jax.device_put(jax.tree.map(lambda s: np.asarray(s)[idx],
                                                              member_stats)))
            for start, count, idx, block in _padded_blocks(population, block_size)]
  out = np.zeros((pop_size(population), n), np.int32)
  for i, k, x, _ in batches:
    for start, count, block, st in blocks:
      pred = _member_predictions(model, {"params": params, "batch_stats": st}, x, block,
                                 chunk_size=chunk_size)
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




# ----------------------------------------------------------------------------------------------
# The jobs' scorer
# ----------------------------------------------------------------------------------------------
def uncommitted(tree):
  """Arrays on the default device, not committed to it: jit's cache key includes whether an
  argument is committed, so warm-up compiles and later calls must pass arrays the same way."""
  return jax.device_put(jax.tree.map(np.asarray, tree))


class Scorer:
  """Scores subnets of a trained supernet on a split: each member's BN statistics re-calibrated
  on a fixed set of training images, then eval-mode predictions.

  Args:
    net: the supernet; variables: its trained ``{'params', 'batch_stats'}``;
    dataset: a :class:`~regnas_jax.data.Dataset`;
    score: ``config.score`` (``block_size``, ``chunk_size``, ``batch_size``, ``max_images``);
    calib_images, calib_batch_size: the calibration set (OFA: 2,000 training images);
    seed: picks the calibration images and the ``max_images`` subsets.

  Calibration batches are prepared once per resolution; evaluation images stay uint8 on the host
  and are streamed through ``score.batch_size``-image batches (normalised on the device, one
  batch at a time), so memory does not grow with the split.  Populations are grouped by
  resolution and run in fixed-size member blocks, so every resolution compiles once.
  ``seconds`` sums the time spent in :meth:`correct`.
  """

  def __init__(self, net, space, variables, dataset, score, *, calib_images: int,
               calib_batch_size: int, seed: int):
    self.net, self.space, self.dataset, self.score = net, space, dataset, score
    self.variables = uncommitted(variables)
    self.calib_images, self.calib_batch_size, self.seed = calib_images, calib_batch_size, seed
    self._calib, self._sources, self._labels = {}, {}, {}
    self.seconds = 0.0

  @classmethod
  def from_config(cls, cfg, net, space, variables, dataset) -> "Scorer":
    return cls(net, space, variables, dataset, cfg.score, calib_images=cfg.train.calib_images,
               calib_batch_size=cfg.train.calib_batch_size, seed=cfg.seed)

  def calib(self, r: int) -> np.ndarray:
    if r not in self._calib:
      ds = self.dataset
      src = data_lib.SubsetSource(ds.train, np.random.default_rng([self.seed, 11]).permutation(
          len(ds.train))[:self.calib_images])
      x, _ = data_lib.eval_images(src, r, ds.mean, ds.std)
      self._calib[r] = jax.device_put(calibration_batches(
          x, len(x), self.calib_batch_size, self.seed))  # on the device once
    return self._calib[r]

  def source(self, split: str):
    """The split to score: the dataset's, or a fixed random ``score.max_images`` subset."""
    if split not in self._sources:
      src = getattr(self.dataset, split)
      limit = int(self.score.max_images or 0)
      if 0 < limit < len(src):  # a fixed random subset (splits may be sorted by class)
        src = data_lib.SubsetSource(src, np.sort(np.random.default_rng(
            [self.seed, 13]).permutation(len(src))[:limit]))
      self._sources[split] = src
    return self._sources[split]

  def images(self, split: str, r: int):
    """The split's normalised images ``(N, R, R, 3)`` and labels, whole (small splits, tests)."""
    return data_lib.eval_images(self.source(split), r, self.dataset.mean, self.dataset.std)

  def labels(self, split: str) -> np.ndarray:
    if split not in self._labels:  # (kept from the first scoring pass otherwise)
      src, b = self.source(split), 4096
      self._labels[split] = np.concatenate([src.get(np.arange(i, min(i + b, len(src))))[1]
                                            for i in range(0, len(src), b)])
    return self._labels[split]

  def _groups(self, pop):
    res_idx = np.asarray(pop.resolution).reshape(-1)
    for r_i in np.unique(res_idx):
      members = np.flatnonzero(res_idx == r_i)
      yield self.space.resolutions[r_i], members, jax.tree.map(lambda x: np.asarray(x)[members], pop)

  def _kw(self):
    return dict(block_size=self.score.block_size, chunk_size=self.score.chunk_size)

  def stats(self, pop):
    """Per-member re-calibrated ``batch_stats`` (leading axis), numpy."""
    out = None
    for r, members, group in self._groups(pop):
      st = recalibrate_population(self.net, self.variables, self.calib(r), group, **self._kw())
      if out is None:
        out = jax.tree.map(lambda s: np.zeros((len(pop.resolution),) + s.shape[1:], s.dtype), st)
      out = jax.tree.map(lambda o, s, m=members: _set(o, m, s), out, st)
    return out

  def correct(self, pop, split: str) -> np.ndarray:
    """Bool ``(P, N)``: per member, which samples of ``split`` it classifies correctly."""
    t = time.time()
    out = None
    src = self.source(split)
    for r, members, group in self._groups(pop):
      st = recalibrate_population(self.net, self.variables, self.calib(r), group, **self._kw())
      labels = []

      def batches(r=r):  # the labels are kept as the batches pass
        for b in data_lib.eval_batches(src, r, self.dataset.mean, self.dataset.std,
                                       self.score.batch_size):
          labels.append(b[3])
          yield b

      pred = streamed_predictions(self.net, self.variables["params"], st, group, batches(),
                                  len(src), **self._kw())
      self._labels[split] = y = np.concatenate(labels)
      if out is None:
        out = np.zeros((len(pop.resolution), len(src)), bool)
      out[members] = pred == y[None]
    self.seconds += time.time() - t
    return out


def _set(o, idx, v):
  o[idx] = v
  return o
