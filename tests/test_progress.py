"""experiments/harness/progress.py: the sweep's ETA per workload; compare's AlgoPerf plan."""

import pytest

from experiments import compare
from experiments.harness import progress as progress_lib
from experiments.harness import records as records_lib


def test_eta_sums_each_kinds_own_seconds_per_run():
  now = [0.0]
  lines = []
  kinds = ([("mds", "adamw", True)] * 4 + [("speedrun", "adamw", False)] * 3 +
           [("gpt_deep", "muon", False)] * 2)
  p = progress_lib.Progress(kinds, priors={("gpt_deep", "muon", False): 40.0},
                            clock=lambda: now[0], out=lines.append)
  p.start("mds adamw: 4 trials vectorized", 4)
  # Nothing of mds or speedrun timed yet: only gpt_deep's prior counts, the rest is named.
  assert lines[-1] == ("[1-4/9] mds adamw: 4 trials vectorized (elapsed 0 s, ETA 80 s + runs "
                       "not timed yet: mds vectorized (4), speedrun (3))")
  now[0] = 2.0
  p.finish(("mds", "adamw", True), 4, 2.0)
  p.start("speedrun adamw study 0 trial 0")
  assert lines[-1].startswith("[5/9] speedrun adamw study 0 trial 0 (elapsed 2 s, ETA 80 s + ")
  now[0] = 92.0
  p.finish(("speedrun", "adamw", False), 1, 90.0)
  p.start("speedrun adamw study 0 trial 1")
  # 2 speedrun runs at 90 s + 2 gpt_deep at the prior's 40 s; one average over the 5 runs done
  # (18.4 s) would have said 74 s.
  assert lines[-1] == "[6/9] speedrun adamw study 0 trial 1 (elapsed 1.5 min, ETA 4.3 min)"
  # A run resumed from a checkpoint counts as done, not as a measure of a run's time.
  p.finish(("speedrun", "adamw", False), 1, 3.0, timed=False)
  assert p.eta() == (90.0 + 80.0, [])
  p.finish(("speedrun", "adamw", False), 1, 150.0)
  now[0] = 242.0
  p.start("gpt_deep muon study 0 trial 0")
  assert p.eta() == (80.0, [])  # no gpt_deep run measured yet: its prior
  p.finish(("gpt_deep", "muon", False), 1, 20.0)
  assert p.eta() == (20.0, []) and p.done == 8


def test_an_untimed_optimizer_borrows_the_median_of_its_workloads_others():
  kinds = [("w", "adamw", False)] * 2 + [("w", "muon", False), ("w", "soap", False),
                                         ("w", "lion", True), ("v", "adamw", False)]
  p = progress_lib.Progress(kinds, priors={("w", "muon", False): 100.0,
                                           ("w", "soap", False): 300.0}, out=lambda _: None)
  # adamw: median(100, 300) each; lion vectorized and workload v: nothing to borrow from.
  assert p.eta() == (2 * 200.0 + 100.0 + 300.0, ["v (1)", "w vectorized (1)"])
  # Untimed runs are counted per workload over its optimizers, not listed one by one.
  q = progress_lib.Progress([("w", o, True) for o in ("a", "b", "b")], out=lambda _: None)
  assert q.eta() == (0.0, ["w vectorized (3)"])
  p.finish(("w", "muon", False), 1, 500.0)  # measured beats the prior, and is borrowed
  assert p.per_run(("w", "adamw", False)) == 400.0


def _record(workload, optimizer, finished, train_s, **extra):
  return dict({"workload": workload, "optimizer": optimizer, "curve": [[0, 0.0, 1.0],
               [10, train_s, 0.5]], "finished": f"2026-12-07T10:{finished}+0000"}, **extra)


def test_trainer_priors_are_wall_clock_gaps_per_optimizer():
  recs = [
      _record("w", "adamw", "00:00", 100.0),   # the first: no gap before it
      _record("w", "adamw", "02:30", 120.0),   # 150 s after the one before
      _record("w", "muon", "03:40", 50.0),     # 70 s
      _record("w", "muon", "04:40", 50.0),     # 60 s
      _record("w", "adamw", "59:00", 120.0),   # 3260 s: a stop between them, left out
      _record("w", "muon", "59:30", 60.0),     # 30 s: less than its training time, left out
      _record("w", "lion", "59:40", 30.0),     # no gap kept: its training time
      _record("w", "sgd", "59:50", 5.0, vectorized_trials=5),  # vectorized: left out
      _record("v", "adamw", "00:00", 10.0, vectorized_trials=5),
  ]
  priors = progress_lib.trainer_priors(recs)
  assert priors == {("w", "adamw", False): 150.0, ("w", "muon", False): 65.0,
                    ("w", "lion", False): 30.0}
  # Without stamps: the training time alone.
  for r in recs:
    del r["finished"]
  assert progress_lib.trainer_priors(recs)[("w", "adamw", False)] == 120.0


def test_algoperf_plan_is_the_issues_budget(tmp_path):
  phases = compare.algoperf_phases(str(tmp_path), str(tmp_path / "runs"), ["mds", "logreg"])
  baseline, core, frontier, self_tuning = phases
  assert {sp.optimizer for sp in baseline.specs} == {"adamw"}
  assert all(sp.full_budget for sp in baseline.specs) and len(baseline.specs) == 2 * 5 * 5
  assert not any(sp.full_budget for p in phases[1:] for sp in p.specs)
  assert {sp.optimizer for sp in core.specs} == {"muon", "shampoo", "soap", "sgd", "adamw_8bit"}
  assert len(core.specs) == 2 * 5 * 5 * 5
  assert set(compare.CORE) | set(compare.FRONTIER) == set(records_lib.SEARCH_SPACES)
  assert len(frontier.specs) == 2 * len(compare.FRONTIER) * 5 * 3
  assert {sp.study for sp in frontier.specs} == {0, 1, 2}
  assert {sp.trial for sp in frontier.specs} == set(range(5))
  assert len(self_tuning.specs) == 2 * 13 * 5 and self_tuning.records_dir.endswith("self_tuning")
  assert all(sp.hparams == {} for sp in self_tuning.specs)
  # A core optimizer's runs are the ones a plain 5x5 sweep of it plans: resuming either way works.
  plain = records_lib.plan("mds", ["muon"], 5, range(5))
  assert [sp for sp in core.specs if sp.workload == "mds" and sp.optimizer == "muon"] == plain


def test_unknown_names_are_usage_errors(tmp_path):
  with pytest.raises(compare.app.UsageError, match="unknown workload/optimizer"):
    compare.plan_phase(str(tmp_path), str(tmp_path), ["mds"], ["adamw", "nope"], 1, 1)
