r"""Speed-ups at several budgets, with intervals, multiplicity and power (issue 39, items 3-4).

  python -m experiments.compare budgets records/ [--baseline=adamw] [--workloads=speedrun]

A trial's record may carry `budget_metrics`: [{"budget": B, <metric>: loss, "train_time_s": s},
...], the end-of-training loss of the same run cooled down (WSD) at each budget B (steps), the
record's `metric` naming the loss (lower is better). Definitions, in the order they are built:

* Best per budget (`best_per_budget`): per study and budget, the lowest loss of the study's
  trials at that budget, and which trial: the best trial is chosen per budget (a short budget's
  best learning rate is not a long one's; Wen et al. 2025 tune per budget too). A diverged
  trial, a None or NaN loss or a missing budget counts as +inf.
* Baseline curve: per budget, the median over the baseline's studies of the per-study best,
  then its running minimum over increasing budgets. The running minimum is the curve's
  monotone envelope: a longer budget can always be cut short to do as well as a shorter one,
  so a bump upward (noise, or a cooldown that hurt) must not make the inverse ambiguous.
* Speed-up (Wen et al. 2025, "Fantastic Pretraining Optimizers and Where to Find Them",
  arXiv 2509.02046, section 3): for optimizer O at budget B, the baseline budget B* whose
  curve value equals O's loss at B (median over O's studies of its per-study best), found by
  linear interpolation in log(budget) between the two budgets that bracket it, divided by B.
  When O's loss is below the curve's value at the baseline's longest budget, B* is only known
  to exceed that budget: the speed-up is a lower bound, longest / B, flagged `lower_bound`
  and printed `>= x` (here "≥ x"). When O's loss is above the curve at its shortest (finite)
  budget, it is an upper bound, shortest / B, flagged `upper_bound` and printed "≤ x". Budgets
  at which the baseline's median diverged are no part of the curve (they end no interval).
* Interval: 95% percentile bootstrap over studies (`bootstrap_speedup`), the baseline's and
  O's studies resampled independently, or, with `paired=True`, the same study indices drawn
  for both (`records.run_seed` gives a (study, trial) the same seed under every optimizer, and
  the studies' Sobol draws share their seed); paired uses the studies both sides have. Every
  replicate is a speed-up with its own flag; an interval end that falls on a bounded replicate
  carries its flag ("[1.10, ≥ 2.00]": the upper end is at least 2), so no end is 0 or
  unbounded because of the baseline's own misses. The order statistics are those of
  `scoring.bootstrap_ratio` (lower one rounded down, upper up), from a fixed seed.
* Loss difference: median over O's studies minus the baseline's, at the same budget, with the
  same bootstrap.
* Tests and multiplicity: per budget a two-sided test of the per-study best losses
  (`test_losses`). By default (`CELL_TEST = "welch"`) Welch's t-test (unpaired) or the paired
  t-test (`scipy.stats.ttest_ind` / `ttest_rel`): a study's best loss is a continuous quantity
  whose seed-to-seed spread is the noise, and with 5 studies a side no rank test can pass Holm's
  correction over a headline's cells: Mann-Whitney's smallest exact p is 2 / C(10, 5) = 0.0079,
  above 0.05 / 24 = 0.0021 for 6 challengers x 4 budgets, so every cell would be inconclusive
  by construction, whatever the data. `"rank"` selects the distribution-free tests instead:
  unpaired, `scoring.rank_test` (Mann-Whitney U, exact permutation p, a diverged study the
  worst rank); paired, `scipy.stats.wilcoxon` on the per-study differences (exact for small n;
  a diverged study's loss replaced by twice the largest finite loss so that it stays the
  worst). A cell in which a study diverged (an infinite loss: no t-test is defined) always
  takes the rank test, and its verdict says so. The family is every tested cell of a headline
  (every challenger x budget of every workload it shows: both model sizes are one family,
  `judge_cells`), and Holm's step-down procedure (Holm 1979)
  controls its family-wise error at `alpha`: written by hand (ten lines) because scipy has only
  false-discovery-rate control (`scipy.stats.false_discovery_control`) and statsmodels is not a
  dependency.
* Power: a cell not rejected is "inconclusive (power P for a 1.25x speed-up)", never "no
  measurable difference". P is simulated (`power`): O's per-study losses are shifted so their
  median is the baseline curve's value at 1.25 B (what a 1.25x speed-up would give), both
  sides' studies are resampled as in the bootstrap, and P is the fraction of simulations whose
  p is at or below the threshold Holm gave that cell (alpha / (m - k) for its rank k of m).
  With 5 studies a side the paired Wilcoxon test cannot reach p < 0.0625: its power is 0; the
  power is the chosen test's.
* Identical by construction (`identical_by_construction`): 8-bit AdamW keeps float32 moments
  on every leaf smaller than `min_quantized_size` (optimizers/quantized.py), so on a model
  without a larger leaf it is AdamW; Shampoo and SOAP give a leaf no factor when it is 1-D or
  `blocking.plan_leaf` says so (every dimension above `max_preconditioner_dim`, or one at
  `graft_only_dim`), so on a model without a factored leaf they are their grafted / Adam
  fallback. Such cells are flagged and neither tested nor counted in Holm's family.
* Steps to target (`steps_to_target`), a second view: the target is the median over the
  baseline's reference runs (`scoring.is_reference`: `"reference": true` or a study >= 1000,
  trained apart from the tuning studies, so that the target is not picked from the very runs
  it then scores) of each run's lowest evaluated loss. Each trial's crossing is interpolated
  linearly between the two evaluations of its `curve` that bracket the target; a study's
  steps are its best trial's; never reaching it is censored at the step budget. The speed-up
  is the baseline's median steps over O's; a censored median is a bound, not infinity: O's
  median censored gives "≤ budget_base / ..." (an upper bound), the baseline's own censored
  median a lower bound, both censored no figure. Intervals carry the flags as above; the test
  is the same rank test with never as the worst rank.

The regime line (`regime`): parameters N (from the record's `params` field, else counted from
the workload's model by `jax.eval_shape`) and tokens per parameter at each budget,
budget x tokens_per_step / N, tokens_per_step = train.batch_size x data.seq_len of the workload
config (or the record's `tokens_per_step`). Published anchors printed beside the table: Wen et
al. 2025, speed-ups over well-tuned AdamW of about 1.4x at 0.1B parameters shrinking to about
1.1x at 1.2B; modded-nanogpt's optimizer track: tuned Muon 3,250 steps vs AdamW 5,625 to the
same loss (1.73x).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np
from scipy import stats

from experiments.harness import scoring

INF = math.inf
N_BOOTSTRAP = 2_000  # each replicate inverts a curve: 2k keeps a headline under a few seconds
ALPHA = 0.05  # family-wise error rate of a headline (Holm)
TARGET_SPEEDUP = 1.25  # the effect the power of an inconclusive cell is stated for
N_POWER = 200
MIN_STUDIES = 5  # a cell from fewer studies is marked
CELL_TEST = "welch"  # or "rank": the per-cell test (module docstring)
CELL_TESTS = ("welch", "rank")
# Studies at or above this are reference runs (steps-to-target targets), not tuning studies.
EXACT, LOWER, UPPER = "", "lower_bound", "upper_bound"


def _loss(value) -> float:
  """A loss as a float; None, NaN and diverged (+/-inf) are +inf, the worst."""
  if value is None:
    return INF
  v = float(value)
  return v if math.isfinite(v) else INF


# ---------------------------------------------------------------------------------------------
# Best per budget.

@dataclasses.dataclass(frozen=True)
class BudgetTable:
  """One optimizer's per-study bests on one workload.

  budgets: increasing budgets (steps); studies: study ids; loss[i, j]: study i's best loss at
  budgets[j] (+inf: every trial diverged or lacked it); trial[i, j]: that trial (-1: none).
  """
  budgets: np.ndarray
  studies: tuple
  loss: np.ndarray
  trial: np.ndarray

  def median(self) -> np.ndarray:
    """Median over studies per budget (+inf when half or more of the studies diverged)."""
    return np.median(self.loss, axis=0)

  def select(self, studies: Sequence) -> "BudgetTable":
    """The same table restricted to `studies` (in that order)."""
    idx = [self.studies.index(s) for s in studies]
    return BudgetTable(self.budgets, tuple(studies), self.loss[idx], self.trial[idx])


def has_budgets(record: dict) -> bool:
  """Whether the record carries budget_metrics."""
  return bool(record.get("budget_metrics"))


def best_per_budget(records: Sequence[dict], workload: str, optimizer: str) -> BudgetTable | None:
  """Per study and budget, the best trial's loss and which trial (module docstring).

  Only tuning studies (integer, not reference runs) with budget_metrics count; None when the
  optimizer has none on the workload.
  """
  rs = [r for r in records if r["workload"] == workload and r["optimizer"] == optimizer
        and isinstance(r.get("study"), int) and not scoring.is_reference(r) and has_budgets(r)]
  if not rs:
    return None
  budgets = sorted({int(e["budget"]) for r in rs for e in r["budget_metrics"]})
  studies = sorted({r["study"] for r in rs})
  loss = np.full((len(studies), len(budgets)), INF)
  trial = np.full((len(studies), len(budgets)), -1, dtype=np.int64)
  for r in rs:
    i = studies.index(r["study"])
    for e in r["budget_metrics"]:
      j = budgets.index(int(e["budget"]))
      v = _loss(e.get(r["metric"]))
      # Ties go to the lower trial index, so the choice does not depend on record order.
      if v < loss[i, j] or (v == loss[i, j] and (trial[i, j] < 0 or r["trial"] < trial[i, j])):
        loss[i, j], trial[i, j] = v, r["trial"]
  return BudgetTable(np.array(budgets, np.float64), tuple(studies), loss, trial)


# ---------------------------------------------------------------------------------------------
# The speed-up along the baseline's curve.

def envelope(curve: np.ndarray) -> np.ndarray:
  """The running minimum over increasing budgets (the module docstring says why)."""
  return np.minimum.accumulate(np.asarray(curve, np.float64), axis=-1)


def baseline_budget(budgets: np.ndarray, curve: np.ndarray, loss: float) -> tuple[float, str]:
  """(B*, flag): the budget at which the baseline's running-minimum `curve` reaches `loss`,
  linear in log(budget); flag LOWER when `loss` is below the curve's end (B* >= the longest
  budget), UPPER when above its first finite value (B* <= that budget); (NaN, EXACT) when the
  curve is +inf everywhere (the baseline diverged at every budget: no figure)."""
  y = envelope(curve)
  finite = np.isfinite(y)
  if not finite.any():
    return math.nan, EXACT
  first = int(np.argmax(finite))  # budgets before it diverged: no part of the curve
  x, y = np.log(budgets[first:]), y[first:]
  if loss < y[-1]:
    return float(budgets[-1]), LOWER
  if loss > y[0]:
    return float(budgets[first]), UPPER
  j = int(np.argmax(y <= loss))  # the first budget at or below the loss
  if y[j] == loss:  # on a grid point: that budget exactly (no exp(log) rounding)
    return float(budgets[first + j]), EXACT
  t = (y[j - 1] - loss) / (y[j - 1] - y[j])  # y[j - 1] > loss >= y[j], so 0 < t <= 1
  return float(np.exp(x[j - 1] + t * (x[j] - x[j - 1]))), EXACT


def speedup_at(base: BudgetTable, chal: BudgetTable, budget: float) -> tuple[float, str]:
  """(speed-up, flag) of the challenger at `budget` against the baseline's median curve."""
  j = int(np.flatnonzero(chal.budgets == budget)[0])
  b_star, flag = baseline_budget(base.budgets, base.median(), float(chal.median()[j]))
  return b_star / budget, flag


