"""Branched cooldowns (experiments/training/budgets.py; Hägele et al. 2024, arXiv 2405.18392):
one WSD run gives the final loss of every budget in `train.budgets`.

The tolerance is exact equality: a branch replays, from the main run's state at the fork, the
steps a standalone B-step run takes there (its schedule, the same batches by step index) through
the same compiled step function, and up to the fork both runs took the same steps with the same
learning rates (warmup and stable phase do not depend on the run length). On one CPU device
nothing in that is order-dependent, so the numbers agree bit for bit (measured: they do).
"""

import dataclasses
import json
import os
import signal
import sys

import pytest

from experiments import configs_util
from experiments.training import budgets as budgets_lib
from experiments.training import loop
from experiments.training import validate as validate_lib
from tests.test_train import CONFIG, ROOT, TINY, start
from tests.test_trustworthy_runs import assert_user_error

# Every test here trains (branched and standalone runs): the slow set (pytest.ini).
pytestmark = pytest.mark.slow

MUON = os.path.join(ROOT, "configs", "speedrun_cpu_muon.py")
BUDGETS = (8, 16, 24)
# decay(B) = round(0.2 B): 2, 3, 5 steps; forks at 6 and 13, after the 5-step warmup.
COMMON = {"schedule.name": "wsd", "schedule.decay_fraction": 0.2, "train.eval_every": 8,
          "train.checkpoint_every": 100}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


def config(corpus, path=CONFIG, **overrides):
  values = dict(TINY, **COMMON, **{"data.cache_dir": str(corpus)})
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return configs_util.load(path, values)


def losses(summary) -> dict[int, float]:
  return {r["budget"]: r["val_loss"] for r in summary["budget_metrics"]}


@pytest.fixture(scope="module")
def branched_runs(corpus, tmp_path_factory):
  """path -> (summary of a 24-step run of that config with budgets 8, 16, 24, its workdir),
  each trained once per module."""
  done = {}

  def get(path):
    if path not in done:
      wd = tmp_path_factory.mktemp("branched") / "w"
      cfg = config(corpus, path, train__steps=24, train__budgets=BUDGETS)
      done[path] = loop.train_and_evaluate(cfg, str(wd)), wd
    return done[path]

  return get


@pytest.fixture(params=[CONFIG, MUON], ids=["adamw", "muon"])
def branched(request, branched_runs):
  """(config path, summary, workdir) of the branched run, for AdamW and Muon."""
  return (request.param, *branched_runs(request.param))


def test_each_budget_equals_its_standalone_run(branched, corpus, tmp_path):
  path, summary, _ = branched
  assert [r["budget"] for r in summary["budget_metrics"]] == list(BUDGETS)
  got = losses(summary)
  for b in BUDGETS:
    alone = loop.train_and_evaluate(config(corpus, path, train__steps=b), str(tmp_path / str(b)))
    assert alone["val_step"] == b
    assert got[b] == alone["val_loss"], (b, got[b], alone["val_loss"])  # bitwise: module doc


def test_the_main_run_is_the_longest_budget_and_branches_stay_out_of_its_curve(branched):
  _, summary, wd = branched
  assert summary["step"] == 24 and summary["val_step"] == 24
  assert losses(summary)[24] == summary["val_loss"]
  rows = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  val_steps = [r["step"] for r in rows if "val_loss" in r]
  assert val_steps == [0, 8, 16, 24]  # the branches' evals at 8 and 16 are not main rows
  branch_rows = budgets_lib.read(str(wd))
  assert [(r["budget"], r["fork_step"]) for r in branch_rows] == [(8, 6), (16, 13)]
  # A branch's time: the main run's at the fork plus its own, which is positive.
  for r in branch_rows:
    assert r["train_time_s"] > r["branch_time_s"] > 0


def test_a_stopped_run_resumes_without_redoing_a_finished_branch(branched_runs, corpus,
                                                                 tmp_path):
  reference, _ = branched_runs(CONFIG)  # one optimizer suffices for the bookkeeping
  wd = str(tmp_path / "w")
  first = loop.train_and_evaluate(config(corpus, train__steps=24, train__budgets=BUDGETS,
                                         train__stop_at_step=10), wd)
  assert first["step"] == 10 and losses(first) == {8: losses(reference)[8]}
  [row8] = budgets_lib.read(wd)
  second = loop.train_and_evaluate(config(corpus, train__steps=24, train__budgets=BUDGETS), wd)
  assert second["budget_metrics"][0]["budget"] == 8
  assert losses(second) == losses(reference)
  rows = budgets_lib.read(wd)
  assert [r["budget"] for r in rows] == [8, 16] and rows[0] == row8  # not redone
  again = loop.train_and_evaluate(config(corpus, train__steps=24, train__budgets=BUDGETS), wd)
  assert again["already_complete"] and again["budget_metrics"] == second["budget_metrics"]


