r"""Plots of a tuned comparison from its records: validation curves and performance profiles.

  python -m experiments.compare plots records/ --out_dir=results

Per workload (`<out_dir>/compare_<workload>.png`): the validation metric against training steps
and against training wall-clock, one line per optimizer: the median over studies of each
study's best trial (AlgoPerf's choice, Dahl et al. 2023, arXiv 2306.07179), with the min-max
over studies as a band. A run stops at the target; after its last evaluation it is held at its
last value, so the median and band stay defined until every study's best run has ended. The
target is the dashed line; the metric axis is logarithmic where the curves span decades.
`<out_dir>/compare_profiles.png`: the performance profiles rho_o(tau) and each benchmark score.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments.harness import records as records_lib
from experiments.harness import scoring

METRIC_LABELS = {
    "val_loss": "validation loss (nats per byte)",
    "relative_stress": "relative stress L(W) / sum D_ij^2",
    "suboptimality": "suboptimality f(x) - f*",
    "val_error": "validation error rate (fraction)",
}
# A metric whose plotted values span this factor or more gets a logarithmic axis.
LOG_SPAN = 30.0


def styles(optimizers: Sequence[str]) -> dict[str, dict]:
  """One fixed color and line style per optimizer across every figure (its place in the
  harness's table): tab10's ten colors, solid, then Dark2's eight from its magenta on,
  dash-dotted, so that no two of the first 18 share a color (the 11th, NorMuon, used to get
  AdamW's blue; magenta keeps it apart from Muon's cyan)."""
  spaces = records_lib.SEARCH_SPACES
  known = list(spaces) + sorted(set(optimizers) - set(spaces))
  dark2 = list(plt.get_cmap("Dark2").colors)
  palette = list(plt.get_cmap("tab10").colors) + dark2[3:] + dark2[:3]
  return {o: {"color": palette[known.index(o) % len(palette)],
              "ls": "-" if known.index(o) < 10 else "-."} for o in optimizers}


def widths(n: int) -> np.ndarray:
  """Line widths, widest first: a curve drawn later on top of an equal one leaves its
  predecessor's edges visible (AdamW and 8-bit AdamW often coincide)."""
  return np.linspace(4.5, 1.5, n) if n > 1 else np.array([2.0])


def held_on_grid(curves: Sequence[np.ndarray], column: int, grid: np.ndarray) -> np.ndarray:
  """[studies, len(grid)]: each curve's metric at `grid` of its x column (0 steps, 1 seconds),
  linearly interpolated, NaN before its first point, held at its last value after its end."""
  out = np.full((len(curves), len(grid)), np.nan)
  for i, c in enumerate(curves):
    x, y = c[:, column], c[:, 2]
    inside = grid >= x[0]
    out[i, inside] = np.interp(grid[inside], x, y)  # np.interp holds the end values
  return out


def _study_curves(bests: Sequence[dict]) -> list[np.ndarray]:
  curves = []
  for r in bests:
    c = np.array([row for row in r.get("curve") or [] if None not in row], np.float64)
    if len(c):
      curves.append(c[np.argsort(c[:, 0], kind="stable")])
  return curves


def plot_workload(records: Sequence[dict], workload: str, path: str) -> str:
  """Writes `path`: the workload's validation curves against steps and wall-clock."""
  results = {o: bs for (w, o), bs in scoring.study_results(records).items() if w == workload}
  if not results:
    raise ValueError(f"no records of workload {workload!r}")
  some = next(iter(results.values()))[0]
  metric, target = some["metric"], some.get("target")
  style = styles(sorted(results))
  fig, axes = plt.subplots(1, 2, figsize=(14, 5.2), sharey=True)
  values, ends = [], []
  for o, lw in zip(sorted(results), widths(len(results))):
    curves = _study_curves(results[o])
    if not curves:
      continue
    for ax, column in zip(axes, (0, 1)):
      end = max(c[-1, column] for c in curves)
      grid = np.unique(np.concatenate([c[:, column] for c in curves]))
      grid = grid[grid <= end]
      ys = held_on_grid(curves, column, grid)
      ok = ~np.all(np.isnan(ys), axis=0)
      grid, ys = grid[ok], ys[:, ok]
      med = np.nanmedian(ys, axis=0)
      n = len(curves)
      ax.plot(grid, med, lw=lw, alpha=0.85, **style[o],
              label=f"{o} ({n} stud{'y' if n == 1 else 'ies'})" if column == 0 else None)
      if n > 1:
        ax.fill_between(grid, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0),
                        color=style[o]["color"], alpha=0.15, lw=0)
      values.append(ys[np.isfinite(ys)])
      ends.append([c[-1, 2] for c in curves])
  if target is not None:
    for ax in axes:
      ax.axhline(target, color="k", ls="--", lw=1.2)
  allv = np.concatenate(values) if values else np.array([])
  positive = allv[allv > 0]
  if len(positive) and positive.max() / positive.min() >= LOG_SPAN:
    axes[0].set_yscale("log")
    # Divergent runs can reach huge values; keep the interesting part (start to below target).
    lo = min(positive.min(), target or positive.min()) / 2
    axes[0].set_ylim(lo, min(positive.max(), 1e3 * np.median(positive)) * 2)
  elif target is not None and len(allv):
    # Language-model losses start near log(vocab) (5.5 nats) and the contest is near the
    # target: show from there up to 1.6x the target, or higher if a run ends above that.
    top = max(1.6 * target, 1.1 * max(v[-1] for v in ends))
    if top < allv.max():
      axes[0].set_ylim(min(allv.min(), target) - 0.05 * (top - target), top)
  axes[0].set_xlabel("training step")
  axes[1].set_xlabel("training wall-clock (s; compilation in, evaluation out)")
  axes[0].set_ylabel(METRIC_LABELS.get(metric, metric))
  for ax in axes:
    ax.grid(alpha=0.3, which="both")
  axes[0].set_title("against steps")
  axes[1].set_title("against time")
  handles, labels = axes[0].get_legend_handles_labels()
  handles.append(plt.Line2D([], [], color="k", ls="--", lw=1.2))
  labels.append(f"target {target:g}" if target is not None else "no target")
  fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.82, 0.5), frameon=False)
  fig.suptitle(f"{workload}: {METRIC_LABELS.get(metric, metric)}; best trial per study, "
               "median over studies, band = min-max over studies")
  fig.tight_layout(rect=(0, 0, 0.82, 1))
  fig.savefig(path, dpi=110, bbox_inches="tight")  # long legends and titles stay whole
  plt.close(fig)
  return path


