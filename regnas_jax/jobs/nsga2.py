"""The multi-objective job (``search.algorithm='nsga2'``): SCARLET-NAS's constrained, weighted
NSGA-II (:mod:`regnas_jax.search.nsga2`) on a trained supernet, K models chosen along the final
Pareto front, exported (ELS folded) and reported.

Objectives are columns computed per candidate, all minimised internally:

* ``top1``   -- validation Top-1 of the subnet on the supernet (maximised),
* ``macs``   -- analytic MACs per image of the exported subnet,
* ``params`` -- parameters of the exported subnet,
* ``nfr``    -- negative flip rate on the validation split against a reference architecture
  (``config.search.reference``, a JSON arch file): Top-1 vs. NFR vs. MACs is the multi-objective
  REG-NAS.

Constraints as in SCARLET's Algorithm 1: ``max_macs`` is checked before a candidate is scored,
``min_top1`` after.  The state (population, objectives, per-generation fronts) and the
evaluation cache are written to ``search/`` after every generation; a restarted run resumes and
ends with the same report.  ``python -m regnas_jax.report RUN_DIR ...`` compares finished runs.
"""

from __future__ import annotations

import time

import numpy as np

from regnas_jax import evaluate, metrics, persist, report, spaces
from regnas_jax import identity as identity_lib
from regnas_jax.errors import ConfigError, SearchError
from regnas_jax.jobs import supernet
from regnas_jax.jobs.base import (Job, JobContext, SearchEvents, register_job, run_record,
                                  training_plot, write_results)
from regnas_jax.jobs.family import load_reference
from regnas_jax.search import nsga2
from regnas_jax.search.family import EvalCache

OBJECTIVES = ("top1", "macs", "params", "nfr")
SIGNS = {"top1": -1.0, "macs": 1.0, "params": 1.0, "nfr": 1.0}
MACS_NOTE = "MACs per image of the exported subnet (multiply-accumulates)"


def nsga2_config(search_config) -> nsga2.NSGA2Config:
  kw = {k: search_config[k] for k in nsga2.NSGA2Config._fields if k in search_config}
  kw["weights"] = tuple(search_config.weights)
  return nsga2.NSGA2Config(**kw)


def max_macs(search_config, space) -> float:
  """The cheap constraint in MACs per image (``inf`` when ``max_macs`` is 0)."""
  if not search_config.max_macs:
    return float("inf")
  scale = 1e6 if search_config.budget_unit == "mmacs" else float(space.macs(space.max_arch()))
  return float(search_config.max_macs) * scale


def objective_fn(space, objectives, cache: EvalCache, ref_correct=None):
  """``f(pop) -> (raw (P, M), minimised (P, M), correct (P, N))`` for the named objectives."""
  def f(pop):
    correct = cache(pop)
    cols = []
    for o in objectives:
      if o == "top1":
        cols.append(metrics.top1(correct))
      elif o == "macs":
        cols.append(np.asarray(space.macs(pop), np.float64))
      elif o == "params":
        cols.append(np.asarray(space.params(pop), np.float64))
      else:
        cols.append(metrics.nfr(correct, ref_correct[None]))
    raw = np.stack(cols, 1).astype(np.float64)
    return raw, raw * np.array([SIGNS[o] for o in objectives]), correct
  return f


def front_record(space, state: nsga2.NSGA2State, objectives, raw_fn) -> list[dict]:
  """The first front of the population: per member its arch (readable) and raw objectives."""
  ranks = nsga2.non_dominated_sort(state.objectives)
  out = []
  for i in np.flatnonzero(ranks == 0):
    a = spaces.member(state.population, int(i))
    raw = raw_fn(state.objectives[i])
    out.append({"arch": space.arch_to_dict(a), **{o: float(v) for o, v in zip(objectives, raw)}})
  return sorted(out, key=lambda r: r.get("macs", 0.0))


def chosen(state: nsga2.NSGA2State, objectives, k: int) -> np.ndarray:
  """Indices of the K equispaced models along the final front (spread by MACs when it is an
  objective, else by the second objective)."""
  axis = objectives.index("macs") if "macs" in objectives else 1
  return nsga2.equispaced(state.objectives, k, axis)


def generation_record(space, generation: int, front: list[dict], scored: int,
                      infeasible: int) -> dict:
  """One generation's progress: its number, the first front's size and (with Top-1 and MACs
  among the objectives) its :func:`~regnas_jax.report.front_area` over the space's MACs, the
  best validation Top-1 on it, the subnets scored so far and the candidates below
  ``min_top1``."""
  rec = {"generation": generation, "front_size": len(front)}
  if front and "top1" in front[0]:
    if "macs" in front[0]:
      rec["front_area"] = report.front_area(front, float(space.macs(space.max_arch())))
    rec["best_top1"] = max(r["top1"] for r in front)
  rec.update(scored=scored, infeasible=infeasible)
  return rec


