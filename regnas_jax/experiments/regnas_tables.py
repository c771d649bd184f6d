"""REG-NAS's tables on one trained supernet: Tables 2 and 1 of the supplementary of "Towards
Regression-Free Neural Networks for Diverse Compute Platforms" (Duggal et al., REG-NAS).

  python -m regnas_jax.experiments.regnas_tables --config configs/cifar10_mbv3.py:cpu \\
      --config.data.path=/data/cifar10_jpeg.npz --workdir runs/regnas_tables [--stage STAGE]

Stages, each resumable (a killed stage picks up where it stopped) and run in this order by
``--stage=all`` (the default):

``train``        the supernet (``<workdir>/supernet``: the same training as the family job),
                 then its largest and smallest subnets' holdout Top-1 (logged);
``search``       A1 searched once with R0 at the smallest budget (``experiment.reference_seed``);
                 then, for every search seed, the larger members four ways on the same supernet:
                 R2 + inclusion (proposed), R2 without the constraint, R0 ("weight sharing")
                 and random search with R2 + inclusion -- on the holdout-validation split;
``sweep``        the lambda2/lambda1 sweep of supplementary Table 1 for A2 at the fixed A1;
``independent``  A1 and A2 of the R0 family (``experiment.baseline_seed``) trained from scratch
                 separately (exact shapes, the same data and steps), and A2 trained from scratch
                 with focal distillation from the independent A1 (Positive-Congruent Training),
                 once per weight in ``experiment.fd.weights``: the one whose A2 scores best on
                 the holdout split under the search reward (``search.reward``, NFR against the
                 independent A1) is the baseline reported;
``report``       Top-1 and NFR of everything on the test split (cached in
                 ``search/eval_cache_test.npz``), mean +- std over search seeds, the relative
                 change C of the supplementary's Eq. 1 against the proposed row; ``results.json``,
                 ``results.md`` and ``top1_vs_nfr.png`` in the work dir.

Settings are the ``experiment`` section of the config (``defaults.experiment_defaults``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from regnas_jax import (evaluate, fs, metrics, persist, progress, report, search, spaces,
                        training)
from regnas_jax import identity as identity_lib
from regnas_jax.errors import ConfigError
from regnas_jax.jobs import JobContext, build, family as family_job
from regnas_jax.jobs import supernet as supernet_job
from regnas_jax.search import family as family_lib

STAGES = ("train", "search", "sweep", "independent", "report")
VARIANTS = family_job.COMPARE_VARIANTS   # (label, reward, inclusion, algorithm)
PROPOSED = VARIANTS[0][0]


def check(cfg) -> None:
  """The ``experiment`` section (errors name the key)."""
  if "experiment" not in cfg:
    raise ConfigError("config.experiment: this config has no experiment section (use e.g. "
                      "configs/cifar10_mbv3.py:cpu)")
  ex = cfg.experiment
  seeds = tuple(ex.seeds)
  if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
    raise ConfigError(f"config.experiment.seeds: need distinct integer seeds, got {seeds}")
  if len(tuple(cfg.search.budgets)) < 2:
    raise ConfigError("config.search.budgets: the tables need a family of at least two members")
  ratios = tuple(ex.sweep)
  if not all(isinstance(r, (int, float)) and r > 0 for r in ratios):
    raise ConfigError(f"config.experiment.sweep: lambda2/lambda1 ratios must be > 0, got {ratios}")
  if not (isinstance(ex.independent_steps, int) and ex.independent_steps >= 0):
    raise ConfigError(f"config.experiment.independent_steps: must be an integer >= 0, got "
                      f"{ex.independent_steps!r}")
  fd_candidates(cfg)


def fd_candidates(cfg) -> list[training.FocalDistillation]:
  """One focal-distillation setting per weight in ``experiment.fd.weights`` (checked)."""
  f = cfg.experiment.fd
  ws = tuple(f.weights)
  if not ws or len(set(ws)) != len(ws) or not all(isinstance(w, (int, float)) for w in ws):
    raise ConfigError(f"config.experiment.fd.weights: need distinct numbers, got {ws}")
  if not all(np.isfinite(w) and w >= 0 for w in ws):
    raise ConfigError(f"config.experiment.fd.weights: every weight must be a finite number >= 0, "
                      f"got {ws}")
  out = [training.FocalDistillation(float(w), float(f.alpha), float(f.beta),
                                    float(f.temperature), str(f.kind)) for w in ws]
  for d in out:
    try:
      d.check()
    except ConfigError as e:
      raise ConfigError(f"config.experiment.{e}") from None
  return out


class Experiment:
  """The stages (module docstring) over one work dir."""

  def __init__(self, cfg, workdir: str, log=None):
    check(cfg)
    self.cfg, self.workdir = cfg, workdir
    job, ctx = _prepare(cfg, os.path.join(workdir, "supernet"), log)
    self.job, self.ctx = job, ctx
    self.space, self.log = ctx.space, ctx.log
    self._tr = self._scorer = None

  def path(self, *p: str) -> str:
    return os.path.join(self.workdir, *p)

  # -- the supernet and scoring ----------------------------------------------------------------
  def trained(self):
    if self._tr is None:
      self._tr = supernet_job.trained(self.ctx)
    return self._tr

  def scorer(self) -> evaluate.Scorer:
    if self._scorer is None:
      tr = self.trained()
      self._scorer = evaluate.Scorer.from_config(self.cfg, self.ctx.net, self.space,
                                                 tr.variables, self.ctx.dataset,
                                                 mesh=self.ctx.mesh)
    return self._scorer

  def search_identity(self) -> dict:
    return identity_lib.search(self.cfg, self.space, self.trained().fingerprint)

  def cache(self, split: str) -> family_lib.EvalCache:
    return family_lib.EvalCache(self.space, lambda pop: self.scorer().correct(pop, split),
                                self.path("search", f"eval_cache_{split}.npz"),
                                self.search_identity())

  # -- searches --------------------------------------------------------------------------------
  def family(self, tag: str, specs, seed: int, reference, cache) -> list[dict]:
    return family_lib.search_family(
        self.space, specs, cache, family_job.evolution_config(self.cfg), seed=seed,
        reference=reference, nfr_against=self.cfg.search.nfr_against,
        state_path=self.path("search", f"{tag}.json"),
        identity=self.search_identity(), log=self.log)

  def reference(self, cache):
    """A1: searched with the reference reward (R0) at the smallest budget, once."""
    cfg = self.cfg
    specs = family_job.member_specs(cfg, self.space, search.parse_reward(cfg.search.reward),
                                    True, "evolution")[:1]
    return self.family("reference", specs, int(cfg.experiment.reference_seed), None,
                       cache)[0]["arch"]

  def stage_search(self) -> dict:
    """``{seed: {variant: members}}`` (members A1.. with A1 the fixed reference)."""
    cache = self.cache("val")
    a1 = self.reference(cache)
    out = {}
    for seed in self.cfg.experiment.seeds:
      out[seed] = {}
      for label, rw, inc, algo in VARIANTS:
        self.log(f"seed {seed}: variant {label}")
        specs = family_job.member_specs(self.cfg, self.space, search.parse_reward(rw), inc, algo)
        out[seed][label] = self.family(f"seed{seed}_{_tag(label)}", specs, seed, a1, cache)
    return out

  def stage_sweep(self) -> dict:
    """``{ratio: A2 member}``: A2 searched with reward (1, ratio) and inclusion at the fixed A1."""
    cache = self.cache("val")
    a1 = self.reference(cache)
    out = {}
    seed = int(self.cfg.experiment.reference_seed)
    for r in self.cfg.experiment.sweep:
      specs = family_job.member_specs(self.cfg, self.space, (1.0, float(r)), True,
                                      "evolution")[:2]
      self.log(f"sweep: lambda2/lambda1 = {r:g}")
      out[float(r)] = self.family(f"sweep_{float(r):g}", specs, seed, a1, cache)[1]
    return out

  # -- independent training -----------------------------------------------------------------------
  def stage_independent(self) -> dict:
    """The baseline family's A1 and A2 trained separately (``'A1'``, ``'A2'``), and A2 with
    focal distillation from that A1 once per candidate weight (``'fd_select'``: each one's
    weight and holdout Top-1 / NFR / reward); ``'FD'`` is the candidate with the largest
    reward (the first of equals), ``'fd_weight'`` its weight."""
    cfg = self.cfg
    fam = self.stage_search()[int(cfg.experiment.baseline_seed)]["R0"]
    steps = int(cfg.experiment.independent_steps) or int(cfg.train.steps)
    out = {}
    for m in fam[:2]:
      out[m["name"]] = self._train_exact(m["arch"], f"independent/{m['name']}", steps)
    a1 = out["A1"]
    a1_val = training.evaluate_exact(a1["module"], a1["variables"], self.ctx.dataset, "val",
                                     a1["resolution"])
    teacher = (a1["module"], a1["variables"])
    lambdas = search.parse_reward(cfg.search.reward)
    trained, select = [], []
    for d in fd_candidates(cfg):
      t = self._train_exact(fam[1]["arch"], f"independent/A2_fd_w{d.weight:g}", steps,
                            teacher=teacher, fd=d, teacher_resolution=a1["resolution"])
      ok = training.evaluate_exact(t["module"], t["variables"], self.ctx.dataset, "val",
                                   t["resolution"])
      c = {"weight": d.weight, "val_top1": float(ok.mean()),
           "val_nfr": float(metrics.nfr(ok, a1_val))}
      c["reward"] = float(search.reward(c["val_top1"], c["val_nfr"], lambdas))
      self.log(f"focal distillation weight {d.weight:g}: holdout top-1 "
               f"{100 * c['val_top1']:.2f}%, NFR {100 * c['val_nfr']:.2f}%")
      trained.append(t)
      select.append(c)
    best = int(np.argmax([c["reward"] for c in select]))
    self.log(f"focal distillation: weight {select[best]['weight']:g} chosen on the holdout "
             f"(reward {cfg.search.reward})")
    out["FD"], out["fd_weight"], out["fd_select"] = trained[best], select[best]["weight"], select
    return out

  def _train_exact(self, arch, where: str, steps: int, teacher=None, fd=None,
                   teacher_resolution=None) -> dict:
    module = self.ctx.net.exact_module(arch)
    r = int(self.space.resolutions[int(np.asarray(arch.resolution))])
    res = training.train_exact(self.cfg, module, self.ctx.dataset, self.path(where),
                               resolution=r, seed=int(self.cfg.seed), steps=steps,
                               teacher=teacher, fd=fd, teacher_resolution=teacher_resolution,
                               log=self.log, desc=where,
                               identity_extra={"arch": self.space.arch_to_dict(arch)})
    return {"arch": arch, "module": module, "variables": res.variables, "resolution": r,
            "fingerprint": res.fingerprint}

  # -- the report ---------------------------------------------------------------------------------
  def stage_report(self) -> dict:
    searched, sweep, indep = self.stage_search(), self.stage_sweep(), self.stage_independent()
    test = self.cache("test")
    val = self.cache("val")
    a1 = self.reference(val)
    a1_test = test(spaces.stack([a1]))[0]
    rows = table2_rows(self.space, searched, test, self.cfg.experiment.seeds)
    ind = independent_rows(self.space, indep, self.ctx.dataset, searched, test,
                           int(self.cfg.experiment.baseline_seed))
    sw = sweep_rows(self.space, sweep, test, val, a1)
    ends = supernet_job.score_ends(self.ctx, self.scorer(), cache=test).mean(1)
    test.save()
    results = {"config": self.cfg.to_dict(), "space": self.space.config(),
               "reference": {"arch": self.space.arch_to_dict(a1), "macs": int(self.space.macs(a1)),
                             "test_top1": float(a1_test.mean())},
               "table2": rows, "independent": ind, "sweep": sw,
               "test_images": int(len(a1_test)),
               "supernet": {"fingerprint": self.trained().fingerprint,
                            "test_top1_max_min": [float(x) for x in ends]}}
    table = report.regnas_tables_markdown(results)
    if fs.is_writer():
      persist.write_json(self.path("results.json"), results, indent=1)
      fs.write_text(self.path("results.md"), table + "\n")
      report.plot_top1_vs_nfr(self.path("top1_vs_nfr.png"), results)
    print(table)
    self.log(f"wrote results.json, results.md and top1_vs_nfr.png to {self.workdir}")
    return results

  def stage_train(self):
    """The trained supernet; logs its largest and smallest subnets' holdout Top-1 and their
    gap, the figure that decides whether it is trained long enough."""
    tr = self.trained()
    supernet_job.score_ends(self.ctx, self.scorer(), "val")
    return tr

  def run(self, stage: str = "all") -> Any:
    """Runs ``stage`` (or every stage in order) and logs each one's wall time in this run, the
    figure docs/results.md tabulates (a resumed stage logs only the time of its remainder)."""
    for s in (STAGES if stage == "all" else (stage,)):
      t0 = time.time()
      out = getattr(self, f"stage_{s}")()
      self.log(f"stage {s}: done in {progress.fmt_time(time.time() - t0)}")
    return out


def _tag(label: str) -> str:
  return label.replace(" ", "_").replace("+", "_")


def _prepare(cfg, workdir, log):
  from regnas_jax import jobs

  kw = {} if log is None else {"log": log}
  job, ctx = jobs.prepare(cfg, workdir, "search", **kw)
  if not isinstance(job, family_job.FamilyJob):
    raise ConfigError(f"config.search.algorithm: the tables need the family search "
                      f"(evolution), got {cfg.search.algorithm!r}")
  os.makedirs(workdir, exist_ok=True)
  return job, ctx


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------
def _member_metrics(space, members, test) -> list[dict]:
  """Per member A2..: test Top-1, NFR against the previous member, relative NFR."""
  ok = test(spaces.stack([m["arch"] for m in members]))
  out = []
  for i in range(1, len(members)):
    out.append({"member": members[i]["name"], "macs": int(space.macs(members[i]["arch"])),
                "top1": float(ok[i].mean()), "nfr": float(metrics.nfr(ok[i], ok[i - 1])),
                "rel_nfr": float(metrics.relative_nfr(ok[i], ok[i - 1])),
                "nfr_vs_a1": float(metrics.nfr(ok[i], ok[0]))})
  return out


def _mean_std(xs) -> dict:
  xs = np.asarray(xs, np.float64)
  return {"mean": float(xs.mean()), "std": float(xs.std(ddof=1)) if len(xs) > 1 else 0.0,
          "values": xs.tolist()}


def _c(a: float, b: float) -> float | None:
  """Seed 000's Eq. 1: C = (M(proposed) - M(other)) / M(other)."""
  return None if b == 0 else (a - b) / b


