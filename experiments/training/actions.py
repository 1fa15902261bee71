"""Periodic actions and the training clock (after clu's `periodic_actions` and big_vision's
`Chrono`; written here: clu needs TensorFlow for its writers, and the part used is ~100 lines).

After every step the loop asks each action whether it is `due`; if any is, the step's metrics
are fetched first (so a diverged step stops the run before anything is saved), then the due
actions run in order, each with the training clock paused unless it says otherwise. An action
returns True to end the training (a target reached, a signal).

Adding one: subclass `PeriodicAction`, name its `config_key` (a field of the config whose value
is its cadence in steps; 0 or absent turns it off) and decorate it with `@register`:

  @actions.register
  class SaveSamples(actions.PeriodicAction):
    config_key = "train.sample_every"
    def __call__(self, run, step):
      ...                      # run.state, run.view(), run.writer, run.summary, run.config

`run` is the loop's `training.loop.Run`: the state and step, the config, the metric writer,
the summary, the clock, and `evaluate()`, `save(step)`, `view()`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from typing import ClassVar

from absl import logging
import numpy as np

from experiments.parallel import distributed
from experiments.training import metrics as metrics_lib
from experiments.training import validate


class TrainingClock:
  """Seconds of training: wall-clock since the start plus `base_s` (carried across resumes),
  less the time spent inside `paused()` (evaluation, checkpoints: AlgoPerf's rule, so
  compilation counts). Pauses nest."""

  def __init__(self, base_s: float = 0.0):
    self._base, self._t0, self._excluded = float(base_s), time.perf_counter(), 0.0
    self._depth, self._paused_at = 0, 0.0

  def __call__(self) -> float:
    now = self._paused_at if self._depth else time.perf_counter()
    return self._base + now - self._t0 - self._excluded

  @contextlib.contextmanager
  def paused(self):
    if self._depth == 0:
      self._paused_at = time.perf_counter()
    self._depth += 1
    try:
      yield
    finally:
      self._depth -= 1
      if self._depth == 0:
        self._excluded += time.perf_counter() - self._paused_at


class PeriodicAction:
  """Runs after the steps it is `due` at: every `every` steps (0: never by count), on the
  steps in `on_steps`, at the run's last step (`at_end`) and when a signal stops the run
  (`on_stop`). `observe` sees every step's host metrics; `start` runs once before the first
  step."""

  config_key: ClassVar[str | None] = None  # "train.x_every": the cadence's config field
  pauses_clock: ClassVar[bool] = True

  def __init__(self, every: int = 0, on_steps: tuple[int, ...] = (), at_end: bool = True,
               on_stop: bool = False):
    self.every, self.on_steps = int(every or 0), frozenset(on_steps)
    self.at_end, self.on_stop = at_end, on_stop

  @classmethod
  def from_config(cls, config) -> PeriodicAction | None:
    """The action `config` asks for (None: off); the cadence is `config_key`'s value."""
    every = validate.get(config, cls.config_key) if cls.config_key else 0
    return cls(every=every) if every else None

  def due(self, run, step: int, stopping: bool) -> bool:
    return bool((self.every and step % self.every == 0) or step in self.on_steps or
                (self.at_end and step == run.total_steps) or (self.on_stop and stopping))

  def start(self, run) -> None:
    del run

  def observe(self, run, step: int, metrics: dict) -> None:
    del run, step, metrics

  def __call__(self, run, step: int) -> bool | None:
    raise NotImplementedError


_REGISTRY: list[type[PeriodicAction]] = []


def register(cls: type[PeriodicAction]) -> type[PeriodicAction]:
  """Adds an action class to those every run builds from its config (in registration order,
  after the built-in ones); returns it, so it can decorate the class."""
  if cls not in _REGISTRY:
    _REGISTRY.append(cls)
  return cls


def unregister(cls: type[PeriodicAction]) -> None:
  _REGISTRY.remove(cls)


def from_config(config) -> list[PeriodicAction]:
  return [a for a in (cls.from_config(config) for cls in _REGISTRY) if a is not None]


# ---------------------------------------------------------------------------------------------
# The built-in actions, in the order they run after a step.

