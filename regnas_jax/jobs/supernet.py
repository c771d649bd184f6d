"""What the jobs that search a trained supernet share: train (or resume, or import) it, compile
the scoring programs meanwhile, and score the largest and smallest subnets."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import data as data_lib
from regnas_jax import evaluate, parallel, persist, spaces, stopping, training
from regnas_jax.errors import ConfigError, RegnasError, one_line
from regnas_jax.jobs.base import JobContext
from regnas_jax.search import evolution


def initial_weights(ctx: JobContext):
  """``(key -> variables, identity)`` of imported weights when ``config.supernet.init_from``
  names them (an OFA checkpoint or a converted directory), else ``(None, None)``: the supernet's
  own initialisation.  The identity (file name, size, hash) joins the checkpoint identity, so a
  work dir started from other weights is refused on resume."""
  path = ctx.cfg.supernet.get("init_from", "")
  if not path:
    return None, None
  from regnas_jax.io import ofa as ofa_io   # imported only when asked for

  try:
    ident = ofa_io.source_identity(path)
  except RegnasError as e:
    raise ConfigError(f"config.supernet.init_from: {one_line(e)}") from None
  return (lambda key: ofa_io.load_supernet_variables(path, ctx.net)), ident


def trained(ctx: JobContext, warm: Callable[[], Any] | None = None) -> training.TrainResult:
  """The supernet of ``ctx`` trained as ``config.train`` says (resumed from the work dir), or
  with ``train.steps = 0`` the imported weights of ``config.supernet.init_from`` as they are.

  ``warm`` runs in a background thread from the start, while the supernet's initialisation and
  then the training step compile (see :func:`warm_up`; on 2 cores the initialisation's compile
  alone would leave one idle); it is joined before this returns.
  """
  init, init_ident = initial_weights(ctx)
  if int(ctx.cfg.train.steps) == 0:
    if init is None:
      raise ConfigError("config.train.steps: 0 (no training) needs weights to start from in "
                        "config.supernet.init_from")
    v = jax.tree.map(np.asarray, init(None))
    ctx.log(f"supernet: imported weights of {ctx.cfg.supernet.init_from}, no training")
    return training.TrainResult(v, 0, 0.0, None, [], persist.fingerprint(
        {"init_from": init_ident, "arrays": persist.array_fingerprint(v)}))
  threads: list[threading.Thread] = []
  if warm is not None and ctx.stop_after == "search":
    threads.append(threading.Thread(target=warm, name="regnas-warm-up", daemon=True))
    threads[0].start()
  result = training.train(ctx.cfg, ctx.net, ctx.space, ctx.dataset, ctx.workdir, init_fn=init,
                          init_identity=init_ident, log=ctx.log)
  for t in threads:
    t.join()
  return result


def warm_up(ctx: JobContext, proposals: bool = True) -> Callable[[], None]:
  """A function compiling the scoring (and evolution's proposal) programs on zeros of exactly
  the shapes used later, which fills jit's cache: run while the training step compiles, the
  compiles overlap instead of following each other.  Failures are ignored (the programs then
  compile on first use)."""
  cfg, net, space, dataset = ctx.cfg, ctx.net, ctx.space, ctx.dataset

  def work():
    t0 = time.time()
    try:
      r = max(space.resolutions)
      abstract = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, r, r, 3)),
                                space.max_arch())
      v = evaluate.uncommitted(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract))
      kw = dict(block_size=cfg.score.block_size, chunk_size=cfg.score.chunk_size)
      n = min(cfg.train.calib_images, len(dataset.train))
      b = min(cfg.train.calib_batch_size, n)
      limit = int(cfg.score.max_images or 0)
      sizes = {min(len(s), limit) if limit else len(s) for s in (dataset.val, dataset.test)}
      for r_i, r in enumerate(space.resolutions):
        pop = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], cfg.score.block_size, 0),
                           space.min_arch())._replace(
                               resolution=np.full(cfg.score.block_size, r_i, np.int32))
        st = evaluate.recalibrate_population(
            net, v, jax.device_put(np.zeros((n // b, b, r, r, 3), np.float32)), pop, **kw)
        for size in sizes:
          s_img = dataset.image_size  # the streamed evaluation batches' preprocessing
          data_lib.preprocess(np.zeros((min(cfg.score.batch_size, size), s_img, s_img, 3),
                                       np.uint8), dataset.mean, dataset.std, resolution=r)
          evaluate.population_predictions(net, v["params"], st, pop,
                                          jax.device_put(np.zeros((size, r, r, 3), np.float32)),
                                          batch_size=cfg.score.batch_size, **kw)
      if proposals:
        _warm_proposals(cfg, space)
      ctx.log(f"scoring programs compiled in the background in {time.time() - t0:.1f} s "
              f"({len(space.resolutions)} resolution(s))")
    except Exception as e:  # noqa: BLE001 - an optimisation only
      if os.environ.get("REGNAS_DEBUG"):
        raise
      del e
  return work


def _warm_proposals(cfg, space) -> None:
  se = cfg.search
  evo = evolution.EvolutionConfig(**{k: se[k] for k in evolution.EvolutionConfig._fields})
  sample, mutants, crossovers = evolution._proposers(space, evo.mutate_prob,
                                                     evo.resolution_mutate_prob)
  key = jax.random.key(0, impl=evolution.PRNG_IMPL)
  par = sample(key, evo.num_parents)
  for fn in (mutants, crossovers):
    jax.block_until_ready(fn(key, evo.proposal_batch, jax.tree.map(np.asarray, par)))
  jax.block_until_ready(sample(key, evo.proposal_batch))


def score_ends(ctx: JobContext, scorer: evaluate.Scorer, split: str = "test",
               cache=None) -> np.ndarray:
  """Per-sample correctness of the largest and smallest subnets on ``split`` ``(2, N)``.

  Logs both Top-1 and their gap: flips between family members need the two well apart, so
  this line says whether a supernet is trained enough (read it on ``'val'``, the holdout).
  With ``cache`` (a persistent ``EvalCache`` of the same ``split``) the two are looked up
  there and scored only if missing, so a rerun answers from disk."""
  t0 = time.time()
  ends = spaces.stack([ctx.space.max_arch(), ctx.space.min_arch()])
  before = cache.scored_now if cache is not None else None
  ok = cache(ends) if cache is not None else scorer.correct(ends, split)
  how = ("from the evaluation cache" if cache is not None and cache.scored_now == before
         else "compile included")
  hi, lo = 100 * ok[0].mean(), 100 * ok[1].mean()
  name = "holdout" if split == "val" else split
  ctx.log(f"{name} top-1: largest subnet {hi:.2f}%, smallest {lo:.2f}% (gap {hi - lo:.2f} "
          f"points; {time.time() - t0:.1f} s, {how})")
  return ok


def export_subnets(ctx: JobContext, variables, stats, archs, rows, metric_keys) -> None:
  """Extract every ``archs[i]`` (with its re-calibrated statistics ``stats[i]``) and save it
  under ``subnets/<rows[i]['name']>/`` (loadable with :func:`regnas_jax.export.load_subnet`)."""
  from regnas_jax import export

  with stopping.critical("exporting the subnets"):
    _export(ctx, variables, stats, archs, rows, metric_keys, export)


def _export(ctx, variables, stats, archs, rows, metric_keys, export):
  # Sliced on the host: on the device every parameter shape would compile its own slicing
  # programs (~100 small compiles on a CPU).
  variables, stats = (jax.tree.map(parallel.to_host, t) for t in (variables, stats))
  for i, (a, r) in enumerate(zip(archs, rows)):
    st = jax.tree.map(lambda s, i=i: s[i], stats)
    _, v = ctx.net.extract({"params": variables["params"], "batch_stats": st}, a)
    export.save_subnet(ctx.path("subnets", r["name"]), ctx.space, a, ctx.cfg.supernet.to_dict(),
                       v, metrics={k: r[k] for k in metric_keys if k in r},
                       data=export.data_info(ctx.dataset))
