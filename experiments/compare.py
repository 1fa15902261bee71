r"""Tuned optimizer comparisons: search spaces, trials, run records, AlgoPerf scores, speedrun rule.

  python -m experiments.compare all records/ [--quick]     # sweep + score + plots + WORKSPACE.md
  python -m experiments.compare sweep records/ [--quick]   # train what is missing, then score
  python -m experiments.compare score records/ [--r_max=4] [--speedrun_workload=speedrun]
  python -m experiments.compare plots records/ [--out_dir=results]   # experiments/compare_plots.py

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
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from scipy import stats

INF = math.inf

# Per optimizer: hyperparameter -> (low, high), drawn log-uniformly. A name `one_minus_<h>` is
# drawn as 1 - h (momentum-like values live near 1, so their distance to 1 is log-uniform); a
# dotted name (`inner_hparams.b2`) sets a field of a nested block. Every other hyperparameter
# keeps its value in the optimizer's CPU speedrun config (`base_hparams`). The ranges span the
# speedrun's tuned values (WORKSPACE.md) by a decade or more on each side, so the small
# workloads find theirs too. Lion's step has unit RMS per coordinate, so its range sits ~10x
# below AdamW's (Chen et al. 2023); AdEMAMix's slow EMA adds up to alpha momentum-sized terms,
# so its range tops out at half AdamW's.
SEARCH_SPACES: dict[str, dict[str, tuple[float, float]]] = {
    "adamw": {"learning_rate": (1e-4, 1e-1), "one_minus_b2": (1e-3, 1e-1)},
    "adamw_8bit": {"learning_rate": (1e-4, 1e-1), "one_minus_b2": (1e-3, 1e-1)},
    "muon": {"learning_rate": (1e-3, 1e-1), "adam_learning_rate": (1e-4, 1e-1)},
    "shampoo": {"learning_rate": (1e-4, 1e-1), "one_minus_b2": (1e-3, 1e-1)},
    "soap": {"learning_rate": (1e-4, 1e-1), "one_minus_b2": (1e-3, 1e-1)},
    "sgd": {"learning_rate": (1e-3, 3.0), "one_minus_momentum": (1e-2, 0.3)},
    "lion": {"learning_rate": (1e-5, 1e-2), "one_minus_b2": (1e-3, 1e-1)},
    # b1 is Schedule-Free's interpolation weight, the hyperparameter it adds (Defazio et al.).
    "schedule_free_adamw": {"learning_rate": (1e-4, 1e-1), "one_minus_b1": (1e-2, 0.3)},
    "ademamix": {"learning_rate": (1e-4, 5e-2), "alpha": (1.0, 10.0)},
    "normuon": {"learning_rate": (1e-3, 1e-1), "adam_learning_rate": (1e-4, 1e-1)},
    "dion": {"learning_rate": (1e-3, 1e-1), "adam_learning_rate": (1e-4, 1e-1)},
    "psgd_kron": {"learning_rate": (1e-4, 1e-1), "one_minus_b1": (1e-2, 0.3)},
    # Cautious AdamW: AdamW's space, b2 inside the wrapped optimizer's block.
    "cautious": {"learning_rate": (1e-4, 1e-1), "one_minus_inner_hparams.b2": (1e-3, 1e-1)},
}

# Where each optimizer's fixed hyperparameters come from (a config's `optimizer` block):
# `configs/speedrun_cpu.py` for AdamW, `configs/speedrun_cpu_<name>.py` for the others.
BASE_CONFIGS = {o: "speedrun_cpu" if o == "adamw" else f"speedrun_cpu_{o}"
                for o in SEARCH_SPACES}

KEY_FIELDS = ("workload", "optimizer", "study", "trial", "seed")


# ---------------------------------------------------------------------------------------------
# Search spaces and trials.

def base_hparams(optimizer: str) -> dict:
  """The optimizer's hyperparameters in its CPU speedrun config (name included), a nested
  block's fields under dotted names (`inner_hparams.b2`): every name a search space may set."""
  if optimizer not in BASE_CONFIGS:
    raise ValueError(f"No base config for {optimizer!r}; known: {', '.join(sorted(BASE_CONFIGS))}")
  config = importlib.import_module(f"configs.{BASE_CONFIGS[optimizer]}").get_config()

  def flat(block: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in block.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
  return flat(config.optimizer.to_dict())


def draw_trials(optimizer: str, num_trials: int, study: int) -> list[dict]:
  """`num_trials` points of the optimizer's search space, scrambled Sobol with seed `study`.

  Returns the drawn hyperparameters in optax's names (`one_minus_b2` becomes `b2`), a pure
  function of its arguments, so a rerun draws the same trials.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  space = SEARCH_SPACES[optimizer]
  dists = {k: optuna.distributions.FloatDistribution(lo, hi, log=True)
           for k, (lo, hi) in space.items()}
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  with warnings.catch_warnings():
    # QMCSampler is marked experimental (optuna 5.0); Sobol warns when n is not a power of 2.
    warnings.simplefilter("ignore")
    sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=study)
    opt_study = optuna.create_study(sampler=sampler)
    # optuna draws a study's first trial with its independent (random) sampler; the Sobol
    # points start at the second, so the first is drawn and dropped.
    drawn = [opt_study.ask(dists).params for _ in range(num_trials + 1)][1:]
  out = []
  for params in drawn:
    hp = {}
    for k in space:  # the table's order, not optuna's
      v = float(params[k])
      if k.startswith("one_minus_"):
        hp[k[len("one_minus_"):]] = 1.0 - v
      else:
        hp[k] = v
    out.append(hp)
  return out


def run_seed(study: int, trial: int) -> int:
  """Every (study, trial) trains with its own seed, the same for every optimizer."""
  return 1000 * study + trial


# ---------------------------------------------------------------------------------------------
# Records.

@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of a sweep: what `run_fn` must train."""
  workload: str
  optimizer: str
  hparams: dict  # the drawn values only; the run adds `base_hparams(optimizer)` underneath
  study: int | str
  trial: int
  seed: int

  def key(self) -> tuple:
    return (self.workload, self.optimizer, self.study, self.trial, self.seed)


def record_key(record: dict) -> tuple:
  return tuple(record[k] for k in KEY_FIELDS)


def provenance() -> dict:
  """Git SHA, library versions and device, for every record."""
  from experiments import provenance as provenance_lib  # pylint: disable=g-import-not-at-top
  try:
    import jax  # pylint: disable=g-import-not-at-top
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  except Exception:  # pylint: disable=broad-except
    device = platform.machine()
  return {"git_sha": provenance_lib.git_info()["sha"], "versions": provenance_lib.versions(),
          "device": f"{device}, {_host_cpu()}"}


def _host_cpu() -> str:
  """The CPU model and core count (`platform.processor()` is empty on Linux)."""
  name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{name}, {os.cpu_count()} cores"


def make_record(spec: RunSpec, result: dict, prov: dict | None = None) -> dict:
  """The JSON line of a finished run. `result` (from the trainer) must hold:

  target, metric (name), step_budget, steps_to_target (None if never reached),
  time_to_target_s (training seconds to that eval, None if never reached), final_metric, and
  curve: [[step, seconds, metric], ...] of every evaluation.
  """
  needed = ("target", "metric", "step_budget", "steps_to_target", "time_to_target_s",
            "final_metric", "curve")
  missing = [k for k in needed if k not in result]
  if missing:
    raise ValueError(f"run result lacks {missing}")
  record = {"workload": spec.workload, "optimizer": spec.optimizer, "hparams": spec.hparams,
            "seed": spec.seed, "study": spec.study, "trial": spec.trial}
  record.update({k: result[k] for k in needed})
  record.update(prov or provenance())
  record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
  return record


def read_records(records_dir: str) -> list[dict]:
  """Every record in `<records_dir>/*.jsonl`; a half-written last line (a killed run) is dropped."""
  out = []
  if not os.path.isdir(records_dir):
    return out
  for name in sorted(os.listdir(records_dir)):
    if not name.endswith(".jsonl"):
      continue
    with open(os.path.join(records_dir, name)) as f:
      lines = f.read().split("\n")
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        if i != len(lines) - 1:  # only the unterminated last line may be partial
          raise
  return out


def append_record(records_dir: str, record: dict) -> None:
  """Appends one line to `<records_dir>/<workload>.jsonl`, first cutting a partial last line."""
  os.makedirs(records_dir, exist_ok=True)
  path = os.path.join(records_dir, f"{record['workload']}.jsonl")
  if os.path.exists(path):
    with open(path, "rb+") as f:
      data = f.read()
      if data and not data.endswith(b"\n"):
        f.truncate(data.rfind(b"\n") + 1)
  with open(path, "a") as f:
    f.write(json.dumps(record, default=float) + "\n")
    f.flush()
    os.fsync(f.fileno())


def plan(workload: str, optimizers: Sequence[str], num_trials: int,
         studies: Iterable[int]) -> list[RunSpec]:
  """Every run of a sweep: each study draws `num_trials` trials for every optimizer."""
  specs = []
  for study in studies:
    for opt in optimizers:
      for trial, hp in enumerate(draw_trials(opt, num_trials, study)):
        specs.append(RunSpec(workload, opt, hp, study, trial, run_seed(study, trial)))
  return specs


def sweep(specs: Sequence[RunSpec], records_dir: str,
          run_fn: Callable[[RunSpec], dict]) -> list[dict]:
  """Runs every spec not yet recorded and appends its record; returns the new records."""
  done = {record_key(r) for r in read_records(records_dir)}
  prov = provenance()
  new = []
  for spec in specs:
    if spec.key() in done:
      continue
    record = make_record(spec, run_fn(spec), prov)
    append_record(records_dir, record)
    done.add(spec.key())
    new.append(record)
  return new


# ---------------------------------------------------------------------------------------------
# Running a sweep through the one trainer.

# Workload -> config (path[:variant]), relative to the repository root.
WORKLOAD_CONFIGS = {
    "speedrun": "configs/workload_speedrun.py:short",
    "gpt_deep": "configs/workload_gpt_deep.py",
    "mds": "configs/workload_mds.py",
    "logreg": "configs/workload_logreg.py",
    "mlp_digits": "configs/workload_mlp_digits.py",
}
QUICK_WORKLOADS = ("mds", "logreg", "mlp_digits")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def overlay(base: dict, hparams: dict) -> dict:
  """`base` (an optimizer block as a dict) with `hparams` set over it; `a.b` names a nested
  field. A name the block does not have is an error (a search space that drifted from its
  config would otherwise tune nothing)."""
  out = copy.deepcopy(base)
  for name, value in hparams.items():
    *path, leaf = name.split(".")
    node = out
    for p in path:
      node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
      raise ValueError(f"hyperparameter {name!r} is not in the optimizer block "
                       f"{sorted(base)} ({base.get('name')})")
    node[leaf] = value
  return out


def run_config(spec: RunSpec):
  """The trainer config of one sweep run.

  The workload's config (model, data, step budget, target, warmup + schedule) with the
  optimizer's base hyperparameters overlaid by the drawn ones. From the optimizer's base config
  also come the pieces of its recipe outside `optimizer`: a constant schedule (Schedule-Free
  brings its own warmup) and gradient clipping (SGD); a base value tied to the run length
  (AdEMAMix's warmups follow `train.steps`) follows the workload's step budget. Learning rates
  are used as drawn (no batch scaling rule), and the run stops at the target: time-to-target
  is what is scored.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  cfg = configs_util.load(os.path.join(_ROOT, WORKLOAD_CONFIGS[spec.workload]))
  base = importlib.import_module(f"configs.{BASE_CONFIGS[spec.optimizer]}").get_config()
  steps_ref = base.train.get_ref("steps")
  tied = [k for k in base.optimizer if base.optimizer.get_ref(k) is steps_ref]
  cfg.optimizer = ml_collections.ConfigDict(overlay(base.optimizer.to_dict(), spec.hparams))
  for k in tied:
    cfg.optimizer[k] = cfg.train.get_ref("steps")
  if base.schedule.name == "constant":
    cfg.schedule.name, cfg.schedule.warmup_steps = "constant", base.schedule.warmup_steps
  cfg.train.grad_clip_norm = base.train.get("grad_clip_norm")
  cfg.schedule.base_batch_size = None
  cfg.seed = spec.seed
  cfg.train.stop_at_target = True
  cfg.train.checkpoint_every = int(cfg.train.steps)
  cfg.train.keep_checkpoints = 1
  cfg.train.stall_warning_s = 0.0
  return cfg


class SweepInterrupted(Exception):
  """A run stopped by a signal (SIGTERM, SIGINT): not a result, so it is not recorded; its
  checkpoint lets the rerun of the sweep resume it."""

  def __init__(self, spec: "RunSpec", signum: int):
    super().__init__(f"{spec.workload} {spec.optimizer} study {spec.study} trial {spec.trial} "
                     f"stopped by signal {signum}")
    self.signum = signum


def train_run(spec: RunSpec, runs_dir: str) -> dict:
  """Trains `spec` with the trainer (in this process) and returns `make_record`'s result.

  Raises:
    SweepInterrupted: the trainer stopped on a signal before the run's end.
  """
  from experiments import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from experiments import trainer  # pylint: disable=g-import-not-at-top
  cfg = run_config(spec)
  workdir = os.path.join(runs_dir, spec.workload, spec.optimizer,
                         f"study{spec.study}_trial{spec.trial}")
  try:
    summary = trainer.train_and_evaluate(cfg, workdir)
    diverged = False
    if summary.get("stopped_by_signal"):
      raise SweepInterrupted(spec, int(summary["stopped_by_signal"]))
  except trainer.TrainingDivergedError as e:
    summary, diverged = None, True
    print(f"{spec.workload}/{spec.optimizer} study {spec.study} trial {spec.trial}: {e}")
  rows = metrics_lib.read_metrics(workdir)
  metric = summary["metric"] if summary else _metric_name(rows)
  curve = [[r["step"], r.get("train_time_s"), r[metric]] for r in rows
           if isinstance(r.get(metric), float)]
  return {"target": cfg.train.target_val_loss, "metric": metric,
          "step_budget": int(cfg.train.steps),
          "steps_to_target": None if diverged else summary["steps_to_target"],
          "time_to_target_s": None if diverged else summary["time_to_target_s"],
          "final_metric": None if diverged else summary["val_loss"],
          "diverged": diverged, "curve": curve}


def _metric_name(rows: list[dict]) -> str:
  for r in rows:
    for k in r:
      if k in ("val_loss", "val_error", "relative_stress", "suboptimality"):
        return k
  return "val_loss"


# ---------------------------------------------------------------------------------------------
# Scores.

def _value(record: dict, field: str) -> float:
  v = record.get(field)
  return INF if v is None else float(v)


def study_results(records: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
  """(workload, optimizer) -> per study (integer studies only) the best trial by time-to-target.

  Ties (e.g. every trial failed) go to the fewer steps, then the lower final metric.
  """
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    if isinstance(r["study"], int):
      groups.setdefault((r["workload"], r["optimizer"], r["study"]), []).append(r)
  out: dict[tuple[str, str], list[dict]] = {}
  for (w, o, _), rs in sorted(groups.items()):
    best = min(rs, key=lambda r: (_value(r, "time_to_target_s"), _value(r, "steps_to_target"),
                                  _value(r, "final_metric")))
    out.setdefault((w, o), []).append(best)
  return out


def median_over_studies(records: Sequence[dict], field: str) -> dict[str, dict[str, float]]:
  """workload -> optimizer -> median over studies of the best trial's `field` (inf: never)."""
  out: dict[str, dict[str, float]] = {}
  for (w, o), bests in study_results(records).items():
    out.setdefault(w, {})[o] = float(np.median([_value(r, field) for r in bests]))
  return out


def performance_ratios(times: dict[str, dict[str, float]],
                       optimizers: Sequence[str]) -> dict[str, dict[str, float]]:
  """optimizer -> workload -> time / the fastest optimizer's time; inf when it never reached
  the target, or when nobody did. An optimizer without runs on a workload counts as never."""
  ratios: dict[str, dict[str, float]] = {o: {} for o in optimizers}
  for w, per_opt in times.items():
    best = min(per_opt.get(o, INF) for o in optimizers)
    for o in optimizers:
      t = per_opt.get(o, INF)
      ratios[o][w] = t / best if math.isfinite(t) and math.isfinite(best) else INF
  return ratios


def profile(ratios_w: dict[str, float], taus: np.ndarray) -> np.ndarray:
  """rho(tau): the fraction of workloads whose ratio is <= tau."""
  r = np.array(list(ratios_w.values()), dtype=np.float64)
  return np.mean(r[None, :] <= np.asarray(taus, np.float64)[:, None], axis=1)


def benchmark_score(ratios_w: dict[str, float], r_max: float = 4.0) -> float:
  """B = 1/(r_max - 1) int_1^r_max rho(tau) dtau, exactly: rho is a step function, and a
  workload with ratio r (>= 1) adds (r_max - r) / (r_max - 1) when r <= r_max, else 0."""
  r = np.array(list(ratios_w.values()), dtype=np.float64)
  return float(np.mean(np.where(r <= r_max, (r_max - r) / (r_max - 1.0), 0.0)))


def scores(records: Sequence[dict], r_max: float = 4.0,
           field: str = "time_to_target_s") -> dict[str, float]:
  optimizers = sorted({r["optimizer"] for r in records})
  ratios = performance_ratios(median_over_studies(records, field), optimizers)
  return {o: benchmark_score(ratios[o], r_max) for o in optimizers}


# ---------------------------------------------------------------------------------------------
# The speedrun's rules.

def record_rule(final_losses: Sequence[float], target: float, c: float | None = None,
                alpha: float = 0.01) -> dict:
  """Accept a record when mean(final_losses) <= target - c / sqrt(n).

  c = None estimates it as z_(1 - alpha) times the losses' sample standard deviation, which
  makes the rule a one-sided z-test of "the mean is below the target" at level alpha.
  """
  x = np.asarray(final_losses, np.float64)
  n = len(x)
  if c is None:
    if n < 2:
      return {"n": n, "mean": float(x.mean()) if n else None, "holds": None,
              "why": "c is estimated from the seeds' spread: needs at least 2 seeds"}
    c = float(stats.norm.ppf(1 - alpha) * x.std(ddof=1))
  margin = c / math.sqrt(n)
  mean = float(x.mean())
  return {"n": n, "mean": mean, "c": c, "needed_below": target - margin,
          "holds": bool(mean <= target - margin)}


def welch(steps_a: Sequence[float], steps_b: Sequence[float], alpha: float = 0.01) -> dict:
  """Welch's t-test of "a needs fewer steps than b" (one-sided); never reached is untestable."""
  a, b = np.asarray(steps_a, np.float64), np.asarray(steps_b, np.float64)
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    return {"holds": None, "why": "a run never reached the target"}
  if len(a) < 2 or len(b) < 2:
    return {"holds": None, "why": "needs at least 2 seeds each"}
  if a.var() == 0 and b.var() == 0:
    return {"holds": None, "why": "no spread in either sample"}
  with warnings.catch_warnings():
    # scipy warns of precision loss when one sample's values are all equal (two studies that
    # reached the target at the same evaluation); Welch's t is still defined by the other's.
    warnings.simplefilter("ignore", RuntimeWarning)
    t, p = stats.ttest_ind(a, b, equal_var=False, alternative="less")
  return {"t": float(t), "p": float(p), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
          "holds": bool(p < alpha)}


def claim_runs(records: Sequence[dict], workload: str, optimizer: str) -> list[dict]:
  """The optimizer's runs at one setting over several seeds: the hyperparameters run on the
  most seeds (ties: lower mean final metric)."""
  groups: dict[str, list[dict]] = {}
  for r in records:
    if r["workload"] == workload and r["optimizer"] == optimizer:
      groups.setdefault(json.dumps(r["hparams"], sort_keys=True), []).append(r)
  if not groups:
    return []
  return min(groups.values(), key=lambda rs: (-len(rs), np.mean([_value(r, "final_metric")
                                                                   for r in rs])))


# ---------------------------------------------------------------------------------------------
# Report.

def _fmt(x: float, field: str) -> str:
  if not math.isfinite(x):
    return "never"
  return f"{x:.0f}" if field == "steps_to_target" else f"{x:.1f}"


def table(records: Sequence[dict], field: str) -> str:
  """Markdown: workload rows, optimizer columns, `median [min, max] (n studies)`."""
  results = study_results(records)
  workloads = sorted({w for w, _ in results})
  optimizers = sorted({o for _, o in results})
  lines = ["| workload | " + " | ".join(optimizers) + " |", "|---" * (len(optimizers) + 1) + "|"]
  for w in workloads:
    cells = []
    for o in optimizers:
      vals = [_value(r, field) for r in results.get((w, o), [])]
      if not vals:
        cells.append("-")
        continue
      cells.append(f"{_fmt(float(np.median(vals)), field)} [{_fmt(min(vals), field)}, "
                   f"{_fmt(max(vals), field)}] ({len(vals)})")
    lines.append(f"| {w} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def report(records: Sequence[dict], r_max: float, speedrun_workload: str, record_c: float | None,
           alpha: float, baseline: str, field: str = "time_to_target_s") -> str:
  out = ["## Steps to target: median [min, max] over studies (best trial of each)",
         table(records, "steps_to_target"), "",
         "## Time to target (s): median [min, max] over studies (best trial of each)",
         table(records, "time_to_target_s"), ""]
  optimizers = sorted({r["optimizer"] for r in records})
  ratios = performance_ratios(median_over_studies(records, field), optimizers)
  taus = np.array([1.0, 1.25, 1.5, 2.0, 3.0, r_max])
  out += [f"## Performance profiles rho(tau) (by {field}) and score (r_max = {r_max:g})",
          "| optimizer | " + " | ".join(f"tau={t:g}" for t in taus) + " | score |",
          "|---" * (len(taus) + 2) + "|"]
  for o in optimizers:
    rho = profile(ratios[o], taus)
    out.append(f"| {o} | " + " | ".join(f"{v:.2f}" for v in rho) +
               f" | {benchmark_score(ratios[o], r_max):.4f} |")
  speedrun = [r for r in records if r["workload"] == speedrun_workload]
  if speedrun:
    out += ["", f"## Speedrun rules ({speedrun_workload})"]
    claims = {o: claim_runs(speedrun, speedrun_workload, o) for o in optimizers}
    for o, rs in claims.items():
      if not rs:
        continue
      rule = record_rule([_value(r, "final_metric") for r in rs], rs[0]["target"], record_c,
                         alpha)
      if rule["holds"] is None:
        out.append(f"- {o}: record rule untestable: {rule['why']}")
      else:
        out.append(f"- {o}: mean final {rule['mean']:.4f} over {rule['n']} seeds, needs <= "
                   f"{rule['needed_below']:.4f} (target {rs[0]['target']} - c/sqrt(n), "
                   f"c = {rule['c']:.4f}): record {'HOLDS' if rule['holds'] else 'does not hold'}")
    if claims.get(baseline):
      base_steps = [_value(r, "steps_to_target") for r in claims[baseline]]
      for o, rs in claims.items():
        if o == baseline or not rs:
          continue
        t = welch([_value(r, "steps_to_target") for r in rs], base_steps, alpha)
        if t["holds"] is None:
          out.append(f"- {o} fewer steps than {baseline}: untestable: {t['why']}")
        else:
          out.append(f"- {o} fewer steps than {baseline}: {t['mean_a']:.0f} vs {t['mean_b']:.0f}, "
                     f"Welch t = {t['t']:.2f}, one-sided p = {t['p']:.3g}: claim "
                     f"{'HOLDS' if t['holds'] else 'does not hold'} at alpha = {alpha:g}")
  out.append(json.dumps({o: round(benchmark_score(ratios[o], r_max), 6) for o in optimizers}))
  return "\n".join(out)


_R_MAX = flags.DEFINE_float("r_max", 4.0, "Upper limit of the performance-profile integral.")
_BY = flags.DEFINE_enum("score_by", "time_to_target_s", ["time_to_target_s", "steps_to_target"],
                        "What the performance profiles compare.")
_SPEEDRUN = flags.DEFINE_string("speedrun_workload", "speedrun",
                                "Workload whose claims get the speedrun's rules.")
_RECORD_C = flags.DEFINE_float("record_c", None, "c of the record rule; default: z_(1-alpha) x "
                               "the sample std of the claimant's final losses.")
_ALPHA = flags.DEFINE_float("alpha", 0.01, "Significance level of the record rule and t-test.")
_BASELINE = flags.DEFINE_string("baseline", "adamw", "Optimizer the t-tests compare against.")


_WORKLOADS = flags.DEFINE_list("workloads", list(WORKLOAD_CONFIGS), "sweep: workloads to run.")
_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adamw", "muon", "shampoo", "soap", "adamw_8bit",
                                               "sgd"], "sweep: optimizers to compare.")