def test_a_branch_cut_by_a_signal_is_redone_on_resume(branched_runs, corpus, tmp_path,
                                                      monkeypatch):
  reference, _ = branched_runs(CONFIG)
  wd = str(tmp_path / "w")
  real = budgets_lib.distributed.reached_preemption

  def signal_in_branch_16(step, flag, every=1):
    if step == 14:  # the second of budget 16's three branch steps
      os.kill(os.getpid(), signal.SIGTERM)  # the run's handler sets run.signal
      return True
    return real(step, flag, every)

  monkeypatch.setattr(budgets_lib.distributed, "reached_preemption", signal_in_branch_16)
  cut = loop.train_and_evaluate(config(corpus, train__steps=24, train__budgets=BUDGETS), wd)
  assert cut["stopped_by_signal"] == signal.SIGTERM and cut["step"] == 13
  assert [r["budget"] for r in budgets_lib.read(wd)] == [8]
  monkeypatch.setattr(budgets_lib.distributed, "reached_preemption", real)
  resumed = loop.train_and_evaluate(config(corpus, train__steps=24, train__budgets=BUDGETS), wd)
  assert losses(resumed) == losses(reference)


@pytest.mark.parametrize("overrides,why", [
    ({"train.budgets": (8, 0, 24)}, "every budget must be a positive integer"),
    ({"train.budgets": (16, 8, 24)}, "sorted, each once"),
    ({"train.budgets": (8, 8, 24)}, "sorted, each once"),
    ({"train.budgets": (8, 16)}, "the longest budget must be train.steps=24"),
    ({"train.budgets": BUDGETS, "schedule.name": "warmup_cosine"}, "need schedule.name='wsd'"),
    ({"train.budgets": (4, 24)}, "budget 4's decay would start at step 3, before the warmup"),
    ({"train.budgets": BUDGETS, "train.target_val_loss": 1.0, "train.stop_at_target": True},
     "train.stop_at_target"),
    ({"train.budgets": BUDGETS, "train.eval_every": 0}, "train.eval_every > 0"),
])
def test_bad_budgets_are_config_errors(corpus, overrides, why):
  cfg = config(corpus, train__steps=24)
  for k, v in overrides.items():
    *head, last = k.split(".")
    node = cfg
    for part in head:
      node = node[part]
    node[last] = v
  with pytest.raises(validate_lib.ConfigError, match="train.budgets=") as e:
    validate_lib.validate(cfg)
  assert why in str(e.value)


def test_a_hyperparameter_that_follows_the_run_length_is_refused(corpus):
  cfg = config(corpus, os.path.join(ROOT, "configs", "speedrun_cpu_ademamix.py"),
               train__steps=24, train__budgets=BUDGETS)
  with pytest.raises(validate_lib.ConfigError, match="follows train.steps"):
    validate_lib.validate(cfg)


def test_bad_budgets_through_the_binary_are_one_error_line_and_status_2(corpus, tmp_path):
  wd = tmp_path / "w"
  args = [f"--config.{k}={v}" for k, v in dict(TINY, **COMMON).items()]
  rc, out = start([sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
                   f"--workdir={wd}", *args, f"--config.data.cache_dir={corpus}",
                   "--config.train.steps=24", "--config.train.budgets=(16,8,24)"])
  assert_user_error(rc, out, "ERROR: train.budgets=(16, 8, 24): the budgets must be sorted")
  assert not wd.exists()


