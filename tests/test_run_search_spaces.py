"""The command line on the other spaces: OFA-ResNet50's family of four and SCARLET's NSGA-II, end
to end through their smoke configs (``test_run_search.py`` covers the offline default)."""

import pytest
import json
import os
import subprocess
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


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
  archs = [sp.arch_from_dict(m["arch"]) for m in fam]
  mx = sp.macs(sp.max_arch())
  for m, a, b in zip(fam, archs, (0.25, 0.45, 0.65, 0.9)):
    assert 0.9 * b * mx <= m["macs"] == sp.macs(a) <= b * mx
    assert m["params"] == sp.params(a) and 0 <= m["test_top1"] <= 1
  assert all(sp.contains(b, a) for a, b in zip(archs, archs[1:]))
  assert np.asarray(res["family"]["nfr_matrix_test"]).shape == (4, 4)
  module, variables, arch, info = export.load_subnet(str(tmp_path / "subnets" / "A3"))
  assert info["arch"] == fam[2]["arch"] and type(module).__name__ == "ResNet"
  assert module.apply(variables, np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 10)


@pytest.mark.slow
def test_scarlet_smoke_config_runs_nsga2_with_an_nfr_objective(tmp_path):
  """SCARLET S1 through the same CLI: FairNAS-style training, NSGA-II on Top-1 / MACs / NFR
  against a reference arch file under a MACs cap, fronts per generation, K models exported with
  their skips folded, loadable alone."""
  from regnas_jax import export, nn, spaces

  sp = spaces.get_space("scarlet_s1", width_mult=0.25, stem="small", num_classes=10,
                        resolutions=(8,))
  ref = tmp_path / "ref.json"
  # shaped like an exported subnet.json: {"space": config, "arch": ...}
  arch = sp.arch_to_dict(sp.sample(jax.random.key(0)))
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
