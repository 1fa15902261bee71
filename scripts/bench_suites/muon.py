"""`muon` suite: our `muon` against `optax.contrib.muon` (`optax_muon`), same run, same settings.

Both use the quintic coefficients, 5 Newton–Schulz steps in float32 and the same routing, so
only the implementation differs. Workloads:
  speedrun   the CPU speedrun model's parameters (hidden matrices to Muon, the rest AdamW);
  stack      12 768x768 + 12 768x3072 matrices (separate leaves, as a model holds them);
  wide       the 12 768x3072 matrices alone, where the Gram iteration applies.
Calls are interleaved (one of each per round) and the median per optimizer is reported with
the median of the per-round ratios, because this machine is shared and its load drifts.
`optax.contrib.muon` takes ~5 s per update on the stack, so those workloads use at most 3
rounds. Last, the singular values of one orthogonalized 768x3072 gradient, plain against Gram.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import optimizers
from optimizers import newton_schulz
from scripts import bench_common

SETTINGS = dict(learning_rate=0.02, ns_steps=5, ns_coeffs="quintic")
ENTRIES = {
    "muon": ("muon", dict(SETTINGS, ns_dtype="float32")),
    "muon_gram": ("muon", dict(SETTINGS, ns_dtype="float32", gram_ns=True)),
    "optax_muon": ("optax_muon", SETTINGS),
    "adamw": ("adamw", dict(learning_rate=3e-3)),
}


def _stepper(name: str, params, grads) -> Callable[[], object]:
  entry, hparams = ENTRIES[name]
  tx = optimizers.create(entry, **hparams)
  step = jax.jit(tx.update)
  state = tx.init(params)

  def call():
    nonlocal state
    updates, state = step(grads, state, params)
    return updates

  return call


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int):
  """Median seconds per call and median per-round ratio to `optax_muon`."""
  for call in calls.values():  # compile and warm up
    jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - t0)
  base = times["optax_muon"]
  return {name: (statistics.median(ts), statistics.median(t / b for t, b in zip(ts, base)))
          for name, ts in times.items()}


def _report(title: str, params, names, rounds: int) -> None:
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), p.shape, p.dtype), params)
  n = sum(p.size for p in jax.tree.leaves(params))
  print(f"\n{title}: {n:,} parameters, {rounds} rounds")
  results = _interleaved({name: _stepper(name, params, grads) for name in names}, rounds)
  bench_common.print_table(
      [(name, f"{t * 1e3:.1f}", f"{r:.3f}") for name, (t, r) in results.items()],
      ("optimizer", "update ms (median)", "x optax_muon (median ratio)"))


def _matrices(shape, count, seed):
  keys = jax.random.split(jax.random.key(seed), count)
  return [0.02 * jax.random.normal(k, shape) for k in keys]


def _singular_value_ranges() -> None:
  g = jax.random.normal(jax.random.key(3), (768, 3072))
  rows = []
  for label, kw in (("plain", {}), ("gram", {"gram": True})):
    y = jax.jit(lambda x, kw=kw: newton_schulz.orthogonalize(x, **kw))(g)
    s = np.linalg.svd(np.asarray(y, np.float64), compute_uv=False)
    rows.append((label, f"{s.min():.4f}", f"{s.max():.4f}"))
  y_plain, y_gram = (newton_schulz.orthogonalize(g, gram=b) for b in (False, True))
  diff = float(jnp.linalg.norm(y_gram - y_plain) / jnp.linalg.norm(y_plain))
  print("\nsingular values of NS(768x3072 Gaussian), quintic, 5 steps, float32:")
  bench_common.print_table(rows, ("iteration", "min", "max"))
  print(f"||gram - plain||_F / ||plain||_F = {diff:.2e}")


def run(flags) -> None:
  names = ("muon", "muon_gram", "optax_muon", "adamw")
  _report(f"speedrun model ({flags.config})", bench_common.speedrun_params(flags.config),
          names, flags.repeats)
  heavy_rounds = min(flags.repeats, 3)
  stack = {"square": _matrices((768, 768), 12, 0), "wide": _matrices((768, 3072), 12, 1)}
  _report("stack 12x(768x768) + 12x(768x3072)", stack, names, heavy_rounds)
  _report("wide 12x(768x3072)", {"wide": stack["wide"]}, ("muon", "muon_gram", "optax_muon"),
          heavy_rounds)
  _singular_value_ranges()