def table2_rows(space, searched: dict, test, seeds) -> list[dict]:
  """One row per (variant, member): mean +- std over seeds and C against the proposed row."""
  per = {(label, seed): _member_metrics(space, searched[seed][label], test)
         for seed in seeds for label, *_ in VARIANTS}
  members = [m["member"] for m in per[PROPOSED, seeds[0]]]
  rows = []
  for j, name in enumerate(members):
    agg = {}
    for label, *_ in VARIANTS:
      vals = [per[label, s][j] for s in seeds]
      agg[label] = {k: _mean_std([v[k] for v in vals]) for k in ("top1", "nfr", "rel_nfr",
                                                                 "nfr_vs_a1", "macs")}
    prop = agg[PROPOSED]
    for label, *_ in VARIANTS:
      a = agg[label]
      rows.append({"member": name, "variant": label, **a,
                   "c_top1": _c(prop["top1"]["mean"], a["top1"]["mean"]),
                   "c_nfr": _c(prop["nfr"]["mean"], a["nfr"]["mean"])})
  return rows


def independent_rows(space, indep: dict, dataset, searched, test, seed: int) -> dict:
  """NFR of A2 against A1 when both are trained separately, with focal distillation, and with
  the supernet's shared weights (the same two architectures)."""
  ok = {k: training.evaluate_exact(indep[k]["module"], indep[k]["variables"], dataset, "test",
                                   indep[k]["resolution"]) for k in ("A1", "A2", "FD")}
  fam = searched[seed]["R0"]
  shared = test(spaces.stack([m["arch"] for m in fam[:2]]))
  row = lambda new, old: {"top1": float(new.mean()), "nfr": float(metrics.nfr(new, old)),
                          "rel_nfr": float(metrics.relative_nfr(new, old)),
                          "old_top1": float(old.mean())}
  return {"archs": [space.arch_to_dict(m["arch"]) for m in fam[:2]],
          "macs": [int(space.macs(m["arch"])) for m in fam[:2]],
          "independent": row(ok["A2"], ok["A1"]),
          "fd": {**row(ok["FD"], ok["A1"]), "weight": indep["fd_weight"]},
          "fd_select": indep["fd_select"], "shared": row(shared[1], shared[0])}


