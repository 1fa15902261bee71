"""Running a sweep through the one trainer: each run's config, and its result for the record."""

from __future__ import annotations

import copy
import importlib
import json
import os

from experiments.harness import records as records_lib
from experiments.harness import spaces as spaces_lib

# Workload -> config (path[:variant]), relative to the repository root.
WORKLOAD_CONFIGS = {
    "speedrun": "configs/workload_speedrun.py:short",
    "gpt_deep": "configs/workload_gpt_deep.py",
    "mds": "configs/workload_mds.py",
    "logreg": "configs/workload_logreg.py",
    "mlp_digits": "configs/workload_mlp_digits.py",
    # The loss-at-several-budgets comparison (issue 39): one run gives every budget's loss by
    # branched cooldowns (experiments/training/budgets.py).
    "speedrun_budgets": "configs/workload_speedrun.py:budgets",
    "speedrun_wide": "configs/workload_speedrun.py:wide_budgets",
}
# Workloads scored per budget, not on time to a target: they have none, so a default sweep and
# the target checks leave them out.
BUDGET_WORKLOADS = ("speedrun_budgets", "speedrun_wide")
# The baseline of a budget workload trains on past the challengers' longest budget (its main run
# is the last of these; a cooldown branches off at each shorter one), so that a challenger that
# beats the baseline's loss at the shared longest budget still has a speed-up read off the
# baseline's curve, not only a lower bound (experiments/harness/budgets.py). The losses at the
# shared budgets are unchanged: a budget's branch equals the run of that length bit for bit
# (scripts/check_branched_cooldown.py), and the warmup is a fraction of the shortest budget.
BUDGET_BASELINE = "adamw"
BASELINE_BUDGETS = {"speedrun_budgets": (50, 100, 200, 400, 800),
                    "speedrun_wide": (50, 100, 200, 400, 800)}
QUICK_WORKLOADS = ("mds", "logreg", "mlp_digits")
# Vectorized trials (one program for K trials) over K trainer runs, wall-clock ratio per
# (workload, optimizer), K = 5, measured by scripts/bench_vectorized.py on the 2-core CPU
# (WORKSPACE.md, "Vectorized trials"); `compare sweep --vectorize=auto` vectorizes where it is
# above 1. A pair not measured follows its workload's AdamW. AdamW: one run over all five
# workloads (results/bench_vectorized_adamw.json); Shampoo: an earlier run over the small three
# (results/bench_vectorized.json).
VECTORIZE_SPEEDUP = {
    ("mds", "adamw"): 5.06, ("mds", "shampoo"): 2.77,
    ("logreg", "adamw"): 6.84, ("logreg", "shampoo"): 6.36,
    ("mlp_digits", "adamw"): 4.24, ("mlp_digits", "shampoo"): 1.71,
    # Compute-bound on 2 cores: K trials cost K steps' arithmetic either way, and a trial that
    # reached its target computes on (masked) until the program's last trial ends.
    ("speedrun", "adamw"): 0.93,
    # Half the speedrun's width: small enough matmuls that batching K of them still pays a little.
    ("gpt_deep", "adamw"): 1.13,
}
# The repository root (this file is experiments/harness/runs.py).
# A sweep's trainer runs also checkpoint every this many wall-clock seconds, so a sweep killed
# without a signal (SIGKILL, its machine taken away) loses at most this much of the trial in
# progress; its rerun resumes the trial from there (a resumed trial equals an uninterrupted one
# bit for bit: tests/test_trustworthy_runs.py). One save of the speedrun model takes well under
# a second, so the cost is negligible next to what it saves on the wide model's 16-minute trials.
CHECKPOINT_EVERY_S = 300.0

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def overlay(base: dict, hparams: dict) -> dict:
  """`base` (an optimizer block as a dict) with `hparams` set over it; `a.b` names a nested
  field. A name the block does not have is an error (a search space that drifted from its
  config would otherwise tune nothing), but for the keys the trainer reads for any optimizer
  (`train_state.TRAINER_KEYS`: `embed_learning_rate`)."""
  from experiments.training import train_state  # pylint: disable=g-import-not-at-top
  out = copy.deepcopy(base)
  for name, value in hparams.items():
    if name in train_state.TRAINER_KEYS:
      out[name] = value
      continue
    *path, leaf = name.split(".")
    node = out
    for p in path:
      node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
      raise ValueError(f"hyperparameter {name!r} is not in the optimizer block "
                       f"{sorted(base)} ({base.get('name')})")
    node[leaf] = value
  return out


