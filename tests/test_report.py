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
