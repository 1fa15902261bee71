"""Step-for-step parity of registry entries with other authors' PyTorch implementations.

A `Case` names a registry entry with its hyperparameters, a reference optimizer (built from a
list of torch parameters), the package it comes from, the steps to run and the tolerance with
its reason. `run_case` starts both from the same float32 parameters and, at every step, feeds
both the same gradient: `gradient(name, w, t)`, a fixed NumPy function of the current float32
parameters (a quadratic with curvatures spread over two decades plus seeded noise), so a
difference in one step changes every later gradient, as in training.

The figure compared is the relative parameter difference after the last step,
  max over leaves  ||w_ours - w_ref|| / ||w_ref - w_0||,
relative to how far the reference moved (stricter than ||w_ref|| when the parameters move
little). The references are test-only dependencies (requirements-test.txt); the library never
imports them.
"""

from __future__ import annotations

import dataclasses
from importlib import metadata
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimizers

# The default problem: a vector, a bias, a square and a rectangular matrix.
SHAPES = {"bias": (6,), "vector": (16,), "square": (8, 8), "wide": (6, 10)}


@dataclasses.dataclass(frozen=True)
class Case:
  """One parity case. `reference(params)` returns a torch optimizer over those parameters."""
  id: str
  entry: str  # registry name
  hparams: dict[str, Any]
  reference: Callable[[list], Any]
  package: str  # the reference's distribution name (its version is read when the case runs)
  tolerance: float
  why: str  # why this tolerance (and any flag needed to match)
  steps: int = 40
  shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(SHAPES))
  seed: int = 0
  noise: float = 0.1
  # Called before the reference's step with (torch params, step t from 1), e.g. to set a lr.
  before_reference_step: Callable[[list, int], None] | None = None
  # Where the compared parameters are read: ours through `optimizers.eval_params` (the
  # schedule-free average); the reference's through this hook (e.g. its `eval()` mode).
  reference_eval: Callable[[Any, list], list[np.ndarray]] | None = None
  eval_params: bool = False


def version(package: str) -> str:
  return f"{package} {metadata.version(package)}"


def problem(case: Case):
  """Initial float32 parameters and the per-leaf targets and curvatures of the quadratic."""
  rng = np.random.default_rng(case.seed)
  w0, target, curv = {}, {}, {}
  for name, shape in case.shapes.items():
    w0[name] = rng.normal(size=shape).astype(np.float32)
    target[name] = rng.normal(size=shape).astype(np.float32)
    curv[name] = (10.0 ** rng.uniform(-1.0, 1.0, size=shape)).astype(np.float32)
  return w0, target, curv


def gradient_fn(case: Case):
  """gradient(name, w, t): curvature * (w - target) + noise_t, float32, same on both sides."""
  _, target, curv = problem(case)
  names = list(case.shapes)

  def gradient(name: str, w: np.ndarray, t: int) -> np.ndarray:
    rng = np.random.default_rng([case.seed, t, names.index(name)])
    noise = rng.normal(size=w.shape).astype(np.float32)
    return (curv[name] * (w.astype(np.float32) - target[name])
            + np.float32(case.noise) * noise).astype(np.float32)

  return gradient


def run_ours(case: Case) -> dict[str, np.ndarray]:
  w0, _, _ = problem(case)
  gradient = gradient_fn(case)
  tx = optimizers.create(case.entry, **case.hparams)
  params = {k: jnp.asarray(v) for k, v in w0.items()}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(1, case.steps + 1):
    grads = {k: jnp.asarray(gradient(k, np.asarray(v), t)) for k, v in params.items()}
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  if case.eval_params:
    params = optimizers.eval_params(params, state)
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


def run_reference(case: Case) -> dict[str, np.ndarray]:
  import torch  # test-only dependency

  torch.set_num_threads(1)  # tiny tensors; threads only contend with JAX's on 2 cores

  w0, _, _ = problem(case)
  gradient = gradient_fn(case)
  names = list(case.shapes)
  params = [torch.nn.Parameter(torch.from_numpy(w0[k].copy())) for k in names]
  opt = case.reference(params)
  for t in range(1, case.steps + 1):
    for k, p in zip(names, params):
      p.grad = torch.from_numpy(gradient(k, p.detach().numpy(), t))
    if case.before_reference_step is not None:
      case.before_reference_step(opt, t)
    opt.step()
  if case.reference_eval is not None:
    values = case.reference_eval(opt, params)
  else:
    values = [p.detach().numpy() for p in params]
  return {k: np.asarray(v, np.float64) for k, v in zip(names, values)}


def relative_difference(ours: dict, ref: dict, w0: dict) -> float:
  return max(float(np.linalg.norm(ours[k] - ref[k])
                   / max(np.linalg.norm(ref[k] - w0[k]), 1e-30)) for k in ref)


def run_case(case: Case) -> float:
  """The case's relative parameter difference after `case.steps` steps."""
  w0, _, _ = problem(case)
  w0 = {k: v.astype(np.float64) for k, v in w0.items()}
  ours, ref = run_ours(case), run_reference(case)
  for k in ref:
    assert np.all(np.isfinite(ours[k])) and np.all(np.isfinite(ref[k])), k
    # A case whose parameters do not move compares nothing.
    assert np.linalg.norm(ref[k] - w0[k]) > 1e-3 * max(np.linalg.norm(w0[k]), 1.0), k
  return relative_difference(ours, ref, w0)


def check(case: Case) -> float:
  diff = run_case(case)
  assert diff <= case.tolerance, (
      f"{case.id}: relative parameter difference {diff:.3g} > {case.tolerance:g} against "
      f"{version(case.package)}")
  return diff
