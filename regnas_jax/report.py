"""Tables (Markdown) and plots (PNG) of the jobs' results, from the records in results.json.

``python -m regnas_jax.report RUN_DIR [RUN_DIR ...]`` compares finished NSGA-II runs (e.g.
supernets trained with and without ELS): end subnets, the spread of subnet accuracies, the final
fronts.


Top-1 and NFR are printed in percent of the test split; NFR(new, old) is the share of samples
the old (smaller) member gets right and the new one gets wrong.  The relative change of the
comparison table follows REG-NAS's supplementary (Eq. 1): ``C = (M(proposed) - M(other)) /
M(other)`` for M in {Top-1, NFR}, so the proposed method's own row reads 0.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np

from regnas_jax import fs, spaces


def _pct(x) -> str:
  return "-" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"


def _rel(a, b) -> float | None:
  if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b == 0:
    return None
  return (a - b) / b


def family_table(family: dict, label: str) -> str:
  """Members (MMACs, params, val/test Top-1, NFR against the previous member) and the NFR matrix."""
  ms, mat = family["members"], np.asarray(family["nfr_matrix_test"])
  rel = family["relative_nfr_matrix_test"]
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


def save_figure(fig, path: str, dpi: int) -> None:
  """Write ``fig`` as a PNG to ``path``, local or ``gs://`` (rendered to bytes, then written as
  a whole through :mod:`regnas_jax.fs`)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  fs.write_bytes(path, buf.getvalue())


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_family(path: str, evaluated: list[dict], fams: dict, *, title: str = "",
                windows: list[tuple[float, float]] | None = None) -> None:
  """Two panels of a searched family.

  Left: validation Top-1 vs. MMACs of every scored subnet (grey), the MACs window of each member
  (shaded) and each family (stars; the first family's members annotated with their test Top-1
  and test NFR to the previous member).  Right: the Top-1 / NFR plane of the members A2.. (test
  split): every family's member against its predecessor, so the trade-off REG-NAS's reward makes
  is visible.
  """
  plt = _plt()
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [3, 2]})
  for lo, hi in windows or []:
    ax.axvspan(lo / 1e6, hi / 1e6, color="tab:orange", alpha=0.10, lw=0, zorder=0)
  if evaluated:
    ax.scatter([e["macs"] / 1e6 for e in evaluated], [100 * e["val_top1"] for e in evaluated],
               s=8, c="0.75", label="scored subnets", zorder=1)
  xs = [e["macs"] / 1e6 for e in evaluated]
  for k, (label, fam) in enumerate(fams.items()):
    ms = fam["members"]
    mat = np.asarray(fam["nfr_matrix_test"])
    x, y = [m["macs"] / 1e6 for m in ms], [100 * m["val_top1"] for m in ms]
    ax.plot(x, y, marker="*", ms=11, lw=1.2, label=label, zorder=3 + k)
    xs += x
    if k == 0:
      for i, (m, xi, yi) in enumerate(zip(ms, x, y)):
        note = f"{m['name']}: test {100 * m['test_top1']:.1f}%"
        if i:
          note += f", NFR {100 * mat[i - 1, i]:.2f}%"
        ax.annotate(note, (xi, yi), textcoords="offset points", xytext=(-6, 8), fontsize=7.5,
                    ha="right" if i == len(ms) - 1 else "left")
    nfr = [100 * mat[i - 1, i] for i in range(1, len(ms))]
    top = [100 * m["test_top1"] for m in ms[1:]]
    ax2.plot(nfr, top, marker="o", ms=7, lw=0, label=label)
    for m, a, b in zip(ms[1:], nfr, top):
      ax2.annotate(m["name"], (a, b), textcoords="offset points", xytext=(4, 3), fontsize=7)
  if xs:
    span = max(xs) - min(xs) or 1.0
    ax.set_xlim(min(xs) - 0.05 * span, max(xs) + 0.08 * span)
  lo, hi = ax.get_ylim()
  ax.set_ylim(lo, hi + 0.08 * (hi - lo))      # room for the annotations above the stars
  ax2.margins(0.25)
  if windows:
    ax.plot([], [], color="tab:orange", alpha=0.3, lw=6, label="MACs windows")
  ax.set_title(f"{title} -- validation top-1 vs. MACs" if title else "validation top-1 vs. MACs",
               fontsize=10)
  ax2.set_xlabel("test NFR against the previous member (%)")
  ax2.set_ylabel("test top-1 (%)")
  ax2.set_title("members A2..: top-1 vs. negative flips (test)", fontsize=10)
  ax2.grid(alpha=0.3)
  ax2.legend(fontsize=7)
  save_top1_vs_macs(plt, fig, ax, path)


