"""Ratios to a baseline with their uncertainty (experiments/harness/scoring.py: bootstrap_ratio,
rank_test, compare_to) on records whose answer is known, and the README headline's rewrite."""

import math

import numpy as np

from experiments.harness import records as records_lib
from experiments.harness import scoring
from experiments.harness import workspace
from tests.test_compare import _rec

INF = math.inf


def _records(steps: dict[str, list[float]], workload: str = "w") -> list[dict]:
  """One trial per study; optimizer -> its studies' steps to target (inf: never)."""
  return [_rec(workload, o, study, 0, s / 10, steps=s if math.isfinite(s) else None)
          for o, ss in steps.items() for study, s in enumerate(ss)]


def test_half_the_steps_in_every_study_is_a_degenerate_interval_and_a_small_p():
  base = [100.0, 120.0, 90.0, 110.0, 105.0]
  c = scoring.compare_to(_records({"adamw": base, "x": [s / 2 for s in base]}), "adamw")
  c = c[("w", "x")]
  assert c["ratio"] == 0.5
  # Each bootstrap resample draws the two sides' studies independently, so the interval is not
  # a point here: it lies within [min x / max adamw, max x / min adamw] = [45/120, 60/90].
  assert 45 / 120 <= c["lo"] <= 0.5 <= c["hi"] <= 60 / 90
  # Five studies each, every x below every adamw: the most extreme of C(10, 5) = 252 splits.
  assert c["p"] == 2 / 252 and c["verdict"] == -1
  assert scoring.verdict_text(c) == "fewer steps"
  # Constant studies on each side: the interval is the point itself.
  same = scoring.compare_to(_records({"adamw": [100.0] * 5, "x": [50.0] * 5}), "adamw")
  assert (same[("w", "x")]["lo"], same[("w", "x")]["hi"]) == (0.5, 0.5)
  assert scoring.ratio_text(same[("w", "x")], "adamw") == "0.50x [0.50, 0.50] (p = 0.0079)"


def test_identical_distributions_are_inconclusive():
  rng = np.random.default_rng(3)
  a, b = rng.normal(100, 10, 8), rng.normal(100, 10, 8)
  c = scoring.compare_to(_records({"adamw": list(a), "x": list(b)}), "adamw")[("w", "x")]
  assert c["lo"] < 1.0 < c["hi"] and c["p"] > 0.05 and c["verdict"] == 0
  # 8 studies a side could reach alpha 0.01 (smallest p 2 / C(16, 8) = 1.6e-4): no reason given.
  assert scoring.verdict_text(c) == "inconclusive"


def test_an_interval_excluding_one_still_needs_the_rank_test():
  # Two studies each, x always faster: the bootstrap interval excludes 1, but two studies
  # cannot give p below 2 / C(4, 2) = 0.33, so it is inconclusive, and says why.
  c = scoring.compare_to(_records({"adamw": [100.0, 101.0], "x": [50.0, 51.0]}), "adamw")
  c = c[("w", "x")]
  assert c["hi"] < 1.0 and c["p"] == 1 / 3 and c["verdict"] == 0
  assert scoring.verdict_text(c) == "inconclusive (2 and 2 studies: p cannot go below 0.33)"
  assert scoring.smallest_p(2, 2) == 1 / 3 and scoring.smallest_p(5, 5) == 2 / 252
  assert math.isnan(scoring.smallest_p(1, 5)) and scoring.smallest_p(3, 3) == 0.1


def test_never_reaching_optimizers_and_unbounded_intervals():
  r = _records({"adamw": [100.0, 110.0, 90.0], "never": [INF] * 3, "half": [100.0, INF, INF],
                "only": [50.0, 60.0, 55.0]})
  r += _records({"adamw": [INF] * 3, "only": [50.0, 60.0, 55.0], "never": [INF] * 3}, "v")
  c = scoring.compare_to(r, "adamw")
  # Only adamw reaches: an infinite ratio, an interval without upper end, the worst ranks.
  assert c[("w", "never")]["ratio"] == INF and c[("w", "never")]["lo"] == INF
  assert c[("w", "never")]["p"] == 0.1  # 2 / C(6, 3)
  assert scoring.ratio_text(c[("w", "never")], "adamw") == "never [unbounded, unbounded] (p = 0.1)"
  # One study of three reaches: the median is never, the interval runs from a finite ratio up.
  h = c[("w", "half")]
  assert h["ratio"] == INF and math.isfinite(h["lo"]) and h["hi"] == INF and h["verdict"] == 0
  assert scoring.interval_text(h).endswith(", unbounded] (p = 0.3)")
  # Only the optimizer reaches: ratio 0; neither: no ratio, p = 1.
  assert c[("v", "only")]["ratio"] == 0.0 and c[("v", "only")]["hi"] == 0.0
  assert scoring.ratio_text(c[("v", "only")], "adamw").startswith("0x (adamw never) [0.00, 0.00]")
  assert math.isnan(c[("v", "never")]["ratio"]) and c[("v", "never")]["p"] == 1.0
  assert (c[("v", "never")]["lo"], c[("v", "never")]["hi"]) == (1.0, 1.0)
  # ... which is no interval to print (it was `both never [1.00, 1.00] (p = 1)`).
  assert scoring.ratio_text(c[("v", "never")], "adamw") == \
      "both never (no study reached the target)"
  # One study: no interval (a bootstrap over one study is its point) and no test.
  one = scoring.compare_to(_records({"adamw": [100.0], "x": [50.0]}), "adamw")[("w", "x")]
  assert math.isnan(one["p"]) and one["verdict"] == 0
  assert scoring.ratio_text(one, "adamw") == "0.50x (1 study, no interval)"
  assert scoring.verdict_text(one) == "untestable (1 study)"