def _medians(loss: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """[resamples, budgets]: the median over the resampled studies `idx` [resamples, n]."""
  return np.median(loss[idx], axis=1)


def _resample(n_base: int, n_chal: int, paired: bool, n: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Study indices [n, studies] for each side: one draw for both when paired."""
  rng = np.random.default_rng(seed)
  ib = rng.integers(0, n_base, (n, n_base))
  ic = ib if paired else rng.integers(0, n_chal, (n, n_chal))
  return ib, ic


def _paired_tables(base: BudgetTable, chal: BudgetTable) -> tuple[BudgetTable, BudgetTable]:
  common = [s for s in base.studies if s in chal.studies]
  if not common:
    raise ValueError("paired: the baseline and the challenger share no study")
  return base.select(common), chal.select(common)


def _ends(values: np.ndarray, flags: np.ndarray, level: float) -> tuple[float, str, float, str]:
  """The percentile interval's order statistics (as scoring.bootstrap_ratio: the lower
  rounded down, the upper up) and the flag each end carries: a bound when any replicate equal
  to that end's value is one (conservative)."""
  keep = ~np.isnan(values)
  values, flags = values[keep], flags[keep]
  if not len(values):
    return math.nan, EXACT, math.nan, EXACT
  tail = (1.0 - level) / 2.0
  lo = float(np.quantile(values, tail, method="lower"))
  hi = float(np.quantile(values, 1.0 - tail, method="higher"))

  def flag_of(v):
    at = set(flags[values == v].tolist()) - {EXACT}
    return UPPER if UPPER in at else (LOWER if LOWER in at else EXACT)
  return lo, flag_of(lo), hi, flag_of(hi)


def bootstrap_speedup(base: BudgetTable, chal: BudgetTable, budget: float, paired: bool = False,
                      level: float = scoring.LEVEL, n_resamples: int = N_BOOTSTRAP,
                      seed: int = scoring.SEED) -> dict:
  """The speed-up at `budget` and the loss difference, each with its percentile-bootstrap
  interval over studies (module docstring). Returns {speedup, flag, lo, lo_flag, hi,
  hi_flag, diff, diff_lo, diff_hi, n_base, n}."""
  if paired:
    base, chal = _paired_tables(base, chal)
  j = int(np.flatnonzero(chal.budgets == budget)[0])
  point, flag = speedup_at(base, chal, budget)
  ib, ic = _resample(len(base.studies), len(chal.studies), paired, n_resamples, seed)
  curves = _medians(base.loss, ib)
  chal_med = _medians(chal.loss[:, [j]], ic)[:, 0]
  vals, flags = np.empty(n_resamples), np.empty(n_resamples, dtype=object)
  for k in range(n_resamples):
    b_star, flags[k] = baseline_budget(base.budgets, curves[k], chal_med[k])
    vals[k] = b_star / budget
  lo, lo_flag, hi, hi_flag = _ends(vals, flags, level)
  out = {"speedup": point, "flag": flag, "lo": lo, "lo_flag": lo_flag, "hi": hi,
         "hi_flag": hi_flag, "n_base": len(base.studies), "n": len(chal.studies)}
  jb = np.flatnonzero(base.budgets == budget)
  if len(jb):
    with np.errstate(invalid="ignore"):
      diffs = chal_med - curves[:, jb[0]]
      out["diff"] = float(np.median(chal.loss[:, j]) - np.median(base.loss[:, jb[0]]))
    tail = (1.0 - level) / 2.0
    d = diffs[~np.isnan(diffs)]
    out["diff_lo"] = float(np.quantile(d, tail, method="lower")) if len(d) else math.nan
    out["diff_hi"] = float(np.quantile(d, 1 - tail, method="higher")) if len(d) else math.nan
  else:
    out["diff"] = out["diff_lo"] = out["diff_hi"] = math.nan
  return out


# ---------------------------------------------------------------------------------------------
# Tests, Holm, power.

def _finite_worst(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """x, y with +inf replaced by twice the largest finite |value| (1 if none): still the worst,
  but a finite difference for the signed-rank test."""
  both = np.concatenate([x, y])
  fin = both[np.isfinite(both)]
  big = 2.0 * float(np.max(np.abs(fin))) if len(fin) else 1.0
  return np.where(np.isfinite(x), x, big), np.where(np.isfinite(y), y, big)


def test_losses(chal: Sequence[float], base: Sequence[float], paired: bool = False,
                test: str | None = None) -> float:
  """Two-sided p of "the challenger's per-study losses and the baseline's differ" (pairs in
  study order when `paired`). `test` (default `CELL_TEST`): "welch", Welch's t-test, or paired,
  the t-test of the differences; "rank", Mann-Whitney (`scoring.rank_test`), or paired,
  Wilcoxon's signed-rank test (equal pairs dropped). A side holding an infinite loss (a study
  whose every trial diverged) takes the rank test whatever `test` says. 1.0 when the two sides
  hold identical values (nothing to tell apart); NaN with fewer than 2 studies on a side."""
  test = test or CELL_TEST
  if test not in CELL_TESTS:
    raise ValueError(f"test must be one of {CELL_TESTS}, not {test!r}")
  a, b = np.asarray(chal, np.float64), np.asarray(base, np.float64)
  if paired and len(a) != len(b):
    raise ValueError("paired: both sides need the same studies")
  if min(len(a), len(b)) < 2:
    return math.nan
  finite = bool(np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
  if test == "welch" and finite:
    if paired:
      d = a - b
      if np.all(d == d[0]):  # no spread: t is 0 / 0 or +-inf
        return 1.0 if d[0] == 0 else 0.0
      return float(stats.ttest_rel(a, b, alternative="two-sided").pvalue)
    if a.var() == 0 and b.var() == 0:
      return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="two-sided").pvalue)
  if not paired:
    return scoring.rank_test(a, b)
  a, b = _finite_worst(a, b)
  if np.all(a == b):
    return 1.0
  return float(stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


test_losses.__test__ = False  # a library function, not a pytest test


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
  """Holm's step-down procedure: (adjusted p, reject, each p's threshold alpha / (m - k)).

  Sorted ascending, p_(k) (k from 0) is compared with alpha / (m - k); the first that fails
  stops the rejections. Adjusted p_(k) = max_{i <= k} min(1, (m - i) p_(i)). NaN p-values (an
  untestable cell) are no part of the family (m counts the others) and are never rejected.
  """
  p = np.asarray(pvalues, np.float64)
  ok = np.flatnonzero(~np.isnan(p))
  m = len(ok)
  adjusted = np.full(len(p), math.nan)
  threshold = np.full(len(p), math.nan)
  reject = np.zeros(len(p), bool)
  order = ok[np.argsort(p[ok], kind="stable")]
  running = 0.0
  still = True
  for k, i in enumerate(order):
    running = max(running, min(1.0, (m - k) * p[i]))
    adjusted[i] = running
    threshold[i] = alpha / (m - k)
    still = still and p[i] <= threshold[i]
    reject[i] = still
  return adjusted, reject, threshold


def shifted_curve_value(base: BudgetTable, budget: float, speedup: float = TARGET_SPEEDUP
                        ) -> float:
  """The baseline curve's (running-minimum) value at speedup x budget, linear in log(budget);
  NaN beyond its longest budget (a 1.25x speed-up there cannot be simulated)."""
  y = envelope(base.median())
  x = np.log(base.budgets)
  at = math.log(speedup * budget)
  if at > x[-1] + 1e-12 or not np.isfinite(y).any():
    return math.nan
  return float(np.interp(at, x, y))


def power(base: BudgetTable, chal: BudgetTable, budget: float, threshold: float,
          paired: bool = False, speedup: float = TARGET_SPEEDUP, n_sim: int = N_POWER,
          seed: int = scoring.SEED, test: str | None = None) -> float:
  """P(p <= threshold) if the challenger had a `speedup`x speed-up at `budget` (module
  docstring); NaN when the shifted loss lies beyond the baseline's budgets."""
  if paired:
    base, chal = _paired_tables(base, chal)
  jb = np.flatnonzero(base.budgets == budget)
  jc = int(np.flatnonzero(chal.budgets == budget)[0])
  goal = shifted_curve_value(base, budget, speedup)
  if not len(jb) or math.isnan(goal) or not math.isfinite(np.median(chal.loss[:, jc])):
    return math.nan
  b = base.loss[:, jb[0]]
  c = chal.loss[:, jc] - np.median(chal.loss[:, jc]) + goal
  ib, ic = _resample(len(b), len(c), paired, n_sim, seed + 1)
  hits = sum(test_losses(c[ic[k]], b[ib[k]], paired, test) <= threshold for k in range(n_sim))
  return hits / n_sim


# ---------------------------------------------------------------------------------------------
# Identical by construction.

def identical_by_construction(optimizer: str, shapes: Sequence[Sequence[int]],
                              config: dict | None = None) -> str | None:
  """Why `optimizer` is the baseline (AdamW) by construction on a model whose parameters have
  `shapes`, or None when it is not (or is not an optimizer with such a rule).

  config: the optimizer's block (its hyperparameters; default its CPU speedrun config's,
  `records.base_hparams`): adamw_8bit's `min_quantized_size`, Shampoo's and SOAP's
  `block_size`, `max_preconditioner_dim`, `graft_only_dim`, `merge_small_dims`.
  """
  if optimizer not in ("adamw_8bit", "shampoo", "soap"):
    return None
  if config is None:
    from experiments.harness import records as records_lib  # pylint: disable=g-import-not-at-top
    config = records_lib.base_hparams(optimizer)
  if optimizer == "adamw_8bit":
    least = int(config.get("min_quantized_size", 4096))
    if all(math.prod(s) < least for s in shapes):
      return f"no leaf has >= {least} elements (min_quantized_size): every moment is float32"
    return None
  from optimizers.shampoo import blocking  # pylint: disable=g-import-not-at-top
  options = {k: config[k] for k in ("block_size", "max_preconditioner_dim", "graft_only_dim",
                                    "merge_small_dims") if k in config}
  if all(blocking.plan_leaf(s, **options) is None for s in shapes):
    return "no leaf gets a Kronecker factor (1-D, or every dimension above the limits)"
  return None


def workload_config(workload: str):
  """The workload's trainer config (experiments/harness/runs.WORKLOAD_CONFIGS)."""
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  from experiments.harness import runs  # pylint: disable=g-import-not-at-top
  return configs_util.load(os.path.join(runs._ROOT, runs.WORKLOAD_CONFIGS[workload]))  # pylint: disable=protected-access


def param_shapes(workload: str) -> list[tuple[int, ...]] | None:
  """The parameter shapes of a GPT workload's model, by `jax.eval_shape` (no arrays are made);
  None for a workload that is not a GPT (speedrun, gpt_deep) or not known."""
  try:
    config = workload_config(workload)
  except (KeyError, ImportError, FileNotFoundError):
    return None
  if config.get("workload", "speedrun") not in ("speedrun", "gpt_deep"):
    return None
  import jax  # pylint: disable=g-import-not-at-top
  from models import gpt  # pylint: disable=g-import-not-at-top
  values = {k: v for k, v in config.model.to_dict().items() if k != "dtype"}
  cfg = gpt.GPTConfig.from_config(values)
  tree = jax.eval_shape(lambda key: gpt.init_params(cfg, key), jax.random.key(0))
  return [tuple(x.shape) for x in jax.tree.leaves(tree)]


def regime(records: Sequence[dict], workload: str) -> dict | None:
  """{params, tokens_per_step}: from the records' `params` / `tokens_per_step` fields when
  present, else counted from the workload's config (`param_shapes`; train.batch_size x
  data.seq_len); None when neither is known."""
  rs = [r for r in records if r["workload"] == workload]
  params = next((r["params"] for r in rs if r.get("params")), None)
  tps = next((r["tokens_per_step"] for r in rs if r.get("tokens_per_step")), None)
  if params is None or tps is None:
    shapes = param_shapes(workload)
    if shapes is None:
      return None
    config = workload_config(workload)
    params = params or sum(math.prod(s) for s in shapes)
    tps = tps or int(config.train.batch_size) * int(config.data.seq_len)
  return {"params": int(params), "tokens_per_step": int(tps)}


# ---------------------------------------------------------------------------------------------
# Steps to target.

def crossing(curve: Sequence[Sequence[float]], target: float) -> float:
  """The step at which `curve` ([[step, time_s, metric], ...]) first reaches `target`, linear
  between the two evaluations that bracket it; +inf when it never does (a None metric counts
  as not reached)."""
  prev = None
  for step, _, value in curve:
    v = _loss(value)
    if v <= target:
      if prev is None or not math.isfinite(prev[1]):
        return float(step)
      s0, v0 = prev
      return float(s0 + (v0 - target) / (v0 - v) * (step - s0))
    prev = (float(step), v)
  return INF


def reference_target(records: Sequence[dict], workload: str, baseline: str = "adamw") -> float:
  """The median over the baseline's reference runs (`scoring.is_reference`) of each run's lowest
  evaluated loss; NaN without reference runs."""
  best = [min(_loss(v) for _, _, v in r["curve"]) for r in records
          if r["workload"] == workload and r["optimizer"] == baseline and scoring.is_reference(r)
          and r.get("curve")]
  return float(np.median(best)) if best else math.nan


def study_steps(records: Sequence[dict], workload: str, optimizer: str,
                target: float) -> tuple[dict, float]:
  """({study: its best trial's interpolated steps to target, +inf: never}, step budget)."""
  out: dict = {}
  budget = 0.0
  for r in records:
    if (r["workload"] != workload or r["optimizer"] != optimizer or scoring.is_reference(r)
        or not isinstance(r.get("study"), int)):
      continue
    budget = max(budget, float(r["step_budget"]))
    out[r["study"]] = min(out.get(r["study"], INF), crossing(r["curve"], target))
  return out, budget


def _censored_ratio(base: np.ndarray, chal: np.ndarray, budget_base: float,
                    budget_chal: float) -> tuple[float, str]:
  """median(base) / median(chal) along the last axis, a censored (+inf) median replaced by its
  step budget and the ratio flagged: O's censored, an upper bound; the baseline's, a lower
  bound; both, NaN."""
  mb, mc = float(np.median(base)), float(np.median(chal))
  if math.isinf(mb) and math.isinf(mc):
    return math.nan, EXACT
  if math.isinf(mc):
    return mb / budget_chal, UPPER
  if math.isinf(mb):
    return budget_base / mc, LOWER
  return (mb / mc if mc > 0 else INF), EXACT


def steps_to_target(records: Sequence[dict], workload: str, optimizer: str,
                    baseline: str = "adamw", target: float | None = None,
                    paired: bool = False, level: float = scoring.LEVEL,
                    n_resamples: int = N_BOOTSTRAP, seed: int = scoring.SEED) -> dict | None:
  """The steps-to-target speed-up (baseline's median steps / the optimizer's) with its flag,
  bootstrap interval with flagged ends, and rank-test p; None without a target or runs."""
  target = reference_target(records, workload, baseline) if target is None else target
  if math.isnan(target):
    return None
  b, bb = study_steps(records, workload, baseline, target)
  c, bc = study_steps(records, workload, optimizer, target)
  if not b or not c:
    return None
  if paired:
    common = sorted(set(b) & set(c))
    b, c = {s: b[s] for s in common}, {s: c[s] for s in common}
  vb, vc = np.array([b[s] for s in sorted(b)]), np.array([c[s] for s in sorted(c)])
  point, flag = _censored_ratio(vb, vc, bb, bc)
  ib, ic = _resample(len(vb), len(vc), paired, n_resamples, seed)
  reps = [_censored_ratio(vb[ib[k]], vc[ic[k]], bb, bc) for k in range(n_resamples)]
  vals = np.array([v for v, _ in reps])
  flags = np.array([f for _, f in reps], dtype=object)
  lo, lo_flag, hi, hi_flag = _ends(vals, flags, level)
  return {"target": target, "speedup": point, "flag": flag, "lo": lo, "lo_flag": lo_flag,
          "hi": hi, "hi_flag": hi_flag, "p": test_losses(vc, vb, paired),
          "median": float(np.median(vc)), "median_base": float(np.median(vb)),
          "n": len(vc), "n_base": len(vb)}


# ---------------------------------------------------------------------------------------------
# The headline.

def compare_budgets(records: Sequence[dict], workload: str, baseline: str = "adamw",
                    paired: bool = False, alpha: float = ALPHA,
                    shapes: Sequence[Sequence[int]] | None = None,
                    n_resamples: int = N_BOOTSTRAP, n_power: int = N_POWER,
                    test: str | None = None, judge: bool = True) -> dict:
  """Every challenger x budget cell of a workload against the baseline: the speed-up and loss
  difference with intervals, p, and (`judge`) Holm over the workload's tested cells, verdict
  and power; `judge=False` leaves those to `judge_cells` over a whole headline's workloads.

  Returns {budgets, baseline, optimizers, cells: {(optimizer, budget): cell}, n_base, test,
  family (the size of the Holm family the verdicts come from)}; a cell is
  `bootstrap_speedup`'s dict plus p, p_holm, reject, threshold, power, identical (the reason,
  or None), verdict (text) and `test`, the test that gave p ("rank" where a study diverged).
  """
  test = test or CELL_TEST
  base = best_per_budget(records, workload, baseline)
  if base is None:
    raise ValueError(f"{workload}: no {baseline} records with budget_metrics")
  optimizers = sorted({r["optimizer"] for r in records if r["workload"] == workload
                       and has_budgets(r)} - {baseline})
  cells: dict = {}
  tables: dict = {}
  for o in optimizers:
    chal = best_per_budget(records, workload, o)
    if chal is None:
      continue
    tables[o] = chal
    same = identical_by_construction(o, shapes) if shapes is not None else None
    for budget in chal.budgets:
      cell = bootstrap_speedup(base, chal, budget, paired, n_resamples=n_resamples)
      cell["identical"] = same
      cell["p"] = math.nan
      cell["test"] = None
      if same is None and budget in base.budgets:
        b_tab, c_tab = _paired_tables(base, chal) if paired else (base, chal)
        jb = int(np.flatnonzero(b_tab.budgets == budget)[0])
        jc = int(np.flatnonzero(c_tab.budgets == budget)[0])
        xc, xb = c_tab.loss[:, jc], b_tab.loss[:, jb]
        cell["p"] = test_losses(xc, xb, paired, test)
        cell["test"] = test if np.all(np.isfinite(xc)) and np.all(np.isfinite(xb)) else "rank"
      cells[(o, float(budget))] = cell
  res = {"budgets": sorted({k[1] for k in cells}), "baseline": baseline,
         "optimizers": list(tables), "cells": cells, "n_base": len(base.studies),
         "test": test, "_judge": (base, tables, paired, n_power)}
  if judge:
    judge_cells([res], alpha)
  return res


def _tested_here(res: dict) -> int:
  return sum(not math.isnan(c["p"]) for c in res["cells"].values())


def _family_shared(res: dict) -> bool:
  """Whether other workloads' cells are in this workload's Holm family (`judge_cells`)."""
  return res["family"] != _tested_here(res)


def _family_text(res: dict) -> str:
  """`24 tested cells` for a headline of one workload; `32 tested cells of the headline (24 of
  them here)` when other workloads' cells share the Holm family."""
  if not _family_shared(res):
    return f"{res['family']} tested cells"
  return f"{res['family']} tested cells of the headline ({_tested_here(res)} of them here)"


def judge_cells(family: Sequence[dict], alpha: float = ALPHA) -> int:
  """Holm's procedure over every tested cell of `family` (`compare_budgets(judge=False)`'s
  dicts: the workloads one headline shows, so that both model sizes' cells are one family
  whose family-wise error is `alpha`), then each cell's p_holm, reject, threshold, verdict and,
  where not rejected, its power at that threshold. Sets each dict's `family` and returns it."""
  keys = [(res, k) for res in family for k in res["cells"]]
  adjusted, reject, threshold = holm([res["cells"][k]["p"] for res, k in keys], alpha)
  size = int(np.sum(~np.isnan(adjusted)))
  for res in family:
    res["family"] = size
  for (res, k), pa, rej, th in zip(keys, adjusted, reject, threshold):
    base, tables, paired, n_power = res["_judge"]
    baseline, test, c = res["baseline"], res["test"], res["cells"][k]
    c.update(p_holm=float(pa), reject=bool(rej), threshold=float(th), power=math.nan)
    if c["identical"]:
      c["verdict"] = f"identical to {baseline} by construction: not tested"
    elif math.isnan(c["p"]):
      c["verdict"] = "untestable (fewer than 2 studies a side, or no baseline at this budget)"
    elif rej:
      better = c["diff"] < 0 or (math.isnan(c["diff"]) and c["speedup"] > 1)
      c["verdict"] = (f"{'lower' if better else 'higher'} loss than {baseline} "
                      f"(Holm p = {pa:.2g}" + (", rank test: a study diverged" if
                                               c["test"] != test else "") + ")")
    else:
      c["power"] = power(base, tables[k[0]], k[1], th, paired, n_sim=n_power, test=test)
      if math.isnan(c["power"]):
        c["verdict"] = (f"inconclusive (power for a {TARGET_SPEEDUP:g}x speed-up n/a: "
                        f"{TARGET_SPEEDUP:g} x {k[1]:g} steps is beyond {baseline}'s budgets)")
      else:
        c["verdict"] = (f"inconclusive (power {c['power']:.2f} for a {TARGET_SPEEDUP:g}x "
                        "speed-up)")
  return size


def _num(v: float, flag: str = EXACT) -> str:
  mark = {LOWER: "≥ ", UPPER: "≤ ", EXACT: ""}[flag]
  return "n/a" if math.isnan(v) else f"{mark}{v:.2f}"


def speedup_text(c: dict) -> str:
  """`1.32x [1.10, 1.61]`, bounds as `≥ 2.00x [1.50, ≥ 2.00]`; a trailing `*` marks a cell
  from fewer than MIN_STUDIES studies on either side, and a cell of one study has no
  interval (`1.32x (1 study, no interval)*`)."""
  few = "*" if min(c["n"], c["n_base"]) < MIN_STUDIES else ""
  if math.isnan(c["speedup"]):
    return f"n/a ({'baseline diverged'}){few}"
  if min(c["n"], c["n_base"]) < 2:  # one study: a bootstrap over it is the point itself
    return f"{_num(c['speedup'], c['flag'])}x (1 study, no interval){few}"
  return (f"{_num(c['speedup'], c['flag'])}x [{_num(c['lo'], c['lo_flag'])}, "
          f"{_num(c['hi'], c['hi_flag'])}]{few}")


def diff_text(c: dict) -> str:
  """`-0.041 [-0.062, -0.020]` (the challenger's loss minus the baseline's); a cell of one
  study has no interval, as in `speedup_text` (a bootstrap over it is the point itself)."""
  if math.isnan(c["diff"]):
    return "n/a"
  if min(c["n"], c["n_base"]) < 2:
    return f"{c['diff']:+.3g} (1 study, no interval)"
  return f"{c['diff']:+.3g} [{c['diff_lo']:+.3g}, {c['diff_hi']:+.3g}]"


ANCHORS = ("Published anchors: Wen et al. 2025 (arXiv 2509.02046) measure speed-ups over "
           "well-tuned AdamW of about 1.4x at 0.1B parameters, shrinking to about 1.1x at 1.2B; "
           "modded-nanogpt's optimizer track: tuned Muon reaches the target in 3,250 steps "
           "against AdamW's 5,625 (1.73x).")


def coverage(records: Sequence[dict], workload: str) -> dict[str, tuple[int, int]]:
  """{optimizer: (most trials in one study, studies)} over a workload's tuning records with
  budget_metrics (reference runs excluded): what each optimizer's figures rest on."""
  per: dict[str, dict] = {}
  for r in records:
    if (r["workload"] == workload and has_budgets(r) and isinstance(r.get("study"), int)
        and not scoring.is_reference(r)):
      per.setdefault(r["optimizer"], {}).setdefault(r["study"], set()).add(r["trial"])
  return {o: (max(len(t) for t in studies.values()), len(studies))
          for o, studies in sorted(per.items())}


def coverage_text(records: Sequence[dict], workload: str, baseline: str = "adamw") -> str:
  """`adamw 6 x 5, muon 6 x 5, ...` (trials per study x studies of complete studies), the
  baseline first, then the incomplete studies left out (`complete_studies`), if any."""
  kept, incomplete = complete_studies(records)
  cov = coverage(kept, workload)
  order = sorted(cov, key=lambda o: (o != baseline, o))
  text = ", ".join(f"{o} {cov[o][0]} x {cov[o][1]}" for o in order)
  left = [n.split(": ", 1)[1] for n in incomplete if n.startswith(workload + ": ")]
  if left:
    text += "; left out until complete (a sweep in progress): " + ", ".join(left)
  return text


def complete_studies(records: Sequence[dict]) -> tuple[list[dict], list[str]]:
  """(records, left out): the tuning records of (workload, optimizer, study) groups holding
  as many trials as a study of the workload should (the records' `trials_per_study`, the
  sweep's plan; for records without it, the workload's fullest study), and one `optimizer
  study s (k of n trials)` per group left out. A study's best trial is only a best once all its
  trials ran: while a sweep is in progress, a study of 1 of 6 trials would be compared against
  studies of 6. Reference runs and records without budget_metrics pass through."""
  groups: dict[tuple, set] = {}
  full: dict[str, int] = {}
  for r in records:
    if has_budgets(r) and isinstance(r.get("study"), int) and not scoring.is_reference(r):
      groups.setdefault((r["workload"], r["optimizer"], r["study"]), set()).add(r["trial"])
      full[r["workload"]] = max(full.get(r["workload"], 0), int(r.get("trials_per_study") or 0))
  for (w, _, _), trials in groups.items():
    full[w] = max(full[w], len(trials))
  short = {k for k, trials in groups.items() if len(trials) < full[k[0]]}
  kept = [r for r in records
          if (r["workload"], r["optimizer"], r.get("study")) not in short
          or not has_budgets(r) or scoring.is_reference(r)]
  notes = [f"{w}: {o} study {s} ({len(groups[(w, o, s)])} of {full[w]} trials)"
           for w, o, s in sorted(short)]
  return kept, notes


def best_trial(records: Sequence[dict], workload: str, optimizer: str) -> dict | None:
  """The tuned configuration reference runs repeat: among the optimizer's complete tuning
  studies (`complete_studies`), the trial with the lowest loss at its longest budget (records
  with budget_metrics) or the lowest `final_metric` (others); ties to the lower (study, trial).
  None without one."""
  kept = complete_studies(records)[0]
  rs = [r for r in kept if r["workload"] == workload and r["optimizer"] == optimizer
        and scoring.is_tuning_trial(r)]

  def loss(r):
    if has_budgets(r):
      last = max(r["budget_metrics"], key=lambda e: e["budget"])
      return _loss(last.get(r["metric"]))
    return _loss(r.get("final_metric"))

  rs = [r for r in rs if math.isfinite(loss(r))]
  return min(rs, key=lambda r: (loss(r), r["study"], r["trial"])) if rs else None


def results(records: Sequence[dict], workloads: Sequence[str] | None = None,
            baseline: str = "adamw", paired: bool = False, alpha: float = ALPHA,
            shapes_fn=param_shapes, **kwargs) -> dict[str, dict | str]:
  """{workload: `compare_budgets`' dict plus its `shapes`, or the sentence saying why there is
  none} for every workload (default: each with budget_metrics); computed once and rendered by
  `headline`, `readme_headline` and the plots. Only complete studies count
  (`complete_studies`); each entry's `incomplete` lists those left out."""
  everything = records
  records, incomplete = complete_studies(records)
  with_b = [r for r in records if has_budgets(r)]
  short = [r for r in everything if has_budgets(r) and not any(r is k for k in with_b)]
  names = sorted({r["workload"] for r in everything if has_budgets(r)})
  out: dict[str, dict | str] = {}
  for w in workloads or names:
    if w not in names:
      out[w] = "No records with budget_metrics."
      continue
    if not any(r["workload"] == w for r in with_b):  # a sweep's first study under way
      left = [n.split(": ", 1)[1] for n in incomplete if n.startswith(w + ": ")]
      out[w] = ("No complete study yet (a sweep in progress): " + ", ".join(left) + ".")
      continue
    shapes = shapes_fn(w)
    try:
      res = compare_budgets(with_b, w, baseline, paired, alpha, shapes, judge=False, **kwargs)
    except ValueError as e:
      msg = str(e).removeprefix(f"{w}: ")  # the workload heads its entry already
      out[w] = msg[:1].upper() + msg[1:] + "."
      continue
    if not res["budgets"]:  # only the baseline's records so far (a sweep in progress)
      others = sorted({r["optimizer"] for r in with_b if r["workload"] == w} - {baseline})
      out[w] = (f"No challenger with records beside {baseline} yet"
                + (f" ({', '.join(others)}: no budget in common)" if others else "")
                + f". Trials per study x studies: {coverage_text(with_b + short, w, baseline)}.")
      continue
    res.update(shapes=shapes,
               incomplete=[n.split(": ", 1)[1] for n in incomplete if n.startswith(w + ": ")])
    out[w] = res
  # One Holm family for the whole headline: every tested cell of every workload shown.
  judge_cells([res for res in out.values() if isinstance(res, dict)], alpha)
  return out


def regime_text(reg: dict | None, budgets: Sequence[float]) -> str:
  """`853,120 parameters, 4,096 tokens per step; tokens per parameter at each budget: 50:
  0.24, ...` ('' when the regime is unknown)."""
  if not reg:
    return ""
  tpp = ", ".join(f"{b:g}: {b * reg['tokens_per_step'] / reg['params']:.3g}" for b in budgets)
  return (f"{reg['params']:,} parameters, {reg['tokens_per_step']:,} tokens per step; tokens "
          f"per parameter at each budget: {tpp}")


def command(records_dir: str, baseline: str = "adamw", paired: bool = False,
            workload: str | None = None, test: str | None = None) -> str:
  """The command line that regenerates a workload's figures (all workloads without one);
  `compare budgets` pairs studies unless told `--nopaired`."""
  return (f"python -m experiments.compare budgets {records_dir} --baseline={baseline}"
          + (f" --workloads={workload}" if workload else "") + ("" if paired else " --nopaired")
          + (f" --cell_test={test}" if test and test != CELL_TEST else ""))


def headline(records: Sequence[dict], records_dir: str, workloads: Sequence[str] | None = None,
             baseline: str = "adamw", paired: bool = False, alpha: float = ALPHA,
             shapes_fn=param_shapes, regime_fn=regime, computed: dict | None = None,
             **kwargs) -> str:
  """Markdown: per workload with budget_metrics the regime line, the speed-up, loss-difference
  and verdict tables, the steps-to-target view when reference runs exist, the command that
  regenerates it; the published anchors last. `shapes_fn(workload)` / `regime_fn(records,
  workload)` are injectable (tests; a workload without a model to count); `computed` is
  `results`' dict when the caller has it already."""
  with_b = [r for r in records if has_budgets(r)]
  skipped = len(records) - len(with_b)
  lines = []
  if skipped:
    lines += [f"({skipped} records without budget_metrics skipped.)", ""]
  if computed is None:
    computed = results(records, workloads, baseline, paired, alpha, shapes_fn, **kwargs)
  for w, res in computed.items():
    if isinstance(res, str):
      lines += [f"## {w}", "", res, ""]
      continue
    cmd = command(records_dir, baseline, paired, w, res["test"])
    shapes, budgets = res["shapes"], res["budgets"]
    metric = next(r["metric"] for r in with_b if r["workload"] == w)
    lines += [f"## {w}", "", f"Regenerate: `{cmd}`", ""]
    reg = regime_text(regime_fn(with_b, w), budgets)
    if reg:
      lines += [f"Regime: {reg}.", ""]
    lines += [f"Trials per study x studies: {coverage_text(with_b, w, baseline)}.", ""]
    head = "| optimizer | " + " | ".join(f"{b:g} steps" for b in budgets) + " |"
    rule = "|---" * (len(budgets) + 1) + "|"
    tested = _family_text(res)
    blocks = [("Speed-up over " + baseline + f" ({metric}; the baseline budget reaching the "
               "same loss / the budget; 95% bootstrap interval over studies; ≥ / ≤: bounds "
               "beyond the baseline's budgets; * fewer than "
               f"{MIN_STUDIES} studies)", speedup_text),
              (f"Loss difference, {w}: median {metric} minus {baseline}'s (95% interval)",
               diff_text),
              (f"Verdict (two-sided {test_name(res['test'], paired)} per cell, Holm over the "
               f"{tested} at family-wise alpha {alpha:g})", lambda c: c["verdict"])]
    for title, fn in blocks:
      lines += [f"**{title}**", "", head, rule]
      for o in res["optimizers"]:
        row = [fn(res["cells"][(o, b)]) if (o, b) in res["cells"] else "" for b in budgets]
        lines.append(f"| {o} | " + " | ".join(row) + " |")
      lines.append("")
    for o in res["optimizers"]:
      why = next((c["identical"] for (o2, _), c in res["cells"].items()
                  if o2 == o and c["identical"]), None)
      if why:
        lines += [f"{o} is {baseline} by construction on {w}: {why}; its cells are not tested "
                  "and not in Holm's family.", ""]
    if shapes is None:
      lines += [f"Identical-by-construction flags not computed: no parameter shapes for {w}.",
                ""]
    sts = [(o, steps_to_target(records, w, o, baseline, paired=paired))
           for o in res["optimizers"]]
    sts = [(o, s) for o, s in sts if s is not None]
    if sts:
      lines += [f"**Steps to target** {sts[0][1]['target']:.4g} (median over {baseline}'s "
                f"reference runs of their lowest {metric}): {baseline}'s median steps / the "
                "optimizer's; never reaching it is censored at the step budget.", "",
                "| optimizer | speed-up [95%] | p | studies |", "|---|---|---|---|"]
      for o, s in sts:
        p = "n/a" if math.isnan(s["p"]) else f"{s['p']:.2g}"
        lines.append(f"| {o} | {speedup_text(s)} | {p} | {s['n']} vs {s['n_base']} |")
      lines.append("")
  lines += size_lines(records, computed, baseline, regime_fn, records_dir, paired)
  lines.append(ANCHORS)
  return "\n".join(lines)


def size_trend(small: dict, large: dict) -> str:
  """How an optimizer's speed-up at one budget moves from the smaller model's cell to the
  larger one's: `grows` or `shrinks` when the two 95% intervals are disjoint (a bound's open
  end, ≥ at the top or ≤ at the bottom, never counts as disjoint), else `unclear`."""
  def lo(c):
    return -INF if c["lo_flag"] == UPPER or math.isnan(c["lo"]) else c["lo"]

  def hi(c):
    return INF if c["hi_flag"] == LOWER or math.isnan(c["hi"]) else c["hi"]
  if min(small["n"], small["n_base"], large["n"], large["n_base"]) < 2:
    return "unclear"
  if lo(large) > hi(small):
    return "grows"
  if hi(large) < lo(small):
    return "shrinks"
  return "unclear"


def size_lines(records: Sequence[dict], computed: dict, baseline: str = "adamw",
               regime_fn=regime, records_dir: str = "records/budgets",
               paired: bool = True) -> list[str]:
  """Markdown: for every optimizer with speed-ups on two or more workloads of known size (the
  speedrun model and its wider version), its cells side by side, smallest model first, with
  `size_trend`'s word: whether the speed-up grows or shrinks with size (Wen et al. 2025 found
  it shrinking). [] when fewer than two workloads have results."""
  with_b = [r for r in records if has_budgets(r)]
  sized = []
  for w, res in computed.items():
    reg = regime_fn(with_b, w) if isinstance(res, dict) else None
    if reg:
      sized.append((reg["params"], w, res))
  if len(sized) < 2:
    return []
  sized.sort()
  optimizers = [o for o in sized[0][2]["optimizers"]
                if sum(o in res["optimizers"] for _, _, res in sized) >= 2]
  budgets = sorted(set.intersection(*(set(res["budgets"]) for _, _, res in sized)))
  if not optimizers or not budgets:
    return []
  sizes = " → ".join(f"{w} ({p:,} parameters)" for p, w, _ in sized)
  lines = [f"**Speed-up over {baseline} by model size**: {sizes}; each cell smallest model "
           "first, then whether the speed-up grows or shrinks with size (the two 95% intervals "
           "disjoint) or is unclear (they overlap, or a cell rests on one study). Regenerate: "
           f"`{command(records_dir, baseline, paired, test=sized[0][2]['test'])}`.",
           "",
           "| optimizer | " + " | ".join(f"{b:g} steps" for b in budgets) + " |",
           "|---" * (len(budgets) + 1) + "|"]
  for o in optimizers:
    row = []
    for b in budgets:
      cells = [res["cells"].get((o, b)) for _, _, res in sized if (o, b) in res["cells"]]
      if len(cells) < 2:
        row.append("")
        continue
      trend = size_trend(cells[0], cells[-1])
      row.append(" → ".join(speedup_text(c) for c in cells) + f" ({trend})")
    lines.append(f"| {o} | " + " | ".join(row) + " |")
  return lines + [""]


def test_name(test: str, paired: bool) -> str:
  """The per-cell test's name, as the tables print it."""
  if test == "rank":
    return "Wilcoxon signed-rank test" if paired else "Mann-Whitney test"
  return "paired t-test" if paired else "Welch t-test"


def _cell_text(c: dict) -> str:
  """A README cell: the speed-up with its interval, bold where Holm's test says the loss
  differs (a `-` suffix: higher loss than the baseline), `=` where identical by construction."""
  if c["identical"]:
    return "= (identical)"
  text = speedup_text(c)
  if c.get("reject"):
    return f"**{text}**" + ("" if c["diff"] < 0 or math.isnan(c["diff"]) else " (worse)")
  return text


def readme_headline(records: Sequence[dict], records_dir: str, computed: dict,
                    baseline: str = "adamw", paired: bool = False, alpha: float = ALPHA,
                    plots: dict[str, str] | None = None, regime_fn=regime,
                    workspace_section: str = "WORKSPACE.md") -> str:
  """README.md's headline: per workload the regime, what each optimizer's figures rest on
  and one table of speed-ups with their intervals (`computed`: `results`' dict); the loss
  differences, p-values, power and steps to target are `headline`'s, in WORKSPACE.md."""
  with_b = [r for r in records if has_budgets(r)]
  n_runs = sum(1 for r in with_b if not scoring.is_reference(r))
  test = next((res["test"] for res in computed.values() if isinstance(res, dict)), None)
  lines = [f"Generated by `{command(records_dir, baseline, paired, None, test)}` from the "
           f"{n_runs} tuning "
           f"runs in `{records_dir}/` (every trial trained to its full budget; the loss at each "
           "shorter budget from a cooldown branched off the same run). Do not edit by hand.",
           ""]
  for w, res in computed.items():
    if isinstance(res, str):
      lines += [f"**{w}**: {res}", ""]
      continue
    budgets = res["budgets"]
    reg = regime_text(regime_fn(with_b, w), budgets)
    lines += [f"**{w}**" + (f" ({reg})" if reg else "") + f". Trials per study x studies: "
              f"{coverage_text(with_b, w, baseline)}.", ""]
    lines += [f"| speed-up over {baseline} | " + " | ".join(f"{b:g} steps" for b in budgets)
              + " |", "|---" * (len(budgets) + 1) + "|"]
    for o in res["optimizers"]:
      row = [_cell_text(res["cells"][(o, b)]) if (o, b) in res["cells"] else ""
             for b in budgets]
      lines.append(f"| {o} | " + " | ".join(row) + " |")
    holm_text = (f"after Holm's correction over the {_family_text(res)}, family-wise alpha "
                 f"{alpha:g}" if _family_shared(res) else
                 f"after Holm's correction over the {_family_text(res)} (family-wise alpha "
                 f"{alpha:g})" if res["family"] else
                 "after Holm's correction (no cell is testable yet: a test needs 2 studies a "
                 "side)")
    lines += ["", f"Speed-up: the {baseline} budget that reaches the optimizer's loss, divided "
              "by the budget (Wen et al. 2025), from medians over studies of each study's "
              "best trial at that budget"
              + (f" ({baseline}'s curve from the same studies as the optimizer's: study s of "
                 "every optimizer shares its seeds and Sobol points, the paired design)"
                 if paired else "")
              + "; [95% bootstrap interval over studies]; ≥ / ≤: beyond "
              f"{baseline}'s budgets, a bound. **Bold**: the loss differs from {baseline}'s "
              f"({test_name(res['test'], paired)} over studies) "
              + holm_text + "; every other cell is inconclusive (its power for a "
              f"{TARGET_SPEEDUP:g}x speed-up, the loss differences and p-values: "
              f"{workspace_section}). * fewer than {MIN_STUDIES} studies on a side. "
              f"Regenerate: `{command(records_dir, baseline, paired, w, res['test'])}`.", ""]
    if plots and w in plots:
      lines += [f"![{w}]({plots[w]})", ""]
  lines += size_lines(records, computed, baseline, regime_fn, records_dir, paired)
  lines.append(ANCHORS)
  return "\n".join(lines)
