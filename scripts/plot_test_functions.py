r"""Trajectories of every registry optimizer on 2-D test functions (the course notes' picture).

  .venv/bin/python -m scripts.plot_test_functions [--steps=200] [--out=results/test_functions.png]

Functions: Rosenbrock (1960) from (-1.2, 1); the ill-conditioned quadratic (x^2 + 100 y^2) / 2
from (-4, 1); and a saddle, x^2/2 - y^2/2 + y^4/4 (a saddle at the origin, minima at
(0, +-1)), from (2, 1e-3), close to the saddle's stable manifold. Each optimizer runs with its
registry defaults (weight decay off) at the learning rate in LEARNING_RATES that ends lowest on
that function; the top row shows the paths over log-spaced contours, the bottom row
f - f* against steps on a log scale. The parameter is one 2-vector, so Muon and Shampoo-type
optimizers route it to their Adam (or grafting) branch: on 2-D problems they show that branch.
"""

from __future__ import annotations

import os

from absl import flags
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

import optimizers

from experiments import configs_util

_STEPS = flags.DEFINE_integer("steps", 200, "Steps per run.")
_OUT = flags.DEFINE_string("out", "results/test_functions.png", "Output PNG.")

MAIN = ("adamw", "adamw_8bit", "muon", "shampoo", "soap", "sgd")
LEARNING_RATES = np.array([1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0])

# name: (f, start, f*, x range, y range, minimizers)
FUNCTIONS = {
    "Rosenbrock": (lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2,
                   (-1.2, 1.0), 0.0, (-2.0, 2.0), (-1.0, 3.0), [(1.0, 1.0)]),
    "ill-conditioned quadratic (kappa = 100)": (
        lambda p: 0.5 * (p[0] ** 2 + 100 * p[1] ** 2), (-4.0, 1.0), 0.0, (-5.0, 5.0),
        (-1.5, 1.5), [(0.0, 0.0)]),
    "saddle x²/2 - y²/2 + y⁴/4": (
        lambda p: 0.5 * p[0] ** 2 - 0.5 * p[1] ** 2 + 0.25 * p[1] ** 4, (2.0, 1e-3), -0.25,
        (-2.5, 2.5), (-1.8, 1.8), [(0.0, 1.0), (0.0, -1.0)]),
}


def make_optimizer(name: str, lr):
  """The registry's `name` with its defaults, every learning rate `lr`, no weight decay."""
  valid = optimizers.hyperparameters(name)
  hp = {"learning_rate": lr}
  if "adam_learning_rate" in valid:  # Muon: the 2-vector goes to its Adam branch
    hp["adam_learning_rate"] = lr
  hp.update({k: 0.0 for k in ("weight_decay", "adam_weight_decay") if k in valid})
  return optax.with_extra_args_support(optimizers.create(name, **hp))


def trajectories(name: str, f, start, steps: int) -> np.ndarray:
  """Paths (len(LEARNING_RATES), steps + 1, 2), one per learning rate (vmapped)."""
  loss = lambda params: f(params["p"])

  def run(lr):
    tx = make_optimizer(name, lr)
    params = {"p": jnp.asarray(start, jnp.float32)}

    def step(carry, _):
      params, state = carry
      grads = jax.grad(loss)(params)
      # SAM's second gradient: the same deterministic loss.
      updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
      params = optax.apply_updates(params, updates)
      return (params, state), params["p"]

    _, path = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return jnp.concatenate([params["p"][None], path])

  return np.asarray(jax.jit(jax.vmap(run))(jnp.asarray(LEARNING_RATES, jnp.float32)))


def best_run(paths: np.ndarray, f, f_star: float) -> tuple[int, np.ndarray]:
  """(index of the learning rate ending lowest, f - f* along its path); NaN paths lose."""
  with np.errstate(over="ignore", invalid="ignore"):  # diverged learning rates lose below
    gaps = np.array([[f(p) - f_star for p in path] for path in paths], dtype=np.float64)
  final = np.where(np.isfinite(gaps[:, -1]), gaps[:, -1], np.inf)
  i = int(np.argmin(final))
  return i, gaps[i]


def main(argv):
  del argv
  names = optimizers.names()
  cmap = plt.get_cmap("tab10")
  # The six contenders: thick solid lines of their own colours; the rest thin, in the
  # other four colours times three dash styles (17 lines of equal weight were unreadable).
  others = [n for n in names if n not in MAIN]
  styles = {n: dict(color=cmap(i), ls="-", lw=2.4) for i, n in enumerate(MAIN)}
  styles.update({n: dict(color=cmap(6 + i % 4), ls=("--", ":", "-.")[i // 4 % 3], lw=1.1)
                 for i, n in enumerate(others)})
  fig, axes = plt.subplots(2, len(FUNCTIONS), figsize=(6 * len(FUNCTIONS) + 2.5, 11))
  for col, (title, (f, start, f_star, xr, yr, minima)) in enumerate(FUNCTIONS.items()):
    ax, ax_gap = axes[0, col], axes[1, col]
    xs, ys = np.meshgrid(np.linspace(*xr, 300), np.linspace(*yr, 300))
    zs = np.asarray(f(np.stack([xs, ys]))) - f_star
    levels = np.logspace(np.log10(max(zs.min(), 1e-3)), np.log10(zs.max()), 15)
    ax.contour(xs, ys, np.maximum(zs, 1e-3), levels=levels, colors="0.75", linewidths=0.6,
               norm=mcolors.LogNorm())
    ax.plot(*start, "k*", ms=14, zorder=5)
    ax.plot(*np.transpose(minima), "kX", ms=10, zorder=5)
    for name in names:
      paths = trajectories(name, f, start, _STEPS.value)
      i, gap = best_run(paths, lambda p: float(f(p)), f_star)
      path = np.clip(paths[i], [xr[0] - 1, yr[0] - 1], [xr[1] + 1, yr[1] + 1])
      label = name
      ax.plot(path[:, 0], path[:, 1], **styles[name], label=label)
      ax_gap.plot(np.arange(len(gap)), np.maximum(gap, 1e-12), **styles[name], label=label)
      print(f"{title:42s} {name:12s} lr {LEARNING_RATES[i]:g}: f - f* = {gap[-1]:.3g}",
            flush=True)
    ax.set(xlim=xr, ylim=yr, xlabel="x", ylabel="y", title=f"{title}: paths (★ start, X minimum)")
    ax_gap.set(yscale="log", xlabel="step", ylabel="f(x, y) - f*  (log scale)",
               title=f"{title}: gap to the minimum", ylim=(1e-12, None))
    ax_gap.grid(alpha=0.3, which="major")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  order = [labels.index(n) for n in (*MAIN, *others)]
  handles, labels = [handles[i] for i in order], [labels[i] for i in order]
  fig.legend(handles, labels, loc="center right", title="optimizer\n(best lr of each)",
             fontsize=11)
  fig.suptitle(f"Registry optimizers on 2-D test functions, {_STEPS.value} steps. Muon and "
               "Shampoo route a 2-vector to their Adam/grafting branch, so their paths lie on "
               "Adam's; adamw_8bit's lies on adamw's.", fontsize=13)
  fig.tight_layout(rect=(0, 0, 1 - 2.2 / fig.get_figwidth(), 0.96))
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  fig.savefig(_OUT.value, dpi=100)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  configs_util.run(main)
