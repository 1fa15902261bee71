"""The comparison's report as text: tables, performance profiles, every optimizer's ratios to
the tuned baselines with their 95% intervals and p (`scoring.compare_to`), the speedrun's
rules."""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

from experiments.harness import scoring


def _fmt(x: float, field: str) -> str:
  if not math.isfinite(x):
    return "never"
  return f"{x:.0f}" if field == "steps_to_target" else f"{x:.1f}"


def table(records: Sequence[dict], field: str) -> str:
  """Markdown: workload rows, optimizer columns, `median [min, max] (n studies)`."""
  results = scoring.study_results(records)
  workloads = sorted({w for w, _ in results})
  optimizers = sorted({o for _, o in results})
  lines = ["| workload | " + " | ".join(optimizers) + " |", "|---" * (len(optimizers) + 1) + "|"]
  for w in workloads:
    cells = []
    for o in optimizers:
      vals = [scoring._value(r, field) for r in results.get((w, o), [])]
      if not vals:
        cells.append("-")
        continue
      cells.append(f"{_fmt(float(np.median(vals)), field)} [{_fmt(min(vals), field)}, "
                   f"{_fmt(max(vals), field)}] ({len(vals)})")
    lines.append(f"| {w} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def ratio_table(records: Sequence[dict], baseline: str, alpha: float) -> list[str]:
  """Markdown: per workload and optimizer, its steps and time to target as a ratio to the
  baseline's, each with its 95% interval and p (`scoring.compare_to`), and the verdict."""
  steps = scoring.compare_to(records, baseline, "steps_to_target", alpha)
  times = scoring.compare_to(records, baseline, "time_to_target_s", alpha)
  if not steps:
    return []
  lines = [f"| workload | optimizer | steps / {baseline}'s [95% CI] (p) | time / {baseline}'s "
           "[95% CI] (p) | verdict |", "|---|---|---|---|---|"]
  for (w, o), c in sorted(steps.items()):
    t = times[(w, o)]
    if not (c["verdict"] or t["verdict"]):
      verdict = scoring.inconclusive_text(c)
    else:
      verdict = ", ".join(scoring.verdict_text(x, f) if x["verdict"] else
                          f"{f.split('_')[0]} inconclusive"
                          for x, f in ((c, "steps_to_target"), (t, "time_to_target_s")))
    lines.append(f"| {w} | {o} | {scoring.ratio_text(c, baseline)} | "
                 f"{scoring.ratio_text(t, baseline)} | {verdict} |")
  return lines


def ratios_legend(baseline: str, alpha: float) -> str:
  return (f"Ratios to {baseline}: each workload's median over studies of each study's best "
          f"trial, divided by {baseline}'s (below 1: fewer steps or less time; `never`: only "
          f"{baseline} reached the target, `0x ({baseline} never)`: only the optimizer did, `both "
          "never`: neither did). [95% CI]: percentile bootstrap over studies, each optimizer's "
          "studies resampled independently (10,000 resamples, fixed seed); `unbounded`: the "
          "interval has no upper end; [lo, hi] alone, after `reached it where ... did not` "
          "or `did not reach it`: the ratio is 0 or infinite. p: two-sided Mann-Whitney rank "
          "test over studies by exact permutation, `never` the worst rank. A difference is "
          f"claimed only when the interval excludes 1 and p < {alpha:g}; every other ratio is "
          "**inconclusive**, not evidence of no difference (with n and m studies p cannot go "
          "below 2 / C(n + m, n): 0.1 for 3 a side; such cells say so), and a single study "
          "is untestable and has no interval.")


def report(records: Sequence[dict], r_max: float, speedrun_workload: str, record_c: float | None,
           alpha: float, baseline: str, field: str = "time_to_target_s") -> str:
  out = ["## Steps to target: median [min, max] over studies (best trial of each)",
         table(records, "steps_to_target"), "",
         "## Time to target (s): median [min, max] over studies (best trial of each)",
         table(records, "time_to_target_s"), ""]
  optimizers = sorted({r["optimizer"] for r in records})
  taus = np.array([1.0, 1.25, 1.5, 2.0, 3.0, r_max])
  # Both scores: by time (AlgoPerf's; a vectorized trial's seconds come from its timing record)
  # and by steps (free of how fast each optimizer's step is on this machine); `field` first.
  other = "steps_to_target" if field == "time_to_target_s" else "time_to_target_s"
  for by in (field, other):
    ratios = scoring.performance_ratios(scoring.median_over_studies(records, by), optimizers)
    out += [f"## Performance profiles rho(tau) (by {by}) and score (r_max = {r_max:g})",
            "| optimizer | " + " | ".join(f"tau={t:g}" for t in taus) + " | score |",
            "|---" * (len(taus) + 2) + "|"]
    for o in optimizers:
      rho = scoring.profile(ratios[o], taus)
      out.append(f"| {o} | " + " | ".join(f"{v:.2f}" for v in rho) +
                 f" | {scoring.benchmark_score(ratios[o], r_max):.4f} |")
    out.append("")
  out.pop()
  for b in (baseline, "muon") if baseline != "muon" else (baseline,):
    rows = ratio_table(records, b, alpha)
    if rows:
      out += ["", f"## Ratios to {b}, with 95% intervals over studies", ratios_legend(b, alpha),
              "", *rows]
  speedrun = [r for r in records if r["workload"] == speedrun_workload]
  if speedrun:
    out += ["", f"## Speedrun rules ({speedrun_workload})"]
    claims = {o: scoring.claim_runs(speedrun, speedrun_workload, o) for o in optimizers}
    for o, rs in claims.items():
      if not rs:
        continue
      rule = scoring.record_rule([scoring._value(r, "final_metric") for r in rs], rs[0]["target"],
                                 record_c, alpha)
      if rule["holds"] is None:
        out.append(f"- {o}: record rule untestable: {rule['why']}")
      else:
        out.append(f"- {o}: mean final {rule['mean']:.4f} over {rule['n']} seeds, needs <= "
                   f"{rule['needed_below']:.4f} (target {rs[0]['target']} - c/sqrt(n), "
                   f"c = {rule['c']:.4f}): record {'HOLDS' if rule['holds'] else 'does not hold'}")
    if claims.get(baseline):
      base_steps = [scoring._value(r, "steps_to_target") for r in claims[baseline]]
      for o, rs in claims.items():
        if o == baseline or not rs:
          continue
        t = scoring.welch([scoring._value(r, "steps_to_target") for r in rs], base_steps, alpha)
        if t["holds"] is None:
          out.append(f"- {o} fewer steps than {baseline}: untestable: {t['why']}")
        else:
          out.append(f"- {o} fewer steps than {baseline}: {t['mean_a']:.0f} vs {t['mean_b']:.0f}, "
                     f"Welch t = {t['t']:.2f}, one-sided p = {t['p']:.3g}: claim "
                     f"{'HOLDS' if t['holds'] else 'does not hold'} at alpha = {alpha:g}")
  out.append(json.dumps({o: round(scoring.benchmark_score(ratios[o], r_max), 6)
                         for o in optimizers}))
  return "\n".join(out)
