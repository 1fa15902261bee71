"""Publishing is explicit (issue 39 item 6): `compare all/plots` on a scratch directory leave
README.md, WORKSPACE.md and results/ alone and put their report in the scratch directory;
`--publish` (into a copy of the repository, $COMPARE_REPO_ROOT) writes them. And the `budgets`
command as a user runs it."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from experiments import compare
from experiments.harness import records as records_lib
from tests import test_budgets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot():
  """Bytes and mtimes of what publishing writes in the checkout."""
  out = {}
  for name in ("README.md", "WORKSPACE.md"):
    path = os.path.join(ROOT, name)
    with open(path, "rb") as f:
      out[name] = (f.read(), os.stat(path).st_mtime_ns)
  results = os.path.join(ROOT, "results")
  out["results"] = sorted((n, os.stat(os.path.join(results, n)).st_mtime_ns)
                          for n in os.listdir(results))
  return out


def _scratch(tmp_path):
  """A scratch records directory holding one real AdamW record of mds (from the step-to-target
  comparison, records/history/issue21/),
  re-keyed to the run `all --workloads=mds --optimizers=adamw --trials=1 --studies=1` plans,
  so that its sweep has nothing to train."""
  with open(os.path.join(ROOT, "records", "history", "issue21", "mds.jsonl")) as f:
    rec = next(r for r in map(json.loads, f) if r["optimizer"] == "adamw")
  rec.update(study=0, trial=0, seed=records_lib.run_seed(0, 0),
             hparams=records_lib.draw_trials("adamw", 1, 0)[0])
  scratch = tmp_path / "scratch"
  records_lib.append_record(str(scratch), rec)
  return scratch


ALL = ["all", "--workloads=mds", "--optimizers=adamw", "--trials=1", "--studies=1",
       "--vectorize=never"]


def _run(args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.compare", *args], cwd=ROOT,
                        capture_output=True, text=True, check=True,
                        env={**os.environ, **(env or {})})


def test_scratch_runs_do_not_publish_and_publish_writes_where_told(tmp_path):
  scratch = _scratch(tmp_path)
  before = _snapshot()
  out = _run([ALL[0], str(scratch), *ALL[1:]]).stdout
  assert "1 runs planned, 1 already recorded" in out
  assert (scratch / "report.md").exists() and (scratch / "plots" / "compare_mds.png").exists()
  report = (scratch / "report.md").read_text()
  assert "not published" in report and "![mds](plots/compare_mds.png)" in report
  _run(["plots", str(scratch)])
  assert _snapshot() == before  # README.md, WORKSPACE.md, results/: bytes and mtimes
  # --publish, into a copy of the repository's published files.
  repo = tmp_path / "repo"
  (repo / "results").mkdir(parents=True)
  for name in ("README.md", "WORKSPACE.md"):
    shutil.copy(os.path.join(ROOT, name), repo / name)
  old_ws = (repo / "WORKSPACE.md").read_text()
  _run([ALL[0], str(scratch), *ALL[1:], "--publish"], {compare.ROOT_ENV: str(repo)})
  assert (repo / "results" / "compare_mds.png").exists()
  new_ws = (repo / "WORKSPACE.md").read_text()
  assert new_ws != old_ws and "from 1 runs in" in new_ws
  assert _snapshot() == before


def test_publishes_only_the_repository_s_own_records(tmp_path, monkeypatch):
  monkeypatch.setenv(compare.ROOT_ENV, str(tmp_path))
  (tmp_path / "records").mkdir()
  os.symlink(tmp_path / "records", tmp_path / "link")
  assert compare.publishes(str(tmp_path / "records"))
  assert compare.publishes(str(tmp_path / "link"))  # resolved real path
  assert not compare.publishes(str(tmp_path / "scratch"))
  assert compare.publishes(str(tmp_path / "scratch"), publish=True)


def test_budgets_command(tmp_path):
  rs = (test_budgets._law_records("adamw", 1.0) + test_budgets._law_records("muon", 1.5)
        + [test_budgets._rec("muon", 0, 9, None)])
  for r in rs:
    records_lib.append_record(str(tmp_path), r)
  before = _snapshot()
  out = _run(["budgets", str(tmp_path), "--workloads=w"]).stdout
  assert "(1 records without budget_metrics skipped.)" in out
  assert "| muon | 1.59x [" in out
  assert f"python -m experiments.compare budgets {tmp_path} --baseline=adamw --workloads=w`" in out
  # Studies share seeds and Sobol points: paired by default (the paired t-test).
  assert "Verdict (two-sided paired t-test per cell" in out
  unpaired = _run(["budgets", str(tmp_path), "--workloads=w", "--nopaired"]).stdout
  assert "Welch t-test per cell" in unpaired and "--workloads=w --nopaired`" in unpaired
  # A scratch directory: its report and plots beside the records, the checkout untouched.
  assert _snapshot() == before
  report = (tmp_path / "report.md").read_text()
  assert "not published" in report and "![w](plots/budgets_w.png)" in report
  assert "| muon | 1.59x [" in report and "Trials per study x studies: adamw 3 x 5, muon 3 x 5" \
      in report
  assert (tmp_path / "plots" / "budgets_w.png").stat().st_size > 10_000
  empty = tmp_path / "empty"
  records_lib.append_record(str(empty), test_budgets._rec("adamw", 0, 0, None))
  bad = subprocess.run([sys.executable, "-m", "experiments.compare", "budgets", str(empty)],
                       cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and "no records with budget_metrics" in bad.stderr
  # A misspelled baseline or workload is one line and status 2, and writes nothing: before, it
  # printed (and, for the repository's records, published) tables against no baseline.
  for flag, line in (
      ("--baseline=adamW", f"ERROR: --baseline=adamW: no records of it in {tmp_path}; did you "
                           "mean 'adamw'? the optimizers there: adamw, muon"),
      ("--workloads=v", f"ERROR: --workloads: no records with budget_metrics of v in {tmp_path}; "
                        "its workloads: w")):
    os.remove(tmp_path / "report.md")
    bad = subprocess.run([sys.executable, "-m", "experiments.compare", "budgets", str(tmp_path),
                          flag], cwd=ROOT, capture_output=True, text=True)
    assert (bad.returncode, bad.stderr.splitlines(), bad.stdout) == (2, [line], ""), bad
    assert not (tmp_path / "report.md").exists()
    (tmp_path / "report.md").write_text("")
  assert _snapshot() == before


def test_budgets_publishes_the_readme_headline_and_workspace_section(tmp_path):
  """`compare budgets` on a copy of the repository's records/budgets/ rewrites README.md's
  headline and WORKSPACE.md's budgets section there, and a second run changes nothing."""
  repo = tmp_path / "repo"
  (repo / "results").mkdir(parents=True)
  for name in ("README.md", "WORKSPACE.md"):
    shutil.copy(os.path.join(ROOT, name), repo / name)
  records = repo / "records" / "budgets"
  for r in test_budgets._law_records("adamw", 1.0) + test_budgets._law_records("muon", 1.5):
    records_lib.append_record(str(records), r)
  before = _snapshot()
  env = {compare.ROOT_ENV: str(repo)}
  readme_before = (repo / "README.md").read_text()
  # The synthetic trials all sit at learning rate 0.1, the top of AdamW's legacy range.
  refused = subprocess.run([sys.executable, "-m", "experiments.compare", "budgets",
                            str(records)], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, **env})
  assert refused.returncode == 1, refused.stderr
  assert "at an edge of their range, so no headline is written" in refused.stderr
  assert "w adamw 400 learning_rate high 5/5" in refused.stderr
  assert (repo / "README.md").read_text() == readme_before
  out = _run(["budgets", str(records), "--allow_edges"], env).stdout
  assert "README.md: updated" in out
  readme = (repo / "README.md").read_text()
  head = readme.split("<!-- headline:begin -->")[1].split("<!-- headline:end -->")[0]
  assert "| speed-up over adamw | 50 steps |" in head and "| muon | **1.59x [" in head
  assert "from the 30 tuning runs in `records/budgets/`" in head
  assert "![w](results/budgets_w.png)" in head and "Wen et al. 2025" in head
  ws = (repo / "WORKSPACE.md").read_text()
  section = ws.split("<!-- budgets:begin -->")[1].split("<!-- budgets:end -->")[0]
  assert "**Loss difference, w:" in section and "![w](results/budgets_w.png)" in section
  assert (repo / "results" / "budgets_w.png").exists()
  assert not (records / "report.md").exists()
  again = _run(["budgets", str(records), "--allow_edges"], env).stdout
  assert "unchanged" in again and (repo / "README.md").read_text() == readme
  assert _snapshot() == before


