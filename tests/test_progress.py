"""experiments/harness/progress.py: the sweep's ETA per workload; compare's AlgoPerf plan."""

import pytest

from experiments import compare
from experiments.harness import progress as progress_lib


def test_eta_sums_each_workloads_own_seconds_per_run():
  now = [0.0]
  lines = []
  kinds = [("mds", True)] * 4 + [("speedrun", False)] * 3 + [("gpt_deep", False)] * 2
  p = progress_lib.Progress(kinds, priors={("gpt_deep", False): 40.0}, clock=lambda: now[0],
                            out=lines.append)
  p.start("mds adamw: 4 trials vectorized", 4)
  # Nothing of mds or speedrun timed yet: only gpt_deep's prior counts, the rest is named.
  assert lines[-1] == ("[1-4/9] mds adamw: 4 trials vectorized (elapsed 0 s, ETA 80 s + runs "
                       "not timed yet: mds vectorized (4), speedrun (3))")
  now[0] = 2.0
  p.finish(("mds", True), 4, 2.0)
  p.start("speedrun adamw study 0 trial 0")
  assert lines[-1].startswith("[5/9] speedrun adamw study 0 trial 0 (elapsed 2 s, ETA 80 s + ")
  now[0] = 92.0
  p.finish(("speedrun", False), 1, 90.0)
  p.start("speedrun adamw study 0 trial 1")
  # 2 speedrun runs at 90 s + 2 gpt_deep at the prior's 40 s; one average over the 5 runs done
  # (18.4 s) would have said 74 s.
  assert lines[-1] == "[6/9] speedrun adamw study 0 trial 1 (elapsed 1.5 min, ETA 4.3 min)"
  p.finish(("speedrun", False), 2, 150.0)
  now[0] = 242.0
  p.start("gpt_deep adamw study 0 trial 0")
  assert p.eta() == (80.0, [])  # no gpt_deep run measured yet: its prior
  p.finish(("gpt_deep", False), 1, 20.0)
  assert p.eta() == (20.0, []) and p.done == 8


def test_trainer_priors_leave_vectorized_records_out():
  recs = [{"workload": "w", "curve": [[0, 0.0, 1.0], [10, t, 0.5]]} for t in (10.0, 30.0, 20.0)]
  recs.append({"workload": "w", "vectorized_trials": 5, "curve": [[10, 0.01, 0.5]]})
  recs.append({"workload": "v", "vectorized_trials": 5, "curve": [[10, 0.01, 0.5]]})
  assert progress_lib.trainer_priors(recs) == {("w", False): 20.0}


def test_algoperf_plan_is_the_issues_budget(tmp_path):
  phases = compare.algoperf_phases(str(tmp_path), str(tmp_path / "runs"), ["mds", "logreg"])
  baseline, core, frontier, self_tuning = phases
  assert {sp.optimizer for sp in baseline.specs} == {"adamw"}
  assert all(sp.full_budget for sp in baseline.specs) and len(baseline.specs) == 2 * 5 * 5
  assert not any(sp.full_budget for p in phases[1:] for sp in p.specs)
  assert {sp.optimizer for sp in core.specs} == {"muon", "shampoo", "soap", "sgd", "adamw_8bit"}
  assert len(core.specs) == 2 * 5 * 5 * 5
  assert set(compare.CORE) | set(compare.FRONTIER) == set(compare.SEARCH_SPACES)
  assert len(frontier.specs) == 2 * len(compare.FRONTIER) * 5 * 3
  assert {sp.study for sp in frontier.specs} == {0, 1, 2}
  assert {sp.trial for sp in frontier.specs} == set(range(5))
  assert len(self_tuning.specs) == 2 * 13 * 5 and self_tuning.records_dir.endswith("self_tuning")
  assert all(sp.hparams == {} for sp in self_tuning.specs)
  # A core optimizer's runs are the ones a plain 5x5 sweep of it plans: resuming either way works.
  plain = compare.plan("mds", ["muon"], 5, range(5))
  assert [sp for sp in core.specs if sp.workload == "mds" and sp.optimizer == "muon"] == plain


def test_unknown_names_are_usage_errors(tmp_path):
  with pytest.raises(compare.app.UsageError, match="unknown workload/optimizer"):
    compare.plan_phase(str(tmp_path), str(tmp_path), ["mds"], ["adamw", "nope"], 1, 1)
