"""AlgoPerf scores from run records, and the speedrun's rules for a claimed record.

Each workload's time for an optimizer is the median over studies of each study's fastest trial
to the validation target (never reaching it counts as infinity). Performance profiles:
rho_o(tau) = the fraction of workloads on which o's time is within a factor tau of the fastest
optimizer's; the benchmark score is B_o = 1/(r_max - 1) int_1^r_max rho_o (Dahl et al. 2023,
arXiv 2306.07179). The speedrun's optimizer track (modded-nanogpt) accepts a record when the mean
final loss over n seeds is below the target by at least c / sqrt(n) (`record_rule`); `welch`
tests a claimed steps-to-target speed-up (Welch's unequal-variance t-test).

Every ratio the harness prints (README.md's headline, WORKSPACE.md's section, the text report)
is `compare_to`'s: an optimizer's median over studies against the baseline's, with a 95%
percentile-bootstrap interval over studies (`bootstrap_ratio`) and a two-sided Mann-Whitney
p by exact permutation (`rank_test`), `never` counted as infinite steps and the worst rank. A
ratio whose interval contains 1, or whose p is not below alpha, is "inconclusive", with the
reason where it is built in (`inconclusive_text`: one study, or too few studies for the rank
test's smallest p to reach alpha), never "no difference".
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


# Reference runs set a steps-to-target target (experiments/harness/budgets.py) and are no tuning
# study's trial: records with `"reference": true` or a study number from REFERENCE_STUDY up.
REFERENCE_STUDY = 1000


def is_reference(record: dict) -> bool:
  """Whether `record` is a reference run (a target-setting run, not a tuning study's trial)."""
  study = record.get("study")
  return bool(record.get("reference")) or (isinstance(study, int) and study >= REFERENCE_STUDY)


def is_tuning_trial(record: dict) -> bool:
  """A trial of an (integer-numbered) tuning study: what studies, medians and ratios count."""
  return isinstance(record.get("study"), int) and not is_reference(record)


def study_results(records: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
  """(workload, optimizer) -> per study (tuning studies only: `is_tuning_trial`) the best trial
  by time-to-target.

  Ties (e.g. every trial failed) go to the fewer steps, then the lower final metric.
  """
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    if is_tuning_trial(r):
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



# ---------------------------------------------------------------------------------------------
# Ratios to a baseline with their uncertainty over studies.

LEVEL = 0.95  # the confidence level of every interval the harness prints
N_BOOTSTRAP = 10_000
SEED = 0  # every interval and p-value is a pure function of the records


def _median_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """median(a) / median(b) along the last axis, `never` (inf) included: a never-reaching side
  over a reaching one is inf, the converse 0; both never counts as a tie, 1."""
  ma, mb = np.median(a, axis=-1), np.median(b, axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    r = ma / mb
  return np.where(np.isnan(r), 1.0, r)


def bootstrap_ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
                    n_resamples: int = N_BOOTSTRAP, seed: int = SEED) -> tuple[float, float]:
  """The percentile-bootstrap interval of median(a) / median(b) over studies.

  Each side's studies are resampled with replacement independently (a's and b's studies are
  independent draws and seeds: there is no pairing), `n_resamples` times from a fixed seed, and
  the interval is the resampled ratios' (1 - level) / 2 and (1 + level) / 2 order statistics
  (the lower one rounded down, the upper up). The percentile interval, not BCa or the bootstrap-t,
  because the ratio is often infinite or 0 (`never`), where neither a standard error nor BCa's
  acceleration exists, and because its order statistics stay defined there: an interval whose
  upper end is inf is unbounded. Hand-written rather than `scipy.stats.bootstrap`, which refuses
  one-study samples and interpolates its percentiles linearly, so that two infinite neighbours
  give NaN. With few studies the interval is too narrow (it never leaves the observed values),
  which is why a claimed difference also needs `rank_test`'s p (see `compare_to`).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  ra = a[rng.integers(0, len(a), (n_resamples, len(a)))]
  rb = b[rng.integers(0, len(b), (n_resamples, len(b)))]
  boot = _median_ratio(ra, rb)
  tail = (1.0 - level) / 2.0
  return (float(np.quantile(boot, tail, method="lower")),
          float(np.quantile(boot, 1.0 - tail, method="higher")))


def _u_statistic(x, y, axis=-1):
  return stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic


def rank_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 9999,
              seed: int = SEED) -> float:
  """Two-sided p-value of "a's and b's studies come from the same distribution".

  Mann-Whitney's U over the studies' values, `never` (inf) being the worst rank, tied with the
  other nevers: a rank test is well defined where a t-test or a test of log steps is not. The
  p-value is by permutation of the pooled studies (`scipy.stats.permutation_test`), exact when
  there are at most `n_resamples` distinct splits, else from `n_resamples` random ones with a
  fixed seed; exact ties are handled by the permutation, not by a normal approximation. With n
  studies on each side the smallest p is 2 / C(2n, n): 0.33 for 2, 0.1 for 3, 0.029 for 4,
  0.0079 for 5. NaN when a side has a single study (scipy's permutation test needs two).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if min(len(a), len(b)) < 2:
    return math.nan
  pooled = np.concatenate([a, b])
  if np.all(pooled == pooled[0]):
    return 1.0  # one value (e.g. every study never reached): nothing to tell apart
  res = stats.permutation_test((a, b), _u_statistic, permutation_type="independent",
                               vectorized=True, n_resamples=n_resamples,
                               alternative="two-sided", axis=-1, rng=seed)
  return float(min(res.pvalue, 1.0))


def smallest_p(n: int, m: int) -> float:
  """The smallest p `rank_test` can give with `n` and `m` studies: 2 / C(n + m, n) (the two
  most extreme of the equally likely splits), NaN with a single study on a side."""
  if min(n, m) < 2:
    return math.nan
  return min(1.0, 2.0 / math.comb(n + m, n))


def compare_to(records: Sequence[dict], baseline: str, field: str = "steps_to_target",
               alpha: float = 0.01, level: float = LEVEL
               ) -> dict[tuple[str, str], dict]:
  """(workload, optimizer) -> its `field` against the baseline's on that workload.

  Each side's samples are its studies' best trials (`study_results`), so the noise measured is
  that of the whole tuning protocol. Returns per pair: `ratio` (median over studies / the
  baseline's; inf: only the baseline reached the target, 0: only the optimizer did, NaN: neither
  did), `lo`, `hi` (`bootstrap_ratio`), `p` (`rank_test`), `n`, `n_base` (studies), `median`,
  `median_base`, `reached` (the studies of both sides that reached it), and `verdict`: -1
  when the optimizer measurably needs less than the baseline, +1 more, 0 inconclusive
  (`inconclusive_text`); and `alpha`. Measurable means the interval
  excludes 1 and p < alpha: either alone is not enough with the few studies a CPU sweep
  affords (the interval of 2 studies on each side often excludes 1; their smallest p is 0.33).
  """
  results = study_results(records)
  out = {}
  for (w, o), bests in results.items():
    if o == baseline or (w, baseline) not in results:
      continue
    a = [_value(r, field) for r in bests]
    b = [_value(r, field) for r in results[(w, baseline)]]
    ratio = float(_median_ratio(np.array(a), np.array(b)))
    if not (math.isfinite(np.median(a)) or math.isfinite(np.median(b))):
      ratio = math.nan
    lo, hi = bootstrap_ratio(a, b, level)
    p = rank_test(a, b)
    verdict = 0
    if p < alpha and (hi < 1.0 or lo > 1.0):
      verdict = -1 if hi < 1.0 else 1
    out[(w, o)] = {"ratio": ratio, "lo": lo, "hi": hi, "p": p, "n": len(a), "n_base": len(b),
                   "median": float(np.median(a)), "median_base": float(np.median(b)),
                   "reached": int(np.isfinite(a).sum() + np.isfinite(b).sum()),
                   "verdict": verdict, "alpha": alpha}
  return out


def _ratio_num(x: float) -> str:
  return "unbounded" if x == INF else f"{x:.2f}"


def interval_text(c: dict) -> str:
  """`[0.25, 1.60] (p = 0.67)`; an interval without upper end as `[0.40, unbounded]`; with a
  single study on a side `(1 study, no interval)`: a bootstrap over one study is its point."""
  if min(c["n"], c["n_base"]) < 2:
    return "(1 study, no interval)"
  p = "p n/a" if math.isnan(c["p"]) else f"p = {c['p']:.2g}"
  return f"[{_ratio_num(c['lo'])}, {_ratio_num(c['hi'])}] ({p})"


def ratio_text(c: dict, baseline: str) -> str:
  """`0.77x [0.25, 1.60] (p = 0.67)`; `never` / `0x (<baseline> never)` / `both never` for
  the infinite, zero and undefined ratios; `both never (no study reached the target)` without
  an interval where every resample could only be a tie."""
  r = c["ratio"]
  if math.isnan(r) and c.get("reached") == 0:
    return "both never (no study reached the target)"
  if math.isnan(r):
    point = "both never"
  elif r == INF:
    point = "never"
  elif r == 0.0:
    point = f"0x ({baseline} never)"
  else:
    point = f"{r:.2f}x"
  return f"{point} {interval_text(c)}"


def inconclusive_text(c: dict) -> str:
  """Why a cell of `compare_to` claims nothing: `untestable (1 study)`, or `inconclusive (2 and
  3 studies: p cannot go below 0.2)` where the rank test could not have reached alpha whatever
  the data, else `inconclusive` (the interval contains 1, or p is not below alpha)."""
  n, m = c["n"], c["n_base"]
  if min(n, m) < 2:
    return "untestable (1 study)"
  floor = smallest_p(n, m)
  if floor >= c.get("alpha", 0.0):
    return f"inconclusive ({n} and {m} studies: p cannot go below {floor:.2g})"
  return "inconclusive"


def verdict_text(c: dict, field: str = "steps_to_target") -> str:
  """`fewer steps` / `more steps` (`less time` / `more time`) where measurable, else
  `inconclusive_text`."""
  less, more = (("fewer steps", "more steps") if field == "steps_to_target" else
                ("less time", "more time"))
  return {-1: less, 1: more}.get(c["verdict"]) or inconclusive_text(c)


# ---------------------------------------------------------------------------------------------
# Targets from the tuned baseline (AlgoPerf sets each workload's target from its baselines).

TARGET_BUDGET_FRACTION = 0.9  # the target is reached with ~10% of the step budget to spare
TARGET_STUDIES = 4  # ... by the best trial of at least this many studies (of 5)
# A target is never set below the step-0 metric times this: float32 sums resolve ~1e-7 of
# their size, and a target under that measures rounding, not optimization (MDS's stress falls
# to 1e-12 when the embedding is exact).
TARGET_FLOOR = 1e-6


def baseline_target(records: Sequence[dict], workload: str, baseline: str = "adamw") -> dict:
  """The target the rule gives `workload` from `baseline`'s full-budget records.

  Per study, the best value any trial's curve reaches at or before TARGET_BUDGET_FRACTION of the
  step budget; sorted, the TARGET_STUDIES-th best, so that many studies reach it with the budget's
  last tenth to spare; never below TARGET_FLOOR x the median step-0 value.

  Returns {target, per_study (sorted), floor, studies, runs}.
  """
  rs = [r for r in records if r["workload"] == workload and r["optimizer"] == baseline]
  if not rs or not all(r.get("full_budget") for r in rs):
    raise ValueError(f"{workload}: the target rule needs {baseline}'s runs trained to their "
                     "step budget (compare sweep --full_budget)")
  budget = rs[0]["step_budget"]
  best: dict = {}
  starts = []
  for r in rs:
    values = [v for step, _, v in r["curve"]
              if step <= TARGET_BUDGET_FRACTION * budget and v is not None and math.isfinite(v)]
    starts += [v for step, _, v in r["curve"][:1] if step == 0]
    best[r["study"]] = min([best.get(r["study"], INF)] + values)
  per_study = sorted(best.values())
  if len(per_study) < TARGET_STUDIES:
    raise ValueError(f"{workload}: {len(per_study)} studies of {baseline}; the rule needs "
                     f"{TARGET_STUDIES}")
  floor = TARGET_FLOOR * float(np.median(starts)) if starts else 0.0
  return {"target": max(per_study[TARGET_STUDIES - 1], floor), "per_study": per_study,
          "floor": floor, "studies": len(per_study), "runs": len(rs)}


def follows_rule(rule: dict, target: float) -> bool:
  """Whether a config's `target` is `baseline_target`'s `rule` rounded up no further than the
  next study's best (it admits the same studies; 1% above the rule where no study is above)."""
  above = [v for v in rule["per_study"] if v > rule["target"]]
  return rule["target"] <= target < (min(above) if above else 1.01 * rule["target"])