def search(space, cache: EvalCache, search_config, *, seed: int, ref_correct=None, state_path: str,
           identity: dict, log=print, events=None, progress: list | None = None):
  """Run (or resume) the NSGA-II search; returns ``(state, fronts)``.

  ``fronts[g]`` is the first front after generation ``g`` (see :func:`front_record`).
  ``progress`` (a list) receives one :func:`generation_record` per generation, those of a
  resumed search's earlier generations first (they are saved with the state); each new one also
  goes to ``events`` (a :class:`~regnas_jax.jobs.base.SearchEvents`) as ``search/<key>``.
  """
  progress = [] if progress is None else progress
  cfg = nsga2_config(search_config)
  objectives = tuple(search_config.objectives)
  signs = np.array([SIGNS[o] for o in objectives])
  fn = objective_fn(space, objectives, cache, ref_correct)
  limit = max_macs(search_config, space)
  cheap_ok = lambda pop: np.asarray(space.macs(pop), np.float64) <= limit
  ident = persist.jsonable({"identity": identity, "search": dict(cfg._asdict()),
                            "objectives": list(objectives), "seed": int(seed),
                            "max_macs": limit if np.isfinite(limit) else None,
                            "min_top1": float(search_config.min_top1)})
  loaded = persist.read_state(state_path, ident, lambda saved: (
      nsga2.state_from_dict(space, saved["state"]), list(saved["fronts"]),
      list(saved.get("progress") or [])))
  state, fronts, done = loaded if loaded is not None else (nsga2.init(seed), [], [])
  progress[:] = done
  if loaded is not None:
    log(f"resumed the NSGA-II search from {state_path} at generation {state.generation}")
  top_col = objectives.index("top1") if "top1" in objectives else None
  while not nsga2.done(state, cfg):
    t, before = time.time(), cache.scored
    cand = nsga2.ask(space, cfg, state, cheap_ok)
    if not cheap_ok(cand).all():  # an algorithm bug, never a silent drop
      raise SearchError("NSGA-II: a candidate violates the MACs constraint")
    raw, minimised, correct = fn(cand)
    feasible = metrics.top1(correct) >= float(search_config.min_top1)
    state = nsga2.tell(state, cand, minimised, cfg, feasible)
    fronts.append(front_record(space, state, objectives, lambda m: m * signs))
    progress.append(generation_record(space, state.generation - 1, fronts[-1], cache.scored,
                                      int((~feasible).sum())))
    cache.save()
    persist.save_state(state_path, ident, state=nsga2.state_to_dict(state), fronts=fronts,
                       progress=progress)
    if events is not None:
      events.write(progress[-1]["generation"], "search", progress[-1])
    best = (f", best val top-1 {100 * -state.objectives[:, top_col].min():.2f}%"
            if top_col is not None else "")
    log(f"NSGA-II generation {state.generation - 1}/{cfg.generations}: first front "
        f"{len(fronts[-1])} models{best}, {int((~feasible).sum())} below min_top1, "
        f"{cache.scored - before} new subnets scored in {time.time() - t:.1f} s")
  return state, fronts


