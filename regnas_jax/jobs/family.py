"""The REG-NAS family job (``search.algorithm`` ``'evolution'`` or ``'random'``): train the
supernet, search a family A1 ⊂ A2 ⊂ ... under MACs budgets on the holdout-validation split,
evaluate it on the test split, export the members and report.

``config.search.compare`` also runs the paper's comparison variants on the same supernet (R2 +
inclusion, R2, R0, random search with R2 + inclusion), all from one searched (or given) A1, and
tabulates them with REG-NAS's relative change C.  The family search itself (one constrained
search per member, resumable) is :mod:`regnas_jax.search.family`.
"""

from __future__ import annotations

import time

import numpy as np

from regnas_jax import convert, evaluate, fs, metrics, persist, report, search, spaces, stopping
from regnas_jax import identity as identity_lib
from regnas_jax.errors import ConfigError, InvalidArchError
from regnas_jax.jobs import supernet
from regnas_jax.jobs.base import (Job, JobContext, SearchEvents, register_job, run_record,
                                  training_plot, write_results)
from regnas_jax.search import family as family_lib

BUDGET_UNITS = ("mmacs", "fraction")
COMPARE_VARIANTS = (  # (label, reward, inclusion, algorithm); the proposed method first
    ("R2+inclusion", "R2", True, "evolution"),
    ("R2", "R2", False, "evolution"),
    ("R0", "R0", False, "evolution"),
    ("random R2+inclusion", "R2", True, "random"),
)
MACS_NOTE = "MACs per image (multiply-accumulates; OFA prints them as MFLOPs)"


def evolution_config(cfg) -> search.EvolutionConfig:
  se = cfg.search
  return search.EvolutionConfig(**{k: se[k] for k in search.EvolutionConfig._fields})


def budget_windows(cfg, space) -> list[tuple[float, float]]:
  """``[(macs_low, macs_high)]`` per member from ``config.search`` (MACs per image)."""
  se = cfg.search
  scale = 1e6 if se.budget_unit == "mmacs" else float(space.macs(space.max_arch()))
  return [((1.0 - float(se.window)) * float(b) * scale, float(b) * scale) for b in se.budgets]


def member_specs(cfg, space, reward, inclusion: bool, algorithm: str):
  ref_reward = search.parse_reward(cfg.search.reference_reward)
  return [family_lib.MemberSpec(f"A{i + 1}", lo, hi, ref_reward if i == 0 else reward,
                                False if i == 0 else inclusion, algorithm)
          for i, (lo, hi) in enumerate(budget_windows(cfg, space))]


def load_reference(cfg, space):
  """The fixed A1 of ``config.search.reference`` (an arch JSON, a subnet.json or a
  results.json member), or ``None``."""
  path = cfg.search.reference
  if not path:
    return None
  obj = persist.read_json(path, ConfigError, "config.search.reference")
  if isinstance(obj, dict) and isinstance(obj.get("arch"), dict):  # results.json / subnet.json
    obj = obj["arch"]
  try:
    return space.arch_from_dict(obj)
  except InvalidArchError as e:
    raise ConfigError(f"config.search.reference: {path}: {e}") from None


