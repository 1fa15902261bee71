"""`shampoo` suite: our `shampoo` against precondition-opt's `distributed_shampoo`; train steps.

1. Update time on the CPU speedrun model's parameters, amortized over one preconditioning
   interval (`precondition_every` consecutive updates, one of which computes the roots), with
   the same settings on both sides: blocks of 128, roots every 10 steps by the coupled Newton
   iteration, relative ridge 1e-6, RMSProp grafting, b1 0.9, b2 0.95, statistics every step.
   The gradient is a real one (model parameters perturbed so that no layer is zero).
2. The whole training step (value_and_grad of the loss, update, apply) on the CPU speedrun,
   `shampoo` and `soap` (their speedrun configs) against `adamw` (the base config), amortized
   over 10 steps.
Calls are interleaved (one interval of each per round); we report the median amortized time
and the median of the per-round ratios, because this machine is shared and its load drifts.

precondition-opt is not a project dependency; install it into the benchmark's environment:
  .venv/bin/pip install precondition-opt==0.3.0 --no-deps
It still calls `jax.tree_map` and friends, which JAX 0.10 removed; they are aliased to
`jax.tree.*` here, before it is imported.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax

import optimizers
from experiments import configs_util
from experiments.training import train_state
from models import gpt
from scripts import bench_common

INTERVAL = 10
COMMON = dict(block_size=128, b1=0.9, b2=0.95)


def _limit_openblas_threads() -> None:
  """One OpenBLAS thread: jaxlib's CPU eigh/QR call scipy's OpenBLAS, whose thread pool,
  when the cores are shared, makes a batch of 128x128 QRs take tens of seconds (not 30 ms)."""
  if os.environ.get("OPENBLAS_NUM_THREADS") == "1":
    return
  jax.block_until_ready(jnp.linalg.qr(jnp.eye(2)))  # jaxlib loads its LAPACK on first use
  with open("/proc/self/maps") as f:
    libs = {line.split()[-1] for line in f if "openblas" in line}
  for lib in libs:
    handle = ctypes.CDLL(lib)
    for symbol in ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_"):
      if hasattr(handle, symbol):
        getattr(handle, symbol)(1)
  print("OpenBLAS limited to one thread (as OPENBLAS_NUM_THREADS=1 would)")


def _distributed_shampoo():
  """precondition-opt's module, or None (with a message) when it is not installed."""
  for old, new in (("tree_map", jax.tree.map), ("tree_flatten", jax.tree.flatten),
                   ("tree_unflatten", jax.tree.unflatten), ("tree_leaves", jax.tree.leaves)):
    if not hasattr(jax, old):
      setattr(jax, old, new)
  try:
    from precondition import distributed_shampoo  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("precondition-opt is not installed, so there is no distributed_shampoo to compare "
          "with; install it with\n  .venv/bin/pip install precondition-opt==0.3.0 --no-deps")
    return None
  return distributed_shampoo


def _interval_runner(step: Callable, carry) -> Callable[[], list[float]]:
  """A call that runs INTERVAL steps (carry threaded through) and returns each step's time."""

  def call():
    nonlocal carry
    times = []
    for _ in range(INTERVAL):
      t0 = time.perf_counter()
      carry = jax.block_until_ready(step(carry))
      times.append(time.perf_counter() - t0)
    return times

  return call


def _interleaved(calls: dict[str, Callable[[], list[float]]], rounds: int, baseline: str):
  """Per name: median amortized seconds/step, its slowest step, median ratio to `baseline`."""
  for call in calls.values():  # compile; the first interval also fills the statistics
    call()
  amortized = {name: [] for name in calls}
  slowest = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      times = call()
      amortized[name].append(sum(times) / len(times))
      slowest[name].append(max(times))
  base = amortized[baseline]
  return [(name, 1e3 * statistics.median(ts), 1e3 * statistics.median(slowest[name]),
           statistics.median(t / b for t, b in zip(ts, base))) for name, ts in amortized.items()]


def _update_step(tx, params, grads):
  update = jax.jit(tx.update)
  return _interval_runner(lambda state: update(grads, state, params)[1], tx.init(params))


