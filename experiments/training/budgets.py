"""Losses at several step budgets from one run: branched cooldowns of a WSD schedule.

Hägele et al. 2024 (arXiv 2405.18392), "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations": under warmup-stable-decay, a run of B steps and a run of N > B steps share
their warmup and stable phase up to step B - decay(B), where the B-step run starts its decay
(decay(B) = max(round(B * schedule.decay_fraction), 1), as `train_state.make_schedule`). So the
N-step run can fork a cooldown there: from a copy of its state, steps B - decay(B) .. B - 1 with
the B-step run's learning rates on the batches a B-step run sees at those step indices (batches
are a pure function of (seed, step)), then the validation metric at B. The branch is discarded
and the main run goes on untouched; its own end is the longest budget.

`train.budgets` (sorted step counts, the longest == `train.steps`) turns it on. Each branch's
result is appended to `<workdir>/budgets.jsonl` (not metrics.jsonl: those rows are the main
run's curve), so a resumed run keeps the finished branches and redoes only a branch a signal
cut (the main run stops at the fork step and checkpoints there). `BranchedCooldown` is the
periodic action that runs the branches; `budget_metrics` is what `train_and_evaluate` returns.
"""

from __future__ import annotations

import copy
import json
import os
import time

from absl import logging
import jax

from experiments.parallel import distributed
from experiments.training import actions as actions_lib

FILENAME = "budgets.jsonl"


def wsd_decay_steps(steps: int, decay_fraction: float) -> int:
  """Steps of a `steps`-step WSD run's linear decay (at least one)."""
  return max(int(round(int(steps) * float(decay_fraction))), 1)


def of(config) -> tuple[int, ...]:
  """The config's `train.budgets` as a tuple of ints (empty: branching is off)."""
  value = config.train.get("budgets") or ()
  return tuple(int(b) for b in value)


def fork_step(config, budget: int) -> int:
  """The step after which a `budget`-step WSD run starts its decay: where its branch forks."""
  return int(budget) - wsd_decay_steps(budget, config.schedule.decay_fraction)


def budget_config(config, budget: int):
  """`config` as a standalone run of `budget` steps (no budgets of its own)."""
  # A deep copy keeps its fields' references to train.steps (AdEMAMix's warmups): they follow.
  c = copy.deepcopy(config)
  with c.unlocked():
    c.train.steps = int(budget)
    c.train.budgets = ()
  return c


def check(config) -> str | None:
  """Why `train.budgets` cannot run with this config (one line), or None when it can."""
  budgets = config.train.get("budgets") or ()
  if not budgets:
    return None
  field = f"train.budgets={tuple(budgets)!r}"
  if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in budgets):
    return f"{field}: every budget must be a positive integer number of steps"
  if list(budgets) != sorted(set(budgets)):
    return f"{field}: the budgets must be sorted, each once"
  steps = config.train.steps
  if budgets[-1] != steps:
    return (f"{field}: the longest budget must be train.steps={steps} (the main run is the "
            "longest budget)")
  if config.schedule.name != "wsd":
    return (f"{field}: branched cooldowns need schedule.name='wsd' (got "
            f"{config.schedule.name!r}): only its stable phase is shared by every budget")
  warmup = int(config.schedule.warmup_steps)
  for b in budgets[:-1]:
    if fork_step(config, b) < warmup:
      return (f"{field}: budget {b}'s decay would start at step {fork_step(config, b)}, before "
              f"the warmup ends at schedule.warmup_steps={warmup}")
  if config.train.get("stop_at_target") and config.train.get("target_val_loss") is not None:
    return (f"{field}: cannot be combined with train.stop_at_target=True (the main run must "
            "reach the longest budget)")
  if not config.train.get("eval_every"):
    return f"{field}: needs train.eval_every > 0 (the longest budget is the main run's final eval)"
  # A hyperparameter tied to the run length (AdEMAMix's warmups follow train.steps) would differ
  # between the main run's first steps and a B-step run's: the branch could not match it.
  for b in budgets[:-1]:
    a = config.optimizer.copy_and_resolve_references().to_dict()
    other = budget_config(config, b).optimizer.to_dict()
    tied = sorted(k for k in a if a[k] != other.get(k))
    if tied:
      return (f"{field}: optimizer.{tied[0]} follows train.steps, so a branch cannot match a "
              f"{b}-step run; set it to a number")
  return None


# ---------------------------------------------------------------------------------------------
# budgets.jsonl: one row per finished branch.

def read(workdir: str) -> list[dict]:
  """The finished branches' rows; a torn last line (a crash mid-write) is skipped."""
  path = os.path.join(workdir, FILENAME)
  try:
    with open(path) as f:
      lines = f.read().split("\n")
  except FileNotFoundError:
    return []
  rows = []
  for line in lines:
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return [r for r in rows if isinstance(r, dict) and "budget" in r]


def _write_rows(workdir: str, rows: list[dict]) -> None:
  path = os.path.join(workdir, FILENAME)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(tmp, path)