def save_top1_vs_macs(plt, fig, ax, path: str) -> None:
  """Axes labels, grid and legend of a validation Top-1 vs. MMACs plot; write it to ``path``."""
  ax.set_xlabel("MMACs per image")
  ax.set_ylabel("validation top-1 (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)


def plot_nfr_matrix(path: str, family: dict, title: str = "") -> None:
  """Heatmap of the family's pairwise test NFR (row = old, column = new); cell text in white on
  dark cells."""
  plt = _plt()
  mat = 100 * np.asarray(family["nfr_matrix_test"])
  names = [m["name"] for m in family["members"]]
  fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.4, 1.1 * len(names) + 1.8))
  off = mat[~np.eye(len(names), dtype=bool)]
  vmax = float(off.max()) if off.size and off.max() > 0 else 1.0
  shown = np.where(np.eye(len(names), dtype=bool), np.nan, mat)
  im = ax.imshow(shown, cmap="Greens", vmin=0.0, vmax=vmax)
  ax.set_xticks(range(len(names)), names)
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("new model")
  ax.set_ylabel("old model")
  for i in range(len(names)):
    for j in range(len(names)):
      dark = i != j and mat[i, j] > 0.55 * vmax
      ax.text(j, i, "-" if i == j else f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=9,
              color="white" if dark else "black")
  fig.colorbar(im, ax=ax, label="NFR (%)")
  ax.set_title((f"{title}\n" if title else "") + "pairwise negative flip rate (test)",
               fontsize=10)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)


# -- NSGA-II (SCARLET) ------------------------------------------------------------------------
def pareto_table(rows: list[dict], objectives) -> str:
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


def plot_pareto(path: str, evaluated: list[dict], fronts: list[list[dict]], rows: list[dict],
                title: str = "") -> None:
  """Validation Top-1 vs. MMACs: every scored subnet (grey), the first front of each generation
  (light to dark) and the K chosen models (stars)."""
  plt = _plt()
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
  ax.set_title((f"{title} -- " if title else "") + "NSGA-II: validation top-1 vs. MACs",
               fontsize=10)
  save_top1_vs_macs(plt, fig, ax, path)



# -- TuNAS ------------------------------------------------------------------------------------
def tunas_table(rows: list[dict], summary: dict, retrained: bool) -> str:
  unit = summary["unit"]
  head = f"| model | cost ({unit}) | MMACs | params (M) | val top-1 | test top-1 |"
  sep = "|---|---:|---:|---:|---:|---:|"
  if retrained:
    head += " retrained test top-1 |"
    sep += "---:|"
  lines = [f"TuNAS search: target {summary['target']:.4g} {unit}, argmax at "
           f"{100 * summary['argmax_cost_rel']:+.2f}% of it; random search: "
           f"{summary['random_found']} archs within +-{100 * summary['random_window']:.1f}% "
           f"(of {summary['random_drawn']} drawn)", "", head, sep]
  for r in rows:
    ln = (f"| {r['name']} | {r['cost']:.4g} | {r['macs'] / 1e6:.3f} | {r['params'] / 1e6:.3f} | "
          f"{100 * r['val_top1']:.2f}% | {100 * r['test_top1']:.2f}% |")
    if retrained:
      ln += f" {100 * r['retrain']['test_top1']:.2f}% |"
    lines.append(ln)
  if summary["random_mean_test_top1"] is not None:
    lines.append(f"\nrandom search mean / best test top-1: "
                 f"{100 * summary['random_mean_test_top1']:.2f}% / "
                 f"{100 * summary['random_best_test_top1']:.2f}% (shared weights, re-calibrated BN)")
  return "\n".join(lines)


def trajectory_panels(records: list[dict], target: float, unit: str) -> list[tuple]:
  """The four panels of a TuNAS trajectory (:func:`line_panels`): reward with its baseline,
  Q, the sampled and the argmax architecture's cost against the target, policy entropy."""
  steps = [r["step"] for r in records]
  line = lambda k: (k, steps, [r[k] for r in records], {})
  return [("reward", [line("reward"), line("baseline")]),
          ("quality Q (val batch top-1)", [line("quality")]),
          (f"cost ({unit})", [line("cost"), line("argmax_cost"),
                              ("target", steps[:1] + steps[-1:], [target, target],
                               {"color": "k", "ls": "--", "lw": 0.8})]),
          ("policy entropy (nats)", [line("policy_entropy")])]


