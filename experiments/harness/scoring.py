"""AlgoPerf scores from run records, and the speedrun's rules for a claimed record.

Each workload's time for an optimizer is the median over studies of each study's fastest trial
to the validation target (never reaching it counts as infinity). Performance profiles:
rho_o(tau) = the fraction of workloads on which o's time is within a factor tau of the fastest
optimizer's; the benchmark score is B_o = 1/(r_max - 1) int_1^r_max rho_o (Dahl et al. 2023,
arXiv 2306.07179). The speedrun's optimizer track (modded-nanogpt) accepts a record when the mean
final loss over n seeds is below the target by at least c / sqrt(n) (`record_rule`); `welch`
tests a claimed steps-to-target speed-up (Welch's unequal-variance t-test).
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats

INF = math.inf


def _value(record: dict, field: str) -> float:
  v = record.get(field)
  return INF if v is None else float(v)


def study_results(records: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
  """(workload, optimizer) -> per study (integer studies only) the best trial by time-to-target.

  Ties (e.g. every trial failed) go to the fewer steps, then the lower final metric.
  """
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    if isinstance(r["study"], int):
      groups.setdefault((r["workload"], r["optimizer"], r["study"]), []).append(r)
  out: dict[tuple[str, str], list[dict]] = {}
  for (w, o, _), rs in sorted(groups.items()):
    best = min(rs, key=lambda r: (_value(r, "time_to_target_s"), _value(r, "steps_to_target"),
                                  _value(r, "final_metric")))
    out.setdefault((w, o), []).append(best)
  return out


def median_over_studies(records: Sequence[dict], field: str) -> dict[str, dict[str, float]]:
  """workload -> optimizer -> median over studies of the best trial's `field` (inf: never)."""
  out: dict[str, dict[str, float]] = {}
  for (w, o), bests in study_results(records).items():
    out.setdefault(w, {})[o] = float(np.median([_value(r, field) for r in bests]))
  return out


def performance_ratios(times: dict[str, dict[str, float]],
                       optimizers: Sequence[str]) -> dict[str, dict[str, float]]:
  """optimizer -> workload -> time / the fastest optimizer's time; inf when it never reached
  the target, or when nobody did. An optimizer without runs on a workload counts as never."""
  ratios: dict[str, dict[str, float]] = {o: {} for o in optimizers}
  for w, per_opt in times.items():
    best = min(per_opt.get(o, INF) for o in optimizers)
    for o in optimizers:
      t = per_opt.get(o, INF)
      ratios[o][w] = t / best if math.isfinite(t) and math.isfinite(best) else INF
  return ratios


def profile(ratios_w: dict[str, float], taus: np.ndarray) -> np.ndarray:
  """rho(tau): the fraction of workloads whose ratio is <= tau."""
  r = np.array(list(ratios_w.values()), dtype=np.float64)
  return np.mean(r[None, :] <= np.asarray(taus, np.float64)[:, None], axis=1)


def benchmark_score(ratios_w: dict[str, float], r_max: float = 4.0) -> float:
  """B = 1/(r_max - 1) int_1^r_max rho(tau) dtau, exactly: rho is a step function, and a
  workload with ratio r (>= 1) adds (r_max - r) / (r_max - 1) when r <= r_max, else 0."""
  r = np.array(list(ratios_w.values()), dtype=np.float64)
  return float(np.mean(np.where(r <= r_max, (r_max - r) / (r_max - 1.0), 0.0)))


def scores(records: Sequence[dict], r_max: float = 4.0,
           field: str = "time_to_target_s") -> dict[str, float]:
  optimizers = sorted({r["optimizer"] for r in records})
  ratios = performance_ratios(median_over_studies(records, field), optimizers)
  return {o: benchmark_score(ratios[o], r_max) for o in optimizers}


# ---------------------------------------------------------------------------------------------
# The speedrun's rules.

def record_rule(final_losses: Sequence[float], target: float, c: float | None = None,
                alpha: float = 0.01) -> dict:
  """Accept a record when mean(final_losses) <= target - c / sqrt(n).

  c = None estimates it as z_(1 - alpha) times the losses' sample standard deviation, which
  makes the rule a one-sided z-test of "the mean is below the target" at level alpha.
  """
  x = np.asarray(final_losses, np.float64)
  n = len(x)
  if c is None:
    if n < 2:
      return {"n": n, "mean": float(x.mean()) if n else None, "holds": None,
              "why": "c is estimated from the seeds' spread: needs at least 2 seeds"}
    c = float(stats.norm.ppf(1 - alpha) * x.std(ddof=1))
  margin = c / math.sqrt(n)
  mean = float(x.mean())
  return {"n": n, "mean": mean, "c": c, "needed_below": target - margin,
          "holds": bool(mean <= target - margin)}


def welch(steps_a: Sequence[float], steps_b: Sequence[float], alpha: float = 0.01) -> dict:
  """Welch's t-test of "a needs fewer steps than b" (one-sided); never reached is untestable."""
  a, b = np.asarray(steps_a, np.float64), np.asarray(steps_b, np.float64)
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    return {"holds": None, "why": "a run never reached the target"}
  if len(a) < 2 or len(b) < 2:
    return {"holds": None, "why": "needs at least 2 seeds each"}
  if a.var() == 0 and b.var() == 0:
    return {"holds": None, "why": "no spread in either sample"}
  with warnings.catch_warnings():
    # scipy warns of precision loss when one sample's values are all equal (two studies that
    # reached the target at the same evaluation); Welch's t is still defined by the other's.
    warnings.simplefilter("ignore", RuntimeWarning)
    t, p = stats.ttest_ind(a, b, equal_var=False, alternative="less")
  return {"t": float(t), "p": float(p), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
          "holds": bool(p < alpha)}


def claim_runs(records: Sequence[dict], workload: str, optimizer: str) -> list[dict]:
  """The optimizer's runs at one setting over several seeds: the hyperparameters run on the
  most seeds (ties: lower mean final metric)."""
  groups: dict[str, list[dict]] = {}
  for r in records:
    if r["workload"] == workload and r["optimizer"] == optimizer:
      groups.setdefault(json.dumps(r["hparams"], sort_keys=True), []).append(r)
  if not groups:
    return []
  return min(groups.values(), key=lambda rs: (-len(rs), np.mean([_value(r, "final_metric")
                                                                   for r in rs])))

