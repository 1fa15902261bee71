"""Vectorized trials: K trials of one (workload, optimizer) trained by one compiled program.

The train step of `experiments/training/step.py` under `jax.vmap` over a leading trial axis of
the train state (params, optimizer state, step, rng), the tuned hyperparameters (float32 arrays
[K], traced, so one compilation serves every point of a search space: the registry's numeric
hyperparameters accept traced scalars, tests/test_traced_hparams.py) and the batches (each
trial draws its own from its own seed, as its trainer run would). A trial stops counting when it
reaches its target (`train.stop_at_target`) or diverges: its state is frozen on device by a
per-trial `alive` mask while the others go on; the program ends when no trial is alive.

What a trial's record holds is what `runs.train_run` gives for a trainer run of the same spec:
the evaluations at step 0, every `train.eval_every` steps and at the end (the trainer's
`Evaluate` action), the first crossing of the target, and `diverged` when a step's loss or
update became non-finite (the trainer's `TrainingDivergedError`; its evaluations stop before
that step). Time cannot be measured per trial when K trials share a program, so a trial's
seconds are modelled from a *timing record* (`measure_alone`): the optimizer's train step
compiled and timed alone on the same workload and device, time(step) = compile_s + step x
step_s, what a trainer run's clock would read there (compilation included, evaluation not).

The numbers equal a trainer run's up to float32 rounding, not bitwise: a drawn value enters as
a float32 array rather than a Python float folded at trace time, and a batched matmul may sum
in another order (tests/test_vectorized.py states the agreement).

On a mesh the trial axis is sharded over devices (`trial`), so a many-device machine trains a
study in one program; every trial stays on one device (no data parallelism inside a trial).

Written here: no library trains vmapped trials of an optax optimizer from a config.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.harness import records as records_lib
from experiments.harness import spaces as spaces_lib
from experiments.harness import runs as runs_lib

TIMING_DIR = "timing"  # under the records directory: `read_records` reads only its top level


class NotVectorizable(ValueError):
  """The run's config asks for something the vectorized engine does not do."""


def check_config(cfg) -> None:
  """Refuses what only the trainer does: LoRA, gradient compression, pmap, tensor / pipeline /
  fsdp meshes, skipped non-finite steps, fault injection, several processes."""
  why = []
  if cfg.get("lora") is not None:
    why.append("LoRA (frozen base weights)")
  from experiments.parallel import compression  # pylint: disable=g-import-not-at-top
  if compression.is_active(cfg.get("compression")):
    why.append("gradient compression")
  if cfg.get("parallelism", "jit") != "jit":
    why.append(f"parallelism={cfg.parallelism}")
  mesh = cfg.get("mesh") or {}
  for axis in ("fsdp", "model", "stage"):
    if int(mesh.get(axis, 1)) > 1:
      why.append(f"mesh.{axis}={mesh[axis]}")
  if cfg.train.get("skip_nonfinite_updates"):
    why.append("train.skip_nonfinite_updates (a diverging trial stops instead)")
  if cfg.get("debug") and cfg.debug.get("nonfinite_grad_steps"):
    why.append("debug.nonfinite_grad_steps")
  if jax.process_count() > 1:
    why.append(f"{jax.process_count()} processes")
  if why:
    raise NotVectorizable(f"vectorized trials do not support {', '.join(why)}; "
                          "train these runs one at a time")


def _group_config(specs: Sequence[records_lib.RunSpec]):
  if not specs:
    raise ValueError("no runs to vectorize")
  first = specs[0]
  for sp in specs[1:]:
    if (sp.workload, sp.optimizer) != (first.workload, first.optimizer):
      raise ValueError(f"vectorized trials share one workload and optimizer: "
                       f"{first.workload}/{first.optimizer} and {sp.workload}/{sp.optimizer}")
    if set(sp.hparams) != set(first.hparams):
      raise ValueError(f"vectorized trials tune the same hyperparameters: {sorted(first.hparams)} "
                       f"and {sorted(sp.hparams)}")
    # A drawn name the program cannot trace (Schedule-Free's warmup) is one value per program.
    static = [n for n in spaces_lib.static_names(first.optimizer)
              if sp.hparams.get(n) != first.hparams.get(n)]
    if static:
      raise ValueError(f"vectorized trials share {static} (one program, one value)")
  cfg = runs_lib.run_config(first)
  check_config(cfg)
  return cfg