# The default budget, 2 trials x 2 studies of 6 optimizers on 5 workloads (120 runs), is what
# fits 90 minutes on 2 idle cores: one trial of each optimizer on each workload, run to its full
# step budget, costs about 18 minutes there (WORKSPACE.md, "Tuned comparison").
_TRIALS = flags.DEFINE_integer("trials", 2, "sweep: trials per optimizer and study (the same "
                               "for every optimizer).")
_STUDIES = flags.DEFINE_integer("studies", 2, "sweep: studies (independent draws and seeds; "
                                "at least 2 for a spread and a t-test).")
_QUICK = flags.DEFINE_bool("quick", False, f"sweep: only {', '.join(QUICK_WORKLOADS)}, 2 trials, "
                           "1 study (minutes, for checking the pipeline).")
_RUNS = flags.DEFINE_string("runs_dir", "runs/compare", "sweep: workdirs of the runs.")


_OUT_DIR = flags.DEFINE_string("out_dir", "results", "plots, all: where the PNGs go.")
_WORKSPACE = flags.DEFINE_string("workspace", os.path.join(_ROOT, "WORKSPACE.md"),
                                 "all: the file whose marked results section is regenerated.")

COMMANDS = ("score", "sweep", "plots", "all")


def run_sweep(records_dir: str, workloads_: Sequence[str], optimizers: Sequence[str],
              trials: int, studies: int, runs_dir: str) -> list[dict]:
  """Trains every run of the sweep not yet in `records_dir`, printing progress and an ETA."""
  unknown = [w for w in workloads_ if w not in WORKLOAD_CONFIGS]
  unknown += [o for o in optimizers if o not in SEARCH_SPACES]
  if unknown:
    raise app.UsageError(f"unknown workload/optimizer {unknown}; workloads: "
                         f"{', '.join(WORKLOAD_CONFIGS)}; optimizers: {', '.join(SEARCH_SPACES)}")
  specs = [sp for w in workloads_ for sp in plan(w, optimizers, trials, range(studies))]
  if not flags.FLAGS["verbosity"].present:
    # Each run is one progress line here; the trainer's and orbax's INFO logs of hundreds of
    # runs would bury them (each run's own log is its workdir's metrics.jsonl).
    logging.set_verbosity(logging.WARNING)
  t0 = time.time()
  done = {record_key(r) for r in read_records(records_dir)}
  todo = [sp for sp in specs if sp.key() not in done]
  print(f"{len(specs)} runs planned ({trials} trials x {studies} studies x {len(optimizers)} "
        f"optimizers x {len(workloads_)} workloads), {len(specs) - len(todo)} already recorded")

  def run_fn(spec, _count=[0]):  # pylint: disable=dangerous-default-value
    _count[0] += 1
    elapsed = time.time() - t0
    eta = elapsed / max(_count[0] - 1, 1) * (len(todo) - _count[0] + 1) if _count[0] > 1 else 0
    print(f"[{_count[0]}/{len(todo)}] {spec.workload} {spec.optimizer} study {spec.study} "
          f"trial {spec.trial} {spec.hparams} (elapsed {elapsed / 60:.1f} min, ETA "
          f"{eta / 60:.1f} min)", flush=True)
    return train_run(spec, runs_dir)

  try:
    new = sweep(specs, records_dir, run_fn)
  except SweepInterrupted as e:
    # The trainer took the signal (and saved a checkpoint); the sweep stops too, recording
    # nothing for the unfinished run.
    print(f"sweep stopped: {e}; rerun the same command to resume it")
    sys.exit(128 + e.signum)
  print(f"sweep done in {(time.time() - t0) / 60:.1f} min")
  return new