class FamilyJob(Job):
  algorithms = ("evolution", "random")

  def check(self, cfg, space) -> None:
    se = cfg.search
    for key in ("reward", "reference_reward"):
      try:
        search.parse_reward(se[key])
      except ValueError as e:
        raise ConfigError(f"config.search.{key}: {e}") from None
    for key, allowed in (("inclusion_mode", search.constraints.INCLUSION_MODES),
                         ("nfr_against", family_lib.NFR_AGAINST), ("budget_unit", BUDGET_UNITS)):
      if se[key] not in allowed:
        raise ConfigError(f"config.search.{key}: {se[key]!r} is not one of {allowed}")
    b = tuple(se.budgets) if isinstance(se.budgets, (tuple, list)) else (se.budgets,)
    if not b or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
                        for x in b) or any(y <= x for x, y in zip(b, b[1:])):
      raise ConfigError(f"config.search.budgets: need positive budgets in ascending order, got {b}")
    if se.budget_unit == "fraction" and b[-1] > 1:
      raise ConfigError(f"config.search.budgets: fractions of the largest subnet's MACs must be "
                        f"<= 1, got {b[-1]}")
    if not (isinstance(se.window, (int, float)) and 0 < se.window <= 1):
      raise ConfigError(f"config.search.window: must be in (0, 1], got {se.window!r}")
    try:
      evolution_config(cfg).check()
    except ValueError as e:
      raise ConfigError(f"config.search.{e}") from None
    lo_all, hi_all = float(space.macs(space.min_arch())), float(space.macs(space.max_arch()))
    for i, (lo, hi) in enumerate(budget_windows(cfg, space)):
      if hi < lo_all or lo > hi_all:
        raise ConfigError(f"config.search.budgets: A{i + 1}'s window [{lo / 1e6:.3f}, "
                          f"{hi / 1e6:.3f}] MMACs misses the space's range [{lo_all / 1e6:.3f}, "
                          f"{hi_all / 1e6:.3f}]")
    load_reference(cfg, space)
    export_formats(cfg)

  def run(self, ctx: JobContext) -> dict:
    tr = supernet.trained(ctx, supernet.warm_up(ctx))
    if ctx.stop_after == "train":
      return {"training": {"steps": tr.steps, "seconds_this_process": tr.seconds}}
    scorer = evaluate.Scorer.from_config(ctx.cfg, ctx.net, ctx.space, tr.variables, ctx.dataset,
                                         mesh=ctx.mesh)
    ends_ok = supernet.score_ends(ctx, scorer)
    ident = identity_lib.search(ctx.cfg, ctx.space, tr.fingerprint)
    cache = family_lib.EvalCache(ctx.space, lambda pop: scorer.correct(pop, "val"),
                                 ctx.path("search", "eval_cache_val.npz"), ident)
    t_search = time.time()
    events = SearchEvents(ctx)
    try:
      families = self.search(ctx, cache, ident, events)
    finally:
      events.close()
    seconds = time.time() - t_search
    ctx.log(f"search done: {cache.scored} distinct subnets scored on "
            f"{len(scorer.labels('val'))} val images in {seconds:.1f} s")
    return self.report(ctx, tr, scorer, cache, families, ends_ok, seconds)

  def search(self, ctx: JobContext, cache, identity, events=None) -> dict[str, list[dict]]:
    """The families to report: ``{label: members}``, the proposed (or only) one first; each
    generation's progress goes to ``events`` (a :class:`SearchEvents`) as
    ``search/<member>/<key>`` (``search/<variant>/<member>/<key>`` for the others)."""
    cfg, space = ctx.cfg, ctx.space
    reward = search.parse_reward(cfg.search.reward)
    reference = load_reference(cfg, space)

    def run_family(tag, specs, ref):
      prefix = "search" if tag == "family" else f"search/{tag}"
      return family_lib.search_family(
          space, specs, cache, evolution_config(cfg), seed=cfg.seed, reference=ref,
          nfr_against=cfg.search.nfr_against, state_path=ctx.path("search", f"{tag}.json"),
          identity=identity, log=ctx.log, on_generation=None if events is None else (
              lambda member, rec: events.write(rec["generation"], f"{prefix}/{member}", rec)))

    if not cfg.search.compare:
      label = (f"{search.rewards.name(reward)}{'+inclusion' if cfg.search.inclusion else ''}"
               f"{' (random search)' if cfg.search.algorithm == 'random' else ''}")
      return {label: run_family("family", member_specs(
          cfg, space, reward, cfg.search.inclusion, cfg.search.algorithm), reference)}
    if reference is None:
      reference = run_family("reference", member_specs(cfg, space, reward, True,
                                                        cfg.search.algorithm)[:1], None)[0]["arch"]
    families = {}
    for label, rw, inc, algo in COMPARE_VARIANTS:
      ctx.log(f"comparison variant {label}")
      specs = member_specs(cfg, space, search.parse_reward(rw), inc, algo)
      families[label] = run_family(label.replace(" ", "_").replace("+", "_"), specs, reference)
    return families

  def report(self, ctx: JobContext, trained, scorer, cache, families, ends_ok, seconds) -> dict:
    """Test-split evaluation of every family, exports of the main one, tables and plots."""
    space = ctx.space
    records = {label: family_record(space, members, cache(_stack(members)),
                                    scorer.correct(_stack(members), "test"))
               for label, members in families.items()}
    main_label = next(iter(families))
    main = families[main_label]
    pop = _stack(main)
    supernet.export_subnets(ctx, trained.variables, scorer.stats(pop), [m["arch"] for m in main],
                            records[main_label]["members"],
                            ("val_top1", "test_top1", "macs", "params"))
    names = [m["name"] for m in main]
    deployed = export_members(ctx, names)
    evaluated = cache.records()
    results = run_record(ctx, MACS_NOTE, trained, ends_ok)
    results.update({
        "search": {"seconds": round(seconds, 2), "subnets_scored": cache.scored,
                   "val_images": int(len(scorer.labels("val"))),
                   "test_images": int(len(scorer.labels("test")))},
        "family": records[main_label], "family_label": main_label, "evaluated": evaluated})
    table = report.family_table(records[main_label], main_label)
    if ctx.cfg.search.compare:
      results["compare"] = records
      results["compare_table"] = report.compare_rows(records, main_label)
      table += "\n\n" + report.compare_table(results["compare_table"])
    title = f"{ctx.cfg.name} ({ctx.dataset.name})"
    write_results(ctx, results, table, plots={
        "top1_vs_macs.png": lambda p: report.plot_family(
            p, evaluated, records, title=title, windows=budget_windows(ctx.cfg, space)),
        "nfr_matrix.png": lambda p: report.plot_nfr_matrix(p, records[main_label],
                                                           f"{title}: {main_label}"),
        **training_plot(ctx),
        "search.png": lambda p: report.plot_search(
            p, report.family_search_panels(records[main_label]["members"]),
            f"{title}: {main_label} family search")},
        also=(f"subnets/{{{','.join(names)}}}",) + tuple(
            f"subnets/{{{','.join(names)}}}{convert.DEPLOY_SUFFIXES[f]}" for f in deployed))
    return results