def _real_gradient(cfg, params):
  noisy = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(1), p.shape),
                       params)
  batch = jax.random.randint(jax.random.key(2), (32, cfg.max_seq_len + 1), 0, cfg.vocab_size)
  return jax.jit(jax.grad(lambda p: gpt.loss_fn(cfg, p, batch)))(noisy)


def _update_suite(config_path: str, rounds: int) -> None:
  cfg = configs_util.load(config_path)
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  params = gpt.init_params(model_cfg, jax.random.key(0))
  grads = _real_gradient(model_cfg, params)
  ours = dict(COMMON, learning_rate=1e-3, eps=1e-6, relative_eps=True, grafting="rmsprop",
              graft_eps=1e-8, precondition_every=INTERVAL, start_preconditioning_step=1)
  calls = {
      "shampoo (newton)": _update_step(optimizers.create("shampoo", **ours), params, grads),
      "shampoo (eigh)": _update_step(
          optimizers.create("shampoo", **dict(ours, root_method="eigh")), params, grads),
      "adamw": _update_step(optimizers.create("adamw", learning_rate=1e-3, b2=0.95),
                            params, grads),
  }
  ds = _distributed_shampoo()
  if ds is not None:
    theirs = ds.distributed_shampoo(
        learning_rate=1e-3, block_size=COMMON["block_size"], beta1=COMMON["b1"],
        beta2=COMMON["b2"], diagonal_epsilon=1e-8, matrix_epsilon=1e-6,
        relative_matrix_epsilon=True, start_preconditioning_step=1,
        preconditioning_compute_steps=INTERVAL, statistics_compute_steps=1,
        graft_type=ds.GraftingType.RMSPROP, nesterov=False)
    calls["distributed_shampoo"] = _update_step(theirs, params, grads)
  baseline = "distributed_shampoo" if ds is not None else "adamw"
  print(f"\nupdate on the speedrun model ({config_path}), block 128, roots every {INTERVAL} "
        f"steps, RMSProp grafting; {rounds} rounds of {INTERVAL} updates")
  bench_common.print_table(
      [(n, f"{a:.1f}", f"{s:.1f}", f"{r:.3f}")
       for n, a, s, r in _interleaved(calls, rounds, baseline)],
      ("optimizer", "ms/update (amortized)", "root step ms", f"x {baseline} (median ratio)"))


def _train_step(config_path: str, overrides: dict):
  cfg = configs_util.load(config_path)
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  hparams = {**train_state.registry_hparams(cfg.optimizer), **overrides}
  tx = optimizers.create(cfg.optimizer.name, **hparams)
  params = gpt.init_params(model_cfg, jax.random.key(cfg.seed))
  batch = jax.random.randint(jax.random.key(3), (cfg.train.batch_size, cfg.data.seq_len + 1),
                             0, cfg.model.vocab_size)

  @jax.jit
  def step(carry):
    params, opt_state = carry
    _, grads = jax.value_and_grad(lambda p: gpt.loss_fn(model_cfg, p, batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return _interval_runner(step, (params, tx.init(params)))


def _train_suite(rounds: int) -> None:
  calls = {
      "adamw": _train_step("configs/speedrun_cpu.py", {}),
      # Preconditioning from step 1, so that every timed interval holds one root computation.
      "shampoo (newton)": _train_step("configs/speedrun_cpu_shampoo.py",
                                      {"start_preconditioning_step": 1, "root_method": "newton"}),
      "shampoo (eigh)": _train_step("configs/speedrun_cpu_shampoo.py",
                                    {"start_preconditioning_step": 1, "root_method": "eigh"}),
      "soap": _train_step("configs/speedrun_cpu_soap.py", {}),
  }
  print(f"\ntrain step on the CPU speedrun (batch 32 x 128); {rounds} rounds of {INTERVAL} steps")
  bench_common.print_table(
      [(n, f"{a:.1f}", f"{s:.1f}", f"{r:.3f}")
       for n, a, s, r in _interleaved(calls, rounds, "adamw")],
      ("optimizer", "ms/step (amortized)", "slowest step ms", "x adamw (median ratio)"))


def run(flags) -> None:
  _limit_openblas_threads()
  _update_suite(flags.config, flags.repeats)
  _train_suite(flags.repeats)