class NSGA2Job(Job):
  algorithms = ("nsga2",)

  def check(self, cfg, space) -> None:
    se = cfg.search
    objs = tuple(se.objectives)
    if len(objs) < 2 or len(set(objs)) != len(objs):
      raise ConfigError(f"config.search.objectives: need at least two distinct objectives, "
                        f"got {objs}")
    for o in objs:
      if o not in OBJECTIVES:
        hint = " (no latency model for this job yet)" if o == "latency" else ""
        raise ConfigError(f"config.search.objectives: {o!r} is not one of {OBJECTIVES}{hint}")
    if "nfr" in objs and not se.reference:
      raise ConfigError("config.search.reference: the 'nfr' objective needs a reference "
                        "architecture (a JSON file, e.g. subnets/K1/subnet.json of a run)")
    if not (isinstance(se.num_models, int) and se.num_models >= 1):
      raise ConfigError(f"config.search.num_models: must be a positive integer, got "
                        f"{se.num_models!r}")
    for key in ("max_macs", "min_top1"):
      v = se[key]
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
        raise ConfigError(f"config.search.{key}: must be a number >= 0, got {v!r}")
    if se.min_top1 > 1:
      raise ConfigError(f"config.search.min_top1: a fraction in [0, 1], got {se.min_top1}")
    if se.budget_unit not in ("mmacs", "fraction"):
      raise ConfigError(f"config.search.budget_unit: {se.budget_unit!r} is not one of "
                        f"('mmacs', 'fraction')")
    if se.budget_unit == "fraction" and se.max_macs > 1:
      raise ConfigError(f"config.search.max_macs: a fraction of the largest subnet's MACs "
                        f"must be <= 1, got {se.max_macs}")
    try:
      nsga2_config(se).check(len(objs))
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config.search.{e}") from None
    if se.max_macs and max_macs(se, space) < float(space.macs(space.min_arch())):
      raise ConfigError(f"config.search.max_macs: {max_macs(se, space) / 1e6:.3f} MMACs is "
                        f"below the smallest subnet's {space.macs(space.min_arch()) / 1e6:.3f}")
    load_reference(cfg, space)

  def run(self, ctx: JobContext) -> dict:
    tr = supernet.trained(ctx, supernet.warm_up(ctx, proposals=False))
    if ctx.stop_after == "train":
      return {"training": {"steps": tr.steps, "seconds_this_process": tr.seconds}}
    cfg, space, se = ctx.cfg, ctx.space, ctx.cfg.search
    scorer = evaluate.Scorer.from_config(cfg, ctx.net, space, tr.variables, ctx.dataset,
                                         mesh=ctx.mesh)
    ends_ok = supernet.score_ends(ctx, scorer)
    identity = identity_lib.search(cfg, space, tr.fingerprint)
    cache = EvalCache(space, lambda pop: scorer.correct(pop, "val"),
                      ctx.path("search", "eval_cache_val.npz"), identity)
    reference = load_reference(cfg, space)
    ref = None
    if reference is not None:
      ref_pop = spaces.stack([reference])
      ref = (cache(ref_pop)[0], scorer.correct(ref_pop, "test")[0])
    t0, events, progress = time.time(), SearchEvents(ctx), []
    try:
      state, fronts = search(space, cache, se, seed=cfg.seed, ref_correct=ref and ref[0],
                             state_path=ctx.path("search", "nsga2.json"), identity=identity,
                             log=ctx.log, events=events, progress=progress)
    finally:
      events.close()
    seconds = time.time() - t0
    ctx.log(f"search done: {cache.scored} distinct subnets scored on "
            f"{len(scorer.labels('val'))} val images in {seconds:.1f} s")
    return self.report(ctx, tr, scorer=scorer, cache=cache, searched=(state, fronts, progress),
                       ref=ref, ends_ok=ends_ok, seconds=seconds)

  def report(self, ctx, trained, scorer, cache, searched, ref, ends_ok, seconds) -> dict:
    """The K chosen models scored on both splits, exported, tabulated and plotted."""
    space, se = ctx.space, ctx.cfg.search
    state, fronts, progress = searched
    objectives = tuple(se.objectives)
    idx = chosen(state, objectives, int(se.num_models))
    archs = [space.validate(spaces.member(state.population, int(i)), population=False)
             for i in idx]
    pop = spaces.stack(archs)
    val_ok, test_ok = cache(pop), scorer.correct(pop, "test")
    rows = []
    for k, (a, v_ok, t_ok) in enumerate(zip(archs, val_ok, test_ok)):
      r = {"name": f"K{k + 1}", "arch": space.arch_to_dict(a), "summary": space.format(a),
           "macs": int(space.macs(a)), "params": int(space.params(a)),
           "val_top1": float(v_ok.mean()), "test_top1": float(t_ok.mean())}
      if ref is not None:
        r["val_nfr"] = float(metrics.nfr(v_ok, ref[0]))
        r["test_nfr"] = float(metrics.nfr(t_ok, ref[1]))
      rows.append(r)
    supernet.export_subnets(ctx, trained.variables, scorer.stats(pop), archs, rows,
                            ("val_top1", "test_top1", "macs", "params"))
    evaluated = cache.records()
    results = run_record(ctx, MACS_NOTE, trained, ends_ok)
    results.update({
        "search": {"algorithm": "nsga2", "objectives": list(objectives),
                   "seconds": round(seconds, 2), "subnets_scored": cache.scored,
                   "generations": state.generation - 1, "evaluations": state.evaluations,
                   "val_images": int(len(scorer.labels("val"))),
                   "test_images": int(len(scorer.labels("test"))), "progress": progress},
        "chosen": rows, "pareto_fronts": fronts, "evaluated": evaluated})
    title = f"{ctx.cfg.name} ({ctx.dataset.name})"
    write_results(ctx, results, report.pareto_table(rows, objectives),
                  plots={"pareto.png": lambda p: report.plot_pareto(p, evaluated, fronts, rows,
                                                                    title),
                         **training_plot(ctx),
                         "search.png": lambda p: report.plot_search(
                             p, report.nsga2_search_panels(progress), f"{title}: NSGA-II")},
                  also=(f"subnets/{{{','.join(r['name'] for r in rows)}}}",))
    return results


register_job(NSGA2Job())