def test_same_seed_same_interval():
  rng = np.random.default_rng(0)
  a, b = list(rng.lognormal(5, 0.3, 6)), list(rng.lognormal(5, 0.3, 6)) + [INF]
  assert scoring.bootstrap_ratio(a, b) == scoring.bootstrap_ratio(a, b)
  assert scoring.bootstrap_ratio(a, b, seed=1) != scoring.bootstrap_ratio(a, b)
  # 7 + 6 studies: C(13, 6) = 1716 splits, below the 9999 resamples, so p is exact.
  assert scoring.rank_test(a, b) == scoring.rank_test(a, b, seed=5)


def test_update_rewrites_workspace_and_readme_blocks_idempotently(tmp_path):
  ws, readme = tmp_path / "WORKSPACE.md", tmp_path / "README.md"
  ws.write_text("# Notebook\n\n## Old\n")
  intro = "# Project\n\nTwo commands stay.\n\n## Results\n\n"
  readme.write_text(intro + f"{workspace.HEADLINE_BEGIN}\nold 0.52x\n"
                    f"{workspace.HEADLINE_END}\n\n## Layout\n")
  records_dir = tmp_path / "records"
  base = [100.0, 120.0, 90.0, 110.0, 105.0]
  for r in _records({"adamw": base, "fast": [s / 2 for s in base],
                     "same": [105.0, 95.0, 115.0, 100.0, 118.0]}):
    records_lib.append_record(str(records_dir), r)
  assert workspace.update(str(ws), str(records_dir))
  first_ws, first_readme = ws.read_text(), readme.read_text()
  assert not workspace.update(str(ws), str(records_dir))
  assert (ws.read_text(), readme.read_text()) == (first_ws, first_readme)
  assert first_readme.startswith(intro + workspace.HEADLINE_BEGIN + "\n")
  assert first_readme.endswith(workspace.HEADLINE_END + "\n\n## Layout\n")
  assert "old 0.52x" not in first_readme
  head = first_readme.split(workspace.HEADLINE_BEGIN)[1]
  assert "from the 15 runs in `records/`: 3 optimizers on 1 workloads." in head
  assert "**Budget** (trials per study x studies): adamw 1 x 5, fast 1 x 5, same 1 x 5" in head
  assert "measurably fewer steps than adamw: fast 0.50x [" in head
  assert "inconclusive against adamw: same 1.00x [" in head
  assert "Measurable differences from adamw: fast on w, 0.50x [" in head
  assert "| w | same | 1.00x [" in first_ws and "| inconclusive |" in first_ws
  # A README without the markers is left alone.
  readme.write_text("# Project\n")
  workspace.update(str(ws), str(records_dir))
  assert readme.read_text() == "# Project\n"


def test_reference_runs_are_no_tuning_study():
  # A target-setting reference run (study >= 1000 or "reference": true) never enters a study's
  # best trial, however fast it was.
  from experiments.harness import scoring  # pylint: disable=g-import-not-at-top
  def rec(study, steps, **kw):
    return dict(workload="w", optimizer="adamw", study=study, trial=0, steps_to_target=steps,
                time_to_target_s=float(steps), final_metric=1.0, **kw)
  rs = [rec(0, 100), rec(1000, 10), rec(1, 50, reference=True)]
  assert [r["study"] for r in scoring.study_results(rs)[("w", "adamw")]] == [0]
  assert scoring.is_reference(rs[1]) and scoring.is_reference(rs[2])
  assert not scoring.is_tuning_trial(rs[2]) and scoring.is_tuning_trial(rs[0])
