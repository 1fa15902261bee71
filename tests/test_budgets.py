"""experiments/harness/budgets.py on synthetic records whose answers are known by hand."""

import math
import re

import numpy as np
import pytest
from scipy import stats

from experiments.harness import budgets

INF = math.inf
GRID = [50, 100, 200, 400, 800, 1600]
A, B = 2.0, 100.0
OFFSETS = [-0.02, -0.01, 0.0, 0.01, 0.02]  # symmetric: every median is the noiseless value


def _loss(budget, speedup=1.0):
  """The baseline's law a + b / budget; a challenger with `speedup` reaches at `budget` what the
  baseline reaches at speedup x budget."""
  return A + B / (speedup * budget)


def _rec(optimizer, study, trial, losses, workload="w", curve=None, step_budget=1600, **extra):
  r = {"workload": workload, "optimizer": optimizer, "hparams": {"learning_rate": 0.1},
       "seed": 1000 * study + trial, "study": study, "trial": trial, "metric": "val_loss",
       "target": 0.0, "step_budget": step_budget, "steps_to_target": None,
       "time_to_target_s": None, "final_metric": 0.0, "curve": curve or [[0, 0.0, 5.0]]}
  if losses is not None:
    r["budget_metrics"] = [{"budget": b, "val_loss": v, "train_time_s": b / 10}
                           for b, v in zip(GRID, losses)]
  r.update(extra)
  return r


def _law_records(optimizer, speedup, offsets=OFFSETS, grid=GRID, bad_trial=True):
  """Per study one good trial on the law (plus the study's offset) and, when `bad_trial`, a
  worse one and a diverged one that the best-per-budget choice must skip."""
  out = []
  for s, d in enumerate(offsets):
    good = [_loss(b, speedup) + d for b in grid]
    out.append(_rec(optimizer, s, 0, good))
    if bad_trial:
      out.append(_rec(optimizer, s, 1, [v + 0.5 for v in good]))
      out.append(_rec(optimizer, s, 2, [None] * len(grid)))
  return out


def test_best_per_budget_picks_each_budget_s_best_trial_and_diverged_is_inf():
  rs = [_rec("o", 0, 0, [3.0, 2.5, 2.4, 2.6, 2.9, 3.0]),
        _rec("o", 0, 1, [3.5, 2.6, 2.2, 2.1, None, float("nan")]),
        _rec("o", 1, 0, [None] * 6), _rec("o", 1000, 0, [0.0] * 6),  # a reference run: skipped
        _rec("o", 2, 0, None)]  # no budget_metrics: skipped
  t = budgets.best_per_budget(rs, "w", "o")
  assert t.studies == (0, 1)
  np.testing.assert_array_equal(t.budgets, GRID)
  np.testing.assert_array_equal(t.loss[0], [3.0, 2.5, 2.2, 2.1, 2.9, 3.0])
  np.testing.assert_array_equal(t.trial[0], [0, 0, 1, 1, 0, 0])
  assert np.all(t.loss[1] == INF) and np.all(t.trial[1] == 0)
  assert budgets.best_per_budget(rs, "w", "x") is None


def test_speedup_on_the_law_is_the_log_interpolation_s_known_value():
  rs = _law_records("adamw", 1.0) + _law_records("o", 1.5)
  base = budgets.best_per_budget(rs, "w", "adamw")
  chal = budgets.best_per_budget(rs, "w", "o")
  # O at B reaches f(1.5 B), between the baseline's B and 2B. Linear in log budget between
  # them: t = (f(B) - f(1.5B)) / (f(B) - f(2B)) = (1/3) / (1/2) = 2/3, so B* = B 2^(2/3):
  # 1.587 instead of the law's 1.5, the interpolation's error on a doubling grid.
  for b in GRID[:-1]:
    s, flag = budgets.speedup_at(base, chal, b)
    assert flag == budgets.EXACT and s == pytest.approx(2 ** (2 / 3), rel=1e-12)
  # At the longest budget O is below every baseline value: a lower bound, 1600 / 1600.
  assert budgets.speedup_at(base, chal, 1600) == (1.0, budgets.LOWER)
  # A grid 1.05x apart: the interpolation error falls below 0.1%.
  fine = list(np.geomspace(50, 1600, 72))
  x = budgets.BudgetTable(np.array(fine), (0,), np.array([[_loss(b) for b in fine]]),
                          np.zeros((1, 72), int))
  y = budgets.BudgetTable(np.array(fine), (0,), np.array([[_loss(b, 1.5) for b in fine]]),
                          np.zeros((1, 72), int))
  assert budgets.speedup_at(x, y, fine[10])[0] == pytest.approx(1.5, rel=1e-3)


