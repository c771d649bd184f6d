"""Tables and plots of families, from hand-made records."""

import numpy as np
import pytest

from regnas_jax import report


def fam(top1s, mat):
  ms = [{"name": f"A{i + 1}", "macs": (i + 1) * 1_000_000, "params": 10_000, "val_top1": t,
         "test_top1": t, "summary": "r8: ...", "spec": {"inclusion": True}}
        for i, t in enumerate(top1s)]
  mat = np.asarray(mat, float)
  rel = [[None] * len(ms) for _ in ms]
  rel[0][1] = 0.5
  return {"members": ms, "nfr_matrix_test": mat.tolist(), "relative_nfr_matrix_test": rel}


def test_family_table_shows_members_and_matrix():
  t = report.family_table(fam([0.9, 0.95], [[0, 0.02], [0.07, 0]]), "R2+inclusion")
  assert "| A2 | 2.000 | 0.010 | 95.00 | 95.00 | 2.00 | 0.500 | r8: ... |" in t
  assert "| A2 | 7.00 | - |" in t


def test_compare_rows_relative_change_as_the_supplementary_defines_it():
  fams = {"prop": fam([0.9, 0.94], [[0, 0.02], [0, 0]]),
          "R0": fam([0.9, 0.95], [[0, 0.04], [0, 0]])}
  rows = {r["variant"]: r for r in report.compare_rows(fams, "prop")}
  assert rows["prop"]["c_top1"] == 0 and rows["prop"]["c_nfr_prev"] == 0
  assert rows["R0"]["c_top1"] == pytest.approx((0.94 - 0.95) / 0.95)
  assert rows["R0"]["c_nfr_prev"] == pytest.approx(-0.5)     # (2% - 4%) / 4%
  table = report.compare_table(list(rows.values()))
  assert "| A2 | R0 | 2.000 | 95.00 | -1.1% | 4.00 | -50.0% | 4.00 |" in table


def test_plots_are_png_files(tmp_path):
  f = fam([0.9, 0.95, 0.97], [[0, 0.02, 0.01], [0.01, 0, 0.02], [0, 0, 0]])
  report.plot_family(str(tmp_path / "a.png"), [{"macs": 2e6, "val_top1": 0.8}], {"x": f})
  report.plot_nfr_matrix(str(tmp_path / "b.png"), f)
  for name in ("a.png", "b.png"):
    data = (tmp_path / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def titles(fig):
  return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_trajectory_panels_have_their_own_titles():
  recs = [{"step": s, "reward": 0.1 * s, "baseline": 0.05 * s, "quality": 0.5, "cost": 1.0 + s,
           "argmax_cost": 1.1, "policy_entropy": 2.0 - 0.1 * s} for s in (2, 4, 6)]
  fig = report.trajectory_figure(recs, 3.0, "MMACs", "digits: TuNAS search")
  assert titles(fig) == ["reward", "quality Q (val batch top-1)", "cost (MMACs)",
                         "policy entropy (nats)"]
  assert fig._suptitle.get_text() == "digits: TuNAS search"
  cost = fig.axes[2]
  assert [ln.get_label() for ln in cost.get_lines()] == ["cost", "argmax_cost", "target"]
  assert list(cost.get_lines()[2].get_ydata()) == [3.0, 3.0]
  assert list(fig.axes[3].get_lines()[0].get_ydata()) == pytest.approx([1.8, 1.6, 1.4])


def test_training_panels_per_subnet_role_and_for_tunas():
  recs = [{"step": s, "phase": "sandwich", "loss": 3.0 / s, "loss/largest": 1.0 / s,
           "loss/smallest": 2.0 / s, "acc/largest": 0.5, "acc/smallest": 0.4, "lr": 0.1,
           "compile_s": 0.0, "resolution": 8} for s in (2, 4)]
  panels = report.training_panels(recs)
  assert [p[0] for p in panels] == ["loss (step total and per subnet)",
                                    "training batch top-1 per subnet", "learning rate"]
  assert [ln[0] for ln in panels[0][1]] == ["loss", "largest", "smallest"]
  assert panels[1][1][1][1:3] == ([2, 4], [0.4, 0.4])
  tunas = report.training_panels([{"step": 1, "loss": 2.0, "train_acc": 0.3, "lr": 0.1,
                                   "reward": 0.2}])
  assert [p[0] for p in tunas] == ["loss", "training batch top-1", "learning rate"]


def test_search_panels_of_a_family_and_of_nsga2(tmp_path):
  prog = lambda n: [{"generation": g, "best_reward": 0.5 + g / 10, "best_top1": 0.6,
                     "best_nfr": 0.02, "mean_reward": 0.4, "scored": 10 * (g + 1)}
                    for g in range(n)]
  members = [{"name": "A1", "search": {"progress": prog(3)}},
             {"name": "A2", "search": {"progress": prog(2)}}, {"name": "A3", "search": None}]
  panels = report.family_search_panels(members)
  assert [ln[0] for ln in panels[0][1]] == ["A1", "A2", "A1 mean", "A2 mean"]
  assert panels[0][1][1][1:3] == ([0, 1], [0.5, 0.6])
  assert panels[1][1][0][2] == pytest.approx([60.0] * 3)
  nsga = [{"generation": g, "front_size": 3 + g, "front_area": 0.3, "best_top1": 0.8,
           "scored": 12 * (g + 1), "infeasible": 0} for g in range(3)]
  assert [p[0] for p in report.nsga2_search_panels(nsga)] == [
      "first front: models", "first front: area under top-1 vs. MACs", "best val top-1 (%)",
      "subnets scored so far"]
  no_macs = [{k: v for k, v in r.items() if k != "front_area"} for r in nsga]
  assert len(report.nsga2_search_panels(no_macs)) == 3
  report.plot_search(str(tmp_path / "s.png"), panels, "family")
  report.plot_training(str(tmp_path / "t.png"), [{"step": 1, "loss": 1.0, "lr": 0.1}])
  for name in ("s.png", "t.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