def export_formats(cfg) -> tuple[str, ...]:
  """``config.search.export_formats`` checked: deployment formats each member is written in
  (``'onnx'``, ``'stablehlo'``; a tuple or one comma-separated string, as a command-line
  override gives it); ``'onnx'`` needs the ``onnx`` extra installed."""
  formats = cfg.search.get("export_formats", ())
  formats = tuple(f.strip() for x in ((formats,) if isinstance(formats, str) else formats)
                  for f in str(x).split(",") if f.strip())  # also 'onnx,stablehlo'
  known = tuple(convert.DEPLOY_SUFFIXES)
  for f in formats:
    if f not in known:
      raise ConfigError(f"config.search.export_formats: {f!r} is not one of {known}")
  if len(set(formats)) != len(formats):
    raise ConfigError(f"config.search.export_formats: {formats} names a format twice")
  if "onnx" in formats and convert.missing_onnx_packages():
    raise ConfigError(f"config.search.export_formats: {convert.missing_onnx_packages()}")
  return formats


def export_members(ctx: JobContext, names) -> tuple[str, ...]:
  """Write each saved member ``subnets/<name>/`` as ``subnets/<name>.onnx`` / ``.stablehlo``
  (+ ``.stablehlo.json``) in the formats of ``config.search.export_formats``, with the
  dataset's normalisation and class names; returns the formats written."""
  formats = export_formats(ctx.cfg)
  if not formats or not fs.is_writer():
    return formats
  from regnas_jax import export

  data = export.data_info(ctx.dataset)
  with stopping.critical("exporting the members for deployment"):
    for name in names:
      outs = {f: ctx.path("subnets", name + convert.DEPLOY_SUFFIXES[f]) for f in formats}
      for line in convert.write_deployment(ctx.path("subnets", name), outs, data):
        ctx.log(line)
  return formats


def _stack(members):
  return spaces.stack([m["arch"] for m in members])


def family_record(space, members, val_ok, test_ok) -> dict:
  """JSON record of a family: members with metrics, and pairwise NFR matrices (test and val)."""
  rows = []
  for i, m in enumerate(members):
    rows.append({"name": m["name"], "arch": space.arch_to_dict(m["arch"]),
                 "summary": space.format(m["arch"]), "macs": int(space.macs(m["arch"])),
                 "params": int(space.params(m["arch"])), "val_top1": float(val_ok[i].mean()),
                 "test_top1": float(test_ok[i].mean()), "reward": m["reward"],
                 "spec": m["spec"], "search": m["search"]})
  k = len(test_ok)
  rel = [[None if i == j else _finite(metrics.relative_nfr(test_ok[j], test_ok[i]))
          for j in range(k)] for i in range(k)]
  return {"members": rows, "nfr_matrix_test": metrics.nfr_matrix(test_ok).tolist(),
          "relative_nfr_matrix_test": rel, "nfr_matrix_val": metrics.nfr_matrix(val_ok).tolist()}


def _finite(v):
  v = float(v)
  return v if np.isfinite(v) else None


register_job(FamilyJob())