def plot_profiles(records: Sequence[dict], path: str, r_max: float = 4.0,
                  field: str = "time_to_target_s") -> str:
  """Writes `path`: every optimizer's performance profile rho(tau) on [1, r_max]."""
  optimizers = sorted({r["optimizer"] for r in records})
  times = scoring.median_over_studies(records, field)
  ratios = scoring.performance_ratios(times, optimizers)
  style = styles(optimizers)
  taus = np.linspace(1.0, r_max, 601)
  fig, ax = plt.subplots(figsize=(10, 5.5))
  order = sorted(optimizers, key=lambda o: -scoring.benchmark_score(ratios[o], r_max))
  for o, lw in zip(order, widths(len(order))):
    rho = scoring.profile(ratios[o], taus)
    ax.step(taus, rho, where="post", lw=lw, alpha=0.85, **style[o],
            label=f"{o}: B = {scoring.benchmark_score(ratios[o], r_max):.3f}")
  what = "time" if field == "time_to_target_s" else "steps"
  ax.set_xlabel(f"tau: {what} to target / the fastest optimizer's (ratio)")
  ax.set_ylabel("rho(tau): fraction of workloads within tau")
  ax.set_xlim(1.0, r_max)
  ax.set_ylim(-0.03, 1.03)
  ax.grid(alpha=0.3)
  n_workloads = len(times)
  ax.set_title(f"Performance profiles over {n_workloads} workloads (median over studies of the "
               f"best trial's {what}); B = score")
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")  # long legends and titles stay whole
  plt.close(fig)
  return path


