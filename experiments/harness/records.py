"""Search spaces, quasi-random trials and run records: what a tuned comparison runs and keeps.

Tuning follows AlgoPerf's external tuning ruleset (Dahl et al. 2023, arXiv 2306.07179): every
optimizer gets the same number of trials drawn quasi-randomly (scrambled Sobol points through
optuna's QMCSampler) from its search space. Records: one JSON line per finished run in
`<records_dir>/<workload>.jsonl` (fields in `make_record`); `sweep` skips every (workload,
optimizer, study, trial, seed) already there, so an interrupted sweep rerun does only what is
missing.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import time
from typing import Callable, Iterable, Sequence

from experiments.harness import spaces as spaces_lib

# Per optimizer: drawn name -> (low, high). Built by one rule from each optimizer's reference
# point (experiments/harness/spaces.py, which says how each dimension is drawn: log-uniform but
# `warmup_fraction`, uniform); this dict keeps the shape the callers know. A name `one_minus_<h>`
# is drawn as 1 - h (momentum-like values live near 1, so their distance to 1 is log-uniform); a
# dotted name (`inner_hparams.b2`) sets a field of a nested block; `warmup_fraction` sets the
# run's warmup steps, not an optimizer key. Every other hyperparameter keeps its value in the
# optimizer's CPU speedrun config (`base_hparams`). The hand-written table this replaced (issue
# 21's ranges; every record without a `space` field was drawn from it) is
# `spaces.LEGACY_RANGES`.
SEARCH_SPACES: dict[str, dict[str, tuple[float, float]]] = {
    o: s.ranges() for o, s in spaces_lib.SPACES.items()}

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
  function of its arguments, so a rerun draws the same trials (`spaces.draw`).
  """
  return spaces_lib.draw(spaces_lib.SPACES[optimizer], num_trials, study)


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
  # Train to the step budget instead of stopping at the target (not part of the key): a curve
  # that a later target can be scored on (`retarget`), as the baseline's runs that set the
  # targets need (AlgoPerf).
  full_budget: bool = False
  # The id of the search space the hyperparameters were drawn from (`spaces.space_id`; not
  # part of the key): recorded so that records of different spaces are never mixed up.
  space: str | None = None
  # How many trials the plan gives this run's study (not part of the key), recorded as
  # `trials_per_study`: a study is complete once it holds that many (budgets.complete_studies).
  trials_per_study: int | None = None

  def key(self) -> tuple:
    return (self.workload, self.optimizer, self.study, self.trial, self.seed)


def record_key(record: dict) -> tuple:
  return tuple(record[k] for k in KEY_FIELDS)


def provenance() -> dict:
  """Git SHA, library versions and device, for every record."""
  from experiments.training import provenance as provenance_lib  # pylint: disable=g-import-not-at-top
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
  curve: [[step, seconds, metric], ...] of every evaluation. Its `budget_metrics` (a run with
  `train.budgets`: [{budget, <metric>, train_time_s}]) is kept when present, with `params` and
  `tokens_per_step` (the regime) when the result has them.
  """
  needed = ("target", "metric", "step_budget", "steps_to_target", "time_to_target_s",
            "final_metric", "curve")
  missing = [k for k in needed if k not in result]
  if missing:
    raise ValueError(f"run result lacks {missing}")
  record = {"workload": spec.workload, "optimizer": spec.optimizer, "hparams": spec.hparams,
            "seed": spec.seed, "study": spec.study, "trial": spec.trial}
  record.update({k: result[k] for k in needed})
  if result.get("budget_metrics") is not None:
    record["budget_metrics"] = result["budget_metrics"]
  for key in ("params", "tokens_per_step"):  # the regime (runs.train_run, budget workloads)
    if result.get(key) is not None:
      record[key] = result[key]
  if spec.full_budget:
    record["full_budget"] = True
  if spec.space is not None:
    record["space"] = spec.space
  if spec.trials_per_study is not None:
    record["trials_per_study"] = spec.trials_per_study
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
    f.write(_line(record))
    f.flush()
    os.fsync(f.fileno())


def write_records(records_dir: str, workload: str, rows: Sequence[dict]) -> None:
  """Replaces `<records_dir>/<workload>.jsonl` with `rows`, atomically (a kill leaves the old
  file or the new one, never half of either)."""
  path = os.path.join(records_dir, f"{workload}.jsonl")
  with open(path + ".tmp", "w") as f:
    f.writelines(_line(r) for r in rows)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def _line(record: dict) -> str:
  return json.dumps(record, default=float) + "\n"


def plan(workload: str, optimizers: Sequence[str], num_trials: int,
         studies: Iterable[int], full_budget: bool = False) -> list[RunSpec]:
  """Every run of a sweep: each study draws `num_trials` trials for every optimizer."""
  specs = []
  for study in studies:
    for opt in optimizers:
      sid = spaces_lib.space_id_of(opt)
      for trial, hp in enumerate(draw_trials(opt, num_trials, study)):
        specs.append(RunSpec(workload, opt, hp, study, trial, run_seed(study, trial),
                             full_budget, sid, num_trials))
  return specs


def retarget(record: dict, target: float) -> dict:
  """`record` scored against another target: the first evaluation at or below it.

  Only a run trained to its step budget (`full_budget`) or one whose curve already reached the
  new, higher target can be: a run stopped at its old target holds no later evaluations.
  """
  if not record.get("full_budget") and (record["steps_to_target"] is None
                                         or target < record["target"]):
    raise ValueError(f"{record['workload']}/{record['optimizer']} study {record['study']} "
                     f"trial {record['trial']} stopped at target {record['target']}: it cannot "
                     f"be scored on {target}")
  out = dict(record, target=target, steps_to_target=None, time_to_target_s=None)
  for step, seconds, value in record["curve"]:
    if value is not None and value <= target:
      out["steps_to_target"], out["time_to_target_s"] = step, seconds
      break
  return out


# Under the records directory: the self-tuning ruleset's records (scored apart: `read_records`
# reads only the top level, the external-tuning ruleset's).
SELF_TUNING_DIR = "self_tuning"


def plan_self_tuning(workload: str, optimizers: Sequence[str],
                     studies: Iterable[int]) -> list[RunSpec]:
  """AlgoPerf's self-tuning ruleset: every optimizer once per study at its documented defaults
  (its CPU speedrun config's block, `base_hparams`; nothing drawn), a fresh seed per study."""
  return [RunSpec(workload, opt, {}, study, 0, run_seed(study, 0))
          for study in studies for opt in optimizers]


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