def test_lower_and_upper_bounds_and_their_text():
  rs = _law_records("adamw", 1.0) + _law_records("fast", 100.0) + _law_records("slow", 0.01)
  c = budgets.compare_budgets(rs, "w", n_resamples=200, n_power=20)["cells"]
  # fast at B beats the baseline's longest budget: >= 1600 / B, every replicate too.
  f = c[("fast", 100.0)]
  assert (f["speedup"], f["flag"]) == (16.0, budgets.LOWER)
  assert budgets.speedup_text(f) == "≥ 16.00x [≥ 16.00, ≥ 16.00]"
  # slow is worse than the baseline's shortest budget: <= 50 / B.
  s = c[("slow", 200.0)]
  assert (s["speedup"], s["flag"]) == (0.25, budgets.UPPER)
  assert budgets.speedup_text(s) == "≤ 0.25x [≤ 0.25, ≤ 0.25]"


def test_a_non_monotone_baseline_uses_its_running_minimum():
  grid = np.array([50.0, 100.0, 200.0, 400.0])
  base = budgets.BudgetTable(grid, (0,), np.array([[3.0, 2.0, 2.5, 1.0]]), np.zeros((1, 4), int))
  np.testing.assert_array_equal(budgets.envelope(base.loss[0]), [3.0, 2.0, 2.0, 1.0])
  # 2.0 is first reached at 100 (the bump at 200 does not count); 1.5 halfway in log between
  # 200 (2.0 on the envelope) and 400.
  assert budgets.baseline_budget(grid, base.loss[0], 2.0) == (100.0, budgets.EXACT)
  assert budgets.baseline_budget(grid, base.loss[0], 1.5)[0] == pytest.approx(
      math.sqrt(200 * 400))
  # A baseline that diverged at its shortest budget: the curve starts at its first finite
  # value, and a loss above it is an upper bound there (not 0).
  assert budgets.baseline_budget(grid, np.array([INF, 2.0, 1.5, 1.0]), 2.5) == (
      100.0, budgets.UPPER)
  assert math.isnan(budgets.baseline_budget(grid, np.full(4, INF), 2.0)[0])


def test_interval_matches_a_float64_numpy_hand_computation():
  rng = np.random.default_rng(7)
  n_b, n_c, n = 6, 5, 500
  grid = np.array(GRID, np.float64)
  lb = A + B / grid + rng.normal(0, 0.05, (n_b, 1))
  lc = A + B / (1.4 * grid) + rng.normal(0, 0.05, (n_c, 1))
  base = budgets.BudgetTable(grid, tuple(range(n_b)), lb, np.zeros((n_b, 6), int))
  chal = budgets.BudgetTable(grid, tuple(range(n_c)), lc, np.zeros((n_c, 6), int))
  got = budgets.bootstrap_speedup(base, chal, 200.0, n_resamples=n, seed=3)
  # By hand: the same draws, the median curves' running minima inverted with np.interp on the
  # reversed (increasing) curve, the 2.5% order statistic rounded down, the 97.5% up.
  r = np.random.default_rng(3)
  ib = r.integers(0, n_b, (n, n_b))
  ic = r.integers(0, n_c, (n, n_c))
  vals = []
  for k in range(n):
    y = np.minimum.accumulate(np.median(lb[ib[k]], axis=0))
    loss = np.median(lc[ic[k], 2])
    assert y[-1] < loss < y[0]  # no bounded replicate in this draw
    vals.append(np.exp(np.interp(loss, y[::-1], np.log(grid)[::-1])) / 200.0)
  vals = np.sort(vals)
  assert got["lo"] == pytest.approx(vals[int(np.floor(0.025 * (n - 1)))], rel=1e-12)
  assert got["hi"] == pytest.approx(vals[int(np.ceil(0.975 * (n - 1)))], rel=1e-12)
  assert got["lo_flag"] == got["hi_flag"] == budgets.EXACT
  point = np.exp(np.interp(np.median(lc[:, 2]),
                           np.minimum.accumulate(np.median(lb, 0))[::-1],
                           np.log(grid)[::-1])) / 200.0
  assert got["speedup"] == pytest.approx(point, rel=1e-12)
  diffs = np.sort([np.median(lc[ic[k], 2]) - np.median(lb[ib[k], 2]) for k in range(n)])
  assert got["diff"] == pytest.approx(np.median(lc[:, 2]) - np.median(lb[:, 2]))
  assert got["diff_lo"] == pytest.approx(diffs[int(np.floor(0.025 * (n - 1)))])
  # Reproducible: the same seed, the same interval.
  assert budgets.bootstrap_speedup(base, chal, 200.0, n_resamples=n, seed=3) == got


