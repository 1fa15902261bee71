"""The training loop: one jitted, mesh-sharded train step; eval, logging, checkpoints, resume.

Conventions (after nanodo and the Flax examples): the state is a plain pytree
`{"params", "opt_state", "step", "rng"}`; the step is jitted once with explicit shardings and
donated buffers; step n-1's metrics are fetched after step n is dispatched; a non-finite loss
stops the run at once and no checkpoint is ever written from a non-finite state.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import checkpoints as ckpt_lib
from experiments import data as data_lib
from experiments import metrics as metrics_lib
from experiments import sharding as sharding_lib
from experiments import watchdog as watchdog_lib
from models import gpt
import optimizers


class TrainingDivergedError(RuntimeError):
  pass


# Consecutive optimizer steps refused as non-finite (`opt/nonfinite_streak`, see
# optimizers/nonfinite.py) after which the run stops: such a run no longer trains.
MAX_NONFINITE_STREAK = 10


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule from config.

def make_schedule(config: ml_collections.ConfigDict, peak: float) -> optax.Schedule:
  s, steps = config.schedule, config.train.steps
  warmup = min(int(s.warmup_steps), steps)
  end = peak * float(s.final_lr_fraction)
  if s.name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), end)
  if s.name == "wsd":  # warmup, stable, decay (Hu et al. 2024, MiniCPM)
    decay = max(int(round(steps * float(s.decay_fraction))), 1)
    stable = max(steps - warmup - decay, 0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak),
         optax.linear_schedule(peak, end, decay)], boundaries=[warmup, warmup + stable])
  if s.name == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  raise ValueError(f"Unknown schedule {s.name!r}; choose from warmup_cosine, wsd, constant")


def lr_scale(config: ml_collections.ConfigDict) -> float:
  """The linear scaling rule (Goyal et al. 2017): global batch / base batch, if a base is set."""
  base = config.schedule.get("base_batch_size")
  return config.train.batch_size / base if base else 1.0


def make_optimizer(config: ml_collections.ConfigDict):
  """The optimizer from `config.optimizer`; every `*learning_rate` becomes a schedule.

  Returns (transformation, schedule of the main learning rate).
  """
  hparams = {k: v for k, v in config.optimizer.items() if k != "name"}
  hparams = {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
             for k, v in hparams.items()}
  scale = lr_scale(config)
  main_schedule = None
  for k, v in list(hparams.items()):
    if k.endswith("learning_rate") and isinstance(v, (int, float)):
      hparams[k] = make_schedule(config, float(v) * scale)
      if k == "learning_rate":
        main_schedule = hparams[k]
  tx = optimizers.create(config.optimizer.name, **hparams)
  clip = config.train.get("grad_clip_norm")
  if clip:
    tx = clip_grad_fn(optax.chain(optax.clip_by_global_norm(clip), tx), clip)
  return optax.with_extra_args_support(tx), main_schedule or (lambda _: 0.0)


def clip_grad_fn(tx, max_norm: float) -> optax.GradientTransformationExtraArgs:
  """`tx` whose extra argument `grad_fn` (SAM's second gradient) returns clipped gradients too.

  `chain(clip_by_global_norm, sam)` alone clips only the gradient SAM ascends along, which it
  normalizes anyway; the gradient its inner optimizer steps with came unclipped.
  """
  tx = optax.with_extra_args_support(tx)
  clip = optax.clip_by_global_norm(max_norm)

  def update_fn(updates, state, params=None, **extra_args):
    inner = extra_args.get("grad_fn")
    if inner is not None:
      extra_args["grad_fn"] = lambda p: clip.update(inner(p), optax.EmptyState())[0]
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


# ---------------------------------------------------------------------------------------------
# Steps.

def make_train_step(model_cfg: gpt.GPTConfig, tx, schedule: Callable) -> Callable:
  """(state, batch[accum, rows, T+1]) -> (state, metrics); gradients averaged over micro-batches."""

  def loss_and_grads(params, batch_AxBxT1):
    def micro(carry, b):
      loss, grads = jax.value_and_grad(lambda p: gpt.loss_fn(model_cfg, p, b))(params)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None
    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(micro, zeros, batch_AxBxT1)
    n = batch_AxBxT1.shape[0]
    return loss / n, jax.tree.map(lambda g: g / n, grads)

  def train_step(state, batch):
    params, opt_state = state["params"], state["opt_state"]
    loss, grads = loss_and_grads(params, batch)
    grad_fn = lambda p: loss_and_grads(p, batch)[1]
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    params = optax.apply_updates(params, updates)
    metrics = {"train_loss": loss, "grad_norm": optax.global_norm(grads),
               "lr": jnp.asarray(schedule(state["step"]), jnp.float32)}
    metrics.update({f"opt/{k}": v for k, v in optimizers.collect_metrics(opt_state).items()})
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": state["rng"]}
    return new_state, metrics

  return train_step


def make_init_state(model_cfg: gpt.GPTConfig, tx) -> Callable[[int], dict]:
  """seed -> the initial train state {"params", "opt_state", "step", "rng"}."""

  def init_state(seed):
    key = jax.random.key(seed)
    params = gpt.init_params(model_cfg, key)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.fold_in(key, 1))}

  return init_state


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# ---------------------------------------------------------------------------------------------
# Data.

def make_data(config, workdir: str, vocab_size: int):
  """(train source, val source, description for run.json)."""
  window = config.data.seq_len + 1
  if config.data.source == "stdlib":
    cache = config.data.get("cache_dir") or os.path.join(workdir, "data")
    corpus = data_lib.build_stdlib_corpus(cache)
    train = data_lib.TokenSource(corpus.train_files, vocab_size, window)
    val = data_lib.TokenSource(corpus.val_files, vocab_size, window)
    info = {"source": "stdlib", "sha256": corpus.sha256, "train_tokens": corpus.num_train_tokens,
            "val_tokens": corpus.num_val_tokens, "dir": cache}
  elif config.data.source == "bin":
    if not config.data.train_glob or not config.data.val_glob:
      raise ValueError("data.source='bin' needs data.train_glob and data.val_glob")
    train_files = data_lib.resolve_glob(config.data.train_glob)
    val_files = data_lib.resolve_glob(config.data.val_glob)
    train = data_lib.TokenSource(train_files, vocab_size, window)
    val = data_lib.TokenSource(val_files, vocab_size, window)
    # Hashing 10B tokens would take minutes; name the files and sizes instead, hash val fully.
    info = {"source": "bin", "train_files": train_files,
            "train_tokens": int(sum(len(s) for s in train.shards)),
            "val_files": val_files, "val_sha256": data_lib.shards_hash(val_files)}
  else:
    raise ValueError(f"Unknown data.source {config.data.source!r}; choose 'stdlib' or 'bin'")
  return train, val, info


# ---------------------------------------------------------------------------------------------
# Run records.

def _git_info() -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          timeout=10).stdout.strip()
  try:
    return {"sha": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
  except (OSError, subprocess.SubprocessError):
    return {"sha": None, "dirty": None}


def _versions() -> dict:
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "optax", "flax", "chex", "orbax-checkpoint", "numpy",
              "ml-collections", "absl-py", "tensorboardX"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = None
  return out


def write_run_record(workdir, config, data_info, num_params, mesh, resumed_from):
  record = {
      "config": json.loads(config.to_json_best_effort()),
      "git": _git_info(),
      "versions": _versions(),
      "devices": [str(d) for d in jax.devices()],
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "process_count": jax.process_count(),
      "platform": platform.platform(),
      "corpus": data_info,
      "num_params": num_params,
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> dict:
  """Trains, evaluating and checkpointing as configured; resumes from `workdir` if it can.

  Returns a summary: final `step`, last `val_loss`, `stopped_by_signal` (signal number or None).
  """
  os.makedirs(workdir, exist_ok=True)
  model_cfg = gpt.GPTConfig.from_config(config.model)
  train_cfg = config.train
  if config.data.seq_len > model_cfg.max_seq_len:
    raise ValueError(f"data.seq_len={config.data.seq_len} > model.max_seq_len={model_cfg.max_seq_len}")
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  accum, batch = int(train_cfg.grad_accum_steps), int(train_cfg.batch_size)
  if batch % accum or (batch // accum) % mesh.shape[sharding_lib.DATA]:
    raise ValueError(f"train.batch_size={batch} must split into grad_accum_steps={accum} "
                     f"micro-batches divisible by the {mesh.shape[sharding_lib.DATA]} data shards")
  micro = batch // accum

  train_src, val_src, data_info = make_data(config, workdir, model_cfg.vocab_size)
  tx, schedule = make_optimizer(config)

  init_state = make_init_state(model_cfg, tx)
  abstract = jax.eval_shape(init_state, config.seed)
  state_sh = sharding_lib.state_shardings(mesh, abstract)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sh)
  train_batch_sh = sharding_lib.batch_sharding(mesh, 3, batch_axis=1)
  eval_batch_sh = sharding_lib.batch_sharding(mesh, 2)
  repl = sharding_lib.replicated(mesh)

  train_step = jax.jit(make_train_step(model_cfg, tx, schedule),
                       in_shardings=(state_sh, train_batch_sh), out_shardings=(state_sh, repl),
                       donate_argnums=(0,))
  eval_loss = jax.jit(lambda p, b: gpt.loss_fn(model_cfg, p, b),
                      in_shardings=(state_sh["params"], eval_batch_sh), out_shardings=repl)
  all_finite = jax.jit(_all_finite, in_shardings=(state_sh,), out_shardings=repl)

  fingerprint = {"model": dataclasses.asdict(model_cfg), "optimizer": config.optimizer.name,
                 "data_source": config.data.source, "seq_len": int(config.data.seq_len),
                 "seed": int(config.seed)}
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       int(train_cfg.keep_checkpoints))
  train_iter = data_lib.BatchIterator(train_src, batch, seed=config.seed,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
  resumed_from = checkpointer.latest_step()
  if resumed_from is not None:
    state, record = checkpointer.restore(resumed_from, abstract, fingerprint)
    train_iter.restore(record["data"])
    logging.info("Resumed from checkpoint step %d in %s", resumed_from, checkpointer.directory)
  else:
    state = jax.jit(init_state, static_argnums=0, out_shardings=state_sh)(config.seed)
  step = int(jax.device_get(state["step"]))
  num_params = gpt.num_params(state["params"])
  write_run_record(workdir, config, data_info, num_params, mesh, resumed_from)
  logging.info("Model: %s parameters; mesh %s; data %s", f"{num_params:,}", dict(mesh.shape),
               data_info.get("sha256", data_info.get("val_sha256")))

  rows = slice(jax.process_index() * micro // jax.process_count(),
               (jax.process_index() + 1) * micro // jax.process_count())
  val_batches = [sharding_lib.device_batch(b[rows], eval_batch_sh) for b in
                 data_lib.eval_batches(val_src, micro, int(train_cfg.eval_batches))]

  def evaluate(params) -> float:
    losses = [eval_loss(params, b) for b in val_batches]
    return float(np.mean(jax.device_get(losses)))

  writer = metrics_lib.MetricWriter(workdir, resume_step=resumed_from)
  total_steps = int(train_cfg.steps)
  stop_at = min(int(train_cfg.get("stop_at_step") or total_steps), total_steps)
  tokens_per_step = batch * config.data.seq_len
  last_good_ckpt = resumed_from
  summary = {"step": step, "val_loss": None, "stopped_by_signal": None, "steps_to_target": None}
  if resumed_from is not None and os.path.exists(writer.path):
    # A target reached before the resume stays the first crossing; it is not logged again.
    reached = [r["steps_to_target"] for r in metrics_lib.read_metrics(workdir)
               if "steps_to_target" in r]
    summary["steps_to_target"] = int(reached[0]) if reached else None

  def save(state, step):
    nonlocal last_good_ckpt
    if not bool(jax.device_get(all_finite(state))):
      raise TrainingDivergedError(
          f"the train state at step {step} holds NaN/Inf; not saving it. Last good checkpoint: "
          f"{last_good_ckpt} in {checkpointer.directory}")
    checkpointer.save(step, state, {"data": train_iter.state(), "fingerprint": fingerprint})
    last_good_ckpt = step

  def check_finite(step_metrics, step_no):
    loss = float(step_metrics["train_loss"])
    if not math.isfinite(loss):
      raise TrainingDivergedError(
          f"training loss became {loss} at step {step_no}; stopping. The last good checkpoint is "
          f"step {last_good_ckpt} in {checkpointer.directory} (none is written from a bad state).")
    streak = int(step_metrics.get("opt/nonfinite_streak", 0))
    if streak >= MAX_NONFINITE_STREAK:
      raise TrainingDivergedError(
          f"the optimizer refused {streak} steps in a row as non-finite (last at step {step_no});"
          f" stopping. The last good checkpoint is step {last_good_ckpt} in "
          f"{checkpointer.directory}.")

  def on_stall(seconds):
    logging.warning(
        "No training progress for %.0f s (after step %d). If the process is stuck inside XLA, "
        "SIGTERM cannot stop it: `kill -9 %d`, then rerun the same command to resume from the "
        "last checkpoint (step %s). Native stacks: gdb -p %d -batch -ex 'thread apply all bt'. "
        "Python stacks follow on stderr.", seconds, step, os.getpid(), last_good_ckpt,
        os.getpid())
    faulthandler.dump_traceback(all_threads=True)

  stall_s = float(train_cfg.get("stall_warning_s") or 0)
  watchdog = watchdog_lib.StallWatchdog(stall_s, on_stall).start() if stall_s else None
  beat = watchdog.beat if watchdog else (lambda: None)
  flag = _SignalFlag()
  old_handlers = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    if step == 0 and train_cfg.eval_every:
      v = evaluate(state["params"])
      writer.write(0, {"val_loss": v})
      summary["val_loss"] = v
    pending = None  # (step number, device metrics) of the last dispatched step
    window = {"t0": time.perf_counter(), "steps": 0, "losses": []}
    run_t0 = time.perf_counter()
    steps_at_start = step
    while step < stop_at:
      local = next(train_iter)
      batch_arr = sharding_lib.device_batch(
          local.reshape(accum, micro // jax.process_count(), -1), train_batch_sh)
      state, step_metrics = train_step(state, batch_arr)
      step += 1
      if pending is not None:  # fetch step n-1 while step n runs
        _log_step(writer, *pending, window, check_finite)
      pending = (step, step_metrics)
      if (step % int(train_cfg.log_every) == 0 or step == total_steps or
          (train_cfg.eval_every and step % int(train_cfg.eval_every) == 0) or
          (step % int(train_cfg.checkpoint_every) == 0) or flag.signum is not None):
        _log_step(writer, *pending, window, check_finite)
        pending = None
      if step % int(train_cfg.log_every) == 0 or step == total_steps:
        elapsed = time.perf_counter() - window["t0"]
        tok_s = tokens_per_step * window["steps"] / max(elapsed, 1e-9)
        done = step - steps_at_start
        eta = (time.perf_counter() - run_t0) / max(done, 1) * (total_steps - step)
        lr = float(step_metrics["lr"])
        logging.info("step %d/%d | loss %.4f | %s tok/s | lr %.3e | ETA %s", step, total_steps,
                     float(np.mean(window["losses"])), f"{tok_s:,.0f}", lr,
                     metrics_lib.format_duration(eta))
        writer.write(step, {"tokens_per_s": tok_s})
        window.update(t0=time.perf_counter(), steps=0, losses=[])
      if train_cfg.eval_every and (step % int(train_cfg.eval_every) == 0 or step == total_steps):
        t_eval = time.perf_counter()
        v = evaluate(state["params"])
        writer.write(step, {"val_loss": v})
        summary["val_loss"] = v
        logging.info("step %d | val_loss %.4f", step, v)
        target = train_cfg.get("target_val_loss")
        if target is not None and v <= target and summary.get("steps_to_target") is None:
          summary["steps_to_target"] = step
          writer.write(step, {"steps_to_target": step})
          logging.info("Reached target val_loss %.4f at step %d", target, step)
          if train_cfg.get("stop_at_target"):
            save(state, step)
            break
        window["t0"] += time.perf_counter() - t_eval  # eval time is not training throughput
      if (step % int(train_cfg.checkpoint_every) == 0 or step in (stop_at, total_steps) or
          flag.signum):
        t_ck = time.perf_counter()
        save(state, step)
        window["t0"] += time.perf_counter() - t_ck
      if flag.signum is not None:
        summary["stopped_by_signal"] = flag.signum
        logging.warning("Stopped by signal %d at step %d; checkpoint saved.", flag.signum, step)
        break
      beat()  # armed after the first step, so compilation does not count
    if pending is not None:
      _log_step(writer, *pending, window, check_finite)
  finally:
    if watchdog:
      watchdog.stop()
    for s, h in old_handlers.items():
      signal.signal(s, h)
    writer.close()
    checkpointer.close()
  summary["step"] = step
  return summary


def _log_step(writer, step_no, step_metrics, window, check_finite):
  host = jax.device_get(step_metrics)
  check_finite(host, step_no)
  writer.write(step_no, host)
  window["steps"] += 1
  window["losses"].append(float(host["train_loss"]))