def main(argv):
  usage = ("usage: python -m experiments.compare {score,sweep,plots,all} RECORDS_DIR\n"
           "  sweep/all: [--quick] [--workloads=...] [--optimizers=...] [--trials=N] "
           "[--studies=K] [--runs_dir=DIR]; plots/all: [--out_dir=results]; all: "
           "[--workspace=WORKSPACE.md]")
  if len(argv) != 3 or argv[1] not in COMMANDS:
    raise app.UsageError(usage)
  command, records_dir = argv[1], argv[2]
  t0 = time.time()
  if command in ("sweep", "all"):
    workloads_ = list(QUICK_WORKLOADS) if _QUICK.value else _WORKLOADS.value
    trials, studies = (2, 1) if _QUICK.value else (_TRIALS.value, _STUDIES.value)
    run_sweep(records_dir, workloads_, _OPTIMIZERS.value, trials, studies, _RUNS.value)
  records = read_records(records_dir)
  if not records:
    raise app.UsageError(f"no records in {records_dir}")
  if command in ("score", "sweep", "all"):
    print(report(records, _R_MAX.value, _SPEEDRUN.value, _RECORD_C.value, _ALPHA.value,
                 _BASELINE.value, _BY.value))
  if command in ("plots", "all"):
    from experiments import compare_plots  # pylint: disable=g-import-not-at-top
    for path in compare_plots.plot_all(records, _OUT_DIR.value, _R_MAX.value, _BY.value):
      print(f"wrote {path}")
  if command == "all":
    # scripts/ holds the command-line tool; its logic is imported here so one command does all.
    from scripts import update_workspace  # pylint: disable=g-import-not-at-top
    update_workspace.update_from_flags(records_dir)
    print(f"all done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
  # compare_plots and scripts.update_workspace import this module by name; run as a script it
  # is `__main__`, and a second copy would define every flag twice.
  sys.modules["experiments.compare"] = sys.modules[__name__]
  app.run(main)