def test_paired_resampling_draws_the_same_studies_for_both():
  rs = _law_records("adamw", 1.0) + _law_records("o", 1.5, offsets=OFFSETS[:4])
  base = budgets.best_per_budget(rs, "w", "adamw")
  chal = budgets.best_per_budget(rs, "w", "o")
  got = budgets.bootstrap_speedup(base, chal, 100.0, paired=True, n_resamples=300)
  assert got["n"] == got["n_base"] == 4  # the studies both have
  # Each study's offset is the same on both sides: paired differences are exactly the law's.
  assert got["diff_lo"] == pytest.approx(got["diff_hi"]) == pytest.approx(
      _loss(100, 1.5) - _loss(100))


def test_a_paired_point_estimate_uses_the_baseline_s_curve_from_the_shared_studies_only():
  # A challenger with one study (a sweep midway; study 4, offset +0.02 on both sides). At 200
  # steps its loss A + B/300 + 0.02 lies between the baseline's 200 and 400 steps, read
  # linearly in log budget. Paired, against the baseline's study-4 curve (offset +0.02 too),
  # it lies (B/200 - B/300) / (B/200 - B/400) = 2/3 of the way: 2^(2/3) x. Unpaired, against
  # the median over all five studies (offset 0), its +0.02 counts: 2^((1/6 - 0.02)/0.25) x.
  rs = _law_records("adamw", 1.0) + _law_records("o", 1.5)
  rs = [r for r in rs if not (r["optimizer"] == "o" and r["study"] != 4)]
  base = budgets.best_per_budget(rs, "w", "adamw")
  chal = budgets.best_per_budget(rs, "w", "o")
  assert chal.studies == (4,)
  paired = budgets.bootstrap_speedup(base, chal, 200.0, paired=True, n_resamples=50)
  unpaired = budgets.bootstrap_speedup(base, chal, 200.0, paired=False, n_resamples=50)
  assert paired["n_base"] == 1 and paired["speedup"] == pytest.approx(2 ** (2 / 3), rel=1e-9)
  assert unpaired["n_base"] == 5
  assert unpaired["speedup"] == pytest.approx(2 ** ((1 / 6 - 0.02) / 0.25), rel=1e-9)


def test_holm_against_a_hand_computation():
  p = [0.01, 0.04, 0.03, 0.005, math.nan]
  adjusted, reject, threshold = budgets.holm(p, alpha=0.05)
  # Sorted: 0.005 x 4 = 0.02 (<= 0.05/4), 0.01 x 3 = 0.03 (<= 0.05/3), 0.03 x 2 = 0.06
  # (> 0.05/2: stop), 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06.
  np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
  assert reject.tolist() == [True, False, False, True, False]
  np.testing.assert_allclose(threshold[:4], [0.05 / 3, 0.05, 0.05 / 2, 0.05 / 4])
  assert math.isnan(adjusted[4]) and math.isnan(threshold[4])


