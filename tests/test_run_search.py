"""The command line: the smoke config end to end, and one-line errors on bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def test_smoke_config_searches_a_family_and_compares(tmp_path):
  """Train, search the family (and the comparison variants), write every output."""
  out = run("--config", os.path.join(ROOT, "configs/digits_mbv3.py:smoke"), "--workdir", str(tmp_path),
            "--config.search.compare=True")
  assert out.returncode == 0, out.stderr
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["training"]["steps"] == 12 and res["training"]["resumed_from"] is None
  assert set(res["test_top1"]) == {"max", "min"} and "test top-1: max subnet" in out.stdout
  fam = res["family"]["members"]
  assert [m["name"] for m in fam] == ["A1", "A2", "A3"] and res["family_label"] == "R2+inclusion"
  from regnas_jax import export, spaces

  sp = spaces.get_space("ofa_mbv3", **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in res["space"].items() if k != "space"})
  archs = [sp.from_json(m["arch"]) for m in fam]
  mx = sp.macs(sp.max_arch())
  for m, a, b in zip(fam, archs, (0.35, 0.6, 0.9)):
    assert 0.9 * b * mx <= m["macs"] == sp.macs(a) <= b * mx
    assert 0 <= m["test_top1"] <= 1 and 0 <= m["val_top1"] <= 1
  assert sp.contains(archs[1], archs[0]) and sp.contains(archs[2], archs[1])
  mat = np.asarray(res["family"]["nfr_matrix_test"])
  assert mat.shape == (3, 3) and np.all(np.diag(mat) == 0) and np.all(mat >= 0)
  assert set(res["compare"]) == {"R2+inclusion", "R2", "R0", "random R2+inclusion"}
  for label, f in res["compare"].items():     # every variant shares the searched reference A1
    assert f["members"][0]["arch"] == fam[0]["arch"]
  assert len(res["compare_table"]) == 8 and "| A3 | R0 |" in out.stdout
  assert res["search"]["subnets_scored"] == len(res["evaluated"]) > 3
  for name in ("results.md", "top1_vs_macs.png", "nfr_matrix.png", "search/reference.json",
               "search/R0.json"):
    assert (tmp_path / name).is_file(), name
  module, variables, arch, info = export.load_subnet(str(tmp_path / "subnets" / "A2"))
  assert info["arch"] == fam[1]["arch"] and info["metrics"]["test_top1"] == fam[1]["test_top1"]
  assert module.apply(variables, np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 10)
  metrics = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == list(range(2, 13, 2))

  # Same work dir, other space: refused with one line; the checkpoints stay as they were.
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  out = run("--config", os.path.join(ROOT, "configs/digits_mbv3.py:smoke"), "--workdir",
            str(tmp_path), "--config.space.width_mult=0.5")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "belongs to another run (space.width_mult: saved 0.25, now 0.5)" \
      in lines[0], out.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_resnet50_smoke_config_searches_a_family_of_four(tmp_path):
  """The OFA-ResNet50 space through the same pipeline: train, search A1..A4 with inclusion,
  export, by choosing its config."""
  out = run("--config", os.path.join(ROOT, "configs/digits_resnet50.py:smoke"), "--workdir",
            str(tmp_path))
  assert out.returncode == 0, out.stderr
  res = json.loads((tmp_path / "results.json").read_text())
  from regnas_jax import export, spaces

  assert res["space"]["space"] == "ofa_resnet50"
  sp = spaces.get_space("ofa_resnet50", **{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in res["space"].items() if k != "space"})
  fam = res["family"]["members"]
  assert [m["name"] for m in fam] == ["A1", "A2", "A3", "A4"]
  archs = [sp.from_json(m["arch"]) for m in fam]
  mx = sp.macs(sp.max_arch())
  for m, a, b in zip(fam, archs, (0.25, 0.45, 0.65, 0.9)):
    assert 0.9 * b * mx <= m["macs"] == sp.macs(a) <= b * mx
    assert m["params"] == sp.params(a) and 0 <= m["test_top1"] <= 1
  assert all(sp.contains(b, a) for a, b in zip(archs, archs[1:]))
  assert np.asarray(res["family"]["nfr_matrix_test"]).shape == (4, 4)
  module, variables, arch, info = export.load_subnet(str(tmp_path / "subnets" / "A3"))
  assert info["arch"] == fam[2]["arch"] and type(module).__name__ == "ResNet"
  assert module.apply(variables, np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 10)


def test_scarlet_smoke_config_runs_nsga2_with_an_nfr_objective(tmp_path):
  """SCARLET S1 through the same CLI: FairNAS-style training, NSGA-II on Top-1 / MACs / NFR
  against a reference arch file under a MACs cap, fronts per generation, K models exported with
  their skips folded, loadable alone."""
  from regnas_jax import export, nn, spaces

  sp = spaces.get_space("scarlet_s1", width_mult=0.25, stem="small", num_classes=10,
                        resolutions=(8,))
  ref = tmp_path / "ref.json"
  # shaped like an exported subnet.json: {"space": config, "arch": ...}
  arch = sp.to_json(sp.sample(jax.random.key(0)))
  ref.write_text(json.dumps({"space": sp.config(), "arch": arch}))
  out = run("--config", os.path.join(ROOT, "configs/digits_scarlet.py:smoke"), "--workdir",
            str(tmp_path / "w"), "--config.search.objectives=('top1','macs','nfr')",
            "--config.search.weights=(1.0,1.0,1.0)", f"--config.search.reference={ref}")
  assert out.returncode == 0, out.stderr
  res = json.loads((tmp_path / "w" / "results.json").read_text())
  assert res["space"]["space"] == "scarlet_s1" and res["search"]["algorithm"] == "nsga2"
  limit = 0.9 * sp.macs(sp.max_arch())
  assert len(res["pareto_fronts"]) == res["config"]["search"]["generations"] + 1
  for fr in res["pareto_fronts"]:
    f = np.array([[-r["top1"], r["macs"], r["nfr"]] for r in fr])
    le = (f[:, None] <= f[None]).all(-1) & (f[:, None] < f[None]).any(-1)
    assert not le.any() and (f[:, 1] <= limit).all()       # non-dominated, under the cap
  rows = res["chosen"]
  assert [r["name"] for r in rows] == ["K1", "K2", "K3"]
  assert all(0 <= r["test_nfr"] <= 1 and r["macs"] <= limit for r in rows)
  assert (tmp_path / "w" / "pareto.png").stat().st_size > 0
  module, variables, arch, info = export.load_subnet(str(tmp_path / "w" / "subnets" / "K2"))
  assert info["arch"] == rows[1]["arch"] and type(module).__name__ == "ScarletNet"
  assert not any("els" in str(p) for p in jax.tree_util.tree_flatten_with_path(variables)[0])
  assert module.apply(variables, np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 10)
  assert isinstance(module, nn.ScarletNet)


@pytest.mark.parametrize("args, message", [
    (["--config.nope=1"], "unknown config key 'nope'"),
    (["--config.space.stem=cifar"], "config.space: stem: 'cifar' is not one of"),
    (["--config.train.method=shrink"], "config.train.method: 'shrink' is not one of"),
    (["--config.data.name=mnist"], "config.data.name: 'mnist' is not one of"),
    (["--config", "configs/cifar10_mbv3.py"], "config.data.path: give the packed CIFAR-10 file"),
    (["--config", "configs/cifar10_mbv3.py", "--config.data.path=/nonexistent.npz"],
     "data.path: no such file: /nonexistent.npz"),
    (["--config.train.batch_size=5000"], "train.batch_size: 5000 exceeds the 1168"),
    (["--config", "configs/missing.py"], "No such file or directory"),
    (["--config", "configs/digits_mbv3.py:huge"], "unknown variant 'huge'"),
    (["--config.search.population_size=x"], "invalid literal for int()"),
    (["--config.search.reward=R7"], "config.search.reward: reward 'R7': use one of R0, R1, R2"),
    (["--config.search.budgets=(0.9,0.5)"], "config.search.budgets: need positive budgets in "
                                            "ascending order"),
    (["--config.search.budget_unit=mmacs"], "A1's window [0.315, 0.350] MMACs misses the space's range"),
    (["--config.search.reference=/nonexistent.json"], "config.search.reference: cannot read"),
    (["--config.search.parent_ratio=0.01"], "config.search.parent_ratio: 0.01 x population 10"),
    (["--config", "configs/digits_resnet50.py", "--config.train.method=progressive"],
     "progressive shrinking needs a 'kernel' field in space ofa_resnet50"),
    (["--config", "configs/digits_scarlet.py", "--config.search.objectives=('top1','latency')"],
     "config.search.objectives: 'latency' is not one of"),
    (["--config", "configs/digits_scarlet.py", "--config.search.objectives=('top1','nfr')"],
     "config.search.reference: the 'nfr' objective needs a reference"),
    (["--config", "configs/digits_scarlet.py", "--config.search.p_re=0.9"],
     "config.search.p_rm + p_re + p_pr: must sum to 1"),
    (["--config", "configs/digits_scarlet.py:s3"], "unknown variant 's3'"),
])
def test_bad_input_one_error_line_and_nothing_written(tmp_path, args, message):
  work = tmp_path / "work"
  out = run(*args, "--workdir", str(work))
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
  assert not work.exists()