def trajectory_figure(records: list[dict], target: float, unit: str, title: str = ""):
  """The figure of :func:`plot_trajectory` (its panels: :func:`trajectory_panels`)."""
  return line_panels(trajectory_panels(records, target, unit), xlabel="search step", title=title)


def plot_trajectory(path: str, records: list[dict], target: float, unit: str,
                    title: str = "") -> None:
  """Reward, Q, cost (sampled and argmax) against the target and policy entropy per step."""
  save_panels(trajectory_figure(records, target, unit, title), path, dpi=110)


def line_panels(panels: list[tuple], *, xlabel: str, title: str = "", ncols: int = 2):
  """A figure of line panels: ``panels`` is ``[(panel title, [(label, xs, ys, style)])]``;
  a legend where a panel has several lines; ``title`` above them all.  Returns the figure."""
  plt = _plt()
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.1 * nrows), squeeze=False)
  for ax, (name, lines) in zip(axes.flat, panels):
    for label, xs, ys, style in lines:
      ax.plot(xs, ys, **{"lw": 1.2, "label": label, **style})
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
      ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def save_panels(fig, path: str, dpi: int = 110) -> None:
  """Write a figure of :func:`line_panels` to ``path`` and close it."""
  save_figure(fig, path, dpi=dpi)
  _plt().close(fig)


# -- training curves and search progress (every job: training.png, search.png) ----------------
def training_panels(records: list[dict]) -> list[tuple]:
  """Panels of a training run's metric records (``metrics.jsonl``, or TuNAS's trajectory):
  the loss (the step's total and per subnet role, ``loss/<role>``), the training batch's top-1
  (``acc/<role>``, or TuNAS's ``train_acc``) and the learning rate, over steps."""
  def lines(keys):
    return [(k.split("/")[-1] if "/" in k else k, [r["step"] for r in records if k in r],
             [r[k] for r in records if k in r], {}) for k in keys]

  keys = list(dict.fromkeys(k for r in records for k in r))
  loss = [k for k in keys if k == "loss" or k.startswith("loss/")]
  acc = [k for k in keys if k.startswith("acc/") or k == "train_acc"]
  panels = [("loss (step total and per subnet)" if len(loss) > 1 else "loss", lines(loss)),
            ("training batch top-1 per subnet" if len(acc) > 1 else "training batch top-1",
             lines(acc)),
            ("learning rate", lines(["lr"]))]
  return [p for p in panels if p[1]]


def plot_training(path: str, records: list[dict], title: str = "") -> None:
  """``training.png``: :func:`training_panels` of ``records``."""
  save_panels(line_panels(training_panels(records), xlabel="training step", title=title,
                          ncols=3), path)


def family_search_panels(members: list[dict]) -> list[tuple]:
  """Panels of a family search's progress, one line per searched member (its
  ``search.progress``): the best and the mean reward, the best member's validation top-1 and
  NFR per generation, and the subnets scored so far."""
  searched = [m for m in members if (m.get("search") or {}).get("progress")]

  def lines(key, scale=1.0, style=None):
    return [(m["name"] + (" mean" if key == "mean_reward" else ""),
             [g["generation"] for g in m["search"]["progress"]],
             [scale * g[key] for g in m["search"]["progress"]],
             dict(style or {}, color=f"C{i}")) for i, m in enumerate(searched)]

  return [("reward: best (solid), generation mean (dashed)",
           lines("best_reward") + lines("mean_reward", style={"ls": "--", "lw": 0.9})),
          ("best candidate's val top-1 (%)", lines("best_top1", 100.0)),
          ("best candidate's val NFR (%)", lines("best_nfr", 100.0)),
          ("subnets scored so far", lines("scored"))]