@pytest.mark.slow
def test_reference_runs_repeat_the_best_tuned_trial_with_other_seeds(tmp_path):
  """`compare reference` through the binary: AdamW's best trial of its complete studies,
  trained again with 2 other seeds as studies 1000 and 1001 (left out of every tuning
  statistic); a rerun trains nothing; no baseline study is one ERROR line."""
  records, runs = tmp_path / "records", tmp_path / "runs"
  common = ["--workloads=mds", f"--runs_dir={runs}", "--vectorize=never"]
  _run(["sweep", str(records), "--optimizers=adamw", "--trials=2", "--studies=1",
        "--full_budget", *common])
  tuned = records_lib.read_records(str(records))
  best = min(tuned, key=lambda r: (r["final_metric"], r["trial"]))
  out = _run(["reference", str(records), "--reference_runs=2", *common]).stdout
  assert f"from study 0 trial {best['trial']}" in out
  refs = [r for r in records_lib.read_records(str(records)) if r["study"] >= 1000]
  assert sorted((r["study"], r["trial"], r["seed"]) for r in refs) == [
      (1000, 0, records_lib.run_seed(1000, 0)), (1001, 0, records_lib.run_seed(1001, 0))]
  assert all(r["hparams"] == best["hparams"] and r["step_budget"] == best["step_budget"]
             and len(r["curve"]) == len(best["curve"]) for r in refs)  # full budget
  assert refs[0]["final_metric"] != refs[1]["final_metric"]  # other seeds, other runs
  again = _run(["reference", str(records), "--reference_runs=2", *common]).stdout
  assert "2 runs planned, 2 already recorded" in again
  assert "from the reference runs already recorded" in again
  bad = subprocess.run([sys.executable, "-m", "experiments.compare", "reference", str(records),
                        "--workloads=logreg", *common[1:]],
                       cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2
  assert bad.stderr.startswith("ERROR: logreg: no complete adamw study in")


@pytest.mark.slow
def test_the_budget_comparison_runs_its_phases_in_order_then_the_reference_runs(
    tmp_path, monkeypatch):
  """`--budget=budgets`'s orchestration on a small stand-in (mds, 1 trial x 2 studies): every
  workload's phase, in order, then AdamW's reference runs from its best tuned trial; a rerun
  trains nothing. (The budget workloads themselves: the `budgets` and `reference` tests.)"""
  monkeypatch.setattr(compare, "BUDGET_COMPARISON", (("mds", ("adamw", "sgd")),))
  monkeypatch.setattr(compare, "BUDGET_TRIALS", 1)
  monkeypatch.setattr(compare, "BUDGET_STUDIES", 2)
  records, runs = str(tmp_path / "records"), str(tmp_path / "runs")
  compare.run_budget_comparison(records, runs, reference_runs=1)
  rs = records_lib.read_records(records)
  assert sorted((r["optimizer"], r["study"]) for r in rs) == [
      ("adamw", 0), ("adamw", 1), ("adamw", 1000), ("sgd", 0), ("sgd", 1)]
  assert all(r["trials_per_study"] == 1 for r in rs if r["study"] < 1000)  # the plan's
  tuned = [r for r in rs if r["optimizer"] == "adamw" and r["study"] < 1000]
  best = min(tuned, key=lambda r: (r["final_metric"], r["study"]))
  ref = next(r for r in rs if r["study"] == 1000)
  assert ref["hparams"] == best["hparams"]
  assert all(len(r["curve"]) == len(ref["curve"]) for r in rs if r["optimizer"] == "adamw")
  compare.run_budget_comparison(records, runs, reference_runs=1)
  assert len(records_lib.read_records(records)) == 5


def test_a_quick_scratch_comparison_trains_reports_and_publishes_nothing(tmp_path):
  # `compare all SCRATCH --quick` as a user runs it (here with one optimizer, the one whose
  # 8-bit state once crashed on the quick workloads, which have no embeddings group).
  before = _snapshot()
  scratch = tmp_path / "scratch"
  out = _run(["all", str(scratch), "--quick", "--optimizers=adamw_8bit",
              f"--runs_dir={tmp_path / 'runs'}"]).stdout
  assert "6 runs planned, 0 already recorded" in out and "all done in" in out, out
  assert sorted(p.name for p in scratch.glob("*.jsonl")) == ["logreg.jsonl", "mds.jsonl",
                                                              "mlp_digits.jsonl"]
  assert "not published" in (scratch / "report.md").read_text()
  assert _snapshot() == before  # README.md, WORKSPACE.md, results/: bytes and mtimes


def test_edges_lists_edge_bound_hyperparameters_and_ends_with_a_summary_line(tmp_path):
  """`compare edges` through the binary: every hyperparameter whose best trials sit in the
  outer 10% of its range in --edge_studies or more studies, then one line saying how many and
  over which runs (before, a directory with none printed nothing at all)."""
  records = tmp_path / "records"
  # AdamW's synthetic trials sit at learning rate 0.1, the top of its legacy range, in 5 of 5
  # studies; a directory without tuning runs has no edge.
  for r in test_budgets._law_records("adamw", 1.0):
    records_lib.append_record(str(records), r)
  out = _run(["edges", str(records)]).stdout.splitlines()
  assert "w adamw 400 learning_rate high 5/5" in "\n".join(out)
  assert out[-1].startswith("6 edge-bound hyperparameter(s) (best trial in the outer 10% of its "
                            "range in 3 or more studies) over 15 tuning runs of 1 workload x "
                            "optimizer pair(s) in ")
  assert _run(["edges", str(records), "--edge_studies=6"]).stdout.startswith(
      "0 edge-bound hyperparameter(s)")
  bad = subprocess.run([sys.executable, "-m", "experiments.compare", "edges", str(records),
                        "--edge_studies=0"], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "ERROR:" in bad.stderr
