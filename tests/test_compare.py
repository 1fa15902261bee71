"""The comparison harness (experiments/harness/: records, runs, scoring): scores on hand-made
records, resumable sweeps, trials, speedrun rules."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.harness import records as records_lib
from experiments.harness import runs as runs_lib
from experiments.harness import scoring

INF = math.inf
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rec(workload, optimizer, study, trial, time_s, steps=None, final=1.0, seed=None):
  """A record as the trainer would write it; time_s=inf: never reached the target."""
  reached = math.isfinite(time_s)
  return {"workload": workload, "optimizer": optimizer, "hparams": {"learning_rate": 0.1 * trial},
          "seed": trial if seed is None else seed, "study": study, "trial": trial,
          "target": 0.5, "metric": "val_loss", "step_budget": 100,
          "steps_to_target": (steps if steps is not None else time_s) if reached else None,
          "time_to_target_s": time_s if reached else None, "final_metric": final,
          "curve": [[100, 1.0, final]], "git_sha": "x", "versions": {}, "device": "cpu"}


def _hand_records():
  """Three workloads, optimizers a and b, three studies.

  w1: a's studies' best trials 10, 30, never -> median 30; b's 15, 60, 45 -> median 45.
      Ratios: a 1, b 1.5.
  w2: a 100 in every study, b 20 -> ratios a 5 (beyond r_max = 4), b 1.
  w3: every run of both fails -> ratios inf for both.
  """
  r = []
  for study, (a_trials, b_trials) in enumerate([([10, 20], [15, INF]), ([30, INF], [60, 70]),
                                                ([INF, INF], [45, 50])]):
    r += [_rec("w1", "a", study, t, v, steps=10 * v if math.isfinite(v) else None)
          for t, v in enumerate(a_trials)]
    r += [_rec("w1", "b", study, t, v, steps=10 * v if math.isfinite(v) else None)
          for t, v in enumerate(b_trials)]
    r += [_rec("w2", "a", study, 0, 100.0), _rec("w2", "b", study, 0, 20.0)]
    r += [_rec("w3", o, study, t, INF) for o in "ab" for t in range(2)]
  return r


def test_median_of_best_trials_with_never_reached():
  med = scoring.median_over_studies(_hand_records(), "time_to_target_s")
  assert med["w1"] == {"a": 30.0, "b": 45.0}
  assert med["w2"] == {"a": 100.0, "b": 20.0}
  assert med["w3"] == {"a": INF, "b": INF}
  steps = scoring.median_over_studies(_hand_records(), "steps_to_target")
  assert steps["w1"] == {"a": 300.0, "b": 450.0}


def test_performance_ratios_and_score_by_hand():
  records = _hand_records()
  ratios = scoring.performance_ratios(scoring.median_over_studies(records, "time_to_target_s"),
                                      ["a", "b"])
  assert ratios == {"a": {"w1": 1.0, "w2": 5.0, "w3": INF}, "b": {"w1": 1.5, "w2": 1.0, "w3": INF}}
  # B = 1/(4 - 1) * int_1^4 rho: a workload with ratio r <= 4 adds (4 - r) / 3 / #workloads.
  expected = {"a": (3 / 3 + 0 + 0) / 3, "b": (2.5 / 3 + 3 / 3 + 0) / 3}
  got = scoring.scores(records, r_max=4.0)
  assert got == pytest.approx(expected, abs=1e-12)
  # The same integral numerically, from rho on a fine grid (midpoint rule).
  taus = np.linspace(1, 4, 300001)
  mids = (taus[1:] + taus[:-1]) / 2
  for o in "ab":
    rho = scoring.profile(ratios[o], mids)
    assert np.sum(rho * np.diff(taus)) / 3 == pytest.approx(expected[o], abs=1e-5)
  np.testing.assert_allclose(scoring.profile(ratios["b"], [1.0, 1.49, 1.5, 10.0]),
                             [1 / 3, 1 / 3, 2 / 3, 2 / 3])


def test_missing_optimizer_counts_as_never_reached():
  records = [_rec("w1", "a", 0, 0, 10.0), _rec("w2", "a", 0, 0, 10.0),
             _rec("w2", "b", 0, 0, 20.0)]
  # b has no run on w1: inf there; on w2 ratio 2 -> (4 - 2) / 3 / 2 workloads.
  assert scoring.scores(records) == pytest.approx({"a": 1.0, "b": (2 / 3) / 2})


def test_score_command_prints_tables_and_json_last(tmp_path):
  for r in _hand_records():
    records_lib.append_record(str(tmp_path), r)
  out = subprocess.run([sys.executable, "-m", "experiments.compare", "score", str(tmp_path)],
                       capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__))).stdout
  lines = out.strip().split("\n")
  assert json.loads(lines[-1]) == pytest.approx({"a": 1 / 3, "b": 5.5 / 9}, abs=1e-6)
  assert "| w1 | 300 [100, never] (3) | 450 [150, 600] (3) |" in out
  assert "| w3 | never [never, never] (3) | never [never, never] (3) |" in out


class _Interrupt(Exception):
  pass


def _fake_result(spec):
  steps = 10 + spec.trial
  return {"target": 0.5, "metric": "val_loss", "step_budget": 100, "steps_to_target": steps,
          "time_to_target_s": steps / 10, "final_metric": 0.4, "curve": [[steps, 1.0, 0.4]]}


def test_interrupted_sweep_rerun_skips_recorded_runs(tmp_path):
  records_dir = str(tmp_path / "records")
  specs = records_lib.plan("mds", ["adamw", "sgd"], num_trials=3, studies=[0, 1])
  assert len(specs) == 12 and len({s.key() for s in specs}) == 12
  calls = []

  def interrupted(spec):
    if len(calls) == 5:
      raise _Interrupt()
    calls.append(spec.key())
    return _fake_result(spec)

  with pytest.raises(_Interrupt):
    records_lib.sweep(specs, records_dir, interrupted)
  assert len(records_lib.read_records(records_dir)) == 5
  # A run killed while writing its line leaves a partial last line behind.
  with open(os.path.join(records_dir, "mds.jsonl"), "a") as f:
    f.write('{"workload": "mds", "optimizer": "sg')
  rerun = []
  new = records_lib.sweep(specs, records_dir, lambda s: rerun.append(s.key()) or _fake_result(s))
  assert rerun == [s.key() for s in specs[5:]] and len(new) == 7
  records = records_lib.read_records(records_dir)
  assert sorted(records_lib.record_key(r) for r in records) == sorted(s.key() for s in specs)
  # A third run finds nothing to do.
  assert records_lib.sweep(specs, records_dir, lambda s: pytest.fail("ran again")) == []


def test_draw_trials_deterministic_in_range_and_per_study():
  a = records_lib.draw_trials("adamw", 8, study=0)
  assert a == records_lib.draw_trials("adamw", 8, study=0)
  assert a != records_lib.draw_trials("adamw", 8, study=1)
  lrs = [t["learning_rate"] for t in a]
  lo, hi = records_lib.SEARCH_SPACES["adamw"]["learning_rate"]
  b2_lo, b2_hi = (1 - x for x in reversed(records_lib.SEARCH_SPACES["adamw"]["one_minus_b2"]))
  assert all(lo <= v <= hi for v in lrs) and all(b2_lo <= t["b2"] <= b2_hi for t in a)
  assert len(set(lrs)) == 8
  # Quasi-random: 8 Sobol points put one in each eighth of the log-lr range.
  bins = np.floor((np.log10(lrs) - np.log10(lo)) / np.log10(hi / lo) * 8).astype(int)
  assert sorted(bins) == list(range(8))
  # Every drawn name is a key of the optimizer's block, or one the harness and the trainer set
  # for any optimizer (the warmup, the second group's learning rate).
  for opt in records_lib.SEARCH_SPACES:
    (trial,) = records_lib.draw_trials(opt, 1, study=0)
    extra = {"warmup_fraction", "embed_learning_rate"}
    assert set(trial) - extra <= set(records_lib.base_hparams(opt)), opt


def test_record_rule_by_hand():
  losses = [3.27, 3.275, 3.265]  # mean 3.27
  ok = scoring.record_rule(losses, 3.28, c=0.01)  # needs <= 3.28 - 0.01 / sqrt(3) = 3.27423
  assert ok["holds"] and ok["needed_below"] == pytest.approx(3.28 - 0.01 / math.sqrt(3))
  assert not scoring.record_rule(losses, 3.28, c=0.02)["holds"]  # needs <= 3.26845
  # Estimated c: z_0.99 * std = 2.3263 * 0.005 = 0.011632 -> needs <= 3.27328.
  est = scoring.record_rule(losses, 3.28, alpha=0.01)
  assert est["c"] == pytest.approx(2.326348 * 0.005, rel=1e-5) and est["holds"]
  assert scoring.record_rule([3.27], 3.28)["holds"] is None


def test_welch_by_hand():
  a, b = [400.0, 410.0, 420.0], [500.0, 540.0, 520.0]
  va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
  t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)  # (410 - 520) / sqrt(100/3 + 400/3)
  df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)  # Welch–Satterthwaite
  from scipy import stats
  res = scoring.welch(a, b, alpha=0.01)
  assert res["t"] == pytest.approx(t) and res["p"] == pytest.approx(stats.t.cdf(t, df))
  assert res["holds"] is bool(stats.t.cdf(t, df) < 0.01)
  assert scoring.welch([400.0, INF], b)["holds"] is None
  assert not scoring.welch(b, a)["holds"]
  # Two studies that reached at the same evaluation: Welch's t from the other sample alone.
  res = scoring.welch([150.0, 150.0], [300.0, 340.0])
  assert res["t"] == pytest.approx((150.0 - 320.0) / math.sqrt(800.0 / 2))
  assert scoring.welch([150.0, 150.0], [300.0, 300.0]) == {
      "holds": None, "why": "no spread in either sample"}


def test_retarget_scores_a_full_budget_curve_on_another_target():
  rec = {"workload": "w", "optimizer": "a", "study": 0, "trial": 0, "target": 1.0,
         "steps_to_target": 20, "time_to_target_s": 2.0, "full_budget": True,
         "curve": [[0, 0.0, 3.0], [10, 1.0, 1.5], [20, 2.0, 0.9], [30, 3.0, 0.7]]}
  assert records_lib.retarget(rec, 0.8)["steps_to_target"] == 30
  assert records_lib.retarget(rec, 0.8)["time_to_target_s"] == 3.0
  assert records_lib.retarget(rec, 2.0)["steps_to_target"] == 10
  assert records_lib.retarget(rec, 0.5)["steps_to_target"] is None
  stopped = dict(rec, full_budget=False, curve=rec["curve"][:3])
  assert records_lib.retarget(stopped, 2.0)["steps_to_target"] == 10  # higher: in the curve
  with pytest.raises(ValueError, match="stopped at target"):
    records_lib.retarget(stopped, 0.8)


def _full_budget_run(study, best, late):
  """An AdamW logreg record trained to its 400-step budget: 1.0 at step 0, `best` at step 300,
  `late` at step 400 (past 90% of the budget, which the target rule ignores)."""
  return {"workload": "logreg", "optimizer": "adamw", "hparams": {"learning_rate": 0.03},
          "seed": 1000 * study, "study": study, "trial": 0, "target": 0.5,
          "metric": "val_suboptimality", "step_budget": 400, "full_budget": True,
          "steps_to_target": 300, "time_to_target_s": 3.0, "final_metric": late,
          "curve": [[0, 0.0, 1.0], [200, 2.0, 0.1], [300, 3.0, best], [400, 4.0, late]],
          "git_sha": "x", "versions": {}, "device": "cpu"}


def test_targets_of_a_budget_workload_which_configures_none():
  # A budget workload's config has no target: `none` (was a TypeError formatting None).
  out = subprocess.run([sys.executable, "-m", "experiments.compare", "targets",
                        os.path.join(ROOT, "records", "budgets")], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  row = next(ln for ln in out.splitlines() if ln.startswith("| speedrun_budgets |"))
  assert row.split("|")[2].strip() == "none" and float(row.split("|")[3]) > 0, out


@pytest.mark.slow
def test_targets_and_retarget_commands_as_a_user_runs_them(tmp_path):
  target = runs_lib.workload_target("logreg")
  bests = [4e-4, 2e-3, 1e-3, 3e-3, 5e-3]  # sorted: 4e-4, 1e-3, 2e-3, 3e-3 (the 4th), 5e-3
  rows = [_full_budget_run(s, b, 1e-5) for s, b in enumerate(bests)]
  records_lib.append_record(str(tmp_path), rows[0])
  for r in rows[1:]:
    records_lib.append_record(str(tmp_path), r)
  cmd = [sys.executable, "-m", "experiments.compare"]
  out = subprocess.run(cmd + ["targets", str(tmp_path), "--workloads=logreg"], check=True,
                       capture_output=True, text=True).stdout
  line = next(ln for ln in out.splitlines() if ln.startswith("| logreg"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[1] == f"{target:.4g}" and cells[2] == "0.003"  # the 4th best, not step 400's
  assert cells[3] == "0.0004, 0.001, 0.002, 0.003, 0.005"
  # Without --workloads: the records' own workloads only (it listed the five default ones).
  out = subprocess.run(cmd + ["targets", str(tmp_path)], check=True, capture_output=True,
                       text=True).stdout
  assert [ln.split("|")[1].strip() for ln in out.splitlines()[2:]] == ["logreg"], out

  out = subprocess.run(cmd + ["retarget", str(tmp_path)], check=True, capture_output=True,
                       text=True).stdout
  assert "5 records rescored" in out
  got = {r["study"]: r for r in records_lib.read_records(str(tmp_path))}
  for s, b in enumerate(bests):  # the first evaluation at or below the config's target
    want = 300 if b <= target else 400
    assert got[s]["target"] == target and got[s]["steps_to_target"] == want
    assert got[s]["time_to_target_s"] == want / 100
  again = subprocess.run(cmd + ["retarget", str(tmp_path)], check=True, capture_output=True,
                         text=True).stdout
  assert "0 records rescored" in again

  # A run stopped at a target above the config's holds no later evaluation: refused, and
  # nothing is rewritten (the self-tuning directory is rescored with the rest).
  stopped = dict(rows[0], full_budget=False, target=0.05, steps_to_target=200,
                 curve=rows[0]["curve"][:2])
  records_lib.append_record(str(tmp_path / records_lib.SELF_TUNING_DIR), stopped)
  before = (tmp_path / "logreg.jsonl").read_text()
  bad = subprocess.run(cmd + ["retarget", str(tmp_path)], capture_output=True, text=True)
  assert bad.returncode != 0 and "1 records cannot be retargeted" in bad.stderr
  assert (tmp_path / "logreg.jsonl").read_text() == before


def test_follows_rule_by_hand():
  rule = {"target": 1.0, "per_study": [0.5, 0.8, 0.9, 1.0, 2.0]}
  assert scoring.follows_rule(rule, 1.0) and scoring.follows_rule(rule, 1.9)
  assert not scoring.follows_rule(rule, 0.99)  # fewer studies reach it than the rule's
  assert not scoring.follows_rule(rule, 2.0)  # admits the fifth study too
  floor = {"target": 1e-6, "per_study": [1e-9] * 5}  # every study below: the floor
  assert scoring.follows_rule(floor, 1.005e-6) and not scoring.follows_rule(floor, 1.02e-6)


def test_checked_in_targets_follow_the_rule_and_adamw_reaches_them():
  """configs/workload_*.py's targets against the step-to-target comparison's records
  (records/history/issue21/, where they were set): each is the rule's value (rounded up no
  further than the next study's best), the records are scored on it, and tuned AdamW reaches
  it in at least TARGET_STUDIES of its studies."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  records = records_lib.read_records(os.path.join(root, "records", "history", "issue21"))
  for w in runs_lib.WORKLOAD_CONFIGS:
    if w in runs_lib.BUDGET_WORKLOADS:  # scored per budget: no target
      continue
    rule = scoring.baseline_target(records, w)
    config = runs_lib.workload_target(w)
    assert scoring.follows_rule(rule, config), (w, config, rule)
    adamw = [r for r in records if r["workload"] == w and r["optimizer"] == "adamw"]
    assert {r["target"] for r in adamw} == {config}, f"{w}: run compare retarget records"
    reached = {r["study"] for r in adamw if r["steps_to_target"] is not None}
    assert len(reached) >= scoring.TARGET_STUDIES, (w, reached)