def test_one_holm_family_spans_every_workload_of_a_headline():
  """Two model sizes in one headline are one family (issue 39: Holm over the comparisons a
  headline makes): the rank test's 2 / C(10, 5) = 0.0079 passes Holm over one workload's 6
  cells (threshold 0.05 / 6 = 0.0083) but not over both workloads' 12 (0.05 / 12)."""
  rs = _law_records("adamw", 1.0) + _law_records("o", 1.5)
  alone = budgets.results(rs, shapes_fn=lambda w: None, n_resamples=50, n_power=5,
                          test="rank")["w"]
  assert alone["family"] == 6 and alone["cells"][("o", 100.0)]["reject"]
  both = rs + [dict(r, workload="v") for r in rs]
  res = budgets.results(both, shapes_fn=lambda w: None, n_resamples=50, n_power=5,
                        test="rank")
  assert res["w"]["family"] == res["v"]["family"] == 12
  cells = [c for w in "vw" for c in res[w]["cells"].values()]
  assert not any(c["reject"] for c in cells)
  assert min(c["threshold"] for c in cells) == pytest.approx(0.05 / 12)
  assert res["w"]["cells"][("o", 100.0)]["p_holm"] == pytest.approx(12 * 2 / 252)
  text = budgets.readme_headline(both, "R", res, regime_fn=lambda rs, w: None)
  assert "after Holm's correction over the 12 tested cells of the headline (6 of them here), " \
         "family-wise alpha 0.05;" in text


def test_verdicts_significant_and_inconclusive_with_power():
  # Five studies each, every challenger study below every baseline one: Mann-Whitney's exact
  # p = 2 / C(10, 5) = 0.0079 at each of 6 budgets; Holm's smallest threshold 0.05 / 6 = 0.0083.
  rs = _law_records("adamw", 1.0) + _law_records("o", 1.5)
  res = budgets.compare_budgets(rs, "w", n_resamples=200, n_power=20, test="rank")
  c = res["cells"][("o", 100.0)]
  assert c["p"] == pytest.approx(2 / 252) and c["reject"] and c["test"] == "rank"
  assert c["verdict"] == "lower loss than adamw (Holm p = 0.048)"
  # The default, Welch's t-test, on the same per-study losses (scipy directly, as the check).
  welch = budgets.compare_budgets(rs, "w", n_resamples=200, n_power=20)["cells"][("o", 100.0)]
  base = np.array([_loss(100) + d for d in OFFSETS])
  chal = np.array([_loss(100, 1.5) + d for d in OFFSETS])
  want = stats.ttest_ind(chal, base, equal_var=False).pvalue
  assert welch["test"] == "welch" and welch["p"] == pytest.approx(want, rel=1e-9)
  assert welch["reject"] and welch["p"] < 1e-6
  # Two studies a side: p >= 1/3, never rejected; the power for 1.25x is 0, and said so.
  rs2 = _law_records("adamw", 1.0, OFFSETS[:2]) + _law_records("o", 1.5, OFFSETS[:2])
  c2 = budgets.compare_budgets(rs2, "w", n_resamples=200, n_power=20,
                               test="rank")["cells"][("o", 100.0)]
  assert not c2["reject"] and c2["power"] == 0.0
  assert c2["verdict"] == "inconclusive (power 0.00 for a 1.25x speed-up)"
  assert budgets.speedup_text(c2).endswith("*")  # fewer than 5 studies
  assert "no measurable difference" not in c2["verdict"]


def test_power_is_high_with_many_tight_studies_and_nan_beyond_the_budgets():
  offsets = list(np.linspace(-1e-3, 1e-3, 8))
  rs = _law_records("adamw", 1.0, offsets) + _law_records("o", 1.0, offsets)
  base = budgets.best_per_budget(rs, "w", "adamw")
  chal = budgets.best_per_budget(rs, "w", "o")
  assert budgets.shifted_curve_value(base, 100.0) == pytest.approx(
      np.interp(math.log(125), np.log(GRID), [_loss(b) for b in GRID]))
  assert budgets.power(base, chal, 100.0, threshold=0.05, n_sim=50) > 0.9
  assert math.isnan(budgets.power(base, chal, 1600.0, threshold=0.05, n_sim=5))


