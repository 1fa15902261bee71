"""`registry` suite: every registry entry on the CPU speedrun model.

For each name in `optimizers.names()`: the median time of one jitted `update` (state threaded
through the calls, as in training), that time as a multiple of AdamW's in the same run, and the
optimizer state in bytes per parameter (from `jax.eval_shape`, so nothing is allocated). Then
`adamw_8bit`'s bytes per parameter on the leaves it quantizes.

Entries are built with their own defaults plus `learning_rate` (and, for `sam`, an AdamW inner
optimizer); `sam`'s time includes its second forward/backward pass on a speedrun batch.
"""

from __future__ import annotations

import inspect

import jax
import optax

import optimizers
from experiments import configs_util
from models import gpt
from optimizers import quantized
from scripts import bench_common

# Values for hyperparameters an entry requires (or whose default would not be a fair bench).
REQUIRED_DEFAULTS = {"learning_rate": 1e-3}
ENTRY_OVERRIDES = {"sam": {"inner": "adamw", "learning_rate": 1e-3},
                   "cautious": {"inner": "adamw", "learning_rate": 1e-3}}


def hparams_for(name: str) -> dict:
  """Hyperparameters to build `name` with: its required ones filled in, plus overrides."""
  hparams = {k: REQUIRED_DEFAULTS[k] for k, v in optimizers.hyperparameters(name).items()
             if v is inspect.Parameter.empty and k in REQUIRED_DEFAULTS}
  hparams.update(ENTRY_OVERRIDES.get(name, {}))
  return hparams


def _time_update(tx, params, grads, grad_fn, repeats):
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, grad_fn=grad_fn))
  state = tx.init(params)

  def call():
    nonlocal state
    updates, state = step(grads, state, params)
    return updates

  return bench_common.median_time(call, warmup=2, repeats=repeats)


def quantized_bytes_per_param(params, hparams: dict) -> float:
  """adamw_8bit's moment bytes per parameter over the leaves it stores in 8 bits."""
  state = jax.eval_shape(optimizers.create("adamw_8bit", **hparams).init, params)[0]
  leaves, treedef = jax.tree.flatten(params)
  nbytes = nparams = 0
  for p, m, v in zip(leaves, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)):
    if isinstance(m, quantized.QuantizedArray):
      nbytes += bench_common.tree_bytes((m, v))
      nparams += p.size
  return nbytes / nparams


def run(flags) -> None:
  cfg = configs_util.load(flags.config)
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  params = bench_common.speedrun_params(flags.config)
  n_params = gpt.num_params(params)
  batch = jax.random.randint(jax.random.key(1), (cfg.train.batch_size, cfg.data.seq_len + 1),
                             0, cfg.model.vocab_size)
  grad_fn = jax.grad(lambda p: gpt.loss_fn(model_cfg, p, batch))
  grads = grad_fn(params)
  print(f"model: {flags.config}, {n_params:,} parameters; batch {tuple(batch.shape)} for sam")

  rows, baseline = [], None
  for name in optimizers.names():
    hparams = hparams_for(name)
    try:
      tx = optax.with_extra_args_support(optimizers.create(name, **hparams))
      seconds = _time_update(tx, params, grads, grad_fn, flags.repeats)
      state_bytes = bench_common.tree_bytes(jax.eval_shape(tx.init, params)) / n_params
    except Exception as e:  # pylint: disable=broad-except
      # Keep the table going, but show the failure in it: an entry that cannot be built with
      # these defaults is a finding, not something to skip silently.
      rows.append([name, _fmt_hparams(hparams), f"FAILED: {type(e).__name__}: {e}"[:80], "", ""])
      continue
    if name == "adamw":
      baseline = seconds
    rows.append([name, _fmt_hparams(hparams), seconds * 1e3, seconds, state_bytes])
  for r in rows:
    if isinstance(r[3], float):
      r[3] = r[3] / baseline if baseline else float("nan")
  bench_common.print_table(rows, ["optimizer", "hparams", "update ms (median)", "x adamw",
                                  "state bytes/param"])

  adamw_q = quantized_bytes_per_param(params, hparams_for("adamw_8bit"))
  print(f"\nadamw_8bit on the leaves it quantizes (>= 4096 elements): {adamw_q:.4f} bytes/param "
        f"(float32 AdamW: 8)")


def _fmt_hparams(hparams: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in hparams.items())