def test_the_budget_workloads_run_under_the_sweep_and_records_keep_budget_metrics():
  from experiments.harness import records as records_lib
  from experiments.harness import runs as runs_lib
  for w in runs_lib.BUDGET_WORKLOADS:
    for opt in ("adamw", "muon"):
      spec = records_lib.RunSpec(workload=w, optimizer=opt, hparams={}, study=0, trial=0,
                                 seed=0)
      cfg = runs_lib.run_config(spec)
      validate_lib.validate(cfg)  # no stop at a target: none is set
      # The baseline trains on to 800 steps: its curve extends past the challengers' 400.
      want = (50, 100, 200, 400, 800) if opt == runs_lib.BUDGET_BASELINE else (50, 100, 200, 400)
      assert validate_lib.budgets_of(cfg) == want and cfg.schedule.name == "wsd"
      assert cfg.train.steps == want[-1] and runs_lib.workload_target(w) is None
      warmup = runs_lib.run_config(dataclasses.replace(spec, hparams={"warmup_fraction": 0.1}))
      assert warmup.schedule.warmup_steps == 5  # of the shortest budget, 50, for both
  result = {"target": None, "metric": "val_loss", "step_budget": 24, "steps_to_target": None,
            "time_to_target_s": None, "final_metric": 3.0, "curve": []}
  per_budget = [{"budget": 8, "val_loss": 4.0, "train_time_s": 1.0}]
  record = records_lib.make_record(spec, dict(result, budget_metrics=per_budget), prov={})
  assert record["budget_metrics"] == per_budget
  assert "budget_metrics" not in records_lib.make_record(spec, result, prov={})


def test_the_check_script_finds_no_difference_on_a_tiny_setting(corpus, tmp_path):
  overrides = {k: v for k, v in dict(TINY, **COMMON).items()
               if not k.startswith("mesh.") and k != "schedule.base_batch_size"}
  overrides.update({"data.cache_dir": str(corpus), "train.steps": 24,
                    "train.budgets": BUDGETS})
  out = tmp_path / "check.json"
  rc, text = start([sys.executable, "-m", "scripts.check_branched_cooldown",
                    "--optimizers=adamw", "--seeds=1", f"--out={out}",
                    f"--runs_dir={tmp_path / 'runs'}",
                    *[f"--set={k}={v!r}" if isinstance(v, str) else f"--set={k}={v}"
                      for k, v in overrides.items()]])
  assert rc == 0, text
  result = json.loads(out.read_text())
  rows = result["rows"]
  assert [r["budget"] for r in rows] == list(BUDGETS)
  assert all(r["difference"] == 0.0 for r in rows), rows
  t8 = result["table"][0]
  assert t8["seed_spread"] == 0.0 and t8["max_abs_difference"] == 0.0


def test_a_constant_schedule_reads_each_budget_off_the_main_run(corpus, tmp_path):
  # Schedule-Free: no decay to branch; a B-step run of a constant schedule is the main run's
  # first B steps, so its budget results are the main run's evaluations, bit for bit a
  # standalone run's.
  path = os.path.join(ROOT, "configs", "speedrun_cpu_schedule_free_adamw.py")
  cfg = config(corpus, path, train__steps=24, train__budgets=BUDGETS,
               schedule__name="constant")
  summary = loop.train_and_evaluate(cfg, str(tmp_path / "main"))
  assert not budgets_lib.read(str(tmp_path / "main"))  # nothing branched
  rows = [json.loads(l) for l in open(tmp_path / "main" / "metrics.jsonl")]
  evals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
  assert losses(summary) == {b: evals[b] for b in BUDGETS}
  alone = loop.train_and_evaluate(config(corpus, path, train__steps=8, schedule__name="constant"),
                                  str(tmp_path / "8"))
  assert losses(summary)[8] == alone["val_loss"]
  bad = config(corpus, path, train__steps=24, train__budgets=(10, 24), schedule__name="constant")
  with pytest.raises(validate_lib.ConfigError, match="multiple of train.eval_every=8"):
    validate_lib.validate(bad)


def test_the_evaluation_cadence_leaves_every_budgets_loss_as_it_was(branched_runs, corpus,
                                                                     tmp_path):
  # Evaluation reads the state and touches neither it, its data nor its RNG: with every
  # evaluation but the budgets' own ends dropped (eval_every past the run), the branched
  # losses are bit for bit the 8-step cadence's (why speedrun_wide may evaluate every 50).
  summary, _ = branched_runs(CONFIG)
  sparse = loop.train_and_evaluate(
      config(corpus, train__steps=24, train__budgets=BUDGETS, train__eval_every=100),
      str(tmp_path / "sparse"))
  assert losses(sparse) == losses(summary)
  rows = [json.loads(l) for l in open(tmp_path / "sparse" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "val_loss" in r] == [0, 24]


def test_the_wide_variant_is_the_budget_variant_at_width_264_evaluated_every_50():
  from configs import workload_speedrun  # pylint: disable=g-import-not-at-top
  small, wide = (workload_speedrun.get_config(v) for v in ("budgets", "wide_budgets"))
  assert (wide.model.width, wide.train.eval_every, small.train.eval_every) == (264, 50, 25)
  wide.model.width, wide.train.eval_every = small.model.width, small.train.eval_every
  assert wide.to_dict() == small.to_dict()  # nothing else differs