def test_identical_by_construction_flags():
  small = [(64,), (32, 32)]
  cfg8 = {"min_quantized_size": 4096, "block_size": 256}
  assert "min_quantized_size" in budgets.identical_by_construction("adamw_8bit", small, cfg8)
  assert budgets.identical_by_construction("adamw_8bit", small + [(64, 64)], cfg8) is None
  cfg = {"block_size": 128, "max_preconditioner_dim": 4096}
  for o in ("shampoo", "soap"):
    assert budgets.identical_by_construction(o, [(10,), (5,)], cfg) is not None
    assert budgets.identical_by_construction(o, [(10,), (4, 4)], cfg) is None
    assert budgets.identical_by_construction(
        o, [(10,), (8, 8)], dict(cfg, max_preconditioner_dim=4)) is not None
  assert budgets.identical_by_construction("muon", small, {}) is None
  # Flagged cells are not tested and not in Holm's family.
  rs = _law_records("adamw", 1.0) + _law_records("adamw_8bit", 1.0) + _law_records("o", 1.5)
  res = budgets.compare_budgets(rs, "w", shapes=small, n_resamples=100, n_power=10)
  c = res["cells"][("adamw_8bit", 100.0)]
  assert math.isnan(c["p"]) and c["verdict"].startswith("identical to adamw by construction")
  # The family is o's 6 budgets: Holm's thresholds 0.05 / 6, ..., 0.05 / 1.
  th = sorted(res["cells"][("o", float(b))]["threshold"] for b in GRID)
  np.testing.assert_allclose(th, [0.05 / k for k in range(6, 0, -1)])


def test_param_shapes_and_regime_of_a_gpt_workload():
  shapes = budgets.param_shapes("gpt_deep")
  assert shapes and any(len(s) == 2 for s in shapes)
  assert budgets.identical_by_construction("shampoo", shapes) is None
  reg = budgets.regime([_rec("adamw", 0, 0, [1.0] * 6, workload="gpt_deep")], "gpt_deep")
  assert reg["params"] == sum(math.prod(s) for s in shapes)
  assert reg["tokens_per_step"] == 32 * 64  # batch 32 x 64-byte context
  assert budgets.param_shapes("mds") is None
  # A record's own fields win.
  r = _rec("adamw", 0, 0, [1.0] * 6, params=1000, tokens_per_step=10)
  assert budgets.regime([r], "w") == {"params": 1000, "tokens_per_step": 10}


def test_crossing_is_interpolated_between_evaluations():
  curve = [[0, 0.0, 3.0], [100, 1.0, 2.0], [200, 2.0, 1.0]]
  assert budgets.crossing(curve, 1.1) == pytest.approx(190.0)
  assert budgets.crossing(curve, 3.5) == 0.0
  assert budgets.crossing(curve, 0.5) == INF
  assert budgets.crossing([[0, 0, 3.0], [100, 1, None], [200, 2, 1.0]], 1.1) == 200.0


def _curve(cross_at, budget=400):
  """A curve falling linearly 2.0 -> 1.0 across [0, 2 cross_at]: it crosses 1.5 at cross_at
  (never when cross_at is inf), evaluated every 50 steps up to `budget`."""
  steps = range(0, budget + 1, 50)
  if math.isinf(cross_at):
    return [[s, s / 10, 2.0] for s in steps]
  return [[s, s / 10, max(1.0, 2.0 - s / (2 * cross_at))] for s in steps]


