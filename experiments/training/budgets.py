"""Losses at several step budgets from one run: branched cooldowns of a WSD schedule.

Hägele et al. 2024 (arXiv 2405.18392), "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations": under warmup-stable-decay, a run of B steps and a run of N > B steps share
their warmup and stable phase up to step B - decay(B), where the B-step run starts its decay
(decay(B) = max(round(B * schedule.decay_fraction), 1), as `train_state.make_schedule`). So the
N-step run can fork a cooldown there: from a copy of its state, steps B - decay(B) .. B - 1 with
the B-step run's learning rates on the batches a B-step run sees at those step indices (batches
are a pure function of (seed, step)), then the validation metric at B. The branch is discarded
and the main run goes on untouched; its own end is the longest budget.

`train.budgets` (sorted step counts, the longest == `train.steps`) turns it on. A constant
schedule (Schedule-Free, whose iterate averaging replaces the decay) has nothing to branch: a
B-step run of it is the main run's first B steps, so each budget's result is the main run's
evaluation at step B. Each branch's
result is appended to `<workdir>/budgets.jsonl` (not metrics.jsonl: those rows are the main
run's curve), so a resumed run keeps the finished branches and redoes only a branch a signal
cut (the main run stops at the fork step and checkpoints there). `BranchedCooldown` is the
periodic action that runs the branches; `budget_metrics` is what `train_and_evaluate` returns.
"""

from __future__ import annotations

import json
import os
import time

from absl import logging
import jax

from experiments.parallel import distributed
from experiments.training import actions as actions_lib
from experiments.training import validate as validate_lib

FILENAME = "budgets.jsonl"


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
  budgets = validate_lib.budgets_of(config)
  out = {}
  for r in read(workdir):
    if r["budget"] in budgets[:-1]:
      out[r["budget"]] = {"budget": r["budget"], metric_key: r.get(metric_key),
                          "train_time_s": r.get("train_time_s")}
  if config.schedule.name == "constant":  # each budget: the main run's evaluation there
    for b in budgets:
      at = [r for r in rows if r.get("step") == b and metric_key in r]
      if at:
        out[b] = {"budget": b, metric_key: at[-1][metric_key],
                  "train_time_s": at[-1].get("train_time_s")}
    return [out[b] for b in sorted(out)]
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
    budgets = validate_lib.budgets_of(config)
    if len(budgets) < 2 or config.schedule.name == "constant":  # constant: nothing to branch
      return None
    forks: dict[int, tuple[int, ...]] = {}
    for b in budgets[:-1]:
      fork = validate_lib.budget_fork_step(config, b)
      forks[fork] = forks.get(fork, ()) + (b,)
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
