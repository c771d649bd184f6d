"""REG-NAS's tables on the digits smoke config: every stage runs, the report has the rows of
Tables 2 and 1 of REG-NAS's supplementary, C is its Eq. 1, and a work dir whose stages were cut
short (what kills leave) resumes to the same results."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from regnas_jax import spaces
from regnas_jax.experiments import regnas_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config():
  path = os.path.join(ROOT, "configs", "digits_mbv3.py")
  spec = importlib.util.spec_from_file_location("digits_mbv3", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("smoke")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  work = str(tmp_path_factory.mktemp("tables") / "w")
  lines = []
  log = lambda m: (lines.append(m), print(m))
  res = regnas_tables.Experiment(smoke_config(), work, log=log).run("all")
  return work, res, lines


@pytest.mark.slow
def test_every_stage_and_the_tables(finished):
  work, res, lines = finished
  # each stage logs its wall time once, in order
  done = [ln.split(":")[0] for ln in lines if ln.startswith("stage ") and ": done in " in ln]
  assert done == [f"stage {s}" for s in regnas_tables.STAGES]
  # the train stage logs the largest and smallest subnets' holdout (not test) Top-1 and gap
  exp = regnas_tables.Experiment(smoke_config(), work)
  ok = exp.scorer().correct(spaces.stack([exp.space.max_arch(), exp.space.min_arch()]), "val")
  hi, lo = 100 * ok.mean(1)
  gap = [ln for ln in lines if ln.startswith("holdout top-1:")]
  assert len(gap) == 1 and gap[0].startswith(
      f"holdout top-1: largest subnet {hi:.2f}%, smallest {lo:.2f}% (gap {hi - lo:.2f} points;")
  # the report's test Top-1 of the two ends is kept in the test split's evaluation cache, so a
  # rerun of the report answers it from disk
  test = exp.cache("test")
  ends = [exp.space.max_arch(), exp.space.min_arch()]
  assert all(test.key(a) in test.table for a in ends)
  assert res["supernet"]["test_top1_max_min"] == [float(test.table[test.key(a)].mean())
                                                  for a in ends]
  cfg = smoke_config()
  seeds, variants = cfg.experiment.seeds, [v[0] for v in regnas_tables.VARIANTS]
  members = [f"A{i + 1}" for i in range(1, len(cfg.search.budgets))]
  assert [(r["member"], r["variant"]) for r in res["table2"]] == [
      (m, v) for m in members for v in variants]
  for r in res["table2"]:
    assert len(r["top1"]["values"]) == len(seeds)
    assert np.isclose(r["top1"]["mean"], np.mean(r["top1"]["values"]))
    prop = next(p for p in res["table2"] if p["member"] == r["member"] and
                p["variant"] == regnas_tables.PROPOSED)
    # C = (M(proposed) - M(row)) / M(row), Eq. 1 of REG-NAS's supplementary
    assert np.isclose(r["c_top1"], (prop["top1"]["mean"] - r["top1"]["mean"]) / r["top1"]["mean"])
    if r["nfr"]["mean"] > 0:
      assert np.isclose(r["c_nfr"], (prop["nfr"]["mean"] - r["nfr"]["mean"]) / r["nfr"]["mean"])
    if r["variant"] == regnas_tables.PROPOSED:
      assert r["c_top1"] == 0
  assert [s["ratio"] for s in res["sweep"]] == sorted(cfg.experiment.sweep)
  ind = res["independent"]
  assert set(ind) >= {"independent", "fd", "shared"}
  for k in ("independent", "fd", "shared"):
    assert 0 <= ind[k]["nfr"] <= 1 - ind[k]["top1"] + 1e-9
  for f in ("results.json", "results.md", "top1_vs_nfr.png"):
    assert os.path.getsize(os.path.join(work, f)) > 100, f
  md = open(os.path.join(work, "results.md")).read()
  assert "| A2 | R2+inclusion |" in md and "independent + focal distillation" in md
  # focal distillation: one A2 per candidate weight; the reported one is the holdout's choice
  sel = ind["fd_select"]
  assert [c["weight"] for c in sel] == list(cfg.experiment.fd.weights)
  l1, l2 = regnas_tables.search.parse_reward(cfg.search.reward)
  for c in sel:
    assert os.path.isdir(os.path.join(work, "independent", f"A2_fd_w{c['weight']:g}",
                                      "checkpoints"))
    assert np.isclose(c["reward"], l1 * c["val_top1"] - l2 * c["val_nfr"])
  best = max(sel, key=lambda c: c["reward"])   # the first of equals, as max keeps it
  assert ind["fd"]["weight"] == best["weight"]
  assert f"weight {best['weight']:g}" in md


@pytest.mark.slow
def test_stages_cut_short_resume_to_the_same_results(finished, tmp_path):
  work, res, _ = finished
  copy = str(tmp_path / "w")
  shutil.copytree(work, copy)
  for f in ("results.json", "results.md", "top1_vs_nfr.png", "search/eval_cache_test.npz"):
    os.remove(os.path.join(copy, f))
  # search: seed 1's R0 family killed after A2 (its A3 not searched yet)
  p = os.path.join(copy, "search", "seed1_R0.json")
  state = json.load(open(p))
  state["members"], state["current"] = state["members"][:2], None
  json.dump(state, open(p, "w"))
  # sweep: the last ratio killed before its first save
  os.remove(os.path.join(copy, "search", f"sweep_{max(smoke_config().experiment.sweep):g}.json"))
  # independent: the focal-distillation model killed before its final checkpoint
  w = smoke_config().experiment.fd.weights[-1]
  ck = os.path.join(copy, "independent", f"A2_fd_w{w:g}", "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ck) if d.isdigit())
  shutil.rmtree(os.path.join(ck, str(steps[-1])))
  again = regnas_tables.Experiment(smoke_config(), copy).run("all")
  strip = lambda r: json.loads(json.dumps({k: v for k, v in r.items() if k != "config"}))
  assert strip(again) == strip(res)


@pytest.mark.parametrize("weights, msg", [((), "need distinct numbers"),
                                           ((0.3, 0.3), "need distinct numbers"),
                                           ((0.3, -1.0), "every weight must be a finite"),
                                           ((0.3, float("nan")), "every weight must be a finite")])
def test_focal_distillation_weights_are_checked(weights, msg):
  cfg = smoke_config()
  cfg.experiment.fd.weights = weights
  with pytest.raises(regnas_tables.ConfigError, match=msg) as e:
    regnas_tables.check(cfg)
  assert str(e.value).startswith("config.experiment.fd.weights: ")


def test_command_line_errors_are_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "regnas_jax.experiments.regnas_tables", "--config",
                        "digits_tunas:smoke", "--workdir", str(tmp_path / "w")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 2
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and "config.experiment" in errors[0], out.stderr
  assert not (tmp_path / "w").exists()


def test_committed_cifar10_tables_come_from_the_committed_results_and_config():
  """docs/results.md's CIFAR-10 tables are what the report prints for the committed results JSON,
  and that JSON was made with ``configs/cifar10_mbv3.py:cpu`` as committed (apart from the data
  file and cache paths, which the documented command gives)."""
  from regnas_jax import report

  with open(os.path.join(ROOT, "docs", "results", "regnas_cifar10_mbv3_cpu.json")) as f:
    res = json.load(f)
  with open(os.path.join(ROOT, "docs", "results.md")) as f:
    assert report.regnas_tables_markdown(res) in f.read()
  spec = importlib.util.spec_from_file_location("cifar10_mbv3",
                                                os.path.join(ROOT, "configs", "cifar10_mbv3.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  want = json.loads(json.dumps(mod.get_config("cpu").to_dict()))
  got = json.loads(json.dumps(res["config"]))
  for c in (want, got):
    c["data"].pop("path"), c["data"].pop("cache_dir")
  # Options the config lost or gained since the run, each at the value that leaves the run as it
  # was: the shape envelopes (0 = off, removed in issue #35), data.download (off) and
  # search.export_formats (none), both added by issue #39.
  for section in ("train", "score"):
    assert got[section].pop("envelopes", 0) == 0
  assert want["data"].pop("download") is False
  assert want["search"].pop("export_formats") == []
  # and the run-time options the job sets up before it starts (a compile cache, XLA flags)
  assert want["runtime"].pop("compilation_cache_dir") == "auto"
  assert got["runtime"].pop("compilation_cache_dir") == ""
  assert want["runtime"].pop("xla_flags") == ""
  for c in (want, got):
    c["runtime"].pop("compilation_cache_min_compile_s")
  assert got == want