def sweep_rows(space, sweep: dict, test, val, a1) -> list[dict]:
  a1_test, a1_val = test(spaces.stack([a1]))[0], val(spaces.stack([a1]))[0]
  out = []
  for r, m in sorted(sweep.items()):
    pop = spaces.stack([m["arch"]])
    t, v = test(pop)[0], val(pop)[0]
    out.append({"ratio": r, "macs": int(space.macs(m["arch"])), "test_top1": float(t.mean()),
                "test_nfr": float(metrics.nfr(t, a1_test)), "val_top1": float(v.mean()),
                "val_nfr": float(metrics.nfr(v, a1_val)), "arch": space.arch_to_dict(m["arch"])})
  return out


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _define_stage_flag():
  from absl import flags

  if "stage" not in flags.FLAGS:
    flags.DEFINE_enum("stage", "all", ("all",) + STAGES, "Stage of the experiment to run "
                      "(default: all, in order; each resumes where it stopped).")


def main(argv=None) -> None:
  """``python -m regnas_jax.experiments.regnas_tables --config ... --workdir ... --stage ...``"""
  from regnas_jax import cli

  _define_stage_flag()
  cli.main(argv, job=_run)


def _run(cfg, workdir: str, stop_after: str) -> None:
  from absl import flags

  from regnas_jax import stopping

  del stop_after
  if not flags.FLAGS["workdir"].present:
    workdir = os.path.join("runs", f"{cfg.name}_tables")
  check(cfg)
  exp = Experiment(cfg, workdir)   # every check done; nothing written but the work dir
  with persist.WorkdirLock(workdir, warn=exp.log), stopping.GracefulStop():
    exp.run(flags.FLAGS.stage)


if __name__ == "__main__":
  main()
