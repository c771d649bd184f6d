"""The multi-objective job (``config.search.algorithm='nsga2'``): SCARLET-NAS's constrained,
weighted NSGA-II on a trained supernet, K models chosen along the final Pareto front.

Objectives are columns computed per candidate, all minimised internally:

* ``top1``   -- validation Top-1 of the subnet on the supernet (maximised),
* ``macs``   -- analytic MACs per image of the exported subnet,
* ``params`` -- parameters of the exported subnet,
* ``nfr``    -- negative flip rate on the validation split against a reference architecture
  (``config.search.reference``, a JSON arch file): Top-1 vs. NFR vs. MACs is the multi-objective
  REG-NAS.

Constraints as in SCARLET's Algorithm 1: ``max_macs`` is checked before a candidate is scored,
``min_top1`` after.  The state (population, objectives, per-generation fronts) is written to
``search/nsga2.json`` after every generation and a restarted run resumes from it.

``python -m regnas_jax.pareto RUN_DIR [RUN_DIR ...]`` compares finished runs (e.g. supernets
trained with and without ELS): end subnets, the spread of subnet accuracies, the final fronts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

import jax
import numpy as np

from regnas_jax import evaluate, export, report, spaces
from regnas_jax import nn as nets
from regnas_jax.checkpoint import first_difference
from regnas_jax.search import SearchError, nsga2
from regnas_jax.search.family import EvalCache, write_json

OBJECTIVES = ("top1", "macs", "params", "nfr")
SIGNS = {"top1": -1.0, "macs": 1.0, "params": 1.0, "nfr": 1.0}


class ParetoConfigError(ValueError):
  """A bad ``config.search`` value for the NSGA-II job (the message names the key)."""


def nsga2_config(se) -> nsga2.NSGA2Config:
  kw = {k: se[k] for k in nsga2.NSGA2Config._fields if k in se}
  kw["weights"] = tuple(se.weights)
  return nsga2.NSGA2Config(**kw)


def check_config(se, space) -> None:
  """Raise :class:`ParetoConfigError` naming the first bad value of ``config.search``."""
  objs = tuple(se.objectives)
  if len(objs) < 2 or len(set(objs)) != len(objs):
    raise ParetoConfigError(f"config.search.objectives: need at least two distinct objectives, "
                            f"got {objs}")
  for o in objs:
    if o not in OBJECTIVES:
      hint = (" (no latency model in this project yet)" if o == "latency" else "")
      raise ParetoConfigError(f"config.search.objectives: {o!r} is not one of {OBJECTIVES}{hint}")
  if "nfr" in objs and not se.reference:
    raise ParetoConfigError("config.search.reference: the 'nfr' objective needs a reference "
                            "architecture (a JSON file, e.g. subnets/K1/subnet.json of a run)")
  if not (isinstance(se.num_models, int) and se.num_models >= 1):
    raise ParetoConfigError(f"config.search.num_models: must be a positive integer, got "
                            f"{se.num_models!r}")
  for key in ("max_macs", "min_top1"):
    v = se[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
      raise ParetoConfigError(f"config.search.{key}: must be a number >= 0, got {v!r}")
  if se.min_top1 > 1:
    raise ParetoConfigError(f"config.search.min_top1: a fraction in [0, 1], got {se.min_top1}")
  if se.budget_unit == "fraction" and se.max_macs > 1:
    raise ParetoConfigError(f"config.search.max_macs: a fraction of the largest subnet's MACs "
                            f"must be <= 1, got {se.max_macs}")
  try:
    nsga2_config(se).check(len(objs))
  except (ValueError, TypeError) as e:
    raise ParetoConfigError(f"config.search.{e}") from None
  if se.max_macs and max_macs(se, space) < float(space.macs(space.min_arch())):
    raise ParetoConfigError(f"config.search.max_macs: {max_macs(se, space) / 1e6:.3f} MMACs is "
                            f"below the smallest subnet's {space.macs(space.min_arch()) / 1e6:.3f}")


def max_macs(se, space) -> float:
  """The cheap constraint in MACs per image (``inf`` when ``max_macs`` is 0)."""
  if not se.max_macs:
    return float("inf")
  scale = 1e6 if se.budget_unit == "mmacs" else float(space.macs(space.max_arch()))
  return float(se.max_macs) * scale


def objective_fn(space, objectives, cache: EvalCache, ref_correct=None):
  """``f(pop) -> (raw (P, M), minimised (P, M), correct (P, N))`` for the named objectives."""
  def f(pop):
    correct = cache(pop)
    cols = []
    for o in objectives:
      if o == "top1":
        cols.append(evaluate.top1(correct))
      elif o == "macs":
        cols.append(np.asarray(space.macs(pop), np.float64))
      elif o == "params":
        cols.append(np.asarray(space.params(pop), np.float64))
      else:
        cols.append(evaluate.nfr(correct, ref_correct[None]))
    raw = np.stack(cols, 1).astype(np.float64)
    return raw, raw * np.array([SIGNS[o] for o in objectives]), correct
  return f


def _read_state(path: str, space, ident: dict):
  try:
    with open(path) as f:
      saved = json.load(f)
    diff = first_difference(saved["identity"], ident)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise SearchError(f"{path}: unreadable saved search ({e})") from None
  if diff:
    raise SearchError(f"{path} belongs to another search ({diff}); use another --workdir or "
                      f"remove that file")
  try:
    state = nsga2.state_from_json(space, saved["state"])
  except (ValueError, KeyError, TypeError) as e:
    raise SearchError(f"{path}: unreadable saved search ({e})") from None
  return state, saved["fronts"]


def front_record(space, state: nsga2.NSGA2State, objectives, raw_fn) -> list[dict]:
  """The first front of the population: per member its arch (readable) and raw objectives."""
  ranks = nsga2.non_dominated_sort(state.objectives)
  out = []
  for i in np.flatnonzero(ranks == 0):
    a = spaces.member(state.population, int(i))
    raw = raw_fn(state.objectives[i])
    out.append({"arch": space.to_json(a), **{o: float(v) for o, v in zip(objectives, raw)}})
  return sorted(out, key=lambda r: r.get("macs", 0.0))


def search(space, cache: EvalCache, se, *, seed: int, ref_correct=None, state_path: str,
           identity: dict, log: Callable[[str], None] = print):
  """Run (or resume) the NSGA-II search; returns ``(state, fronts)``.

  ``fronts[g]`` is the first front after generation ``g`` (see :func:`front_record`).
  """
  cfg = nsga2_config(se)
  objectives = tuple(se.objectives)
  signs = np.array([SIGNS[o] for o in objectives])
  fn = objective_fn(space, objectives, cache, ref_correct)
  limit = max_macs(se, space)
  cheap_ok = lambda pop: np.asarray(space.macs(pop), np.float64) <= limit
  ident = json.loads(json.dumps({"identity": identity, "search": dict(cfg._asdict()),
                                 "objectives": list(objectives), "seed": int(seed),
                                 "max_macs": limit if np.isfinite(limit) else None,
                                 "min_top1": float(se.min_top1)}))
  state, fronts = nsga2.init(seed), []
  if os.path.exists(state_path):
    state, fronts = _read_state(state_path, space, ident)
    log(f"resumed the NSGA-II search from {state_path} at generation {state.generation}")
  top_col = objectives.index("top1") if "top1" in objectives else None
  while not nsga2.done(state, cfg):
    t, before = time.time(), cache.scored
    cand = nsga2.ask(space, cfg, state, cheap_ok)
    if not cheap_ok(cand).all():  # an algorithm bug, never a silent drop
      raise SearchError("NSGA-II: a candidate violates the MACs constraint")
    raw, minimised, correct = fn(cand)
    feasible = evaluate.top1(correct) >= float(se.min_top1)
    state = nsga2.tell(state, cand, minimised, cfg, feasible)
    fronts.append(front_record(space, state, objectives, lambda m: m * signs))
    write_json(state_path, {"identity": ident, "state": nsga2.state_to_json(state),
                             "fronts": fronts})
    best = (f", best val top-1 {100 * -state.objectives[:, top_col].min():.2f}%"
            if top_col is not None else "")
    log(f"NSGA-II generation {state.generation - 1}/{cfg.generations}: first front "
        f"{len(fronts[-1])} models{best}, {int((~feasible).sum())} below min_top1, "
        f"{cache.scored - before} new subnets scored in {time.time() - t:.1f} s")
  return state, fronts


def chosen(state: nsga2.NSGA2State, objectives, k: int) -> np.ndarray:
  """Indices of the K equispaced models along the final front (spread by MACs when it is an
  objective, else by the second objective)."""
  axis = objectives.index("macs") if "macs" in objectives else 1
  return nsga2.equispaced(state.objectives, k, axis)


def export_models(workdir: str, space, net, variables, stats, archs, rows, supernet_options):
  """Extract (ELS folded) and save every chosen model under ``subnets/K<i>/``."""
  for i, (a, r) in enumerate(zip(archs, rows)):
    st = jax.tree.map(lambda s, i=i: s[i], stats)
    _, v = nets.extract(net, {"params": variables["params"], "batch_stats": st}, a)
    export.save_subnet(os.path.join(workdir, "subnets", r["name"]), space, a, supernet_options, v,
                       metrics={k: r[k] for k in ("val_top1", "test_top1", "macs", "params")
                                if k in r})


def table(rows: list[dict], objectives) -> str:
  """Markdown table of the chosen models."""
  head = "| model | MMACs | params (M) | val top-1 | test top-1 |"
  sep = "|---|---|---|---|---|"
  if "nfr" in objectives:
    head, sep = head + " val NFR | test NFR |", sep + "---|---|"
  lines = [head, sep]
  for r in rows:
    line = (f"| {r['name']} | {r['macs'] / 1e6:.3f} | {r['params'] / 1e6:.3f} | "
            f"{100 * r['val_top1']:.2f}% | {100 * r['test_top1']:.2f}% |")
    if "nfr" in objectives:
      line += f" {100 * r['val_nfr']:.2f}% | {100 * r['test_nfr']:.2f}% |"
    lines.append(line)
  return "\n".join(lines)


def plot(path: str, evaluated: list[dict], fronts: list[list[dict]], rows: list[dict]) -> None:
  """Validation Top-1 vs. MMACs: every scored subnet (grey), the first front of each generation
  (light to dark) and the K chosen models (stars)."""
  plt = report._plt()
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  if evaluated:
    ax.scatter([e["macs"] / 1e6 for e in evaluated], [100 * e["val_top1"] for e in evaluated],
               s=8, c="0.8", label="scored subnets", zorder=1)
  cmap = plt.get_cmap("viridis")
  n = len(fronts)
  for g, fr in enumerate(fronts):
    if not fr or "macs" not in fr[0] or "top1" not in fr[0]:
      continue
    pts = sorted((r["macs"] / 1e6, 100 * r["top1"]) for r in fr)
    ax.plot(*zip(*pts), marker="o", ms=3, lw=0.8, color=cmap(g / max(n - 1, 1)),
            label="first front per generation (dark to light)" if g == n - 1 else None,
            zorder=2)
  ax.scatter([r["macs"] / 1e6 for r in rows], [100 * r["val_top1"] for r in rows], marker="*",
             s=140, c="tab:red", label="chosen models", zorder=4)
  for r in rows:
    ax.annotate(r["name"], (r["macs"] / 1e6, 100 * r["val_top1"]), textcoords="offset points",
                xytext=(4, 5), fontsize=8)
  report.save_top1_vs_macs(plt, fig, ax, path)


# -- comparing runs (e.g. a supernet trained with and without ELS) -------------------------------
def front_area(front: list[dict], macs_max: float) -> float:
  """Area under the first front's staircase in (MACs / macs_max, validation Top-1): the mean over
  MACs budgets in [0, macs_max] of the best Top-1 the front offers within the budget (0 where it
  offers none).  One number per run: larger is better."""
  pts = sorted((r["macs"] / macs_max, r["top1"]) for r in front)
  area, best = 0.0, 0.0
  for (x, y), nxt in zip(pts, pts[1:] + [(1.0, None)]):
    best = max(best, y)
    area += best * max(0.0, min(nxt[0], 1.0) - x)
  return area


def summarize(results: dict) -> dict:
  """Figures of one run's ``results.json`` that compare supernets: end subnets' test Top-1, the
  spread of validation Top-1 over every scored subnet, the final front (its area with MACs as a
  fraction of the space's largest subnet) and the chosen models."""
  top = np.array([e["val_top1"] for e in results["evaluated"]], np.float64)
  cfg = dict(results["space"])
  space = spaces.get_space(cfg.pop("space"), **{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in cfg.items()})
  macs_max = float(space.macs(space.max_arch()))  # the same scale for runs on one space
  front = results["pareto_fronts"][-1]
  return {"max_test_top1": results["test_top1"]["max"],
          "min_test_top1": results["test_top1"]["min"],
          "scored": len(top), "val_top1_mean": float(top.mean()), "val_top1_std": float(top.std()),
          "val_top1_p10": float(np.percentile(top, 10)),
          "val_top1_p90": float(np.percentile(top, 90)),
          "front_size": len(front), "front_area": front_area(front, macs_max),
          "chosen_test_top1": [r["test_top1"] for r in results["chosen"]]}


def compare_table(named: dict[str, dict]) -> str:
  """Markdown table of :func:`summarize` for several runs (name -> results.json dict)."""
  lines = ["| run | max / min subnet test top-1 | scored | val top-1 mean ± std | p10 - p90 | "
           "front size | front area | chosen test top-1 |", "|---|---|---|---|---|---|---|---|"]
  for name, res in named.items():
    s = summarize(res)
    lines.append(
        f"| {name} | {100 * s['max_test_top1']:.2f} / {100 * s['min_test_top1']:.2f}% | "
        f"{s['scored']} | {100 * s['val_top1_mean']:.2f} ± {100 * s['val_top1_std']:.2f}% | "
        f"{100 * s['val_top1_p10']:.2f} - {100 * s['val_top1_p90']:.2f}% | {s['front_size']} | "
        f"{s['front_area']:.4f} | "
        f"{' / '.join(f'{100 * t:.2f}' for t in s['chosen_test_top1'])}% |")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  """``python -m regnas_jax.pareto RUN_DIR [RUN_DIR ...]``: compare NSGA-II runs."""
  if not argv:
    print("usage: python -m regnas_jax.pareto RUN_DIR [RUN_DIR ...]  (NSGA-II work dirs)",
          file=sys.stderr)
    return 2
  named = {}
  for d in argv:
    path = os.path.join(d, "results.json")
    try:
      with open(path) as f:
        res = json.load(f)
    except (OSError, ValueError) as e:
      print(f"error: {path}: cannot read ({e})", file=sys.stderr)
      return 2
    if res.get("search", {}).get("algorithm") != "nsga2":
      print(f"error: {path}: not the results of an NSGA-II run", file=sys.stderr)
      return 2
    named[d] = res
  print(compare_table(named))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