def workload_target(workload: str) -> float | None:
  """The workload config's current validation target (None: it has none, BUDGET_WORKLOADS)."""
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  cfg = configs_util.load(os.path.join(_ROOT, WORKLOAD_CONFIGS[workload]))
  target = cfg.train.target_val_loss
  return None if target is None else float(target)


def vectorize_faster(workload: str, optimizer: str) -> bool:
  """Whether vectorized trials were measured faster than trainer runs there (VECTORIZE_SPEEDUP)."""
  speedup = VECTORIZE_SPEEDUP.get((workload, optimizer),
                                  VECTORIZE_SPEEDUP.get((workload, "adamw"), 0.0))
  return speedup > 1.0


def run_config(spec: records_lib.RunSpec):
  """The trainer config of one sweep run.

  The workload's config (model, data, step budget, target, warmup + schedule) with the
  optimizer's base hyperparameters overlaid by the drawn ones. From the optimizer's base config
  also come the pieces of its recipe outside `optimizer`: a constant schedule (Schedule-Free
  brings its own warmup) and gradient clipping (SGD); a base value tied to the run length
  (AdEMAMix's warmups follow `train.steps`) follows the workload's step budget. Learning rates
  are used as drawn (no batch scaling rule), and the run stops at the target (time-to-target
  is what is scored) unless `spec.full_budget`. The baseline of a budget workload trains to
  its longer budgets (`BASELINE_BUDGETS`). A drawn `warmup_fraction` (spaces.py) sets the
  warmup to round(fraction x train.steps) steps (x the shortest of `train.budgets` when the
  workload has budgets): the schedule's, or the optimizer's own where
  its space says so (Schedule-Free, whose schedule is constant).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  cfg = configs_util.load(os.path.join(_ROOT, WORKLOAD_CONFIGS[spec.workload]))
  if spec.optimizer == BUDGET_BASELINE and spec.workload in BASELINE_BUDGETS:
    longer = BASELINE_BUDGETS[spec.workload]
    if not (set(cfg.train.budgets) <= set(longer) and min(longer) == min(cfg.train.budgets)):
      raise ValueError(
          f"{spec.workload}: BASELINE_BUDGETS {tuple(longer)} must hold the workload's budgets "
          f"{tuple(cfg.train.budgets)} and start at the same shortest budget")
    cfg.train.budgets, cfg.train.steps = tuple(longer), max(longer)
  base_module = f"configs.{records_lib.BASE_CONFIGS[spec.optimizer]}"
  base = importlib.import_module(base_module).get_config()
  steps_ref = base.train.get_ref("steps")
  tied = [k for k in base.optimizer if base.optimizer.get_ref(k) is steps_ref]
  hparams = dict(spec.hparams)
  warmup = hparams.pop(spaces_lib.WARMUP_NAME, None)
  cfg.optimizer = ml_collections.ConfigDict(overlay(base.optimizer.to_dict(), hparams))
  for k in tied:
    cfg.optimizer[k] = cfg.train.get_ref("steps")
  if base.schedule.name == "constant":
    cfg.schedule.name, cfg.schedule.warmup_steps = "constant", base.schedule.warmup_steps
  if warmup is not None:
    # With `train.budgets` every budget shares the main run's warmup (branched cooldowns fork
    # after it), so the fraction is of the shortest budget: each budget's run warms up within
    # its own first fraction, and no budget's decay starts inside the warmup.
    budgets = tuple(cfg.train.get("budgets") or ())
    steps = spaces_lib.warmup_steps(warmup, min(budgets) if budgets else cfg.train.steps)
    space = spaces_lib.SPACES.get(spec.optimizer)
    if space is not None and space.warmup == "optimizer":
      cfg.optimizer.warmup_steps = steps
    else:
      cfg.schedule.warmup_steps = steps
  cfg.train.grad_clip_norm = base.train.get("grad_clip_norm")
  cfg.schedule.base_batch_size = None
  cfg.seed = spec.seed
  cfg.train.stop_at_target = not spec.full_budget
  cfg.train.checkpoint_every = int(cfg.train.steps)
  cfg.train.checkpoint_every_s = CHECKPOINT_EVERY_S
  cfg.train.keep_checkpoints = 1
  cfg.train.stall_warning_s = 0.0
  return cfg


class SweepInterrupted(Exception):
  """A run stopped by a signal (SIGTERM, SIGINT): not a result, so it is not recorded; its
  checkpoint lets the rerun of the sweep resume it."""

  def __init__(self, spec: records_lib.RunSpec, signum: int):
    super().__init__(f"{spec.workload} {spec.optimizer} study {spec.study} trial {spec.trial} "
                     f"stopped by signal {signum}")
    self.signum = signum


def workdir(spec: records_lib.RunSpec, runs_dir: str) -> str:
  """The trainer workdir of one sweep run: `<runs_dir>/<workload>/<optimizer>/study<s>_trial<t>`."""
  return os.path.join(runs_dir, spec.workload, spec.optimizer,
                      f"study{spec.study}_trial{spec.trial}")


def train_run(spec: records_lib.RunSpec, runs_dir: str) -> dict:
  """Trains `spec` with the trainer (in this process) and returns `make_record`'s result.

  Raises:
    SweepInterrupted: the trainer stopped on a signal before the run's end.
  """
  from experiments.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from experiments.training import loop as trainer  # pylint: disable=g-import-not-at-top
  cfg = run_config(spec)
  run_dir = workdir(spec, runs_dir)
  try:
    summary = trainer.train_and_evaluate(cfg, run_dir)
    diverged = False
    if summary.get("stopped_by_signal"):
      raise SweepInterrupted(spec, int(summary["stopped_by_signal"]))
  except trainer.TrainingDivergedError as e:
    summary, diverged = None, True
    print(f"{spec.workload}/{spec.optimizer} study {spec.study} trial {spec.trial}: {e}")
  rows = metrics_lib.read_metrics(run_dir)
  metric = summary["metric"] if summary else _metric_name(rows)
  curve = [[r["step"], r.get("train_time_s"), r[metric]] for r in rows
           if isinstance(r.get(metric), float)]
  result = {"target": cfg.train.target_val_loss, "metric": metric,
            "step_budget": int(cfg.train.steps),
            "steps_to_target": None if diverged else summary["steps_to_target"],
            "time_to_target_s": None if diverged else summary["time_to_target_s"],
            "final_metric": None if diverged else summary["val_loss"],
            "diverged": diverged, "curve": curve}
  if summary and summary.get("budget_metrics") is not None:
    # [{budget, <metric>, train_time_s}]: the branched cooldowns' losses (train.budgets).
    result["budget_metrics"] = summary["budget_metrics"]
    # The regime, so that a record says it without its workload's config: N, and tokens (or
    # examples) per step; tokens per parameter at budget B = B x tokens_per_step / params.
    try:
      with open(os.path.join(run_dir, "run.json")) as f:
        result["params"] = int(json.load(f)["num_params"])
    except (OSError, ValueError, KeyError, TypeError):
      pass
    if cfg.get("data") is not None and cfg.data.get("seq_len"):
      result["tokens_per_step"] = int(cfg.train.batch_size) * int(cfg.data.seq_len)
  return result


def _metric_name(rows: list[dict]) -> str:
  for r in rows:
    for k in r:
      if k in ("val_loss", "val_error", "relative_stress", "suboptimality"):
        return k
  return "val_loss"

