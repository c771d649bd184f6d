#!/usr/bin/env python
"""Behaviour check: do the offline default runs still give the recorded results?

The record (``tools/golden_digits.json``) holds, for each of the four digits configs (OFA-MBv3,
OFA-ResNet50, SCARLET, TuNAS), what a default run decides and measures: the chosen architectures,
their MACs/params, validation and test Top-1, NFR matrices, the Pareto fronts, the TuNAS policy
and the list of every scored subnet -- not timings and not the config echo.  A refactoring that
changes none of the numerics must reproduce it exactly on the same machine class and versions.

  python tools/golden.py check                 # run the four defaults (~15 min on 2 cores), compare
  python tools/golden.py check --runs DIR      # compare finished runs DIR/<config name>/
  python tools/golden.py record --runs DIR     # write the record from finished runs

Floating-point results are compared exactly by default (``--tol`` relaxes it): runs are
deterministic on one machine, but another CPU or JAX version may round differently, and so may
the same machine with another number of cores (XLA:CPU splits its work by thread count: a run
pinned to one core of a 2-core VM chose other subnets).  Small rounding differences grow: a
TuNAS search of 600 steps follows its sampled rewards, so 2e-5 in a step's logits (vmapping the
model over one shard, commit f4a8e44) ends in another policy.  The record is therefore one
machine class's: record on the machine you check on, from a commit you trust (the record in
the repository: this project's 2-core AMD EPYC VM, jax 0.10.2, at the commit that wrote it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "tools", "golden_digits.json")
CONFIGS = ("digits_mbv3", "digits_resnet50", "digits_scarlet", "digits_tunas")
# The work dir each default run writes (its config's name).
RUN_NAMES = {"digits_mbv3": "digits_mbv3", "digits_resnet50": "digits_resnet50",
             "digits_scarlet": "digits_scarlet_s1", "digits_tunas": "digits_tunas_proxylessnas"}
MEMBER_KEYS = ("name", "arch", "macs", "params", "val_top1", "test_top1", "reward", "cost",
               "val_nfr", "test_nfr")


def extract(results: dict) -> dict:
  """The decisions and measurements of one run's results.json (no timings, no config)."""
  evaluated = results.get("evaluated")   # recorded: MACs and Top-1 of every scored subnet
  out = {"test_top1": results.get("test_top1"), "evaluated": None if evaluated is None else [
      {k: e[k] for k in ("macs", "val_top1")} for e in evaluated]}
  pick = lambda rows: [{k: r[k] for k in MEMBER_KEYS if k in r} for r in rows]
  if "family" in results:
    fam = results["family"]
    out["family"] = pick(fam["members"])
    out["nfr_matrix_test"] = fam["nfr_matrix_test"]
    out["nfr_matrix_val"] = fam["nfr_matrix_val"]
    out["subnets_scored"] = results["search"]["subnets_scored"]
  if "chosen" in results:
    out["chosen"] = pick(results["chosen"])
    out["pareto_fronts"] = results["pareto_fronts"]
  if "models" in results:
    out["models"] = pick(results["models"])
    out["policy"] = results["policy"]
    out["tunas"] = {k: v for k, v in results["tunas"].items()}
    out["trajectory_final"] = {k: v for k, v in (results["search"]["final"] or {}).items()
                               if k not in ("time",)}
  return out


def compare(want, got, tol: float, where: str = "") -> list[str]:
  """Paths where ``got`` differs from ``want`` (floats within ``tol`` relative)."""
  if isinstance(want, dict) and isinstance(got, dict):
    out = []
    for k in sorted(set(want) | set(got)):
      if k not in want or k not in got:
        out.append(f"{where}{k}: only in the {'record' if k in want else 'run'}")
      else:
        out += compare(want[k], got[k], tol, f"{where}{k}.")
    return out
  if isinstance(want, list) and isinstance(got, list):
    if len(want) != len(got):
      return [f"{where[:-1]}: {len(want)} entries recorded, {len(got)} now"]
    out = []
    for i, (a, b) in enumerate(zip(want, got)):
      out += compare(a, b, tol, f"{where[:-1]}[{i}].")
    return out
  if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
    if abs(want - got) <= tol * max(abs(want), abs(got)):
      return []
  elif want == got:
    return []
  return [f"{where[:-1]}: recorded {want!r}, now {got!r}"]


def read_runs(runs: str) -> dict:
  out = {}
  for c in CONFIGS:
    path = os.path.join(runs, RUN_NAMES[c], "results.json")
    with open(path) as f:
      out[c] = extract(json.load(f))
  return out


def run_defaults(runs: str) -> None:
  for c in CONFIGS:
    print(f"running {c} ...", flush=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), "--config",
                    os.path.join(ROOT, "configs", f"{c}.py"), "--workdir",
                    os.path.join(runs, RUN_NAMES[c])], check=True, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("command", choices=("check", "record"))
  p.add_argument("--runs", help="finished runs: DIR/<run name>/results.json (default: run them)")
  p.add_argument("--record", default=RECORD)
  p.add_argument("--tol", type=float, default=0.0, help="relative tolerance for floats")
  a = p.parse_args(argv)
  runs = a.runs
  if runs is None:
    if a.command == "record":
      p.error("record needs --runs")
    runs = tempfile.mkdtemp(prefix="regnas-golden-")
    run_defaults(runs)
  got = read_runs(runs)
  if a.command == "record":
    with open(a.record, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
    print(f"wrote {a.record}")
    return 0
  with open(a.record) as f:
    want = json.load(f)
  bad = compare(want, got, a.tol)
  for c in CONFIGS:
    n = sum(1 for b in bad if b.startswith(c + "."))
    print(f"{c}: {'same results' if n == 0 else f'{n} difference(s)'}")
  for b in bad[:20]:
    print("  " + b)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