def keep_up_to(workdir: str, step: int | None) -> None:
  """Drops the rows of branches forked after `step` (None: every row), as metrics.jsonl drops
  rows past the checkpoint a run continues from: the run redoes them."""
  rows = read(workdir)
  kept = [r for r in rows if step is not None and int(r.get("fork_step", -1)) <= step]
  if kept != rows or (step is None and os.path.exists(os.path.join(workdir, FILENAME))):
    _write_rows(workdir, kept)


def append(workdir: str, row: dict) -> None:
  with open(os.path.join(workdir, FILENAME), "a") as f:
    f.write(json.dumps(row) + "\n")


def budget_metrics(workdir: str, config, metric_key: str, rows: list[dict]) -> list[dict]:
  """[{budget, <metric>, train_time_s}] sorted by budget: the branches' rows and, when the main
  run has evaluated at its last step, the longest budget from metrics.jsonl's `rows`."""
  budgets = of(config)
  out = {}
  for r in read(workdir):
    if r["budget"] in budgets[:-1]:
      out[r["budget"]] = {"budget": r["budget"], metric_key: r.get(metric_key),
                          "train_time_s": r.get("train_time_s")}
  final = [r for r in rows if r.get("step") == int(config.train.steps) and metric_key in r]
  if budgets and final:
    out[budgets[-1]] = {"budget": budgets[-1], metric_key: final[-1][metric_key],
                        "train_time_s": final[-1].get("train_time_s")}
  return [out[b] for b in sorted(out)]


# ---------------------------------------------------------------------------------------------
# The action.

class BranchedCooldown(actions_lib.PeriodicAction):
  """At each shorter budget's fork step, that budget's cooldown branch (see the module doc).

  Needs the run's `branch_step(budget)` (a compiled step with the `budget`-step schedule) and
  `batches_at(step)` (the training batches from step index `step` on). The training clock is
  paused while a branch runs: its time is the branch's, reported as the main run's time at the
  fork plus the branch's own (compilation included, evaluation excluded).
  """

  config_key = "train.budgets"

  def __init__(self, forks: dict[int, tuple[int, ...]]):
    super().__init__(on_steps=tuple(forks), at_end=False)
    self.forks = forks
    self.done: set[int] = set()

  @classmethod
  def from_config(cls, config):
    budgets = of(config)
    if len(budgets) < 2:
      return None
    forks: dict[int, tuple[int, ...]] = {}
    for b in budgets[:-1]:
      forks[fork_step(config, b)] = forks.get(fork_step(config, b), ()) + (b,)
    return cls(forks)

  def start(self, run) -> None:
    if distributed.is_main():
      keep_up_to(run.workdir, run.step if run.step else None)
    self.done = {int(r["budget"]) for r in read(run.workdir)}
    missed = [b for f, bs in self.forks.items() for b in bs
              if f < run.step and b not in self.done]
    if missed:
      logging.warning("Budgets %s forked before step %d, where this run resumes, and have no "
                      "result in %s: they cannot be produced from here.", missed, run.step,
                      FILENAME)
    if run.step in self.forks:  # a fresh run forking at step 0, or a resume at a fork step
      with run.clock.paused():
        if self(run, run.step):
          run.stop_at = run.step  # a signal cut the branch: end before the first main step

  def __call__(self, run, step) -> bool | None:
    for budget in self.forks.get(step, ()):
      if budget in self.done:
        continue
      row = self._branch(run, step, budget)
      if row is None:  # cut by a signal: save the fork point, so that a rerun redoes it
        run.summary["stopped_by_signal"] = run.signal
        if run.last_good_ckpt != step:
          run.save(step)
        logging.warning("Stopped by signal %s in budget %d's branch at step %d; checkpoint "
                        "saved at its fork step: a rerun redoes the branch.", run.signal, budget,
                        step)
        return True
      self.done.add(budget)
    return None

  def _branch(self, run, fork: int, budget: int) -> dict | None:
    """Trains budget's branch from the fork and evaluates it; None if a signal cut it."""
    at_fork = run.clock()  # paused: the main run's training time at the fork
    t0 = time.perf_counter()
    step_fn = run.branch_step(budget)
    # The compiled step donates its input: the branch trains a copy, the main state stays.
    state = jax.tree.map(lambda x: x.copy(), run.state)
    batches = run.batches_at(fork)
    for s in range(fork, budget):
      if distributed.reached_preemption(s, run.signal is not None):
        return None
      state, metrics = step_fn(state, run.strategy.place_batch(next(batches)))
    last = jax.device_get(metrics)
    jax.block_until_ready(state)
    own = time.perf_counter() - t0
    value = run.evaluate(state)
    row = {"budget": budget, "fork_step": fork, run.metric_key: value,
           "train_time_s": at_fork + own, "branch_time_s": own,
           "last_train_loss": float(last["train_loss"])}
    if distributed.is_main():
      append(run.workdir, row)
    logging.info("budget %d: %s %.4f (branch of %d steps from step %d)", budget, run.metric_key,
                 value, budget - fork, fork)
    return row


def register() -> None:
  """Adds the action to every run's (after the built-in ones: a fork step's checkpoint and a
  signal's stop come first, and a branch a signal prevented is redone on resume)."""
  actions_lib.register(BranchedCooldown)


register()