def test_steps_to_target_with_censoring():
  ref = [_rec("adamw", 1000 + i, 0, None, curve=[[0, 0, 3.0], [400, 1, v]])
         for i, v in enumerate([1.4, 1.5, 1.6])]
  assert budgets.reference_target(ref, "w") == 1.5
  base = [_rec("adamw", s, 0, None, curve=_curve(c), step_budget=400)
          for s, c in enumerate([200.0, 240.0, 300.0, 320.0, 360.0])]
  fast = [_rec("fast", s, 0, None, curve=_curve(c), step_budget=400)
          for s, c in enumerate([100.0, 120.0, 150.0, 160.0, 180.0])]
  half = [_rec("half", s, 0, None, curve=_curve(c), step_budget=400)
          for s, c in enumerate([100.0, 120.0, INF, INF, INF])]
  rs = ref + base + fast + half
  f = budgets.steps_to_target(rs, "w", "fast", n_resamples=300)
  assert f["target"] == 1.5 and (f["speedup"], f["flag"]) == (2.0, budgets.EXACT)
  # Every crossing finite: Welch's t-test on the steps (scipy directly, as the check).
  assert f["p"] == pytest.approx(stats.ttest_ind([100, 120, 150, 160, 180],
                                                 [200, 240, 300, 320, 360],
                                                 equal_var=False).pvalue, rel=1e-9)
  # half's median never reaches: censored at its budget, an upper bound 300 / 400, never 0.
  h = budgets.steps_to_target(rs, "w", "half", n_resamples=300)
  assert (h["speedup"], h["flag"]) == (0.75, budgets.UPPER)
  assert h["lo_flag"] == budgets.UPPER and h["lo"] > 0
  # The baseline's own misses: a lower bound, the baseline's budget over the median, not inf.
  slow_base = [_rec("adamw", s, 0, None, curve=_curve(INF), step_budget=400) for s in range(5)]
  b = budgets.steps_to_target(ref + slow_base + fast, "w", "fast", n_resamples=300)
  assert (b["speedup"], b["flag"]) == (400 / 150, budgets.LOWER)
  assert math.isfinite(b["hi"]) and b["hi_flag"] == budgets.LOWER
  assert budgets.steps_to_target(base + fast, "w", "fast") is None  # no reference runs


def test_headline_markdown():
  rs = (_law_records("adamw", 1.0) + _law_records("muon", 1.5)
        + [_rec("muon", 0, 9, None)])  # a record without budget_metrics
  text = budgets.headline(rs, "recs", shapes_fn=lambda w: None,
                          regime_fn=lambda r, w: {"params": 1000, "tokens_per_step": 100},
                          n_resamples=100, n_power=10)
  assert "(1 records without budget_metrics skipped.)" in text
  assert ("`python -m experiments.compare budgets recs --baseline=adamw --workloads=w --nopaired`"
          in text)
  assert "tokens per parameter at each budget: 50: 5, 100: 10" in text
  assert "| muon | 1.59x [" in text and "| ≥ 1.00x [" in text
  assert "lower loss than adamw (Holm p = " in text and "Welch t-test per cell" in text
  assert "inconclusive (power for a 1.25x speed-up n/a: 1.25 x 1600 steps is beyond" in text
  assert "Wen et al. 2025" in text and "3,250" in text and "5,625" in text


