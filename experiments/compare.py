r"""Tuned optimizer comparisons: search spaces, trials, run records, AlgoPerf scores, speedrun rule.

  python -m experiments.compare all records/budgets --budget=budgets --runs_dir=runs/budgets
      # the budget comparison (issue 39), resumable: README's headline when done
  python -m experiments.compare all DIR [--quick]     # sweep + score + plots + DIR/report.md
  python -m experiments.compare sweep DIR [--quick]   # train what is missing, then score
  python -m experiments.compare all DIR --budget=algoperf  # issue 21's step-to-target budget
  python -m experiments.compare score records/history/issue21 [--r_max=4]
      # the replaced step-to-target comparison (issue 21), rescored from its records
  python -m experiments.compare plots DIR [--out_dir=results]   # experiments/harness/plots.py
  python -m experiments.compare targets DIR   # each workload's target by the AdamW rule
  python -m experiments.compare retarget DIR  # rescore records on the configs' targets
  python -m experiments.compare budgets records/budgets [--baseline=adamw] [--nopaired]
      # speed-ups at several budgets (budget_metrics; experiments/harness/budgets.py): the
      # README headline, WORKSPACE's budgets section, results/budgets_<workload>.png
  python -m experiments.compare edges records/budgets [--edge_studies=3]
      # tuned values at an edge of their range, then one summary line
  python -m experiments.compare reference records/budgets --runs_dir=runs/budgets
      # the baseline's best tuned trial x --reference_runs seeds: the steps-to-target target

Publishing is explicit: README.md's headline, WORKSPACE.md's section and results/*.png are
written only when RECORDS_DIR is the repository's own records/ or records/budgets/ (resolved
real paths) or --publish is given. The headline is the budget comparison's, published from
records/budgets/; the step-to-target comparison it replaced is rescored where it lies
(`score records/history/issue21`, a scratch directory). Any other directory (a scratch sweep)
gets its report on stdout and in RECORDS_DIR/report.md, its plots in RECORDS_DIR/plots/.

Tuning follows AlgoPerf's external tuning ruleset (Dahl et al. 2023, arXiv 2306.07179): every
optimizer gets the same number of trials drawn quasi-randomly (scrambled Sobol points through
optuna's QMCSampler) from its search space; a study is the trial that reaches the validation
target fastest; several studies (different draws and seeds) give the spread; each workload's
time for an optimizer is the median over studies, never reaching the target counts as infinity.
Performance profiles: rho_o(tau) = the fraction of workloads on which o's time is within a factor
tau of the fastest optimizer's; the benchmark score is B_o = 1/(r_max - 1) int_1^r_max rho_o.

Records: one JSON line per finished run in `<records_dir>/<workload>.jsonl` (fields in
`make_record`); `sweep` skips every (workload, optimizer, study, trial, seed) already there, so
an interrupted sweep rerun does only what is missing.

The speedrun's optimizer track (modded-nanogpt) accepts a record when the mean final loss over n
seeds is below the target by at least c / sqrt(n); `record_rule` applies it and `welch` tests a
claimed steps-to-target speed-up (Welch's unequal-variance t-test).

Exit status: 0 done (also --help), 2 a usage error (a wrong command, flag value or records
directory, or a --baseline / --workloads / --speedrun_workload the records lack: one `ERROR:`
line), 3 a workdir or records directory that cannot be written (no space left, ...:
one line), 1 `all` or `budgets` refused to publish results tuned at an edge of a search space (one
`ERROR:` line naming them; `--allow_edges` publishes anyway), 128+N stopped by signal N
(SIGTERM, Ctrl-C: after the running trial's record is written; rerun the same command to
resume).

This module is the command line; the harness itself is experiments/harness/ (records, runs,
scoring, report, plots, WORKSPACE.md's section): import its names from there.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import os
import signal
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from experiments import configs_util
from experiments.harness import records as records_lib
from experiments.harness import report as report_lib
from experiments.harness import runs as runs_lib
from experiments.harness import scoring
from experiments.harness import spaces as spaces_lib
from experiments.harness import workspace as workspace_lib

# The harness's names, kept here for the callers that know them as `compare.<name>`.

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_R_MAX = flags.DEFINE_float("r_max", 4.0, "Upper limit of the performance-profile integral.")
_BY = flags.DEFINE_enum("score_by", "time_to_target_s", ["time_to_target_s", "steps_to_target"],
                        "What the performance profiles compare.")
_SPEEDRUN = flags.DEFINE_string("speedrun_workload", "speedrun",
                                "Workload whose claims get the speedrun's rules.")
_RECORD_C = flags.DEFINE_float("record_c", None, "c of the record rule; default: z_(1-alpha) x "
                               "the sample std of the claimant's final losses.")
_ALPHA = flags.DEFINE_float("alpha", 0.01, "Significance level of the record rule, the t-test "
                            "and the ratios' rank test (a ratio is a measurable difference "
                            "when its 95% interval excludes 1 and p < alpha).")
_BASELINE = flags.DEFINE_string("baseline", "adamw", "Optimizer the ratios and t-tests compare "
                                 "against.")


_WORKLOADS = flags.DEFINE_list(
    "workloads", [w for w in runs_lib.WORKLOAD_CONFIGS if w not in runs_lib.BUDGET_WORKLOADS],
    "sweep: workloads to run.")
_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adamw", "muon", "shampoo", "soap", "adamw_8bit",
                                               "sgd"], "sweep: optimizers to compare.")
# The default budget, 2 trials x 2 studies of 6 optimizers on 5 workloads (120 runs), is what
# fits 90 minutes on 2 idle cores: one trial of each optimizer on each workload, run to its full
# step budget, costs about 18 minutes there (WORKSPACE.md, "Tuned comparison").
_TRIALS = flags.DEFINE_integer("trials", 2, "sweep: trials per optimizer and study (the same "
                               "for every optimizer).", lower_bound=1)
_STUDIES = flags.DEFINE_integer("studies", 2, "sweep: studies (independent draws and seeds; "
                                "at least 2 for a spread and a t-test).", lower_bound=1)
_QUICK = flags.DEFINE_bool("quick", False, f"sweep: only {', '.join(runs_lib.QUICK_WORKLOADS)}, "
                           "2 trials, 1 study (minutes, for checking the pipeline).")
_RUNS = flags.DEFINE_string("runs_dir", "runs/compare", "sweep: workdirs of the runs.")
_VECTORIZE = flags.DEFINE_enum(
    "vectorize", "auto", ["auto", "always", "never"],
    "sweep: train the trials of one (workload, optimizer) as one vmapped program "
    "(experiments/harness/vectorized.py; times from a timing record measured alone) or one "
    "trainer run at a time. auto: wherever scripts/bench_vectorized.py measured it faster "
    "(runs.VECTORIZE_SPEEDUP).")
_RULESET = flags.DEFINE_enum(
    "ruleset", "external", ["external", "self_tuning"],
    "sweep: AlgoPerf's external-tuning ruleset (--trials drawn points per study) or its "
    "self-tuning one (each optimizer once per study at its defaults, recorded under "
    f"RECORDS_DIR/{records_lib.SELF_TUNING_DIR} and scored apart).")
_FULL_BUDGET = flags.DEFINE_bool(
    "full_budget", False, "sweep: train every run to its step budget instead of stopping at "
    "the target (the baseline runs that set targets; records.retarget scores them on another).")
_BUDGET = flags.DEFINE_enum(
    "budget", "flags", ["flags", "algoperf", "budgets"],
    "sweep, all: `flags` sweeps --optimizers x --trials x --studies under --ruleset; `budgets` "
    "runs the budget comparison of issue 39 (BUDGET_COMPARISON, then the baseline's reference "
    "runs; `all` then publishes or reports it as `compare budgets` does); `algoperf` "
    "runs the whole comparison of issue 21 (algoperf_phases: the baseline AdamW 5x5 to the full "
    "budget, the core optimizers 5x5, the frontier 5 trials x 3 studies, every optimizer "
    "self-tuned x 5 studies), resumable, one progress count and ETA over all of it.")
_MAX_TRIALS = flags.DEFINE_integer("max_trials_per_program", 25,
                                   "sweep: at most this many trials in one vectorized program.",
                                   lower_bound=1)


_OUT_DIR = flags.DEFINE_string("out_dir", "results", "plots, all: where the PNGs go (unset: "
                               "the repository's results/ when publishing, else "
                               "RECORDS_DIR/plots/).")
_WORKSPACE = flags.DEFINE_string("workspace", os.path.join(_ROOT, "WORKSPACE.md"),
                                 "all: the file whose marked results section is regenerated.")

_PUBLISH = flags.DEFINE_bool(
    "publish", False, "all, plots, budgets: write README.md's headline, WORKSPACE.md's section and "
    "results/*.png although RECORDS_DIR is not the repository's records/ (for records/ itself "
    "they always are); otherwise the report goes to stdout and RECORDS_DIR/report.md, the "
    "plots to RECORDS_DIR/plots/.")
_PAIRED = flags.DEFINE_bool(
    "paired", True, "budgets: resample and test studies paired, the same study indices for "
    "both sides (issue 39: the sweep gives study s of every optimizer the same seeds and the "
    "same Sobol points; the paired t-test of the differences); --nopaired resamples and tests "
    "each side's studies independently (Welch).")

_CELL_TEST = flags.DEFINE_enum(
    "cell_test", "welch", ["welch", "rank"],
    "budgets: the test of each optimizer x budget cell, over the studies' best losses: Welch's "
    "t-test (paired: the t-test of differences) or the rank tests (Mann-Whitney; paired: "
    "Wilcoxon), which with 5 studies a side cannot pass Holm's correction over a headline's "
    "cells (experiments/harness/budgets.py says why).")

_ALLOW_EDGES = flags.DEFINE_bool(
    "allow_edges", False, "all, budgets: write WORKSPACE.md's results even when a tuned "
    "hyperparameter's best trials sit at an edge of its range (`compare edges`) in 3 or more "
    "studies.")

_EDGE_STUDIES = flags.DEFINE_integer(
    "edge_studies", 3, "edges: list a hyperparameter whose best trials sit in the outer 10% of "
    "its range in at least this many studies (3, the publishing rule; 1 shows every edge to "
    "watch).", lower_bound=1)

_REFERENCE_RUNS = flags.DEFINE_integer(
    "reference_runs", 5, "reference: how many seeds the baseline's best tuned trial is trained "
    "with (studies 1000, 1001, ...; the steps-to-target view's target).", lower_bound=1)

flags.register_validator("alpha", lambda a: 0.0 < a < 1.0, "--alpha must lie between 0 and 1")
flags.register_validator("r_max", lambda r: r > 1.0, "--r_max must be above 1 (the profile's "
                         "integral runs from 1 to r_max)")

COMMANDS = ("score", "sweep", "plots", "all", "targets", "retarget", "budgets", "edges",
            "reference")

# Tests point publishing at a copy of the repository (README.md, WORKSPACE.md, results/,
# records/) through this variable instead of writing into the checkout.
ROOT_ENV = "COMPARE_REPO_ROOT"
# The repository's own records: the step-to-target comparison's records/ and the budget
# comparison's records/budgets/ (issue 39).
PUBLISHED_DIRS = (("records",), ("records", "budgets"))


def repo_root() -> str:
  """The repository publishing writes into: $COMPARE_REPO_ROOT, else this checkout."""
  return os.environ.get(ROOT_ENV) or _ROOT


def publishes(records_dir: str, publish: bool = False) -> bool:
  """Whether a command on `records_dir` writes README.md, WORKSPACE.md and results/: only for
  the repository's own records/ or records/budgets/ (`PUBLISHED_DIRS`; resolved real paths, so
  a symlink or `./records` counts) or when asked (`--publish`). A scratch sweep must not
  overwrite the published comparison."""
  own = [os.path.realpath(os.path.join(repo_root(), *d)) for d in PUBLISHED_DIRS]
  return publish or os.path.realpath(records_dir) in own


def output_paths(records_dir: str, publish: bool) -> dict:
  """{workspace, out_dir, report}: publishing, WORKSPACE.md and results/ of `repo_root()`
  (an explicit --workspace / --out_dir wins) and no report file; otherwise no workspace, the
  plots in RECORDS_DIR/plots (or an explicit --out_dir) and RECORDS_DIR/report.md."""
  f = flags.FLAGS
  root = repo_root()
  if publishes(records_dir, publish):
    return {"workspace": f.workspace if f["workspace"].present else
                         os.path.join(root, "WORKSPACE.md"),
            "out_dir": f.out_dir if f["out_dir"].present else os.path.join(root, "results"),
            "report": None}
  return {"workspace": None,
          "out_dir": f.out_dir if f["out_dir"].present else os.path.join(records_dir, "plots"),
          "report": os.path.join(records_dir, "report.md")}


def write_report(records_dir: str, path: str, plots_dir: str) -> None:
  """What publishing would put in README.md's headline and WORKSPACE.md's section, written
  to `path` instead (a scratch directory's report), PNGs linked relative to it."""
  f = flags.FLAGS
  records = records_lib.read_records(records_dir)
  here = os.path.dirname(os.path.abspath(path))
  rel = os.path.relpath(plots_dir, here)
  text = ("# Comparison report (not published)\n\n"
          f"From `{records_dir}`; README.md, WORKSPACE.md and results/ are written only for "
          "the repository's records/ or with --publish.\n\n## Headline\n\n"
          + workspace_lib.headline(records, records_dir, f.baseline, f.alpha)
          + "\n\n## Section\n\n"
          + workspace_lib.section(records, records_dir, rel, f.baseline, f.r_max, f.alpha,
                                  root=here) + "\n")
  with open(path, "w") as fh:
    fh.write(text)
  print(f"{path}: written (not published)")


def _check_draws(specs: Sequence[records_lib.RunSpec], records: Sequence[dict],
                 records_dir: str) -> None:
  """A recorded run whose hyperparameters differ from the plan's draw for the same key was drawn
  from another search space: mixing the two would score neither."""
  planned = {sp.key(): sp.hparams for sp in specs}
  for r in records:
    hp = planned.get(records_lib.record_key(r))
    if hp is None:
      continue
    same = set(hp) == set(r["hparams"]) and all(
        abs(float(hp[k]) - float(r["hparams"][k])) <= 1e-9 * max(abs(float(hp[k])), 1e-30)
        if isinstance(hp[k], (int, float)) else hp[k] == r["hparams"][k] for k in hp)
    if not same:
      raise app.UsageError(
          f"{records_dir} holds {r['workload']}/{r['optimizer']} study {r['study']} trial "
          f"{r['trial']} with {r['hparams']}, but the search space now draws {hp} there: it was "
          "recorded under another search space. Sweep into a new records directory (or move "
          "the old records into a subdirectory, which scoring does not read).")


def _groups(todo: Sequence[records_lib.RunSpec],
            max_trials: int) -> list[list[records_lib.RunSpec]]:
  """The runs to do, in plan order, as programs: each (workload, optimizer)'s runs, across
  studies, in chunks of at most `max_trials`."""
  by_pair: dict[tuple, list[records_lib.RunSpec]] = {}
  for sp in todo:
    # Drawn names a program cannot trace (Schedule-Free's warmup) are one value per program.
    static = tuple(sp.hparams.get(n) for n in spaces_lib.static_names(sp.optimizer))
    by_pair.setdefault((sp.workload, sp.optimizer, tuple(sorted(sp.hparams)), static),
                       []).append(sp)
  out = []
  for group in by_pair.values():
    out += [group[i:i + max_trials] for i in range(0, len(group), max(max_trials, 1))]
  return out


@dataclasses.dataclass(frozen=True)
class Phase:
  """One part of a sweep: its runs and where their records and workdirs go."""
  name: str
  records_dir: str
  runs_dir: str
  specs: tuple[records_lib.RunSpec, ...]


def plan_phase(records_dir: str, runs_dir: str, workloads_: Sequence[str],
               optimizers: Sequence[str], trials: int, studies: int,
               ruleset: str = "external", full_budget: bool = False,
               name: str | None = None) -> Phase:
  """A sweep's runs: `trials` drawn points x `studies` per optimizer and workload (external
  ruleset), or each optimizer once per study at its defaults into `<records_dir>/self_tuning`."""
  unknown = [w for w in workloads_ if w not in runs_lib.WORKLOAD_CONFIGS]
  unknown += [o for o in optimizers if o not in records_lib.SEARCH_SPACES]
  if unknown:
    raise app.UsageError(f"unknown workload/optimizer {unknown}; workloads: "
                         f"{', '.join(runs_lib.WORKLOAD_CONFIGS)}; optimizers: "
                         f"{', '.join(records_lib.SEARCH_SPACES)}")
  if ruleset == "self_tuning":
    specs = [dataclasses.replace(sp, full_budget=full_budget) for w in workloads_
             for sp in records_lib.plan_self_tuning(w, optimizers, range(studies))]
    records_dir = os.path.join(records_dir, records_lib.SELF_TUNING_DIR)
    runs_dir = os.path.join(runs_dir, records_lib.SELF_TUNING_DIR)
    trials = 1
  else:
    specs = [sp for w in workloads_
             for sp in records_lib.plan(w, optimizers, trials, range(studies), full_budget)]
  name = name or (f"{ruleset} ruleset: {trials} trials x {studies} studies x "
                  f"{len(optimizers)} optimizers x {len(workloads_)} workloads")
  return Phase(name, records_dir, runs_dir, tuple(specs))


def reference_phase(records_dir: str, runs_dir: str, workloads_: Sequence[str],
                    baseline: str = "adamw", n: int = 5) -> Phase:
  """The baseline's reference runs (issue 39, item 3): its best tuned trial
  (`budgets.best_trial`) trained again to the full budget with `n` other seeds, as studies
  REFERENCE_STUDY, REFERENCE_STUDY + 1, ... (trial 0), which every scorer leaves out of the
  tuning statistics; the steps-to-target view takes its target from them, so the target is not
  picked from the very runs it then scores. Resumable: once a workload has reference records,
  their hyperparameters are kept (a later, better tuned trial does not mix two configurations
  into one target; move the records away to redo them)."""
  from experiments.harness import budgets as budgets_lib  # pylint: disable=g-import-not-at-top
  records = records_lib.read_records(records_dir)
  specs = []
  for w in workloads_:
    made = sorted((r for r in records if r["workload"] == w and r["optimizer"] == baseline
                   and scoring.is_reference(r)), key=lambda r: r["study"])
    best = made[0] if made else budgets_lib.best_trial(records, w, baseline)
    if best is None:
      raise app.UsageError(
          f"{w}: no complete {baseline} study in {records_dir} to take the reference "
          f"hyperparameters from (run `python -m experiments.compare sweep {records_dir} "
          f"--workloads={w} --optimizers={baseline} ...` first)")
    origin = ("the reference runs already recorded" if made else
              f"study {best['study']} trial {best['trial']}")
    print(f"{w}: {baseline}'s reference hyperparameters from {origin}: {best['hparams']}")
    for i in range(n):
      study = scoring.REFERENCE_STUDY + i
      specs.append(records_lib.RunSpec(w, baseline, dict(best["hparams"]), study, 0,
                           records_lib.run_seed(study, 0), full_budget=True,
                           space=best.get("space")))
  return Phase(f"reference runs: {baseline}'s best tuned trial x {n} seeds x "
               f"{len(workloads_)} workloads", records_dir, runs_dir, tuple(specs))


# AlgoPerf's budget (issue 21): the six core optimizers 5 trials x 5 studies, the frontier entries
# 5 trials x 3 studies (the same tuning budget per study, fewer studies), every optimizer once
# per study at its defaults (self-tuning), and first the baseline AdamW trained to the full step
# budget, whose curves set the workloads' targets (`compare targets`).
CORE = ("adamw", "muon", "shampoo", "soap", "sgd", "adamw_8bit")
FRONTIER = tuple(o for o in records_lib.SEARCH_SPACES if o not in CORE)


# The budget comparison (issue 39): per workload, in this order, the optimizers tuned with
# BUDGET_TRIALS trials x BUDGET_STUDIES studies, every trial to its full budget (branched
# cooldowns give the shorter budgets); then AdamW's reference runs for the steps-to-target view.
BUDGET_TRIALS, BUDGET_STUDIES = 6, 5
BUDGET_COMPARISON = (
    ("speedrun_budgets", ("adamw", "muon", "normuon", "shampoo", "soap", "schedule_free_adamw",
                          "lion")),
    ("speedrun_wide", ("adamw", "muon", "soap")),
)


def run_budget_comparison(records_dir: str, runs_dir: str, reference_runs: int = 5) -> None:
  """The whole budget comparison, resumable: each workload's phase in BUDGET_COMPARISON's
  order (one after the other: the speedrun model's comparison is complete before the wider
  model's starts), then the reference runs, which need the baseline's finished studies."""
  for workload, optimizers in BUDGET_COMPARISON:
    run_phases([plan_phase(records_dir, runs_dir, [workload], optimizers, BUDGET_TRIALS,
                           BUDGET_STUDIES, full_budget=True,
                           name=f"{workload}: {', '.join(optimizers)}, {BUDGET_TRIALS} trials x "
                                f"{BUDGET_STUDIES} studies, every trial to its full budget")],
               vectorize="never")
  run_phases([reference_phase(records_dir, runs_dir, [w for w, _ in BUDGET_COMPARISON],
                              "adamw", reference_runs)], vectorize="never")


def algoperf_phases(records_dir: str, runs_dir: str, workloads_: Sequence[str]) -> list[Phase]:
  """The whole comparison of issue 21, as phases `run_phases` runs (resumable)."""
  return [
      plan_phase(records_dir, runs_dir, workloads_, ["adamw"], 5, 5, full_budget=True,
                 name="baseline: AdamW 5 trials x 5 studies to the full budget (sets targets)"),
      plan_phase(records_dir, runs_dir, workloads_, CORE[1:], 5, 5,
                 name=f"core: {', '.join(CORE[1:])}, 5 trials x 5 studies"),
      plan_phase(records_dir, runs_dir, workloads_, FRONTIER, 5, 3,
                 name=f"frontier: {', '.join(FRONTIER)}, 5 trials x 3 studies"),
      plan_phase(records_dir, runs_dir, workloads_, CORE + FRONTIER, 1, 5, "self_tuning",
                 name=f"self-tuning: all {len(CORE + FRONTIER)} at their defaults x 5 studies"),
  ]


def run_sweep(records_dir: str, workloads_: Sequence[str], optimizers: Sequence[str],
              trials: int, studies: int, runs_dir: str, vectorize: str = "never",
              max_trials_per_program: int = 25, ruleset: str = "external",
              full_budget: bool = False) -> list[dict]:
  """Trains every run of the sweep not yet in `records_dir`, printing progress and an ETA.

  vectorize: "never" (one trainer run at a time), "always" (every (workload, optimizer) as
  vectorized programs of at most `max_trials_per_program` trials, except configs only the
  trainer runs) or "auto" (vectorized where `runs.vectorize_faster` says it was measured
  faster). ruleset "self_tuning": each optimizer once per study at its defaults, into
  `<records_dir>/self_tuning` (`trials` unused).
  """
  phase = plan_phase(records_dir, runs_dir, workloads_, optimizers, trials, studies, ruleset,
                     full_budget)
  return run_phases([phase], vectorize, max_trials_per_program)


def _use_vectorized(group: Sequence[records_lib.RunSpec], vectorize: str) -> bool:
  spec = group[0]
  use = len(group) > 1 and (vectorize == "always" or (
      vectorize == "auto" and runs_lib.vectorize_faster(spec.workload, spec.optimizer)))
  if use:
    from experiments.harness import vectorized  # pylint: disable=g-import-not-at-top
    try:
      vectorized.check_config(runs_lib.run_config(spec))
    except vectorized.NotVectorizable as e:
      print(f"{spec.workload} {spec.optimizer}: {e}")
      use = False
  return use


def run_phases(phases: Sequence[Phase], vectorize: str = "never",
               max_trials_per_program: int = 25) -> list[dict]:
  """Trains every run of `phases` not yet recorded: the vectorized programs first, then the
  trainer runs, each cheapest workload first and in phase order; one progress count over all
  of them, with an ETA summed per workload (experiments/harness/progress.py).

  SIGTERM / SIGINT stop it after the running trial's record is written (or within the running
  vectorized program, which records nothing), with one line saying to rerun the same command;
  the exit status is 128 + the signal's number, as the trainer's.
  """
  if max_trials_per_program < 1:
    raise app.UsageError(f"--max_trials_per_program must be >= 1, not {max_trials_per_program}")
  if not flags.FLAGS["verbosity"].present:
    # Each run is one progress line here; the trainer's and orbax's INFO logs of hundreds of
    # runs would bury them (each run's own log is its workdir's metrics.jsonl).
    logging.set_verbosity(logging.WARNING)
  t0 = time.time()
  stop = _StopRequest()
  old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    return _run_programs(phases, vectorize, max_trials_per_program, stop, t0)
  finally:
    for s, h in old_handlers.items():
      signal.signal(s, h)


class _StopRequest:
  """The sweep's SIGTERM / SIGINT handler: the sweep stops once the running trial's record is
  written (a trainer run or a vectorized program that sees the signal stops sooner, recording
  nothing for itself). `observes_signals`: the trainer's and the vectorized programs' own
  handlers pass signals on to it."""

  observes_signals = True

  def __init__(self):
    self.signum = None

  def __call__(self, signum, frame):
    del frame
    if self.signum is None:  # os.write: a print here could re-enter one in progress
      os.write(1, f"signal {signum}: the sweep stops after the running trial's record is "
                  "written\n".encode())
    self.signum = signum

  def check(self, done: int) -> None:
    if self.signum is not None:
      print(f"sweep stopped by signal {self.signum} after {done} new run(s); rerun the same "
            "command to resume it", flush=True)
      sys.exit(128 + self.signum)


def _run_programs(phases, vectorize, max_trials_per_program, stop, t0) -> list[dict]:
  from experiments.harness import progress as progress_lib  # pylint: disable=g-import-not-at-top
  from experiments.harness import vectorized  # pylint: disable=g-import-not-at-top
  programs, history = [], []
  for phase_index, phase in enumerate(phases):
    recorded = records_lib.read_records(phase.records_dir)
    history += recorded
    _check_draws(phase.specs, recorded, phase.records_dir)
    done = {records_lib.record_key(r) for r in recorded}
    todo = [sp for sp in phase.specs if sp.key() not in done]
    print(f"{phase.name}: {len(phase.specs)} runs planned, {len(phase.specs) - len(todo)} "
          "already recorded")
    order = {sp.key(): i for i, sp in enumerate(phase.specs)}
    for g in _groups(todo, max_trials_per_program):
      if _use_vectorized(g, vectorize):
        programs.append((phase, g, True, (phase_index, order[g[0].key()])))
      else:  # trainer runs one at a time, in the plan's order: study by study
        programs += [(phase, [sp], False, (phase_index, order[sp.key()])) for sp in g]
  priors = progress_lib.trainer_priors(history)
  workload_cost = collections.defaultdict(float)  # a workload's dearest trainer run so far
  for (w, _, _), seconds in priors.items():
    workload_cost[w] = max(workload_cost[w], seconds)
  # Vectorized programs first, cheapest workload first (by its trainer runs' seconds so far, 0
  # where there are none: the small workloads), so a stopped sitting has done the most runs;
  # then phase order and the plan's order, which is study by study (`records.plan`): a sweep
  # stopped midway leaves every optimizer with the same complete studies, not one optimizer
  # with all of them and the next with none.
  programs.sort(key=lambda p: (not p[2], workload_cost[p[1][0].workload], p[3]))
  progress = progress_lib.Progress(
      [(sp.workload, sp.optimizer, use) for _, g, use, _ in programs for sp in g], priors)
  new: list[dict] = []

  def run_fn_for(phase):
    def run_fn(spec):
      stop.check(len(new))  # the previous trial's record is written by now
      progress.start(f"{spec.workload} {spec.optimizer} study {spec.study} trial {spec.trial} "
                     f"{spec.hparams}")
      from experiments.training import checkpoints  # pylint: disable=g-import-not-at-top
      resumed = checkpoints.latest_step_on_disk(
          os.path.join(runs_lib.workdir(spec, phase.runs_dir), "checkpoints")) is not None
      t = time.time()
      result = runs_lib.train_run(spec, phase.runs_dir)
      progress.finish((spec.workload, spec.optimizer, False), 1, time.time() - t,
                      timed=not resumed)
      return result
    return run_fn

  try:
    for phase, group, use, _ in programs:
      stop.check(len(new))
      if not use:
        new += records_lib.sweep(group, phase.records_dir, run_fn_for(phase))
        continue
      spec = group[0]
      studies_ = sorted({str(sp.study) for sp in group})
      progress.start(f"{spec.workload} {spec.optimizer}: {len(group)} trials vectorized "
                     f"(studies {', '.join(studies_)})", len(group))
      import jax  # pylint: disable=g-import-not-at-top
      devices = jax.devices() if jax.device_count() > 1 and not len(group) % jax.device_count() \
          else None
      t = time.time()
      new += vectorized.sweep_group(group, phase.records_dir, devices)
      progress.finish((spec.workload, spec.optimizer, True), len(group), time.time() - t)
  except (runs_lib.SweepInterrupted, vectorized.Interrupted) as e:
    # A trainer run took the signal (and saved a checkpoint), or a vectorized program did: the
    # sweep stops too, recording nothing for the unfinished run or program.
    print(f"sweep stopped: {e}; rerun the same command to resume it", flush=True)
    sys.exit(128 + e.signum)
  stop.check(len(new))
  print(f"sweep done in {(time.time() - t0) / 60:.1f} min")
  return new


def print_targets(records_dir: str, workloads_: Sequence[str], baseline: str) -> None:
  """Each workload's target by the rule (`scoring.baseline_target`) beside its config's."""
  records = records_lib.read_records(records_dir)
  print(f"| workload | config's target | rule's target | studies' best at "
        f"{scoring.TARGET_BUDGET_FRACTION:.0%} of the budget (sorted) | floor |")
  print("|---|---|---|---|---|")
  for w in workloads_:
    configured = runs_lib.workload_target(w)
    # A budget workload's config sets no target (its steps-to-target view takes the reference
    # runs', `compare reference`).
    configured = "none" if configured is None else f"{configured:.4g}"
    try:
      t = scoring.baseline_target(records, w, baseline)
    except ValueError as e:
      print(f"| {w} | {configured} | {e} | | |")
      continue
    print(f"| {w} | {configured} | {t['target']:.4g} | "
          f"{', '.join(f'{v:.4g}' for v in t['per_study'])} | {t['floor']:.2g} |")


def warn_stale_targets(records_dir: str, workloads_: Sequence[str], baseline: str) -> list[str]:
  """Prints (and returns) the workloads whose config's target is not the rule's from the
  baseline's records: the config must be edited (then `compare retarget`), not silently moved."""
  records = records_lib.read_records(records_dir)
  stale = []
  for w in workloads_:
    try:
      rule = scoring.baseline_target(records, w, baseline)
    except ValueError:
      continue
    config = runs_lib.workload_target(w)
    if not scoring.follows_rule(rule, config):
      stale.append(w)
      print(f"WARNING: {w}'s target is {config:.4g} but the rule gives {rule['target']:.4g} "
            f"from {baseline}'s records: set it in "
            f"{runs_lib.WORKLOAD_CONFIGS[w].split(':')[0]}, then run "
            f"`python -m experiments.compare retarget {records_dir}`")
  return stale


def retarget_records(records_dir: str) -> int:
  """Rewrites every record whose target is not its workload config's current one (runs trained
  to the full budget, or a target their curve already reached), in both rulesets' directories;
  returns how many changed. Nothing is written unless every record can be rescored."""
  dirs = [d for d in (records_dir, os.path.join(records_dir, records_lib.SELF_TUNING_DIR))
          if os.path.isdir(d)]
  plans = [(d, _retarget_plan(d)) for d in dirs]
  stuck = [e for _, (_, _, errors) in plans for e in errors]
  if stuck:
    raise app.UsageError(f"{len(stuck)} records cannot be retargeted (rerun them): " +
                         "; ".join(stuck[:5]))
  for d, (out, _, _) in plans:
    for w, rows in out.items():
      records_lib.write_records(d, w, rows)
  return sum(changed for _, (_, changed, _) in plans)


def _retarget_plan(records_dir: str) -> tuple[dict[str, list[dict]], int, list[str]]:
  """One directory's records rescored on the configs' targets: (rows per workload, how many
  changed, the records that cannot be rescored)."""
  by_workload: dict[str, list[dict]] = {}
  for r in records_lib.read_records(records_dir):
    by_workload.setdefault(r["workload"], []).append(r)
  changed, stuck, out = 0, [], {}
  for w, rows in by_workload.items():
    target = runs_lib.workload_target(w)
    out[w] = []
    for r in rows:
      try:
        out[w].append(r if r["target"] == target else records_lib.retarget(r, target))
        changed += r["target"] != target
      except ValueError as e:
        stuck.append(str(e))
  return out, changed, stuck


def check_edges(records: Sequence[dict], allow: bool) -> None:
  """Refuses (one ERROR line, exit status 1) to publish results whose tuning hit an edge of a
  search space (`spaces.edges`): the optimum may lie outside it, so the ratio would understate
  that optimizer. `allow` (--allow_edges) publishes anyway."""
  found = spaces_lib.edges(records)
  if found and not allow:
    configs_util.fail(
        f"{len(found)} tuned hyperparameter(s) at an edge of their range, so no headline is "
        f"written (widen the spaces: `compare edges`; or --allow_edges): " +
        "; ".join(f.line() for f in found), status=1)


def update_from_flags(records_dir: str, workspace: str | None = None,
                      out_dir: str | None = None) -> bool:
  """`workspace.update` as this module's flags say (--workspace, --out_dir, --baseline,
  --r_max, --alpha; `workspace` / `out_dir` override the first two)."""
  f = flags.FLAGS
  workspace, out_dir = workspace or f.workspace, out_dir or f.out_dir
  root = os.path.dirname(os.path.abspath(workspace))
  changed = workspace_lib.update(workspace, records_dir, os.path.relpath(out_dir, root),
                                 baseline=f.baseline, r_max=f.r_max, alpha=f.alpha)
  print(f"{workspace}: {'updated' if changed else 'unchanged'}")
  return changed


def _make_records_dir(records_dir: str) -> None:
  """Creates a sweep's records directory, or ends with one line and status 3 (as the trainer's
  workdir) when the filesystem refuses, before any run starts."""
  try:
    os.makedirs(records_dir, exist_ok=True)
  except OSError as e:
    configs_util.fail(f"cannot create the records directory {records_dir!r}: "
                      f"{e.strerror or e}", status=3)


def check_baseline(records: Sequence[dict], records_dir: str, always: bool = False,
                   where: str = "") -> None:
  """Ends with one line (status 2) when the baseline (--baseline) has no record among
  `records`: whenever the flag is given (a typo must not publish tables against nothing), and
  with `always` (the budget comparison, whose every figure is relative to it) for the default
  too."""
  if not (always or flags.FLAGS["baseline"].present):
    return
  optimizers = sorted({r["optimizer"] for r in records})
  if _BASELINE.value not in optimizers:
    close = difflib.get_close_matches(_BASELINE.value, optimizers, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    where = where or f"in {records_dir}"
    configs_util.fail(f"--baseline={_BASELINE.value}: no records of it {where}; "
                      f"{hint}the optimizers there: {', '.join(optimizers)}")


def print_budgets(records_dir: str) -> None:
  """The budgets headline (experiments/harness/budgets.py) of the records with budget_metrics,
  on stdout (records without them are skipped with a one-line note), and its plots. Publishing
  (`publishes`): README.md's headline, WORKSPACE.md's budgets section and
  results/budgets_<workload>.png, refused when a tuned value sits at an edge of its range
  (`check_edges`); otherwise RECORDS_DIR/report.md and RECORDS_DIR/plots/."""
  from experiments.harness import budgets as budgets_lib  # pylint: disable=g-import-not-at-top
  from experiments.harness import plots as plots_lib  # pylint: disable=g-import-not-at-top
  records = records_lib.read_records(records_dir)
  with_b = [r for r in records if budgets_lib.has_budgets(r)]
  if not with_b:
    configs_util.fail(f"no records with budget_metrics in {records_dir} ({len(records)} without)")
  f = flags.FLAGS
  selected = _WORKLOADS.value if f["workloads"].present else None
  present = sorted({r["workload"] for r in with_b})
  unknown = [w for w in selected or () if w not in present]
  if unknown:
    configs_util.fail(f"--workloads: no records with budget_metrics of {', '.join(unknown)} in "
                      f"{records_dir}; its workloads: {', '.join(present)}")
  check_baseline([r for r in with_b if selected is None or r["workload"] in selected],
                 records_dir, always=True)
  alpha = _ALPHA.value if f["alpha"].present else budgets_lib.ALPHA
  computed = budgets_lib.results(records, selected, _BASELINE.value, _PAIRED.value, alpha,
                                 test=_CELL_TEST.value)
  print(budgets_lib.headline(records, records_dir, None, _BASELINE.value, _PAIRED.value, alpha,
                             computed=computed))
  out = output_paths(records_dir, _PUBLISH.value)
  plots = plots_lib.plot_budget_results(records, computed, out["out_dir"])
  for path in plots.values():
    print(f"wrote {path}")
  if out["workspace"]:
    check_edges(with_b, _ALLOW_EDGES.value)
    changed = workspace_lib.update_budgets(out["workspace"], records_dir, plots,
                                           baseline=_BASELINE.value, paired=_PAIRED.value,
                                           alpha=alpha, computed=computed)
    print(f"{out['workspace']} and its README.md: {'updated' if changed else 'unchanged'}")
  else:
    here = os.path.dirname(os.path.abspath(out["report"]))
    rel = {w: os.path.relpath(p, here) for w, p in plots.items()}
    head, section = workspace_lib.budgets_texts(records, records_dir, rel, _BASELINE.value,
                                                _PAIRED.value, alpha, computed)
    with open(out["report"], "w") as fh:
      fh.write("# Budget comparison report (not published)\n\n"
               f"From `{records_dir}`; README.md, WORKSPACE.md and results/ are written only "
               "for the repository's records/ or records/budgets/, or with --publish.\n\n"
               f"## Headline\n\n{head}\n\n## Section\n\n{section}\n")
    print(f"{out['report']}: written (not published)")


def main(argv):
  configs_util.quiet_library_info()
  if len(argv) < 2:
    configs_util.fail(f"a command is needed: python -m experiments.compare "
                      f"{{{','.join(COMMANDS)}}} RECORDS_DIR (--help lists the flags)")
  if argv[1] not in COMMANDS:
    close = difflib.get_close_matches(argv[1], COMMANDS, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    configs_util.fail(f"unknown command {argv[1]!r}; {hint}the commands are: {', '.join(COMMANDS)}")
  if len(argv) != 3:
    configs_util.fail(f"{argv[1]} takes one RECORDS_DIR, got {len(argv) - 2} argument(s): "
          f"{' '.join(argv[2:]) or '(none)'}; e.g. python -m experiments.compare {argv[1]} "
          "records/")
  command, records_dir = argv[1], argv[2]
  if not os.path.isdir(records_dir) and (command not in ("sweep", "all") or
                                          os.path.exists(records_dir)):
    why = ("is not a directory" if os.path.exists(records_dir) else
           "does not exist (`python -m experiments.compare sweep DIR` creates one)")
    configs_util.fail(f"the records directory {records_dir!r} {why}")
  t0 = time.time()
  if command == "targets":
    recs = records_lib.read_records(records_dir)
    check_baseline(recs, records_dir)
    # The records' own workloads unless --workloads names others.
    present = [w for w in runs_lib.WORKLOAD_CONFIGS if any(r["workload"] == w for r in recs)]
    print_targets(records_dir, _WORKLOADS.value if flags.FLAGS["workloads"].present else present,
                  _BASELINE.value)
    return
  if command == "retarget":
    print(f"{retarget_records(records_dir)} records rescored on their workloads' targets")
    return
  if command == "budgets":
    print_budgets(records_dir)
    return
  if command == "reference":
    present = sorted({r["workload"] for r in records_lib.read_records(records_dir)
                      if r["optimizer"] == _BASELINE.value})
    workloads_ = _WORKLOADS.value if flags.FLAGS["workloads"].present else present
    if not workloads_:
      configs_util.fail(f"no records of the baseline {_BASELINE.value} in {records_dir} to take "
                        "the reference hyperparameters from (--baseline names it)")
    run_phases([reference_phase(records_dir, _RUNS.value, workloads_, _BASELINE.value,
                                _REFERENCE_RUNS.value)])
    print(f"reference runs done in {(time.time() - t0) / 60:.1f} min; `python -m "
          f"experiments.compare budgets {records_dir}` scores steps to their target")
    return
  if command == "edges":
    recs = records_lib.read_records(records_dir)
    found = spaces_lib.edges(recs, min_studies=_EDGE_STUDIES.value)
    for finding in found:
      print(finding.line())
    tuned = spaces_lib.tuning_records(recs)
    groups = {(r["workload"], r["optimizer"]) for r in tuned}
    print(f"{len(found)} edge-bound hyperparameter(s) (best trial in the outer "
          f"{spaces_lib.EDGE_FRACTION:.0%} of its range in {_EDGE_STUDIES.value} or more "
          f"studies) over {len(tuned)} tuning runs of {len(groups)} workload x optimizer "
          f"pair(s) in {records_dir}")
    return
  if command in ("sweep", "all"):
    _make_records_dir(records_dir)
    workloads_ = list(runs_lib.QUICK_WORKLOADS) if _QUICK.value else _WORKLOADS.value
    trials, studies = (2, 1) if _QUICK.value else (_TRIALS.value, _STUDIES.value)
    if _BUDGET.value == "budgets":
      run_budget_comparison(records_dir, _RUNS.value, _REFERENCE_RUNS.value)
      if command == "all":
        print_budgets(records_dir)
        print(f"all done in {(time.time() - t0) / 60:.1f} min")
      else:
        from experiments.harness import budgets as budgets_lib  # pylint: disable=g-import-not-at-top
        print(budgets_lib.headline(records_lib.read_records(records_dir), records_dir,
                                   paired=_PAIRED.value, test=_CELL_TEST.value))
      return
    if _BUDGET.value == "algoperf":
      run_phases(algoperf_phases(records_dir, _RUNS.value, workloads_), _VECTORIZE.value,
                 _MAX_TRIALS.value)
      warn_stale_targets(records_dir, workloads_, _BASELINE.value)
    else:
      # An explicit --baseline that neither this sweep nor its records have: said before training.
      check_baseline(records_lib.read_records(records_dir)
                     + [{"optimizer": o} for o in _OPTIMIZERS.value], records_dir,
                     where=f"in {records_dir} nor in --optimizers")
      run_sweep(records_dir, workloads_, _OPTIMIZERS.value, trials, studies, _RUNS.value,
                _VECTORIZE.value, _MAX_TRIALS.value, _RULESET.value, _FULL_BUDGET.value)
  records = records_lib.read_records(records_dir)
  self_tuning = records_lib.read_records(os.path.join(records_dir, records_lib.SELF_TUNING_DIR))
  if not records and not self_tuning:
    configs_util.fail(f"no records in {records_dir} (no <workload>.jsonl there; "
          "`python -m experiments.compare sweep` writes them)")
  check_baseline(records + self_tuning, records_dir)
  workloads_here = sorted({r["workload"] for r in records + self_tuning})
  if flags.FLAGS["speedrun_workload"].present and _SPEEDRUN.value not in workloads_here:
    configs_util.fail(f"--speedrun_workload={_SPEEDRUN.value}: no records of it in "
                      f"{records_dir}; its workloads: {', '.join(workloads_here)}")
  if command in ("score", "sweep", "all"):
    # The external-tuning ruleset's report last: its last line is the JSON of its scores.
    for title, rs in (("Self-tuning ruleset", self_tuning), ("External-tuning ruleset", records)):
      if rs:
        print(f"# {title}: {len(rs)} runs\n")
        print(report_lib.report(rs, _R_MAX.value, _SPEEDRUN.value, _RECORD_C.value, _ALPHA.value,
                     _BASELINE.value, _BY.value))
  out = output_paths(records_dir, _PUBLISH.value)
  if command in ("plots", "all") and records:
    # Imported here: the plots module loads matplotlib (and picks its Agg backend).
    from experiments.harness import plots as plots_lib  # pylint: disable=g-import-not-at-top
    for path in plots_lib.plot_all(records, out["out_dir"], _R_MAX.value, _BY.value):
      print(f"wrote {path}")
  if command == "all":
    if out["workspace"]:
      check_edges(records, _ALLOW_EDGES.value)
      update_from_flags(records_dir, out["workspace"], out["out_dir"])
    else:
      write_report(records_dir, out["report"], out["out_dir"])
    print(f"all done in {(time.time() - t0) / 60:.1f} min")


def _parse_flags(argv):
  """absl's flag parsing, with --help exiting 0 and a bad flag as one line (status 2)."""
  return configs_util.parse_flags(argv, lambda e: f"{e} (--help lists the flags)",
                                  configs_util.fail)


def _main(argv):
  try:
    main(argv)
  except app.UsageError as e:
    configs_util.fail(e)
  except OSError as e:
    from experiments.training import checkpoints  # pylint: disable=g-import-not-at-top
    where = argv[2] if len(argv) > 2 else "the records directory"
    error = (None if isinstance(e, FileNotFoundError) else
             checkpoints.storage_error(e, where, "write to"))
    if error is None:
      raise
    # A checkpoint save that failed left descriptor 2 on /dev/null (orbax's threads go on
    # printing tracebacks there); the line goes to the user's stderr.
    os.write(checkpoints.real_stderr(), f"ERROR: {' '.join(str(error).split())}\n".encode())
    sys.exit(3)
  except KeyboardInterrupt:  # Ctrl-C before a sweep's own handler was in place
    print("interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
    sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
  app.run(_main, flags_parser=_parse_flags)
