"""Scoring populations of subnets with one compiled call.

A population is an arch pytree with a leading axis.  Its members share the supernet's
parameters; ``jax.vmap`` folds them into one program, and ``chunk_size`` bounds memory by
running ``chunk_size`` members at a time with ``lax.map``.  Members must share the input
resolution (the image shape is static): group a population by resolution first.

:class:`Scorer` is what the jobs use: per-member BN re-calibration on a fixed calibration set,
then predictions on a split, for populations of any size and mixed resolutions.

On a mesh of several devices (``mesh=``, :mod:`regnas_jax.parallel`) each block of members is
split over the ``data`` axis along its members when it has at least as many members as there are
devices, otherwise every image batch is split along its images with the block replicated
(:class:`Layout`).  The compiled programs are the one-device ones: the compiler inserts the
cross-device reductions (BN re-calibration's batch moments over a split calibration batch), so
the statistics and predictions are those of one device, up to the order of float additions.
Without a mesh (or with one device) nothing changes.

Every population here shares one resolution, that of the images it meets: the jitted
functions cannot read a traced population's ``resolution`` field, so the host functions
(:func:`recalibrate_population`, :func:`population_predictions`, :func:`streamed_predictions`
and the :class:`Scorer`, which groups by resolution) check it first
(``space.check_resolution``: a ``ValueError`` naming both sizes).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from regnas_jax import data as data_lib
from regnas_jax import parallel
from regnas_jax.spaces.base import pop_size


def _over_members(fn, xs, chunk_size, member_mesh=None):
  """``fn`` mapped over the leading (member) axis of ``xs``: ``vmap`` (``chunk_size=None``) or
  ``lax.map`` in chunks.  With ``member_mesh`` (``D`` devices) the ``P`` members are viewed as
  ``(D, P/D)``, that axis pinned to the devices and the ``D`` parts vmapped: every device maps
  (and chunks) its own members -- the results stay split too -- instead of the compiler choosing
  a layout (it may replicate the work) or the chunk loop running over the split axis."""
  if member_mesh is not None:
    d = parallel.size(member_mesh)
    split = jax.sharding.NamedSharding(member_mesh, P(parallel.AXIS))
    pin = lambda t: jax.lax.with_sharding_constraint(t, jax.tree.map(lambda _: split, t))
    parts = pin(jax.tree.map(lambda x: x.reshape((d, -1) + x.shape[1:]), xs))
    out = pin(jax.vmap(lambda part: _over_members(fn, part, chunk_size))(parts))
    return jax.tree.map(lambda y: y.reshape((-1,) + y.shape[2:]), out)
  if chunk_size is None:
    return jax.vmap(fn)(xs)
  if chunk_size == 1:   # one member per step, unbatched: a supernet's lax.switch runs one branch
    return jax.lax.map(fn, xs)
  return jax.lax.map(fn, xs, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("model", "train", "chunk_size", "member_stats",
                                             "member_mesh"))
def population_logits(model, variables, images, population, *, train: bool = False,
                      chunk_size: int | None = None, member_stats: bool = False,
                      member_mesh=None):
  """Logits ``(P, N, classes)`` of every member of ``population`` on ``images`` ``(N, R, R, 3)``
  (members of resolution ``R``; traced here, so not checked: see the module docstring).

  Args:
    model: a supernet module (static: one compile per model, input shape and population size).
    variables: supernet variables; with ``member_stats=True`` their ``batch_stats`` carry one
      set of statistics per member on a leading axis (e.g. after per-subnet re-calibration).
    train: use batch statistics in BN (the running statistics are not updated).
    chunk_size: members per step of ``lax.map`` (``None``: all at once).
    member_mesh: the mesh whose ``data`` axis ``population`` (and member statistics) are split
      over along ``P`` (a multiple of its device count), see :class:`Layout`; ``None``: not
      split (the one-device program; images split over a mesh need nothing here).
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
  return _over_members(fn, xs, chunk_size, member_mesh)


def population_correct(model, variables, images, labels, population, **kw) -> np.ndarray:
  """Bool ``(P, N)``: which samples each member classifies correctly."""
  logits = population_logits(model, variables, images, population, **kw)
  return np.asarray(jnp.argmax(logits, -1) == jnp.asarray(labels)[None])