@register
class LogProgress(PeriodicAction):
  """The progress line (mean loss since the last one, throughput, lr, ETA) and `<items>_per_s`
  in metrics.jsonl; throughput counts training time only (the clock's)."""

  config_key = "train.log_every"
  pauses_clock = False

  @classmethod
  def from_config(cls, config):
    return cls(every=int(config.train.log_every))

  def start(self, run) -> None:
    self._t0, self._steps, self._losses = run.clock(), 0, []
    self._wall0, self._step0 = time.perf_counter(), run.step

  def observe(self, run, step, metrics) -> None:
    self._steps += 1
    self._losses.append(float(metrics["train_loss"]))

  def __call__(self, run, step):
    per_s = run.items_per_step * self._steps / max(run.clock() - self._t0, 1e-9)
    eta = ((time.perf_counter() - self._wall0) / max(step - self._step0, 1) *
           (run.total_steps - step))
    losses = [l for l in self._losses if math.isfinite(l)]
    logging.info("step %d/%d | loss %.4f | %s %s/s | lr %.3e | ETA %s", step, run.total_steps,
                 float(np.mean(losses)) if losses else float("nan"), f"{per_s:,.0f}",
                 run.items_name, float(run.last_metrics["lr"]),
                 metrics_lib.format_duration(eta))
    run.writer.write(step, {f"{run.items_name}_per_s": per_s})
    self._t0, self._steps, self._losses = run.clock(), 0, []


@register
class Evaluate(PeriodicAction):
  """The validation metric (also before step 1 of a fresh run), `train_time_s` beside it, and
  the first crossing of `train.target_val_loss` (`steps_to_target`; with
  `train.stop_at_target` the run saves and ends there)."""

  config_key = "train.eval_every"

  def start(self, run) -> None:
    if run.step == 0:
      with run.clock.paused():
        self._record(run, 0, 0.0)

  def __call__(self, run, step):
    now = run.clock()
    v = self._record(run, step, now)
    logging.info("step %d | %s %.4g", step, run.metric_key, v)
    target = run.config.train.get("target_val_loss")
    if target is not None and v <= target and run.summary["steps_to_target"] is None:
      run.summary["steps_to_target"], run.summary["time_to_target_s"] = step, now
      run.writer.write(step, {"steps_to_target": step, "time_to_target_s": now})
      logging.info("Reached target %s %.4g at step %d", run.metric_key, target, step)
      if run.config.train.get("stop_at_target"):
        run.save(step)
        return True
    return None

  def _record(self, run, step, train_time_s) -> float:
    v = run.evaluate()
    run.writer.write(step, {run.metric_key: v, "train_time_s": train_time_s})
    run.summary["val_loss"], run.summary["val_step"] = v, step
    return v


@register
class Checkpoint(PeriodicAction):
  """A checkpoint every `train.checkpoint_every` steps, at the first step after
  `train.checkpoint_every_s` seconds of wall-clock since the last one (0 or absent: off), at
  `train.stop_at_step`, at the end and before a signal stops the run.

  The wall-clock cadence bounds what a killed run loses (SIGKILL, a machine taken away: no
  handler runs) whatever its speed. Every process decides on its own clock, and they agree on
  the step like a signal's stop (`distributed.reached_preemption`, a collective every
  `distributed.preemption_check_every` steps when more than one process runs), so all save
  together."""

  config_key = "train.checkpoint_every"

  def __init__(self, every: int = 0, every_s: float = 0.0, check_every: int = 1, **kwargs):
    super().__init__(every=every, **kwargs)
    self.every_s, self.check_every = float(every_s or 0.0), max(int(check_every or 1), 1)
    self._last = time.monotonic()

  @classmethod
  def from_config(cls, config):
    return cls(every=int(config.train.checkpoint_every), on_stop=True,
               every_s=float(validate.get(config, "train.checkpoint_every_s") or 0.0),
               check_every=int(validate.get(config, "distributed.preemption_check_every") or 1))

  def start(self, run) -> None:
    self._last = time.monotonic()

  def due(self, run, step, stopping):
    # Evaluated at every step on every process, before anything that could short-circuit it:
    # with several processes it is a collective.
    by_time = bool(self.every_s) and distributed.reached_preemption(
        step, time.monotonic() - self._last >= self.every_s, self.check_every)
    return by_time or super().due(run, step, stopping) or step == run.stop_at

  def __call__(self, run, step):
    run.save(step)
    self._last = time.monotonic()


@register
class Preemption(PeriodicAction):
  """Ends the run at the step every process agreed to stop at after a SIGTERM / SIGINT (the
  checkpoint before it is `Checkpoint`'s)."""

  pauses_clock = False

  @classmethod
  def from_config(cls, config):
    return cls(at_end=False, on_stop=True)

  def __call__(self, run, step):
    run.summary["stopped_by_signal"] = run.signal or signal.SIGTERM  # sent to another process
    logging.warning("Stopped by signal %d at step %d; checkpoint saved.",
                    run.summary["stopped_by_signal"], step)
    return True
