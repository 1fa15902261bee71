"""The training loop: one jitted, mesh-sharded train step; eval, logging, checkpoints, resume.

Conventions (after nanodo and the Flax examples): the state is a plain pytree
`{"params", "opt_state", "step", "rng"}`; the step is jitted once with explicit shardings and
donated buffers; step n-1's metrics are fetched after step n is dispatched; a non-finite loss
stops the run at once and no checkpoint is ever written from a non-finite state.
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
import signal
import sys
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import checkpoints as ckpt_lib
from experiments import compression as compression_lib
from experiments import data as data_lib
from experiments import distributed
from experiments import memory as memory_lib
from experiments import metrics as metrics_lib
from experiments import pmap_step
from experiments import provenance
from experiments import sharding as sharding_lib
from experiments import train_state
from experiments import validate as validate_lib
from experiments import watchdog as watchdog_lib
from experiments import workdir_lock
from experiments import workloads as workloads_lib
import optimizers
from optimizers import nonfinite


class TrainingDivergedError(RuntimeError):
  pass


# The optimizer, schedules and initial state from a config (experiments/train_state.py, below
# the workloads, which need them for LoRA's base run); callers know them by these names.
make_schedule = train_state.make_schedule
lr_scale = train_state.lr_scale
make_optimizer = train_state.make_optimizer
clip_grad_fn = train_state.clip_grad_fn
make_init_state = train_state.make_init_state


# ---------------------------------------------------------------------------------------------
# Steps.

def make_train_step(loss_fn: Callable, tx, schedule: Callable, *,
                    skip_nonfinite: bool = False,
                    inject_nonfinite: tuple[tuple[int, ...], str] | None = None,
                    compressed_grads: Callable | None = None) -> Callable:
  """(state, batch, *frozen) -> (state, metrics); gradients averaged over micro-batches.

  `loss_fn(params, batch, *frozen)` is the workload's mean loss; every leaf of `batch` is laid
  out [accum, rows, ...]. `frozen` (LoRA's base weights) gets no gradient and no update.

  skip_nonfinite: a step whose loss or update holds NaN/Inf leaves params and optimizer state as
    they were (as `optax.apply_if_finite` does, but the count of consecutive skips is the
    trainer's, which stops the run past `train.max_consecutive_skips`); metric `skipped` is 1.
  inject_nonfinite: (steps, kind) for fault-injection tests: at those step numbers (1-based) the
    gradient's first element of every leaf becomes NaN ("nan"), Inf ("inf"), or every element
    becomes 1e30 ("huge").
  compressed_grads: wraps the per-device (loss, grads) function into one that averages
    gradients through a compressor (`experiments.compression.data_parallel_grads`); its state
    lives in `state["compression"]` and its byte counts are logged under `comm/`.
  """

  def loss_and_grads(params, batch_AxBxT1, *frozen):
    value_and_grad = jax.value_and_grad(lambda p, b: loss_fn(p, b, *frozen))
    def micro(carry, b):
      loss, grads = value_and_grad(params, b)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None
    n = jax.tree.leaves(batch_AxBxT1)[0].shape[0]
    # The first micro-batch starts the sum (0 + x == x: the same bits as summing from zeros),
    # so the carry has the types of the computed values (also inside shard_map).
    first = value_and_grad(params, jax.tree.map(lambda a: a[0], batch_AxBxT1))
    (loss, grads), _ = jax.lax.scan(micro, first, jax.tree.map(lambda a: a[1:], batch_AxBxT1))
    return loss / n, jax.tree.map(lambda g: g / n, grads)

  if compressed_grads is not None:
    compressed = compressed_grads(loss_and_grads)

  def train_step(state, batch, *frozen):
    params, opt_state = state["params"], state["opt_state"]
    comm = {}
    if compressed_grads is not None:
      loss, grads, comm_state, stats = compressed(params, batch, state["compression"])
      comm = {f"comm/{k}": jnp.asarray(v, jnp.float32) for k, v in stats.items()}
    else:
      loss, grads = loss_and_grads(params, batch, *frozen)
    if inject_nonfinite:
      grads = _inject(grads, state["step"] + 1, *inject_nonfinite)
    grad_fn = lambda p: loss_and_grads(p, batch, *frozen)[1]
    updates, new_opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    new_params = optax.apply_updates(params, updates)
    metrics = {"train_loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": jnp.asarray(schedule(state["step"]), jnp.float32)}
    # The registry's optimizers refuse an unusable gradient themselves (`optimizers.nonfinite`:
    # zero update, state kept); the trainer decides whether such a step stops the run.
    ok = jnp.isfinite(loss) & nonfinite.gradient_is_usable(grads) & _all_finite(updates)
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
      new_params, new_opt_state = keep((new_params, new_opt_state), (params, opt_state))
    metrics["skipped"] = (~ok).astype(jnp.float32)
    metrics.update({f"opt/{k}": v for k, v in optimizers.collect_metrics(new_opt_state).items()})
    metrics.update(comm)
    new_state = {"params": new_params, "opt_state": new_opt_state, "step": state["step"] + 1,
                 "rng": state["rng"]}
    if compressed_grads is not None:
      new_state["compression"] = comm_state
    return new_state, metrics

  return train_step


def _inject(grads, step, steps: tuple[int, ...], kind: str):
  hit = jnp.isin(step, jnp.asarray(steps, jnp.int32))

  def one(g):
    if kind == "huge":
      bad = jnp.full_like(g, 1e30)
    else:
      value = jnp.nan if kind == "nan" else jnp.inf
      bad = g.reshape(-1).at[0].set(value).reshape(g.shape)
    return jnp.where(hit, bad, g)

  return jax.tree.map(one, grads)


def _all_finite(tree) -> jax.Array:
  return nonfinite.all_finite(jax.tree.leaves(tree))


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


# ---------------------------------------------------------------------------------------------
# The loop.

@dataclasses.dataclass
class _SignalFlag:
  signum: int | None = None

  def __call__(self, signum, frame):
    del frame
    if self.signum is None:
      logging.warning("Received signal %d: saving a checkpoint after this step, then exiting.",
                      signum)
    self.signum = signum


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> dict:
  """Trains, evaluating and checkpointing as configured; resumes from `workdir` if it can.

  Returns a summary: final `step`, last `val_loss` and the step it was measured at (`val_step`),
  `stopped_by_signal` (signal number or None), `steps_to_target`, `already_complete`.
  Raises `validate.ConfigError` for a config that cannot run (before anything is written),
  `workdir_lock.WorkdirLockedError` when another process uses `workdir`, `ConfigDriftError`
  on a resume under changed settings, `checkpoints.CheckpointError` when no checkpoint can be
  used, `data.ShardError` for unreadable data, `TrainingDivergedError` on NaN/Inf.
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
  batch_devices = sharding_lib.batch_size_divisor(mesh)  # rows split over data x fsdp
  if config.get("parallelism", "jit") == "pmap":
    batch_devices = jax.local_device_count() * jax.process_count()
  if (batch // accum) % batch_devices:
    raise validate_lib.ConfigError(
        f"train.batch_size={batch}: its {accum} micro-batch(es) of {batch // accum} rows must "
        f"split evenly over the {batch_devices} devices that hold batch rows")
  tx, schedule = make_optimizer(config)

  os.makedirs(workdir, exist_ok=True)
  lock = workdir_lock.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    # The context mesh lets sharded optimizers give each device whole matrices (owner.py);
    # pmap brings its own mapping (and refuses a different context mesh).
    use_pmap = config.get("parallelism", "jit") == "pmap"
    with contextlib.nullcontext() if use_pmap else sharding_lib.context(mesh):
      return _train(config, workdir, workload, mesh, tx, schedule)
  finally:
    lock.release()


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


def _train(config, workdir, workload, mesh, tx, schedule) -> dict:
  train_cfg = config.train
  batch, accum = int(train_cfg.batch_size), int(train_cfg.grad_accum_steps)
  micro = batch // accum
  pi, pc = jax.process_index(), jax.process_count()
  skip_nonfinite = bool(train_cfg.get("skip_nonfinite_updates"))
  metric_key = workload.metric
  use_pmap = config.get("parallelism", "jit") == "pmap"

  compressor, compressed_grads, extra_init = None, None, None
  comp_cfg = config.get("compression")
  if compression_lib.is_active(comp_cfg):
    # Gradient compression for data parallelism: per-device gradients compressed (with error
    # feedback) before they are averaged over the `data` axis.
    compressor = compression_lib.from_config(comp_cfg)
    n_data = mesh.shape[sharding_lib.DATA]
    extra_init = lambda params: {"compression": jax.tree.map(
        lambda x: jnp.broadcast_to(x, (n_data, *x.shape)), compressor.init(params))}
    compressed_grads = functools.partial(compression_lib.data_parallel_grads, compressor,
                                         mesh=mesh, axis_name=sharding_lib.DATA, batch_axis=1)
  init_state = make_init_state(workload.init_params, tx, extra_init)
  abstract = jax.eval_shape(init_state, config.seed)
  state_sh = sharding_lib.state_shardings(mesh, abstract, logical_axes=workload.logical_axes)
  if compressor is not None:  # one error-feedback state per device
    state_sh["compression"] = jax.tree.map(
        lambda _: NamedSharding(mesh, P(sharding_lib.DATA)), abstract["compression"])
  _, unsplit = sharding_lib.param_shardings(mesh, abstract["params"], workload.logical_axes)
  if sharding_lib.fsdp_size(mesh) > 1 and unsplit:
    logging.info("fsdp=%d: %d parameter(s) have no dimension it divides and stay replicated: %s",
                 sharding_lib.fsdp_size(mesh), len(unsplit), ", ".join(unsplit))
  memory = {"params_bytes_per_device": memory_lib.tree_bytes_per_device(abstract["params"],
                                                                        state_sh["params"]),
            "opt_state_bytes_per_device": memory_lib.tree_bytes_per_device(
                abstract["opt_state"], state_sh["opt_state"])}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sh)
  example = workload.train_batch(config.seed, 0, pi, pc)
  train_batch_sh = jax.tree.map(
      lambda a: sharding_lib.batch_sharding(mesh, a.ndim + 1, batch_axis=1), example)
  eval_batch_sh = jax.tree.map(lambda a: sharding_lib.batch_sharding(mesh, a.ndim), example)
  repl = sharding_lib.replicated(mesh)
  # Frozen inputs (LoRA's base) are sharded like parameters and passed to every step undonated.
  frozen_sh = tuple(sharding_lib.param_shardings(mesh, f)[0] for f in workload.frozen)
  frozen = tuple(jax.device_put(f, sh) for f, sh in zip(workload.frozen, frozen_sh))

  train_step = jax.jit(
      make_train_step(workload.loss_fn, tx, schedule, skip_nonfinite=skip_nonfinite,
                      inject_nonfinite=_nonfinite_injection(config),
                      compressed_grads=compressed_grads),
      in_shardings=(state_sh, train_batch_sh, *frozen_sh), out_shardings=(state_sh, repl),
      donate_argnums=(0,))
  if use_pmap:  # replicated data parallel; the state lives with a leading device axis
    pmap_train_step = pmap_step.make_pmap_train_step(workload.loss_fn, tx, schedule)
    # Evaluation and checkpoints see the jit layout.
    view = lambda st: jax.device_put(pmap_step.unreplicate(st), state_sh)
  else:
    view = lambda st: st
  # Schedule-Free and other averaging methods are evaluated at their averaged point.
  eval_metric = jax.jit(
      lambda p, o, b, *f: workload.eval_fn(optimizers.eval_params(p, o), b, *f),
      in_shardings=(state_sh["params"], state_sh["opt_state"], eval_batch_sh, *frozen_sh),
      out_shardings=repl)
  all_finite = jax.jit(_all_finite, in_shardings=(state_sh,), out_shardings=repl)

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
    restored = checkpointer.restore_latest(abstract, fingerprint)
    resumed_from = None
    changes = {}
    train_time_s = 0.0
    if restored is not None:
      resumed_from, state, record = restored
      changes = _check_drift(record.get("config"), config, resumed_from,
                             checkpointer.directory)
      train_iter.restore(record["data"])
      train_time_s = float(record.get("train_time_s", 0.0))
      logging.info("Resumed from checkpoint step %d in %s", resumed_from, checkpointer.directory)
    else:
      state = jax.jit(init_state, static_argnums=0, out_shardings=state_sh)(config.seed)
    step = int(jax.device_get(state["step"]))
    if use_pmap:
      state = pmap_step.replicate(state)
    total_steps = int(train_cfg.steps)
    summary = {"step": step, "metric": metric_key, "val_loss": None, "val_step": None,
               "stopped_by_signal": None, "steps_to_target": None, "already_complete": False,
               "train_time_s": train_time_s, "time_to_target_s": None}

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
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    if main:
      write_run_record(workdir, config, data_info, num_params, mesh, resumed_from, memory)
    logging.info("Workload %s: %s parameters; mesh %s; data %s", workload.name,
                 f"{num_params:,}", dict(mesh.shape), corpus_id)

    # Every eval batch goes through the devices in train micro-batch chunks.
    val_batches = [sharding_lib.device_batch(b, sh) for b, sh in
                   ((b, eval_batch_sh) for b in workload.eval_batches(pi, pc))]

    def evaluate(state) -> float:
      values = [eval_metric(state["params"], state["opt_state"], b, *frozen)
                for b in val_batches]
      return float(np.mean(jax.device_get(values)))

    stop_at = min(int(train_cfg.get("stop_at_step") or total_steps), total_steps)
    items_per_step = workload.items_per_step
    items_name = "tokens" if "seq_len" in workload.fingerprint else "examples"
    # Training wall-clock (compilation included, evaluation and checkpointing excluded, as
    # AlgoPerf counts it), carried across resumes in the checkpoint.
    clock = {"base": train_time_s, "t0": time.perf_counter(), "excluded": 0.0}
    train_time = lambda: clock["base"] + time.perf_counter() - clock["t0"] - clock["excluded"]
    progress = {"last_good_ckpt": resumed_from, "consecutive_skips": 0,
                "max_skips": int(train_cfg.get("max_consecutive_skips") or 0)}

    def save(state, step):
      if not bool(jax.device_get(all_finite(state))):
        raise TrainingDivergedError(
            f"the train state at step {step} holds NaN/Inf; not saving it. Last good "
            f"checkpoint: {progress['last_good_ckpt']} in {checkpointer.directory}")
      checkpointer.save(step, state, {"data": train_iter.state(), "fingerprint": fingerprint,
                                      "config": _json_config(config),
                                      "train_time_s": train_time()})
      progress["last_good_ckpt"] = step

    def check_finite(step_metrics, step_no):
      refused = int(step_metrics.get("opt/nonfinite_streak", 0))  # optimizer-level refusals
      if skip_nonfinite and (float(step_metrics["skipped"]) or refused):
        progress["consecutive_skips"] = max(progress["consecutive_skips"] + 1, refused)
        logging.warning("Step %d: non-finite loss or update; step skipped (%d in a row).",
                        step_no, progress["consecutive_skips"])
        if progress["consecutive_skips"] > progress["max_skips"]:
          raise TrainingDivergedError(
              f"{progress['consecutive_skips']} consecutive steps had non-finite losses or "
              f"updates (train.max_consecutive_skips={progress['max_skips']}); stopping at step "
              f"{step_no}. The last good checkpoint is step {progress['last_good_ckpt']} in "
              f"{checkpointer.directory}.")
        return
      progress["consecutive_skips"] = 0
      loss = float(step_metrics["train_loss"])
      if not math.isfinite(loss) or float(step_metrics["skipped"]) or refused:
        what = (f"training loss became {loss}" if not math.isfinite(loss) else
                "the gradient or update became non-finite (or too large for the optimizer's "
                "statistics)")
        raise TrainingDivergedError(
            f"{what} at step {step_no}; stopping. The last good checkpoint is step "
            f"{progress['last_good_ckpt']} in {checkpointer.directory} (none is written from a "
            "bad state). train.skip_nonfinite_updates=True skips such steps instead.")

    def on_stall(seconds):
      logging.warning(
          "No training progress for %.0f s (after step %d). If the process is stuck inside XLA, "
          "SIGTERM cannot stop it: `kill -9 %d`, then rerun the same command to resume from the "
          "last checkpoint (step %s). Native stacks: gdb -p %d -batch -ex 'thread apply all bt'. "
          "Python stacks follow on stderr.", seconds, step, os.getpid(),
          progress["last_good_ckpt"], os.getpid())
      faulthandler.dump_traceback(all_threads=True)

    stall_s = float(train_cfg.get("stall_warning_s") or 0)
    watchdog = watchdog_lib.StallWatchdog(stall_s, on_stall).start() if stall_s else None
    beat = watchdog.beat if watchdog else (lambda: None)
    flag = _SignalFlag()
    old_handlers = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
    check_every = int((config.get("distributed") or {}).get("preemption_check_every", 1) or 1)
    # A signal reaches one process (or several at different steps); all stop at one step.
    stop_now = lambda step: distributed.reached_preemption(step, flag.signum is not None,
                                                          check_every)
    try:
      if step == 0 and train_cfg.eval_every:
        t_eval = time.perf_counter()
        v = evaluate(view(state))
        writer.write(0, {metric_key: v, "train_time_s": 0.0})
        summary["val_loss"], summary["val_step"] = v, 0
        clock["excluded"] += time.perf_counter() - t_eval
      pending = None  # (step number, device metrics) of the last dispatched step
      window = {"t0": time.perf_counter(), "steps": 0, "losses": []}
      run_t0 = time.perf_counter()
      steps_at_start = step
      while step < stop_at:
        local = jax.tree.map(lambda a: a.reshape(accum, micro // pc, *a.shape[1:]),
                             next(train_iter))
        if use_pmap:
          state, step_metrics = pmap_train_step(state, jax.tree.map(pmap_step.shard_batch, local))
        else:
          batch_arr = jax.tree.map(sharding_lib.device_batch, local, train_batch_sh)
          state, step_metrics = train_step(state, batch_arr, *frozen)
        step += 1
        stopping = stop_now(step)
        if pending is not None:  # fetch step n-1 while step n runs
          _log_step(writer, *pending, window, check_finite)
        pending = (step, step_metrics)
        if (step % int(train_cfg.log_every) == 0 or step == total_steps or
            (train_cfg.eval_every and step % int(train_cfg.eval_every) == 0) or
            (step % int(train_cfg.checkpoint_every) == 0) or stopping):
          _log_step(writer, *pending, window, check_finite)
          pending = None
        if step % int(train_cfg.log_every) == 0 or step == total_steps:
          elapsed = time.perf_counter() - window["t0"]
          tok_s = items_per_step * window["steps"] / max(elapsed, 1e-9)
          done = step - steps_at_start
          eta = (time.perf_counter() - run_t0) / max(done, 1) * (total_steps - step)
          lr = float(step_metrics["lr"])
          losses = [l for l in window["losses"] if math.isfinite(l)]
          logging.info("step %d/%d | loss %.4f | %s %s/s | lr %.3e | ETA %s", step,
                       total_steps, float(np.mean(losses)) if losses else float("nan"),
                       f"{tok_s:,.0f}", items_name, lr, metrics_lib.format_duration(eta))
          writer.write(step, {f"{items_name}_per_s": tok_s})
          window.update(t0=time.perf_counter(), steps=0, losses=[])
        if train_cfg.eval_every and (step % int(train_cfg.eval_every) == 0 or
                                     step == total_steps):
          t_eval = time.perf_counter()
          jax.block_until_ready(state["step"])
          now_train_s = train_time()
          v = evaluate(view(state))
          writer.write(step, {metric_key: v, "train_time_s": now_train_s})
          summary["val_loss"], summary["val_step"] = v, step
          logging.info("step %d | %s %.4g", step, metric_key, v)
          target = train_cfg.get("target_val_loss")
          if target is not None and v <= target and summary.get("steps_to_target") is None:
            summary["steps_to_target"], summary["time_to_target_s"] = step, now_train_s
            writer.write(step, {"steps_to_target": step, "time_to_target_s": now_train_s})
            logging.info("Reached target %s %.4g at step %d", metric_key, target, step)
            if train_cfg.get("stop_at_target"):
              save(view(state), step)
              break
          spent = time.perf_counter() - t_eval
          window["t0"] += spent  # eval time is not training throughput
          clock["excluded"] += spent
        if (step % int(train_cfg.checkpoint_every) == 0 or step in (stop_at, total_steps) or
            stopping):
          t_ck = time.perf_counter()
          save(view(state), step)
          window["t0"] += time.perf_counter() - t_ck
          clock["excluded"] += time.perf_counter() - t_ck
        if stopping:
          summary["stopped_by_signal"] = flag.signum or signal.SIGTERM  # sent to another process
          logging.warning("Stopped by signal %d at step %d; checkpoint saved.",
                          summary["stopped_by_signal"], step)
          break
        beat()  # armed after the first step, so compilation does not count
      if pending is not None:
        _log_step(writer, *pending, window, check_finite)
    finally:
      if watchdog:
        watchdog.stop()
      for s, h in old_handlers.items():
        signal.signal(s, h)
    summary["step"] = step
    summary["train_time_s"] = train_time()
    return summary
  finally:
    if writer is not None:
      writer.close()
    checkpointer.close()


def _log_step(writer, step_no, step_metrics, window, check_finite):
  host = jax.device_get(step_metrics)
  writer.write(step_no, host)  # a skipped or diverged step is logged before the verdict
  check_finite(host, step_no)
  window["steps"] += 1
  window["losses"].append(float(host["train_loss"]))
