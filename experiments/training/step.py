"""The train step: one `loss_and_grads` (the mean over micro-batches), the optimizer's update,
the non-finite guard and the step's metrics. Every parallel strategy
(experiments/parallel/strategies.py) compiles this one function; they differ only in how the
gradient is averaged over devices (`axis_name`, `compressed_grads`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from experiments.parallel import pmap as pmap_lib
import optimizers
from optimizers import nonfinite


def micro_batch_mean(loss_fn: Callable) -> Callable:
  """(params, batch[accum, rows, ...], *frozen) -> (mean loss, mean gradient) over micro-batches.

  The micro-batches are summed in order by `lax.scan` and the sum divided by their count, so
  one device and many, jit and pmap, add the same numbers in the same order.
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

  return loss_and_grads


def make_train_step(loss_fn: Callable, tx, schedule: Callable, *,
                    skip_nonfinite: bool = False,
                    inject_nonfinite: tuple[tuple[int, ...], str] | None = None,
                    compressed_grads: Callable | None = None,
                    axis_name: str | None = None) -> Callable:
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
    gradients through a compressor
    (`experiments.parallel.compression.data_parallel_grads`); its state lives in
    `state["compression"]` and its byte counts are logged under `comm/`.
  axis_name: inside `jax.pmap` (or `shard_map`) over this axis, each device's loss and
    gradient (and SAM's second gradient) are averaged with `lax.pmean` before the update.
  """
  local = micro_batch_mean(loss_fn)
  if axis_name is None:
    loss_and_grads = local
  else:
    loss_and_grads = lambda *a: jax.lax.pmean(local(*a), axis_name)
  if compressed_grads is not None:
    compressed = compressed_grads(local)

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
    with jax.named_scope("optimizer"):  # for profiles (scripts/bench_mfu.py)
      updates, new_opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
      new_params = optax.apply_updates(params, updates)
    metrics = {"train_loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": jnp.asarray(schedule(state["step"]), jnp.float32)}
    # The registry's optimizers refuse an unusable gradient themselves (`optimizers.nonfinite`:
    # zero update, state kept); the trainer decides whether such a step stops the run.
    ok = jnp.isfinite(loss) & nonfinite.gradient_is_usable(grads) & all_finite(updates)
    if skip_nonfinite:
      new_params, new_opt_state = optax.tree.where(ok, (new_params, new_opt_state),
                                                   (params, opt_state))
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


def all_finite(tree) -> jax.Array:
  return nonfinite.all_finite(jax.tree.leaves(tree))


def make_pmap_train_step(loss_fn: Callable, tx, schedule: Callable, *, donate: bool = True,
                         **kwargs) -> Callable:
  """`make_train_step` under `jax.pmap` over the local devices: (replicated state,
  batch[devices, accum, rows, ...], *replicated frozen) -> (replicated state, metrics once).

  Each device's loss and gradients (and SAM's second gradient) are averaged with `lax.pmean`;
  the metrics are the jit path's. `kwargs` go to `make_train_step` (skipping, injection).
  """
  return pmap_lib.pmapped(make_train_step(loss_fn, tx, schedule, axis_name=pmap_lib.AXIS,
                                          **kwargs), donate)