def nsga2_search_panels(progress: list[dict]) -> list[tuple]:
  """Panels of an NSGA-II search's progress per generation: the first front's size, its area
  (:func:`front_area`, when Top-1 and MACs are objectives), the best validation top-1 and the
  subnets scored so far."""
  gens = [g["generation"] for g in progress]
  line = lambda k, scale=1.0: [(k, gens, [scale * g[k] for g in progress], {})]
  panels = [("first front: models", line("front_size"))]
  if progress and progress[0].get("front_area") is not None:
    panels.append(("first front: area under top-1 vs. MACs", line("front_area")))
  if progress and progress[0].get("best_top1") is not None:
    panels.append(("best val top-1 (%)", line("best_top1", 100.0)))
  panels.append(("subnets scored so far", line("scored")))
  return panels


def plot_search(path: str, panels: list[tuple], title: str = "") -> None:
  """``search.png``: a search's progress panels (:func:`family_search_panels`,
  :func:`nsga2_search_panels`) over generations."""
  save_panels(line_panels(panels, xlabel="generation", title=title), path)


# -- REG-NAS's tables (regnas_jax.experiments.regnas_tables) -----------------------------------
def _ms(d, scale=100.0, digits=2) -> str:
  """``mean ± std`` of a ``{'mean', 'std'}`` record (percent by default)."""
  return f"{scale * d['mean']:.{digits}f} ± {scale * d['std']:.{digits}f}"


def _signed(x) -> str:
  return "-" if x is None else f"{100 * x:+.1f}%"