def plot_all(records: Sequence[dict], out_dir: str, r_max: float = 4.0,
             field: str = "time_to_target_s") -> list[str]:
  """Every workload's curves and the profiles; returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [plot_workload(records, w, os.path.join(out_dir, f"compare_{w}.png"))
           for w in sorted({r["workload"] for r in records})]
  paths.append(plot_profiles(records, os.path.join(out_dir, "compare_profiles.png"), r_max,
                             field))
  return paths



def plot_budgets(records: Sequence[dict], workload: str, res: dict, path: str) -> str:
  """Writes `path`: a budget comparison (experiments/harness/budgets.py) of one workload.

  Left, the loss at each budget (log budget axis): per optimizer the median over studies of
  each study's best trial at that budget, a bar from the best to the worst study, the
  baseline's running-minimum curve (what speed-ups are read off) dashed. Right, each
  challenger's speed-up with its 95% bootstrap interval; a bound (beyond the baseline's
  budgets) is a triangle pointing the way the true value lies. `res` is one workload's
  `budgets.results` entry.
  """
  from experiments.harness import budgets as budgets_lib  # pylint: disable=g-import-not-at-top
  records = budgets_lib.complete_studies(records)[0]  # what `res` was computed from
  base = res["baseline"]
  optimizers = [base] + list(res["optimizers"])
  style = styles(optimizers)
  fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(14, 5.2))
  metric = next(r["metric"] for r in records
                if r["workload"] == workload and budgets_lib.has_budgets(r))
  for k, o in enumerate(optimizers):
    table = budgets_lib.best_per_budget(records, workload, o)
    if table is None:
      continue
    # Side by side within a budget (a small multiplicative offset), so bars do not hide: the
    # baseline (k = 0) on the budgets themselves, where its dashed curve is drawn (shifted, a
    # falling line would seem to pass under that curve), the others alternately left and right.
    shift = 1.0 + 0.025 * ((k + 1) // 2) * (-1 if k % 2 else 1)
    x = table.budgets * shift
    loss = np.where(np.isfinite(table.loss), table.loss, np.nan)
    med = np.nanmedian(loss, axis=0) if len(loss) else np.full(len(x), np.nan)
    ax_l.errorbar(x, med, yerr=[med - np.nanmin(loss, axis=0), np.nanmax(loss, axis=0) - med],
                  marker="o", ms=4, capsize=2, lw=2.2 if o == base else 1.4, **style[o],
                  label=f"{o} ({len(table.studies)} stud"
                        f"{'y' if len(table.studies) == 1 else 'ies'})")
    if o == base:
      ax_l.plot(table.budgets, budgets_lib.envelope(table.median()), color="k", ls="--", lw=1,
                label=f"{base}: running minimum of the median")
      continue
    cells = [res["cells"].get((o, float(b))) for b in table.budgets]
    for b, c in zip(x, cells):
      if c is None or not math.isfinite(c["speedup"]):
        continue
      marker = {budgets_lib.LOWER: "^", budgets_lib.UPPER: "v"}.get(c["flag"], "o")
      lo, hi = min(c["lo"], c["speedup"]), max(c["hi"], c["speedup"])
      ax_s.errorbar([b], [c["speedup"]], yerr=[[c["speedup"] - lo], [hi - c["speedup"]]],
                    marker=marker, ms=7, capsize=3, color=style[o]["color"],
                    mfc="white" if c.get("identical") else style[o]["color"])
    ax_s.plot([], [], marker="o", color=style[o]["color"], ls="", label=o)
  ax_s.axhline(1.0, color="k", lw=1)
  ticks = sorted({float(b) for o in optimizers
                  for b in getattr(budgets_lib.best_per_budget(records, workload, o), "budgets",
                                   ())})
  for ax in (ax_l, ax_s):
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{b:g}" for b in ticks])
    ax.minorticks_off()
    ax.set_xlabel("budget (training steps)")
    ax.grid(alpha=0.3, which="both")
  ax_l.set_ylabel(METRIC_LABELS.get(metric, metric))
  ax_l.set_title("loss at each budget: median study, bar = best to worst study")
  ax_s.set_ylabel(f"speed-up over {base} (its budget reaching the loss / the budget)")
  ax_s.set_title("speed-up, 95% bootstrap interval (^ / v: lower / upper bound)")
  ax_l.legend(fontsize=8, frameon=False)
  ax_s.legend(fontsize=8, frameon=False)
  fig.suptitle(f"{workload}: end-of-training {metric} at each budget (branched cooldowns)")
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_budget_results(records: Sequence[dict], computed: dict, out_dir: str) -> dict[str, str]:
  """`plot_budgets` for every workload of `budgets.results`' dict that has a comparison;
  {workload: path} of the files written (`<out_dir>/budgets_<workload>.png`)."""
  os.makedirs(out_dir, exist_ok=True)
  return {w: plot_budgets(records, w, res, os.path.join(out_dir, f"budgets_{w}.png"))
          for w, res in computed.items() if isinstance(res, dict)}