def test_the_budgets_command_as_a_user_runs_it(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(records):
    with open(tmp_path / "w.jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    p = subprocess.run([sys.executable, "-m", "experiments.compare", "budgets", str(tmp_path)],
                       cwd=root, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return p.returncode, p.stdout + p.stderr

  # A sweep in progress: only the baseline so far.
  rc, out = run(_law_records("adamw", 1.0))
  assert rc == 0, out
  assert "No challenger with records beside adamw yet." in out
  assert "Unable to initialize backend" not in out  # JAX's INFO chatter stays out
  rc, out = run(_law_records("adamw", 1.0) + _law_records("muon", 1.5))
  assert rc == 0 and "| muon | 1.59x [" in out, out
  assert f"python -m experiments.compare budgets {tmp_path} --baseline=adamw --workloads=w" in out


def test_incomplete_studies_are_left_out_until_complete():
  """A sweep in progress: muon's study 1 has 1 of 3 trials; it must not be compared as a
  study's best (it is named instead), and once complete it counts."""
  base = _law_records("adamw", 1.0)
  muon = [r for r in _law_records("muon", 1.5) if not (r["study"] == 1 and r["trial"] > 0)]
  kept, notes = budgets.complete_studies(base + muon)
  assert notes == ["w: muon study 1 (1 of 3 trials)"]
  assert len(kept) == len(base) + len(muon) - 1
  res = budgets.results(base + muon, shapes_fn=lambda w: None, n_resamples=50, n_power=5)["w"]
  assert res["incomplete"] == ["muon study 1 (1 of 3 trials)"]
  assert res["cells"][("muon", 50.0)]["n"] == 4
  assert budgets.coverage_text(base + muon, "w") == (
      "adamw 3 x 5, muon 3 x 4; left out until complete (a sweep in progress): "
      "muon study 1 (1 of 3 trials)")
  # The plan's count, when the records carry it, decides even before any study is complete.
  planned = [dict(r, trials_per_study=3) for r in base + muon if r["trial"] < 2]
  kept, notes = budgets.complete_studies(planned)
  assert kept == [] and "w: adamw study 0 (2 of 3 trials)" in notes and len(notes) == 10
  only = budgets.results(base + muon[:1], shapes_fn=lambda w: None)["w"]
  assert only.startswith("No challenger with records beside adamw yet.")
  assert "muon study 0 (1 of 3 trials)" in only
  # A second workload whose first study is under way (the wider model's first trials) is named
  # with what it is waiting for, not dropped from the report.
  wide = [dict(r, workload="v", trials_per_study=3) for r in base[:2]]
  both = budgets.results(base + muon + wide, shapes_fn=lambda w: None, n_resamples=50,
                         n_power=5)
  assert isinstance(both["w"], dict) and both["v"] == (
      "No complete study yet (a sweep in progress): adamw study 0 (2 of 3 trials).")
  text = budgets.headline(base + muon + wide, "R", shapes_fn=lambda w: None,
                          regime_fn=lambda rs, w: None, computed=both)
  assert "## v\n\nNo complete study yet (a sweep in progress): adamw study 0" in text


def test_the_cell_tests_and_why_welch_is_the_default():
  """With 5 studies a side and a headline of 24 cells, no rank test can pass Holm (its
  smallest p, 0.0079, is above 0.05 / 24); Welch's t can. A study that diverged (inf) takes
  the rank test whatever was asked, and a paired t-test is the t-test of the differences."""
  a, b = [1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 2.1, 2.2, 2.3, 2.4]
  rank = budgets.test_losses(a, b, test="rank")
  assert rank == pytest.approx(2 / 252) and rank > 0.05 / 24
  assert budgets.test_losses(a, b) < 0.05 / 24
  assert budgets.test_losses(a, b, paired=True, test="rank") == pytest.approx(0.0625)
  d = [0.1, -0.05, 0.02, 0.0, 0.07]
  b2 = [x + y for x, y in zip(a, d)]
  assert budgets.test_losses(a, b2, paired=True) == pytest.approx(
      stats.ttest_rel(a, b2).pvalue, rel=1e-12)
  with_inf = [1.0, 1.1, 1.2, 1.3, INF]
  assert budgets.test_losses(with_inf, b) == budgets.test_losses(with_inf, b, test="rank")
  assert budgets.test_losses(a, a) == 1.0 and math.isnan(budgets.test_losses(a[:1], b))
  with pytest.raises(ValueError, match="welch"):
    budgets.test_losses(a, b, test="t")


def test_a_single_study_gets_no_interval():
  rs = _law_records("adamw", 1.0, OFFSETS[:1]) + _law_records("o", 1.5, OFFSETS[:1])
  c = budgets.compare_budgets(rs, "w", n_resamples=50, n_power=5)["cells"][("o", 100.0)]
  assert budgets.speedup_text(c) == "1.59x (1 study, no interval)*"
  # Nor does its loss difference (before, `[d, d]`: a zero-width interval from one study).
  assert re.fullmatch(r"-0\.\d+ \(1 study, no interval\)", budgets.diff_text(c)), \
      budgets.diff_text(c)
  assert math.isnan(c["p"]) and c["verdict"].startswith("untestable")


def test_the_plot_draws_the_baseline_and_its_running_minimum_on_the_budgets(tmp_path,
                                                                             monkeypatch):
  # The baseline's median markers and the dashed curve the speed-ups are read from share their
  # x (the budgets): shifted apart, a falling line seems to pass under the curve read from it.
  # The challengers sit beside them, each at its own offset.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from experiments.harness import plots  # pylint: disable=g-import-not-at-top
  rs = (_law_records("adamw", 1.0) + _law_records("o", 1.5) + _law_records("p", 0.8))
  res = budgets.results(rs, shapes_fn=lambda w: None, n_resamples=20, n_power=5)["w"]
  figures = []
  monkeypatch.setattr(plt, "close", figures.append)
  plots.plot_budgets(rs, "w", res, str(tmp_path / "b.png"))
  ax = figures[0].axes[0]
  xs = {line.get_label(): np.asarray(line.get_xdata(), float) for line in ax.get_lines()}
  dashed = [x for label, x in xs.items() if "running minimum" in label]
  assert len(dashed) == 1
  np.testing.assert_allclose(dashed[0], GRID)
  markers = [np.asarray(line.get_xdata(), float) for line in ax.get_lines()
             if line.get_marker() == "o"]
  assert len(markers) == 3
  np.testing.assert_allclose(markers[0], GRID)  # the baseline first, on the budgets
  shifts = sorted(float(x[0] / GRID[0]) for x in markers)
  assert len(set(shifts)) == 3 and 1.0 in shifts
  plt.close("all")


def _on(workload, records):
  return [dict(r, workload=workload) for r in records]


def test_speedups_by_model_size_side_by_side_with_their_trend():
  # Muon 1.5x on the small model and 1.1x on one 4x larger; SOAP 1.2x on both; Lion small only.
  rs = (_on("small", _law_records("adamw", 1.0) + _law_records("muon", 1.5)
            + _law_records("soap", 1.2) + _law_records("lion", 0.8))
        + _on("large", _law_records("adamw", 1.0) + _law_records("muon", 1.1)
              + _law_records("soap", 1.2)))
  sizes = {"small": 1000, "large": 4000}
  regime_fn = lambda records, w: {"params": sizes[w], "tokens_per_step": 100}
  computed = budgets.results(rs, ["large", "small"], shapes_fn=lambda w: None, n_resamples=200,
                             n_power=10)
  lines = budgets.size_lines(rs, computed, regime_fn=regime_fn)
  text = "\n".join(lines)
  assert "small (1,000 parameters) → large (4,000 parameters)" in text  # by size, not by name
  assert "Regenerate: `python -m experiments.compare budgets records/budgets --baseline=adamw`" \
      in text
  row = {l.split(" | ")[0]: l.split(" | ")[1:] for l in lines if l.startswith("| ")}
  assert set(row) == {"| optimizer", "| muon", "| soap"}  # lion: one size only
  # At 100 steps the baseline's curve is interpolated in log budget between 100 and 200 steps
  # (losses a + 1 and a + 0.5): a speed-up s reads as 2 ** ((1 - 1 / s) / 0.5).
  read = lambda s: f"{2 ** ((1 - 1 / s) / 0.5):.2f}x ["
  at_100 = row["| muon"][1]
  assert (at_100.startswith(read(1.5)) and f" → {read(1.1)}" in at_100
          and at_100.endswith("(shrinks)")), at_100
  assert row["| soap"][1].startswith(read(1.2)) and row["| soap"][1].endswith("(unclear)")
  # In both headlines, before the anchors; one workload alone gets no such table.
  for head in (budgets.headline(rs, "recs", shapes_fn=lambda w: None, regime_fn=regime_fn,
                                computed=computed),
               budgets.readme_headline(rs, "recs", computed, regime_fn=regime_fn)):
    table = text.split("Regenerate: ")[1].split("\n", 1)[1]  # the caption names "recs"
    assert "`python -m experiments.compare budgets recs --baseline=adamw --nopaired`." in head
    assert table in head and head.index(table) < head.index("Published anchors")
  assert budgets.size_lines(rs, {"small": computed["small"]}, regime_fn=regime_fn) == []


def test_size_trend_needs_disjoint_closed_intervals():
  def cell(lo, hi, lo_flag=budgets.EXACT, hi_flag=budgets.EXACT, n=5):
    return {"lo": lo, "hi": hi, "lo_flag": lo_flag, "hi_flag": hi_flag, "n": n, "n_base": n}
  assert budgets.size_trend(cell(1.4, 1.6), cell(1.0, 1.2)) == "shrinks"
  assert budgets.size_trend(cell(1.0, 1.2), cell(1.4, 1.6)) == "grows"
  assert budgets.size_trend(cell(1.0, 1.5), cell(1.4, 1.6)) == "unclear"
  # ≥ 2.00 at the top of the small model's interval: it may reach any height.
  assert budgets.size_trend(cell(1.8, 2.0, hi_flag=budgets.LOWER), cell(2.5, 3.0)) == "unclear"
  assert budgets.size_trend(cell(1.4, 1.6), cell(1.0, 1.2, n=1)) == "unclear"