def _micro(cfg, rows):
  """Rows [B, ...] -> [accum, B / accum, ...], the trainer's layout."""
  accum = int(cfg.train.grad_accum_steps)
  return jax.tree.map(lambda a: a.reshape(accum, a.shape[0] // accum, *a.shape[1:]), rows)


# ---------------------------------------------------------------------------------------------
# Timing records: one optimizer's step, compiled and timed alone.

def _device_name() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{d.device_kind}, {records_lib._host_cpu()}"  # pylint: disable=protected-access


def timing_path(records_dir: str, workload: str) -> str:
  return os.path.join(records_dir, TIMING_DIR, f"{workload}.jsonl")


def read_timings(records_dir: str, workload: str) -> list[dict]:
  path = timing_path(records_dir, workload)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass  # a half-written last line of a killed run
  return out


def measure_alone(spec: records_lib.RunSpec, steps: int = 20, warmup: int = 2) -> dict:
  """The timing record of `spec`'s optimizer on its workload: its train step jitted alone, with
  the drawn hyperparameters as Python floats (as the trainer runs it).

  compile_s: tracing, lowering and XLA compilation of the train step (what the trainer's clock
  counts at its first step); step_s: the mean wall-clock of `steps` steps after `warmup`,
  pipelined as the trainer's loop is (next batch drawn on the host while the step runs).
  """
  from experiments.problems import workloads as workloads_lib  # pylint: disable=g-import-not-at-top
  from experiments.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from experiments.training import train_state  # pylint: disable=g-import-not-at-top
  cfg = runs_lib.run_config(spec)
  workload = workloads_lib.build(cfg, "")
  tx, schedule = train_state.make_optimizer(cfg)
  state = jax.jit(train_state.make_init_state(workload.init_params, tx))(int(cfg.seed))
  frozen = tuple(workload.frozen)
  step_fn = jax.jit(step_lib.make_train_step(workload.loss_fn, tx, schedule),
                    donate_argnums=(0,))
  batch_at = lambda n: jax.device_put(_micro(cfg, workload.train_batch(int(cfg.seed), n)))
  batch = batch_at(0)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, *frozen).compile()
  compile_s = time.perf_counter() - t0
  for n in range(warmup):
    state, metrics = compiled(state, batch, *frozen)
    batch = batch_at(n + 1)
  jax.block_until_ready((state, metrics))
  t0 = time.perf_counter()
  for n in range(warmup, warmup + steps):
    state, metrics = compiled(state, batch, *frozen)
    batch = batch_at(n + 1)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps
  return {"workload": spec.workload, "optimizer": spec.optimizer, "compile_s": compile_s,
          "step_s": step_s, "steps_timed": steps, "hparams": spec.hparams,
          "device": _device_name(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def timing_for(records_dir: str, spec: records_lib.RunSpec) -> dict:
  """The timing record of (workload, optimizer) on this device: the recorded one, or measured
  now and appended (so a resumed sweep times its trials by the same measurement)."""
  device = _device_name()
  for t in read_timings(records_dir, spec.workload):
    if t["optimizer"] == spec.optimizer and t["device"] == device:
      return t
  t = measure_alone(spec)
  t.update(records_lib.provenance())
  t["device"] = device
  path = timing_path(records_dir, spec.workload)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(t, default=float) + "\n")
    f.flush()
    os.fsync(f.fileno())
  return t


# ---------------------------------------------------------------------------------------------
# Training K trials.

class Interrupted(Exception):
  """SIGTERM / SIGINT reached the vectorized program: its trials are not results."""

  def __init__(self, signum: int):
    super().__init__(f"vectorized trials stopped by signal {signum}")
    self.signum = signum


def _trial_sharding(devices, num_trials: int):
  """NamedSharding of a leading trial axis over `devices` (None: the default device)."""
  if devices is None or len(devices) <= 1:
    return None
  if num_trials % len(devices):
    raise ValueError(f"{num_trials} trials do not split over {len(devices)} devices")
  mesh = jax.sharding.Mesh(np.asarray(devices), ("trial",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("trial"))


def train_trials(specs: Sequence[records_lib.RunSpec], timing: dict,
                 devices: Sequence[Any] | None = None) -> list[dict]:
  """Trains `specs` (one workload and optimizer, the same tuned names) as one program.

  Returns, per spec in order, the result `records.make_record` takes (`runs.train_run`'s
  schema) plus `vectorized_trials` (K). `timing`: `measure_alone`'s record, from which the
  seconds are modelled. `devices`: shard the trial axis over these (K must divide evenly).

  Raises:
    NotVectorizable: the config needs the trainer (`check_config`).
    Interrupted: a signal arrived; nothing is returned.
  """
  from experiments.problems import workloads as workloads_lib  # pylint: disable=g-import-not-at-top
  from experiments.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from experiments.training import train_state  # pylint: disable=g-import-not-at-top
  import optimizers  # pylint: disable=g-import-not-at-top
  cfg = _group_config(specs)
  workload = workloads_lib.build(cfg, "")
  k = len(specs)
  # The static names are in `cfg` already (`_group_config`), not traced; a schedule's drawn
  # warmup is traced as its step count, rounded here as `runs.run_config` rounds it.
  names = [n for n in specs[0].hparams if n not in spaces_lib.static_names(specs[0].optimizer)]
  warm = spaces_lib.WARMUP_NAME
  shard = _trial_sharding(devices, k)
  put = (lambda x: jax.device_put(x, shard)) if shard is not None else jax.device_put
  hparams = {n: put(np.asarray([spaces_lib.warmup_steps(sp.hparams[n], cfg.train.steps)
                                if n == warm else sp.hparams[n] for sp in specs], np.float32))
             for n in names}
  seeds = [int(sp.seed) for sp in specs]
  frozen = tuple(workload.frozen)

  def optimizer(h):
    h = dict(h)
    return train_state.make_optimizer(cfg, overrides=h, warmup_steps=h.pop(warm, None))

  def init_one(h, seed):
    tx, _ = optimizer(h)
    return train_state.make_init_state(workload.init_params, tx)(seed)

  def step_one(h, state, batch):
    tx, schedule = optimizer(h)
    return step_lib.make_train_step(workload.loss_fn, tx, schedule)(state, batch, *frozen)

  def step_all(h, state, batch, alive):
    new, metrics = jax.vmap(step_one)(h, state, batch)
    bad = ~jnp.isfinite(metrics["train_loss"]) | (metrics["skipped"] > 0)
    if "opt/nonfinite_streak" in metrics:  # the optimizer refused a step (optimizers.nonfinite)
      bad = bad | (metrics["opt/nonfinite_streak"] > 0)
    keep = alive & ~bad

    def select(n, o):
      return jnp.where(keep.reshape((k,) + (1,) * (n.ndim - 1)), n, o)
    return jax.tree.map(select, new, state), keep

  def eval_all(state, b):
    one = lambda s: workload.eval_fn(optimizers.eval_params(s["params"], s["opt_state"]), b,
                                     *frozen)
    return jax.vmap(one)(state)

  state = jax.jit(jax.vmap(init_one))(hparams, put(np.asarray(seeds, np.int32)))
  step_fn = jax.jit(step_all, donate_argnums=(1,))
  eval_fn = jax.jit(eval_all)
  val = [jax.device_put(b) for b in workload.eval_batches()]

  def batch_at(n):
    rows = [_micro(cfg, workload.train_batch(s, n)) for s in seeds]
    return put(jax.tree.map(lambda *a: np.stack(a), *rows))

  train = cfg.train
  total, every = int(train.steps), int(train.get("eval_every") or 0)
  target = train.get("target_val_loss")
  target = None if target is None else float(target)
  stop_at_target = bool(train.get("stop_at_target"))
  seconds = lambda n: 0.0 if n == 0 else float(timing["compile_s"]) + n * float(timing["step_s"])

  curves = [[] for _ in range(k)]
  final: list[float | None] = [None] * k
  reached: list[int | None] = [None] * k
  done_at_target = np.zeros(k, bool)  # frozen by the host: reached the target
  alive_host = np.ones(k, bool)

  def evaluate(n, alive_now):
    values = np.mean(np.stack(jax.device_get([eval_fn(state, b) for b in val])), axis=0)
    for i in np.flatnonzero(alive_now):
      v = float(values[i])
      curves[i].append([n, seconds(n), v])
      final[i] = v
      if target is not None and v <= target and reached[i] is None:
        reached[i] = n
        if stop_at_target:
          done_at_target[i] = True

  got_signal, old = [], {}

  def handler(signum, frame):
    got_signal.append(signum)
    if getattr(old.get(signum), "observes_signals", False):  # a sweep running this program
      old[signum](signum, frame)

  old.update({s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)})
  got_signal += [h.signum for h in old.values()  # a sweep's stop that came during the setup
                 if getattr(h, "observes_signals", False) and getattr(h, "signum", None)][:1]
  try:
    if every:
      evaluate(0, alive_host)
    alive_host = alive_host & ~done_at_target
    alive = put(alive_host)
    batch = batch_at(0)
    for n in range(1, total + 1):
      if not alive_host.any():
        break
      state, alive = step_fn(hparams, state, batch, alive)
      if n < total:
        batch = batch_at(n)  # drawn on the host while step n runs
      if got_signal:
        raise Interrupted(got_signal[0])
      if every and (n % every == 0 or n == total):
        alive_now = np.asarray(jax.device_get(alive))
        evaluate(n, alive_now)
        alive_host = alive_now & ~done_at_target
        alive = put(alive_host)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  alive_now = np.asarray(jax.device_get(alive))
  diverged = [bool(not alive_now[i] and not done_at_target[i]) for i in range(k)]
  return [{"target": target, "metric": workload.metric, "step_budget": total,
           "steps_to_target": None if diverged[i] else reached[i],
           "time_to_target_s": (None if diverged[i] or reached[i] is None
                                else seconds(reached[i])),
           "final_metric": None if diverged[i] else final[i], "diverged": diverged[i],
           "curve": curves[i], "vectorized_trials": k} for i in range(k)]


def sweep_group(specs: Sequence[records_lib.RunSpec], records_dir: str,
                devices: Sequence[Any] | None = None) -> list[dict]:
  """Trains `specs` vectorized and appends their records (all or, on a signal, none)."""
  timing = timing_for(records_dir, specs[0])
  results = train_trials(specs, timing, devices)
  prov = records_lib.provenance()
  out = []
  for spec, result in zip(specs, results):
    record = records_lib.make_record(spec, result, prov)
    record["vectorized_trials"] = result["vectorized_trials"]
    record["time_source"] = {"compile_s": timing["compile_s"], "step_s": timing["step_s"]}
    records_lib.append_record(records_dir, record)
    out.append(record)
  return out