def regnas_tables_markdown(res: dict) -> str:
  """The experiment's tables: Table 2 (variants x members, mean ± std over search seeds, C against
  the proposed row), the independent / focal-distillation baselines and the lambda sweep."""
  ref = res["reference"]
  n_seeds = len(res["table2"][0]["top1"]["values"]) if res["table2"] else 0
  out = [f"Reference A1 (searched with R0 at the smallest budget): {ref['macs'] / 1e6:.2f} MMACs, "
         f"test top-1 {100 * ref['test_top1']:.2f}%.  Test split ({res['test_images']} images); "
         f"mean ± std over {n_seeds} search seeds; NFR against the previous member; "
         "C = (M(proposed) - M(row)) / M(row) (REG-NAS's supplementary, Eq. 1).", "",
         "| member | variant | MMACs | top-1 (%) | C(top-1) | NFR (%) | C(NFR) | relative NFR | "
         "NFR vs A1 (%) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in res["table2"]:
    out.append(f"| {r['member']} | {r['variant']} | {r['macs']['mean'] / 1e6:.2f} | "
               f"{_ms(r['top1'])} | {_signed(r['c_top1'])} | {_ms(r['nfr'])} | "
               f"{_signed(r['c_nfr'])} | {_ms(r['rel_nfr'], 1.0, 3)} | {_ms(r['nfr_vs_a1'])} |")
  ind = res["independent"]
  prop = next(r for r in res["table2"] if r["member"] == "A2" and r["variant"] ==
              res["table2"][0]["variant"])
  out += ["", "A2 against A1 with the architectures of the R0 family: weights shared (the "
          "supernet), trained separately from scratch, and A2 trained with focal distillation "
          "from the separately trained A1 (PCT); C against the proposed A2 row above:", "",
          "| A2 / A1 | A1 top-1 (%) | A2 top-1 (%) | NFR (%) | relative NFR | C(top-1) | C(NFR) |",
          "|---|---:|---:|---:|---:|---:|---:|"]
  for key, label in (("shared", "weight sharing (supernet)"), ("independent", "independent"),
                     ("fd", _fd_label(ind))):
    r = ind[key]
    out.append(f"| {label} | {100 * r['old_top1']:.2f} | {100 * r['top1']:.2f} | "
               f"{100 * r['nfr']:.2f} | {r['rel_nfr']:.3f} | "
               f"{_signed(_rel(prop['top1']['mean'], r['top1']))} | "
               f"{_signed(_rel(prop['nfr']['mean'], r['nfr']))} |")
  out += ["", "The focal distillation weight, chosen on the holdout split by the search reward "
          f"({res['config']['search']['reward']}; NFR against the independent A1):", "",
          "| FD weight | holdout top-1 (%) | holdout NFR (%) | reward |", "|---:|---:|---:|---:|"]
  for c in ind["fd_select"]:
    mark = " (chosen)" if c["weight"] == ind["fd"]["weight"] else ""
    out.append(f"| {c['weight']:g}{mark} | {100 * c['val_top1']:.2f} | "
               f"{100 * c['val_nfr']:.2f} | {c['reward']:.4f} |")
  out += ["", "lambda2/lambda1 sweep (A2 at the fixed A1, inclusion on; supplementary Table 1):",
          "", "| lambda2/lambda1 | MMACs | val top-1 (%) | val NFR (%) | test top-1 (%) | "
          "test NFR (%) |", "|---:|---:|---:|---:|---:|---:|"]
  for r in res["sweep"]:
    out.append(f"| {r['ratio']:g} | {r['macs'] / 1e6:.2f} | {100 * r['val_top1']:.2f} | "
               f"{100 * r['val_nfr']:.2f} | {100 * r['test_top1']:.2f} | "
               f"{100 * r['test_nfr']:.2f} |")
  return "\n".join(out)


def _fd_label(ind: dict) -> str:
  return f"independent + focal distillation (weight {ind['fd']['weight']:g})"


def plot_top1_vs_nfr(path: str, res: dict) -> None:
  """Test Top-1 against NFR (to the previous member) of A2 per variant, one point per search
  seed and the mean with its standard deviation as error bars, plus the independent and focal
  distillation baselines."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.6, 4.6))
  rows = [r for r in res["table2"] if r["member"] == "A2"]
  for k, r in enumerate(rows):
    c = plt.get_cmap("tab10")(k)
    ax.scatter(100 * np.asarray(r["nfr"]["values"]), 100 * np.asarray(r["top1"]["values"]),
               s=14, color=c, alpha=0.5)
    ax.errorbar(100 * r["nfr"]["mean"], 100 * r["top1"]["mean"], xerr=100 * r["nfr"]["std"],
                yerr=100 * r["top1"]["std"], fmt="o", ms=7, color=c, capsize=3,
                label=f"{r['variant']} (mean ± std)")
  for key, marker, label in (("independent", "s", "independent"),
                             ("fd", "D", _fd_label(res["independent"])),
                             ("shared", "^", "R0 archs, shared weights")):
    r = res["independent"][key]
    ax.scatter(100 * r["nfr"], 100 * r["top1"], marker=marker, s=60, color="0.25", label=label,
               zorder=4, facecolors="none" if key == "shared" else "0.25")
  ax.set_xlabel("NFR of A2 against A1 (%, test; lower is better)")
  ax.set_ylabel("A2 test top-1 (%)")
  ax.set_title(f"REG-NAS variants on one supernet ({res['space']['space']}, "
               f"{res['config']['data']['name']})", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  save_figure(fig, path, dpi=130)
  plt.close(fig)


# -- comparing NSGA-II runs (e.g. a supernet trained with and without ELS) ---------------------
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


def summarize_pareto(results: dict) -> dict:
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


def compare_pareto_table(named: dict[str, dict]) -> str:
  """Markdown table of :func:`summarize` for several runs (name -> results.json dict)."""
  lines = ["| run | max / min subnet test top-1 | scored | val top-1 mean ± std | p10 - p90 | "
           "front size | front area | chosen test top-1 |", "|---|---|---|---|---|---|---|---|"]
  for name, res in named.items():
    s = summarize_pareto(res)
    lines.append(
        f"| {name} | {100 * s['max_test_top1']:.2f} / {100 * s['min_test_top1']:.2f}% | "
        f"{s['scored']} | {100 * s['val_top1_mean']:.2f} ± {100 * s['val_top1_std']:.2f}% | "
        f"{100 * s['val_top1_p10']:.2f} - {100 * s['val_top1_p90']:.2f}% | {s['front_size']} | "
        f"{s['front_area']:.4f} | "
        f"{' / '.join(f'{100 * t:.2f}' for t in s['chosen_test_top1'])}% |")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  """``python -m regnas_jax.report RUN_DIR [RUN_DIR ...]``: compare NSGA-II runs."""
  if not argv:
    print("usage: python -m regnas_jax.report RUN_DIR [RUN_DIR ...]  (NSGA-II work dirs)",
          file=sys.stderr)
    return 2
  named = {}
  for d in argv:
    path = fs.join(d, "results.json")
    try:
      res = json.loads(fs.read_text(path))
    except (OSError, ValueError) as e:
      print(f"error: {path}: cannot read ({e})", file=sys.stderr)
      return 2
    if res.get("search", {}).get("algorithm") != "nsga2":
      print(f"error: {path}: not the results of an NSGA-II run", file=sys.stderr)
      return 2
    named[d] = res
  print(compare_pareto_table(named))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
