"""Tables (Markdown) and plots (PNG) of searched families, from the records in results.json.

Top-1 and NFR are printed in percent of the test split; NFR(new, old) is the share of samples
the old (smaller) member gets right and the new one gets wrong.  The relative change of the
comparison table follows REG-NAS's supplementary (Eq. 1): ``C = (M(proposed) - M(other)) /
M(other)`` for M in {Top-1, NFR}, so the proposed method's own row reads 0.
"""

from __future__ import annotations

import numpy as np


def _pct(x) -> str:
  return "-" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"


def _rel(a, b) -> float | None:
  if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b == 0:
    return None
  return (a - b) / b


def family_table(fam: dict, label: str) -> str:
  """Members (MMACs, params, val/test Top-1, NFR against the previous member) and the NFR matrix."""
  ms, mat = fam["members"], np.asarray(fam["nfr_matrix_test"])
  rel = fam["relative_nfr_matrix_test"]
  lines = [f"Family ({label}); Top-1 and NFR in % of the test split, MACs per image",
           "", "| member | MMACs | params (M) | val top-1 | test top-1 | NFR vs previous | "
           "relative NFR | subnet |", "|---|---:|---:|---:|---:|---:|---:|---|"]
  for i, m in enumerate(ms):
    nfr_prev = _pct(mat[i - 1, i]) if i else "-"
    r = rel[i - 1][i] if i else None
    lines.append(f"| {m['name']} | {m['macs'] / 1e6:.3f} | {m['params'] / 1e6:.3f} | "
                 f"{_pct(m['val_top1'])} | {_pct(m['test_top1'])} | {nfr_prev} | "
                 f"{'-' if r is None else f'{r:.3f}'} | {m['summary']} |")
  names = [m["name"] for m in ms]
  lines += ["", "Pairwise NFR (%), row = old model, column = new model:", "",
            "| old \\ new | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
  for i, n in enumerate(names):
    lines.append(f"| {n} | " + " | ".join("-" if i == j else _pct(mat[i, j])
                                          for j in range(len(names))) + " |")
  return "\n".join(lines)


def compare_rows(fams: dict, proposed: str) -> list[dict]:
  """One row per (variant, member A2..): test Top-1, NFR against the previous member and
  against A1, and their relative change C against the proposed variant's same member."""
  rows = []
  prop = fams[proposed]
  for label, fam in fams.items():
    mat = np.asarray(fam["nfr_matrix_test"])
    pmat = np.asarray(prop["nfr_matrix_test"])
    for j, m in enumerate(fam["members"]):
      if j == 0:
        continue
      pm = prop["members"][j]
      rows.append({"variant": label, "member": m["name"], "mmacs": m["macs"] / 1e6,
                   "test_top1": m["test_top1"], "nfr_prev": float(mat[j - 1, j]),
                   "nfr_first": float(mat[0, j]),
                   "c_top1": _rel(pm["test_top1"], m["test_top1"]),
                   "c_nfr_prev": _rel(float(pmat[j - 1, j]), float(mat[j - 1, j])),
                   "contains_previous": m["spec"]["inclusion"]})
  return rows


def compare_table(rows: list[dict]) -> str:
  lines = ["Comparison on the same supernet (test split, %); C = relative change of the proposed "
           "variant (first row of each member) against that row",
           "", "| member | variant | MMACs | top-1 | C(top-1) | NFR vs previous | C(NFR) | "
           "NFR vs A1 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in sorted(rows, key=lambda r: r["member"]):
    c1 = "-" if r["c_top1"] is None else f"{100 * r['c_top1']:+.1f}%"
    c2 = "-" if r["c_nfr_prev"] is None else f"{100 * r['c_nfr_prev']:+.1f}%"
    lines.append(f"| {r['member']} | {r['variant']} | {r['mmacs']:.3f} | {_pct(r['test_top1'])} | "
                 f"{c1} | {_pct(r['nfr_prev'])} | {c2} | {_pct(r['nfr_first'])} |")
  return "\n".join(lines)


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_family(path: str, evaluated: list[dict], fams: dict) -> None:
  """Validation Top-1 vs. MMACs of every scored subnet (grey) with each family marked."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  if evaluated:
    ax.scatter([e["macs"] / 1e6 for e in evaluated], [100 * e["val_top1"] for e in evaluated],
               s=8, c="0.75", label="scored subnets", zorder=1)
  for k, (label, fam) in enumerate(fams.items()):
    ms = fam["members"]
    x, y = [m["macs"] / 1e6 for m in ms], [100 * m["val_top1"] for m in ms]
    ax.plot(x, y, marker="*", ms=11, lw=1.2, label=label, zorder=3 + k)
    for m, xi, yi in zip(ms, x, y):
      if k == 0:
        ax.annotate(m["name"], (xi, yi), textcoords="offset points", xytext=(4, 5), fontsize=8)
  save_top1_vs_macs(plt, fig, ax, path)


def save_top1_vs_macs(plt, fig, ax, path: str) -> None:
  """Axes labels, grid and legend of a validation Top-1 vs. MMACs plot; write it to ``path``."""
  ax.set_xlabel("MMACs per image")
  ax.set_ylabel("validation top-1 (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_nfr_matrix(path: str, fam: dict) -> None:
  """Heatmap of the family's pairwise test NFR (row = old, column = new)."""
  plt = _plt()
  mat = 100 * np.asarray(fam["nfr_matrix_test"])
  names = [m["name"] for m in fam["members"]]
  fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.2, 1.1 * len(names) + 1.6))
  im = ax.imshow(mat, cmap="Greens")
  ax.set_xticks(range(len(names)), names)
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("new model")
  ax.set_ylabel("old model")
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, "-" if i == j else f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=9)
  fig.colorbar(im, ax=ax, label="NFR (%)")
  ax.set_title("pairwise negative flip rate")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