@functools.partial(jax.jit, static_argnames=("model", "chunk_size", "member_mesh"))
def recalibrate_bn(model, variables, calib_images, population, *, chunk_size: int | None = None,
                   member_mesh=None):
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
    member_mesh: ``population`` split along ``P`` over it (see :func:`population_logits`).
      With ``calib_images`` split along ``B`` instead, each batch's moments are still over all
      ``B`` images: the compiler reduces them across the devices.
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

  return _over_members(one, population, chunk_size, member_mesh)


def calibration_batches(images: np.ndarray, num_images: int, batch_size: int, seed: int):
  """A fixed random subset of ``images`` as ``(K, B, ...)`` batches (``K*B <= num_images``)."""
  n = min(num_images, len(images))
  b = min(batch_size, n)
  k = n // b
  idx = np.random.default_rng(seed).permutation(len(images))[:k * b]
  return np.asarray(images)[idx].reshape((k, b) + images.shape[1:])


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a block of ``block`` members and the images it scores live (:func:`layout`).

  ``over``:
    ``'one'``: no mesh, or one device: arrays on the default device, as without a mesh.
    ``'members'``: the block's architectures and per-member statistics split over ``data``
      along members (``block`` is a multiple of the device count); images and the supernet's
      variables replicated.  Each device runs ``block / devices`` members on every image.
    ``'images'``: the block replicated; every image batch split over ``data`` along its images:
      a calibration batch ``(K, B, R, R, 3)`` along ``B`` when the device count divides ``B``
      (else it is replicated), an evaluation batch ``(N, R, R, 3)`` along ``N`` after padding
      ``N`` to a multiple of the device count (the padding's predictions are dropped).
  """
  mesh: Any
  block: int
  over: str

  @property
  def devices(self) -> int:
    return 1 if self.mesh is None else parallel.size(self.mesh)

  @property
  def kw(self) -> dict:
    """The compiled calls' ``member_mesh`` keyword where members are split (none otherwise:
    the one-device program, whose inputs may be split along images)."""
    return {"member_mesh": self.mesh} if self.over == "members" else {}

  def _put(self, tree, spec):
    return parallel.put(tree, jax.sharding.NamedSharding(self.mesh, spec))

  def shared(self, tree):
    """The supernet's variables: replicated on the mesh."""
    return tree if self.over == "one" else self._put(tree, P())

  def members(self, tree):
    """A block's per-member arrays (leading axis ``block``)."""
    if self.over == "one":
      return tree
    return self._put(tree, P(parallel.AXIS) if self.over == "members" else P())

  def calib(self, x):
    """Calibration batches ``(K, B, R, R, 3)``."""
    if self.over == "one":
      return x
    split = self.over == "images" and x.shape[1] % self.devices == 0
    return self._put(x, P(None, parallel.AXIS) if split else P())

  def images(self, x):
    """An evaluation batch ``(N, R, R, 3)`` (padded with zero images to a multiple of the device
    count when split)."""
    if self.over == "one":
      return x
    if self.over == "members":
      return self._put(x, P())
    pad = -len(x) % self.devices
    if pad:
      x = jnp.concatenate([jnp.asarray(x), jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    return self._put(x, P(parallel.AXIS))

  def host(self, x) -> np.ndarray:
    return np.asarray(x) if self.over == "one" else parallel.to_host(x)


def layout(mesh, members: int, block_size: int | None) -> Layout:
  """The :class:`Layout` of a population of ``members`` scored in blocks of ``block_size``
  (``None``: one block).  Blocks of at least as many members as the mesh has devices are split
  along members, ``block_size`` rounded up to a multiple of the device count (the padding
  repeats a member); smaller blocks keep their size and split the images."""
  b = members if not block_size else int(block_size)
  n = 1 if mesh is None else parallel.size(mesh)
  if n == 1:
    return Layout(None, b, "one")
  if b >= n:
    return Layout(mesh, -(-b // n) * n, "members")
  return Layout(mesh, b, "images")


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
                           block_size: int | None = None, chunk_size: int | None = None,
                           mesh=None):
  """:func:`recalibrate_bn` over a population of any size in fixed blocks of members.

  ``calib_images`` ``(K, B, R, R, 3)``.  On a ``mesh`` of several devices the blocks or the
  calibration batches are split over it (:func:`layout`; ``block_size`` may be rounded up); the
  statistics are those of one device.
  Returns per-member ``batch_stats`` with a leading ``P`` axis (numpy arrays).
  """
  model.space.check_resolution(population, calib_images.shape[2], "recalibrate_population")
  lay = layout(mesh, pop_size(population), block_size)
  variables, calib_images = lay.shared(variables), lay.calib(calib_images)
  parts = []
  for _, count, _, block in _padded_blocks(population, lay.block):
    st = recalibrate_bn(model, variables, calib_images, lay.members(block),
                        chunk_size=chunk_size, **lay.kw)
    parts.append(jax.tree.map(lambda s, c=count: lay.host(s)[:c], st))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


@functools.partial(jax.jit, static_argnames=("model", "chunk_size", "member_mesh"))
def _member_predictions(model, variables, images, population, *, chunk_size=None,
                        member_mesh=None):
  logits = population_logits(model, variables, images, population, chunk_size=chunk_size,
                             member_stats=True, member_mesh=member_mesh)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def _block_stats(lay: Layout, member_stats, idx):
  """A block's per-member statistics on the device(s), once per block (not once per batch)."""
  st = jax.tree.map(lambda s: np.asarray(s)[idx], member_stats)
  return jax.device_put(st) if lay.over == "one" else lay.members(st)


def population_predictions(model, params, member_stats, population, images, *,
                           block_size: int | None = None, chunk_size: int | None = None,
                           batch_size: int = 500, mesh=None) -> np.ndarray:
  """Int32 ``(P, N)`` predicted classes of every member (eval-mode BN with its own statistics).

  ``member_stats`` carry a leading ``P`` axis (:func:`recalibrate_population`).  Members run in
  blocks of ``block_size`` and images in batches of ``batch_size`` (the last of each padded), so
  one compiled program serves any population and split size.  On a ``mesh`` of several devices
  the blocks or the image batches are split over it (:func:`layout`).
  """
  model.space.check_resolution(population, images.shape[1], "population_predictions")
  lay = layout(mesh, pop_size(population), block_size)
  params = lay.shared(params)
  n = len(images)
  b = min(batch_size, n)
  batches = []  # on the device once (a jax array stays where it is), the last one padded
  for i in range(0, n, b):
    x = jnp.asarray(images[i:i + b])
    if len(x) < b:
      x = jnp.concatenate([x, jnp.zeros((b - len(x),) + x.shape[1:], x.dtype)])
    batches.append((i, min(b, n - i), lay.images(x)))
  out = np.zeros((pop_size(population), n), np.int32)
  for start, count, idx, block in _padded_blocks(population, lay.block):
    v = {"params": params, "batch_stats": _block_stats(lay, member_stats, idx)}
    block = lay.members(block)
    for i, k, x in batches:
      pred = _member_predictions(model, v, x, block, chunk_size=chunk_size, **lay.kw)
      out[start:start + count, i:i + k] = lay.host(pred)[:count, :k]
  return out


def streamed_predictions(model, params, member_stats, population, batches, n: int, *,
                         block_size: int | None = None, chunk_size: int | None = None,
                         mesh=None) -> np.ndarray:
  """Int32 ``(P, N)`` as :func:`population_predictions`, with the images streamed: ``batches``
  yields ``(start, count, x, _)`` (``data.eval_batches``: fixed-size normalised batches, the last
  one padded), each scored by every member block before the next is read.  Memory is bounded by
  one image batch; every (block, batch) call is the one ``population_predictions`` makes.
  """
  lay = layout(mesh, pop_size(population), block_size)
  blocks = [(start, count, lay.members(block), _block_stats(lay, member_stats, idx))
            for start, count, idx, block in _padded_blocks(population, lay.block)]
  params = lay.shared(params)
  out = np.zeros((pop_size(population), n), np.int32)
  for i, k, x, _ in batches:
    model.space.check_resolution(population, x.shape[1], "streamed_predictions")
    x = lay.images(x)
    for start, count, block, st in blocks:
      pred = _member_predictions(model, {"params": params, "batch_stats": st}, x, block,
                                 chunk_size=chunk_size, **lay.kw)
      out[start:start + count, i:i + k] = lay.host(pred)[:count, :k]
  return out


def score_population(model, variables, population, calib_images, images, labels, *,
                     chunk_size: int | None = None, batch_size: int = 500,
                     block_size: int | None = None, mesh=None) -> np.ndarray:
  """Bool ``(P, N)`` correctness after per-member BN re-calibration on ``calib_images``.

  Images are scored ``batch_size`` at a time and members ``block_size`` at a time (the last
  batch/block padded to the same shape, so one compiled program serves all of them), which
  bounds memory for large evaluation splits and compiles once for any population size.  On a
  ``mesh`` of several devices, blocks or images are split over it (:func:`layout`).
  """
  stats = recalibrate_population(model, variables, calib_images, population,
                                 block_size=block_size, chunk_size=chunk_size, mesh=mesh)
  pred = population_predictions(model, variables["params"], stats, population, images,
                                block_size=block_size, chunk_size=chunk_size,
                                batch_size=batch_size, mesh=mesh)
  return pred == np.asarray(labels)[None]


# ----------------------------------------------------------------------------------------------
# The jobs' scorer
# ----------------------------------------------------------------------------------------------
def uncommitted(tree):
  """Arrays on the default device, not committed to it: jit's cache key includes whether an
  argument is committed, so warm-up compiles and later calls must pass arrays the same way."""
  return jax.device_put(jax.tree.map(np.asarray, tree))


def switch_mode(net, chunk_size, enabled: bool = True, mesh=None):
  """``net.clone(switch=True)`` where it pays, else ``net``.

  A supernet with ``switches`` (``nn.supernet.Supernet``) can branch on a member's choices with
  ``lax.switch`` instead of masking the largest shapes -- each block then runs only its chosen
  branch at exact shapes, the same function.  That holds only where the choice is not batched:
  members scored one at a time (``chunk_size`` 1, mapped unbatched by ``lax.map``) on one device.
  Under ``vmap`` a switch becomes a select of every branch, so there the masks stay."""
  if (enabled and net.switches and chunk_size == 1
      and (mesh is None or parallel.size(mesh) <= 1)):
    return net.clone(switch=True)
  return net


class Scorer:
  """Scores subnets of a trained supernet on a split: each member's BN statistics re-calibrated
  on a fixed set of training images, then eval-mode predictions.

  Args:
    net: the supernet; variables: its trained ``{'params', 'batch_stats'}``;
    dataset: a :class:`~regnas_jax.data.Dataset`;
    score: ``config.score`` (``block_size``, ``chunk_size``, ``batch_size``, ``max_images``);
    calib_images, calib_batch_size: the calibration set (OFA: 2,000 training images);
    seed: picks the calibration images and the ``max_images`` subsets.
    mesh: a :class:`~jax.sharding.Mesh` to score on (``None``: the default device).  With
      several devices each member block, or each calibration and evaluation batch, is split over
      it (:func:`layout`; ``score.block_size`` is rounded up to a multiple of the device count
      when it is at least that count); the results are the one-device results.

  Calibration batches are prepared once per resolution; evaluation images stay uint8 on the host
  and are streamed through ``score.batch_size``-image batches (normalised on the device, one
  batch at a time), so memory does not grow with the split.  Populations are grouped by
  resolution and run in fixed-size member blocks, so every resolution compiles once.  With
  ``score.switch`` and members scored one at a time (``chunk_size`` 1, one device), a supernet
  with switches runs in switch mode (:func:`switch_mode`).  ``seconds`` sums the time spent in
  :meth:`correct`.
  """

  def __init__(self, net, space, variables, dataset, score, *, calib_images: int,
               calib_batch_size: int, seed: int, mesh=None):
    self.net, self.space, self.dataset, self.score = net, space, dataset, score
    self.mesh = mesh if mesh is not None and parallel.size(mesh) > 1 else None
    if self.mesh is None:
      self.variables = uncommitted(variables)
    else:   # replicated once: every block's call finds them in place
      self.variables = parallel.put(jax.tree.map(np.asarray, variables),
                                    parallel.replicated(self.mesh))
    self.calib_images, self.calib_batch_size, self.seed = calib_images, calib_batch_size, seed
    self._calib, self._placed, self._sources, self._labels = {}, {}, {}, {}
    self.seconds = 0.0
    # The model members run through: the switch-mode clone or ``net``.
    self.member_net = switch_mode(net, score.chunk_size, score.get("switch", False), self.mesh)

  @classmethod
  def from_config(cls, cfg, net, space, variables, dataset, mesh=None) -> "Scorer":
    """The jobs' scorer; on ``mesh``, by default the one ``config.mesh`` describes (as
    training's)."""
    if mesh is None:
      mesh = parallel.make_mesh(parallel.mesh_config(cfg))
    return cls(net, space, variables, dataset, cfg.score, calib_images=cfg.train.calib_images,
               calib_batch_size=cfg.train.calib_batch_size, seed=cfg.seed, mesh=mesh)

  def calib(self, resolution: int) -> np.ndarray:
    """Calibration batches ``(K, B, R, R, 3)`` at ``resolution``: on the default device, or on
    the host with a mesh (placed per layout by :meth:`_calib_on`)."""
    r = resolution
    if r not in self._calib:
      ds = self.dataset
      src = data_lib.SubsetSource(ds.train, np.random.default_rng([self.seed, 11]).permutation(
          len(ds.train))[:self.calib_images])
      x, _ = data_lib.eval_images(src, r, ds.mean, ds.std)
      x = calibration_batches(x, len(x), self.calib_batch_size, self.seed)
      self._calib[r] = x if self.mesh is not None else jax.device_put(x)  # on the device once
    return self._calib[r]

  def _calib_on(self, r: int, members: int):
    """:meth:`calib` placed on the mesh as a group of ``members`` is scored (once per layout)."""
    if self.mesh is None:
      return self.calib(r)
    lay = layout(self.mesh, members, self.score.block_size)
    if (r, lay.over) not in self._placed:
      self._placed[r, lay.over] = lay.calib(self.calib(r))
    return self._placed[r, lay.over]

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

  def images(self, split: str, resolution: int):
    """The split's normalised images ``(N, R, R, 3)`` and labels, whole (small splits, tests)."""
    return data_lib.eval_images(self.source(split), resolution, self.dataset.mean,
                                self.dataset.std)

  def labels(self, split: str) -> np.ndarray:
    if split not in self._labels:  # (kept from the first scoring pass otherwise)
      src, b = self.source(split), 4096
      self._labels[split] = np.concatenate([src.get(np.arange(i, min(i + b, len(src))))[1]
                                            for i in range(0, len(src), b)])
    return self._labels[split]

  def _groups(self, pop):
    """``(resolution, member indices, members)`` per resolution of ``pop``."""
    res_idx = np.asarray(pop.resolution).reshape(-1)
    for r_i in np.unique(res_idx):
      members = np.flatnonzero(res_idx == r_i)
      yield (self.space.resolutions[r_i], members,
             jax.tree.map(lambda x: np.asarray(x)[members], pop))

  def _kw(self):
    kw = dict(block_size=self.score.block_size, chunk_size=self.score.chunk_size)
    return kw if self.mesh is None else dict(kw, mesh=self.mesh)

  def _recalibrate(self, r, group):
    return recalibrate_population(self.member_net, self.variables,
                                  self._calib_on(r, pop_size(group)), group, **self._kw())

  def stats(self, pop):
    """Per-member re-calibrated ``batch_stats`` (leading axis), numpy."""
    out = None
    for r, members, group in self._groups(pop):
      st = self._recalibrate(r, group)
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
      stats = self._recalibrate(r, group)
      labels = []

      def batches(r=r):  # the labels are kept as the batches pass
        for b in data_lib.eval_batches(src, r, self.dataset.mean, self.dataset.std,
                                       self.score.batch_size):
          labels.append(b[3])
          yield b

      pred = streamed_predictions(self.member_net, self.variables["params"], stats, group,
                                  batches(), len(src), **self._kw())
      self._labels[split] = y = np.concatenate(labels)
      if out is None:
        out = np.zeros((len(pop.resolution), len(src)), bool)
      out[members] = pred == y[None]
    self.seconds += time.time() - t
    return out


def _set(o, idx, v):
  o[idx] = v
  return o
