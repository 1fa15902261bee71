"""The training loop: a strategy's compiled step, then the periodic actions due at that step.

Conventions (after nanodo and the Flax examples): the state is a plain pytree
`{"params", "opt_state", "step", "rng"}`; the step is compiled once by the parallel strategy
(experiments/parallel/strategies.py) with donated buffers; step n-1's metrics are fetched after
step n is dispatched; a non-finite loss stops the run at once and no checkpoint is ever written
from a non-finite state. Logging, evaluation, checkpoints and preemption are periodic actions
(experiments/training/actions.py) run by `loop`, which is the whole of the training proper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import functools
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from experiments.training import checkpoints as ckpt_lib
from experiments.problems import data as data_lib
from experiments.parallel import distributed
from experiments.training import metrics as metrics_lib
from experiments.training import provenance
from experiments.parallel import sharding as sharding_lib
from experiments.training import train_state
from experiments.training import validate as validate_lib
from experiments.training import watchdog as watchdog_lib
from experiments.training import workdir_lock
from experiments.problems import workloads as workloads_lib
from experiments.parallel import strategies
from experiments.training import actions as actions_lib
from experiments.training import budgets as budgets_lib
from experiments.training import step as step_lib
import optimizers


class TrainingDivergedError(RuntimeError):
  pass


# ---------------------------------------------------------------------------------------------
# Run records.

def write_run_record(workdir, config, data_info, num_params, mesh, resumed_from, memory=None):
  record = {
      "config": json.loads(config.to_json_best_effort()),
      "git": provenance.git_info(),
      "versions": provenance.versions(),
      "devices": [str(d) for d in jax.devices()],
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "process_count": jax.process_count(),
      "platform": platform.platform(),
      "corpus": data_info,
      "num_params": num_params,
      "memory": memory,
      "resumed_from_step": resumed_from,
      "argv": sys.argv,
      "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  name = "run.json" if resumed_from is None else f"run.resume_{resumed_from}.json"
  with open(os.path.join(workdir, name), "w") as f:
    json.dump(record, f, indent=1, default=str)


def _json_config(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def record_config_change(workdir: str, step: int, changes: dict) -> None:
  """Appends an allowed config change to run.json's `config_changes` (atomically)."""
  path = os.path.join(workdir, "run.json")
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError):
    record = {}
  record.setdefault("config_changes", []).append(
      {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
       "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, default=str)
  os.replace(tmp, path)


class ConfigDriftError(validate_lib.ConfigError):
  """A resume under a config that differs from the checkpoint's in a field that matters."""


def _check_drift(saved_config: dict | None, config, step: int, where: str) -> dict:
  if saved_config is None:
    return {}
  changes = validate_lib.drift(saved_config, _json_config(config))
  if changes and not config.train.get("allow_config_change"):
    detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
    raise ConfigDriftError(
        f"the config differs from the one that wrote checkpoint step {step} in {where} "
        f"({detail}). Rerun with the original values, use another --workdir, or pass "
        "--config.train.allow_config_change=True to continue under the new values (the change "
        "is recorded in run.json and metrics.jsonl).")
  return changes


def _final_val_loss(workdir: str, key: str = "val_loss") -> tuple[float | None, int | None]:
  """(last logged validation metric, its step) from metrics.jsonl."""
  try:
    val = [(r["step"], r[key]) for r in metrics_lib.read_metrics(workdir)
           if isinstance(r.get(key), float)]
  except OSError:
    return None, None
  return (val[-1][1], val[-1][0]) if val else (None, None)


# ---------------------------------------------------------------------------------------------
# Entry point.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> dict:
  """Trains, evaluating and checkpointing as configured; resumes from `workdir` if it can.

  Returns a summary: final `step`, last `val_loss` and the step it was measured at (`val_step`),
  `stopped_by_signal` (signal number or None), `steps_to_target`, `already_complete`; with
  `train.budgets`, `budget_metrics`: [{"budget", <metric>, "train_time_s"}] sorted by budget,
  for each budget finished so far (experiments/training/budgets.py).
  Raises `validate.ConfigError` for a config that cannot run (before anything is written),
  `workdir_lock.WorkdirLockedError` when another process uses `workdir`, `ConfigDriftError`
  on a resume under changed settings, `checkpoints.CheckpointError` when no checkpoint can be
  used, `data.ShardError` for unreadable data, `metrics.MetricsHistoryError` when a resume
  finds metrics.jsonl cut short with nothing to rebuild it from, `checkpoints.StorageError`
  when the workdir cannot be written (naming the last complete checkpoint),
  `TrainingDivergedError` on NaN/Inf. A workdir this call created is removed again when a
  setup or storage error ends it before its first checkpoint.
  """
  for warning in validate_lib.validate(config):
    logging.warning("Config: %s", warning)
  try:  # the optimizer's name before the data: a typo should not wait for a corpus build
    optimizers.get_builder(config.optimizer.name)
  except ValueError as e:
    raise validate_lib.ConfigError(f"optimizer: {e}") from e
  try:
    mesh = sharding_lib.make_mesh(config.mesh, devices)
    # Loads (or builds the machine-wide cache of) the data; writes nothing into the workdir.
    workload = workloads_lib.build(config, workdir)
  except ValueError as e:
    if isinstance(e, (data_lib.ShardError, validate_lib.ConfigError)):
      raise
    raise validate_lib.ConfigError(str(e)) from e
  _check_model_parallel(config, mesh, workload)
  train_cfg = config.train
  accum, batch = int(train_cfg.grad_accum_steps), int(train_cfg.batch_size)
  strategy = strategies.from_config(config, mesh, workload)
  batch_devices = strategy.batch_devices()
  if (batch // accum) % batch_devices:
    raise validate_lib.ConfigError(
        f"train.batch_size={batch}: its {accum} micro-batch(es) of {batch // accum} rows must "
        f"split evenly over the {batch_devices} devices that hold batch rows")
  tx, schedule = train_state.make_optimizer(config)

  created = not os.path.lexists(workdir)
  lock = workdir_lock.WorkdirLock(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      lock.acquire()
  except OSError as e:
    if created:
      _remove_new_workdir(workdir)
    raise ckpt_lib.storage_error(e, workdir, "create or write the workdir") or (
        ckpt_lib.StorageError(e.errno, f"cannot create or write the workdir {workdir}: "
                                       f"{e.strerror or e}; use another --workdir")) from e
  try:
    with strategy.context():
      return _train(config, workdir, workload, strategy, tx, schedule)
  except Exception as e:  # pylint: disable=broad-except
    error = None
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
      error = ckpt_lib.storage_error(e, workdir, "write to")
    if created and (error is not None or isinstance(e, _SETUP_ERRORS)):
      # Validated too late to write nothing, or out of space before a checkpoint: leave no
      # workdir behind.
      _remove_new_workdir(workdir)
    if error is None:
      raise
    latest = ckpt_lib.latest_step_on_disk(os.path.join(workdir, "checkpoints"))
    then = (f"a rerun resumes from checkpoint step {latest}, the last complete one"
            if latest is not None else "no checkpoint was complete: a rerun starts over")
    raise ckpt_lib.StorageError(error.errno, f"{error.message}; {then}") from e
  finally:
    lock.release()


# Errors after which a workdir this run created, holding no checkpoint, is removed.
_SETUP_ERRORS = (validate_lib.ConfigError, data_lib.ShardError, ckpt_lib.CheckpointError,
                 FileNotFoundError, ckpt_lib.StorageError)


def _remove_new_workdir(workdir: str) -> None:
  """Removes `workdir` (created by this run) unless it holds a checkpoint."""
  if (jax.process_index() == 0 and
      ckpt_lib.latest_step_on_disk(os.path.join(workdir, "checkpoints")) is None):
    shutil.rmtree(workdir, ignore_errors=True)


def _check_model_parallel(config, mesh, workload) -> None:
  """Tensor / pipeline sizes (resolved from -1 by the mesh) against the model and config."""
  model = sharding_lib.axis_size(mesh, sharding_lib.MODEL)
  stage = sharding_lib.axis_size(mesh, sharding_lib.STAGE)
  validate_lib.check_model_parallel(config, model, stage)
  if max(model, stage) > 1 and workload.logical_axes is None:
    raise validate_lib.ConfigError(
        f"mesh.model={model} mesh.stage={stage}: workload {workload.name!r} declares no "
        "logical axes for its parameters; tensor and pipeline parallelism need a GPT workload")


def _nonfinite_injection(config) -> tuple[tuple[int, ...], str] | None:
  if config.get("debug") and config.debug.get("nonfinite_grad_steps"):
    return (tuple(int(x) for x in str(config.debug.nonfinite_grad_steps).split(",")),
            str(config.debug.get("nonfinite_grad_kind", "nan")))
  return None


# ---------------------------------------------------------------------------------------------
# The run: what the loop and its actions share.

@dataclasses.dataclass(eq=False)
class Run:
  """One training run's live state and services, as the loop and the periodic actions see it.

  `state` is in the strategy's layout; `view()` gives it in the mesh layout. `last_metrics`
  are the last fetched step's host metrics. `branch_step(budget)` (a step compiled with a
  `budget`-step run's schedule) and `batches_at(step)` (the training batches from step index
  `step` on) serve branched cooldowns (experiments/training/budgets.py).
  """

  config: ml_collections.ConfigDict
  workdir: str
  strategy: Any
  state: Any
  step: int
  total_steps: int
  stop_at: int
  summary: dict
  writer: Any
  clock: actions_lib.TrainingClock
  checkpointer: ckpt_lib.Checkpointer
  batches: Any
  fingerprint: dict
  metric_key: str
  items_per_step: int
  items_name: str
  val_batches: list
  eval_metric: Any
  all_finite: Any
  last_good_ckpt: int | None = None
  last_metrics: dict = dataclasses.field(default_factory=dict)
  signal: int | None = None
  consecutive_skips: int = 0
  branch_step: Any = None
  batches_at: Any = None

  def view(self):
    return self.strategy.view(self.state)

  def evaluate(self, state=None) -> float:
    """The validation metric of the run's state, or of `state` (a branch's, same layout)."""
    view = self.strategy.view(self.state if state is None else state)
    return float(np.mean(jax.device_get([self.eval_metric(view, b) for b in self.val_batches])))

  def save(self, step: int) -> None:
    view = self.view()
    if not bool(jax.device_get(self.all_finite(view))):
      raise TrainingDivergedError(
          f"the train state at step {step} holds NaN/Inf; not saving it. Last good "
          f"checkpoint: {self.last_good_ckpt} in {self.checkpointer.directory}")
    self.checkpointer.save(step, view, {"data": self.batches.state(),
                                        "fingerprint": self.fingerprint,
                                        "config": _json_config(self.config),
                                        "train_time_s": self.clock(),
                                        "metrics_rows": self.writer.rows})
    self.last_good_ckpt = step

  def __call__(self, signum, frame):  # the SIGTERM / SIGINT handler: stop at the next step
    del frame
    if self.signal is None:
      logging.warning("Received signal %d: saving a checkpoint after this step, then exiting.",
                      signum)
    self.signal = signum


def fetch_metrics(run: Run, actions, step_no: int, step_metrics) -> None:
  """Brings a dispatched step's metrics to the host: logged, checked, shown to the actions."""
  host = jax.device_get(step_metrics)
  run.writer.write(step_no, host)  # a skipped or diverged step is logged before the verdict
  _check_finite(run, host, step_no)
  run.last_metrics = host
  for action in actions:
    action.observe(run, step_no, host)


def _check_finite(run: Run, metrics: dict, step_no: int) -> None:
  train_cfg = run.config.train
  refused = int(metrics.get("opt/nonfinite_streak", 0))  # optimizer-level refusals
  where = f"The last good checkpoint is step {run.last_good_ckpt} in {run.checkpointer.directory}"
  if train_cfg.get("skip_nonfinite_updates") and (float(metrics["skipped"]) or refused):
    run.consecutive_skips = max(run.consecutive_skips + 1, refused)
    logging.warning("Step %d: non-finite loss or update; step skipped (%d in a row).",
                    step_no, run.consecutive_skips)
    max_skips = int(train_cfg.get("max_consecutive_skips") or 0)
    if run.consecutive_skips > max_skips:
      raise TrainingDivergedError(
          f"{run.consecutive_skips} consecutive steps had non-finite losses or updates "
          f"(train.max_consecutive_skips={max_skips}); stopping at step {step_no}. {where}.")
    return
  run.consecutive_skips = 0
  loss = float(metrics["train_loss"])
  if not math.isfinite(loss) or float(metrics["skipped"]) or refused:
    what = (f"training loss became {loss}" if not math.isfinite(loss) else
            "the gradient or update became non-finite (or too large for the optimizer's "
            "statistics)")
    raise TrainingDivergedError(
        f"{what} at step {step_no}; stopping. {where} (none is written from a bad state). "
        "train.skip_nonfinite_updates=True skips such steps instead.")


# ---------------------------------------------------------------------------------------------
# The loop.

def loop(run: Run, actions: list[actions_lib.PeriodicAction], beat=lambda: None) -> None:
  """Steps until `run.stop_at`, a signal, or an action that ends the run; after each step,
  the actions due there run in order (the step's metrics fetched first)."""
  check_every = int((run.config.get("distributed") or {}).get("preemption_check_every", 1) or 1)
  for action in actions:
    action.start(run)
  pending = None  # (step number, device metrics) of the last dispatched step
  while run.step < run.stop_at:
    batch = run.strategy.place_batch(next(run.batches))
    run.state, step_metrics = run.strategy.step(run.state, batch)
    run.step += 1
    # A signal reaches one process (or several at different steps); all stop at one step.
    stopping = distributed.reached_preemption(run.step, run.signal is not None, check_every)
    if pending is not None:  # fetch step n-1 while step n runs
      fetch_metrics(run, actions, *pending)
    pending = (run.step, step_metrics)
    due = [a for a in actions if a.due(run, run.step, stopping)]
    if due:
      fetch_metrics(run, actions, *pending)
      pending = None
    for action in due:
      with run.clock.paused() if action.pauses_clock else contextlib.nullcontext():
        if action(run, run.step):
          return
    beat()  # armed after the first step, so compilation does not count
  if pending is not None:
    fetch_metrics(run, actions, *pending)


# ---------------------------------------------------------------------------------------------
# Setting a run up.

def _train(config, workdir, workload, strategy, tx, schedule) -> dict:
  train_cfg = config.train
  pi, pc = jax.process_index(), jax.process_count()
  metric_key = workload.metric
  init_state = train_state.make_init_state(workload.init_params, tx, strategy.extra_init)
  strategy.prepare(init_state, config.seed)
  step_kwargs = dict(skip_nonfinite=bool(train_cfg.get("skip_nonfinite_updates")),
                     inject_nonfinite=_nonfinite_injection(config))
  strategy.compile(functools.partial(step_lib.make_train_step, workload.loss_fn, tx, schedule,
                                     **step_kwargs))

  def branch_step(budget: int):
    # The optimizer of a standalone `budget`-step run: the same state structure, its schedule.
    btx, bschedule = train_state.make_optimizer(validate_lib.budget_config(config, budget))
    return strategy.other_step(functools.partial(step_lib.make_train_step, workload.loss_fn,
                                                 btx, bschedule, **step_kwargs))

  # Schedule-Free and other averaging methods are evaluated at their averaged point.
  eval_metric = strategy.evaluator(
      lambda p, o, b, *f: workload.eval_fn(optimizers.eval_params(p, o), b, *f))
  all_finite = jax.jit(step_lib.all_finite, in_shardings=(strategy.state_shardings,),
                       out_shardings=sharding_lib.replicated(strategy.mesh))

  data_info = workload.info
  corpus_id = data_info.get("sha256") or data_info.get("val_sha256")
  distributed.assert_same_across_processes(str(corpus_id), "the data's content hash")
  main = distributed.is_main()
  fingerprint = dict(workload.fingerprint, optimizer=config.optimizer.name,
                     seed=int(config.seed), corpus=corpus_id)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       train_cfg.get("keep_checkpoints"))
  writer = None
  try:
    train_iter = workload.batches(config.seed, process_index=pi, process_count=pc)
    restored = checkpointer.restore_latest(strategy.abstract, fingerprint)
    resumed_from, changes, train_time_s = None, {}, 0.0
    if restored is not None:
      resumed_from, state, record = restored
      changes = _check_drift(record.get("config"), config, resumed_from,
                             checkpointer.directory)
      train_iter.restore(record["data"])
      train_time_s = float(record.get("train_time_s", 0.0))
      logging.info("Resumed from checkpoint step %d in %s", resumed_from, checkpointer.directory)
      step, state = int(jax.device_get(state["step"])), strategy.adopt(state)
    else:
      step, state = 0, strategy.init(config.seed)
    total_steps = int(train_cfg.steps)
    summary = {"step": step, "metric": metric_key, "val_loss": None, "val_step": None,
               "stopped_by_signal": None, "steps_to_target": None, "already_complete": False,
               "train_time_s": train_time_s, "time_to_target_s": None}

    if resumed_from is not None and main:  # a lost metrics.jsonl is rebuilt or refused
      metrics_lib.check_history(workdir, resumed_from, record.get("metrics_rows"))
    # Only process 0 writes run records, metrics and TensorBoard events.
    writer = (metrics_lib.MetricWriter(workdir, resume_step=resumed_from) if main else
              metrics_lib.NullWriter())
    if resumed_from is not None:
      # A target reached before the resume stays the first crossing; it is not logged again.
      old_rows = metrics_lib.read_metrics(workdir)
      reached = [r for r in old_rows if "steps_to_target" in r]
      if reached:
        summary["steps_to_target"] = int(reached[0]["steps_to_target"])
        summary["time_to_target_s"] = reached[0].get("time_to_target_s")
      summary["val_loss"], summary["val_step"] = _final_val_loss(workdir, metric_key)
      done_at_target = (train_cfg.get("stop_at_target") and
                        summary["steps_to_target"] is not None)
      if (step >= total_steps or done_at_target) and not changes:
        summary["already_complete"] = True
        if validate_lib.budgets_of(config):
          summary["budget_metrics"] = budgets_lib.budget_metrics(workdir, config, metric_key,
                                                                 old_rows)
        logging.info("Run already complete at step %d/%d in %s: %s %s (step %s). "
                     "Nothing to do.", step, total_steps, workdir, metric_key,
                     summary["val_loss"], summary["val_step"])
        return summary
    if changes:
      logging.warning("Config changed on resume at step %d (allowed by "
                      "train.allow_config_change): %s", resumed_from,
                      {k: f"{a!r} -> {b!r}" for k, (a, b) in changes.items()})
      if main:
        record_config_change(workdir, resumed_from, changes)
      writer.write_event(resumed_from, "config_change",
                         {k: {"from": a, "to": b} for k, (a, b) in changes.items()})
    # Abstract leaves: counted from shapes (`optax.tree.size` warns on ShapeDtypeStructs).
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(strategy.abstract["params"]))
    if main:
      write_run_record(workdir, config, data_info, num_params, strategy.mesh, resumed_from,
                       strategy.memory)
    logging.info("Workload %s: %s parameters; mesh %s; data %s", workload.name,
                 f"{num_params:,}", dict(strategy.mesh.shape), corpus_id)

    run = Run(
        config=config, workdir=workdir, strategy=strategy, state=state, step=step,
        total_steps=total_steps,
        stop_at=min(int(train_cfg.get("stop_at_step") or total_steps), total_steps),
        summary=summary, writer=writer,
        # Training wall-clock (compilation included, evaluation and checkpointing excluded, as
        # AlgoPerf counts it), carried across resumes in the checkpoint.
        clock=actions_lib.TrainingClock(train_time_s), checkpointer=checkpointer,
        batches=train_iter, fingerprint=fingerprint, metric_key=metric_key,
        items_per_step=workload.items_per_step,
        items_name="tokens" if "seq_len" in workload.fingerprint else "examples",
        # Every eval batch goes through the devices in train micro-batch chunks.
        val_batches=[strategy.place_eval_batch(b) for b in workload.eval_batches(pi, pc)],
        eval_metric=eval_metric, all_finite=all_finite, last_good_ckpt=resumed_from,
        branch_step=branch_step,
        batches_at=lambda position: workload.batches(config.seed, position, pi, pc))
    with _signals_and_watchdog(run, float(train_cfg.get("stall_warning_s") or 0)) as beat:
      loop(run, actions_lib.from_config(config), beat)
    summary["step"] = run.step
    summary["train_time_s"] = run.clock()
    if validate_lib.budgets_of(config):
      summary["budget_metrics"] = budgets_lib.budget_metrics(
          workdir, config, metric_key, metrics_lib.read_metrics(workdir))
    return summary
  finally:
    if writer is not None:
      writer.close()
    checkpointer.close()


@contextlib.contextmanager
def _signals_and_watchdog(run: Run, stall_s: float):
  """SIGTERM / SIGINT set `run.signal` (the loop stops at a step every process agrees on); a
  watchdog warns, with what to do, when no step finishes for `stall_s` seconds. Yields the
  watchdog's heartbeat."""

  def on_stall(seconds):
    pid = os.getpid()
    logging.warning(
        "No training progress for %.0f s (after step %d). If the process is stuck inside XLA, "
        "SIGTERM cannot stop it: `kill -9 %d`, then rerun the same command to resume from the "
        "last checkpoint (step %s). Native stacks: gdb -p %d -batch -ex 'thread apply all bt'. "
        "Python stacks follow on stderr.", seconds, run.step, pid, run.last_good_ckpt, pid)
    faulthandler.dump_traceback(all_threads=True)

  def on_signal(signum, frame):
    run(signum, frame)
    previous = old_handlers.get(signum)
    if getattr(previous, "observes_signals", False):  # e.g. a sweep running this run
      previous(signum, frame)

  watchdog = watchdog_lib.StallWatchdog(stall_s, on_stall).start() if stall_s else None
  old_handlers = {}
  old_handlers.update({s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)})
  for previous in old_handlers.values():  # a sweep's stop that came while this run set up
    if getattr(previous, "observes_signals", False) and getattr(previous, "signum", None):
      run(previous.signum, None)
  try:
    yield watchdog.beat if watchdog else (lambda: None)
  finally:
    if watchdog:
      watchdog.stop()
    for s, h in old_handlers.items():
      signal.signal(s, h)
