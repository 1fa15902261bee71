"""The optimizer, its learning-rate schedules and the initial train state that a config asks for.

The trainer builds its runs from these, and so does `finetune.restore_params`, which needs the
abstract train state of a finished run to restore its checkpoint. They sit below the trainer so
that the workloads (LoRA fine-tuning among them) need not import it.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from experiments.parallel import pipeline
from experiments.training import provenance
from experiments.training import validate as validate_lib
from models import gpt
import optimizers


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule from config.

def make_schedule(config: ml_collections.ConfigDict, peak: Any,
                  warmup_steps: Any = None) -> optax.Schedule:
  """The schedule `config.schedule` names, peaking at `peak`.

  A traced `peak` (vectorized trials, experiments/harness/vectorized.py) scales the schedule of
  peak 1: optax's cosine decay branches in Python on its peak value. `warmup_steps`: None
  (`schedule.warmup_steps`), or a traced step count (vectorized trials that draw the warmup:
  optax's schedules take a Python int, so the same curves are written in jnp).
  """
  if warmup_steps is not None:
    unit = _traced_warmup_unit(config, warmup_steps)
    return lambda count: peak * unit(count)
  if not isinstance(peak, (int, float)):
    unit = make_schedule(config, 1.0)
    return lambda count: peak * unit(count)
  s, steps = config.schedule, config.train.steps
  warmup = min(int(s.warmup_steps), steps)
  end = peak * float(s.final_lr_fraction)
  if s.name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), end)
  if s.name == "wsd":  # warmup, stable, decay (Hu et al. 2024, MiniCPM)
    decay = validate_lib.wsd_decay_steps(steps, s.decay_fraction)
    stable = max(steps - warmup - decay, 0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak),
         optax.linear_schedule(peak, end, decay)], boundaries=[warmup, warmup + stable])
  if s.name == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  raise ValueError(f"Unknown schedule {s.name!r}; choose from warmup_cosine, wsd, constant")


def _traced_warmup_unit(config: ml_collections.ConfigDict, warmup_steps: Any) -> optax.Schedule:
  """`make_schedule(config, 1.0)` with a traced warmup length: linear from 0 over the warmup,
  then optax's cosine decay / WSD's stable and linear decay / constant, as `make_schedule`."""
  s, steps = config.schedule, int(config.train.steps)
  w = jnp.minimum(jnp.asarray(warmup_steps, jnp.float32), steps)
  end = float(s.final_lr_fraction)
  if s.name not in validate_lib.SCHEDULES:
    raise ValueError(f"Unknown schedule {s.name!r}; choose from "
                     f"{', '.join(validate_lib.SCHEDULES)}")

  def unit(count):
    c = jnp.asarray(count, jnp.float32)
    warm = c / jnp.maximum(w, 1.0)
    if s.name == "warmup_cosine":  # optax.warmup_cosine_decay_schedule's cosine part
      decay_steps = jnp.maximum(float(steps), w + 1.0) - w
      t = jnp.minimum(c - w, decay_steps)
      after = (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / decay_steps)) + end
    elif s.name == "wsd":
      decay = max(int(round(steps * float(s.decay_fraction))), 1)
      t = jnp.clip(c - w - jnp.maximum(steps - w - decay, 0.0), 0.0, float(decay))
      after = 1.0 + (end - 1.0) * t / decay
    else:
      after = jnp.ones_like(c)
    return jnp.where(c < w, warm, after)

  return unit


def lr_scale(config: ml_collections.ConfigDict) -> float:
  """The factor every peak learning rate gets for a batch other than `schedule.base_batch_size`.

  `schedule.lr_scaling`: "linear" (batch / base; Goyal et al. 2017, for SGD), "sqrt"
  (sqrt(batch / base); Malladi et al. 2022, for Adam-type methods) or "none". No base: 1.
  """
  base = config.schedule.get("base_batch_size")
  rule = config.schedule.get("lr_scaling", "linear")
  if not base or rule == "none":
    return 1.0
  ratio = config.train.batch_size / base
  return ratio ** 0.5 if rule == "sqrt" else ratio


# Optimizer-block keys that the trainer reads itself, for any optimizer (not registry
# hyperparameters): a block may lack them, and they never reach `optimizers.create`.
#   embed_learning_rate: None, or the peak learning rate of the embeddings, the output head and
#     every tensor with fewer than 2 dimensions (norm scales, biases): Muon's AdamW group,
#     `routing.default_label`; the hidden matrices keep `learning_rate`. Both get the schedule.
TRAINER_KEYS = ("embed_learning_rate",)


def registry_hparams(block: Any) -> dict:
  """An optimizer block's (`config.optimizer`, a ConfigDict or dict) hyperparameters as
  `optimizers.create(block.name, **...)` takes them: without `name` and the trainer's own keys
  (`TRAINER_KEYS`), nested blocks as plain dicts. For code that builds a block's optimizer
  without the trainer (tests, benchmarks); `make_optimizer` is the trainer's way."""
  return {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
          for k, v in block.items() if k != "name" and k not in TRAINER_KEYS}


def make_optimizer(config: ml_collections.ConfigDict, overrides: dict | None = None,
                   warmup_steps: Any = None):
  """The optimizer from `config.optimizer`; every `*learning_rate` becomes a schedule.

  `overrides`: hyperparameters set over the config's, by dotted name (`inner_hparams.b2`) as in
  a search space, whose values may be traced scalars (vectorized trials: one compiled program
  for every trial's values). `warmup_steps`: a traced warmup for every schedule
  (`make_schedule`); None: `schedule.warmup_steps`.

  Returns (transformation, schedule of the main learning rate).
  """
  hparams = {k: v for k, v in config.optimizer.items() if k != "name"}
  hparams = {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
             for k, v in hparams.items()}
  for name, value in (overrides or {}).items():
    *path, leaf = name.split(".")
    node = hparams
    for key in path:
      node = node[key]
    if leaf not in node and not (not path and leaf in TRAINER_KEYS):
      raise validate_lib.ConfigError(f"optimizer: no hyperparameter {name!r} to override in "
                                     f"{config.optimizer.name}'s block")
    node[leaf] = value
  embed_lr = hparams.pop("embed_learning_rate", None)
  scale = lr_scale(config)
  main_schedule = None
  for k, v in list(hparams.items()):
    if k.endswith("learning_rate") and isinstance(v, (int, float, jax.Array)):
      hparams[k] = make_schedule(config, v * scale if isinstance(v, jax.Array)
                                 else float(v) * scale, warmup_steps)
      if k == "learning_rate":
        main_schedule = hparams[k]
  if int(config.get("mesh", {}).get("stage", 1)) > 1:
    # The pipeline stacks the blocks' parameters along a layer axis: route and view them per
    # layer, as the unstacked model's (one Muon matrix per layer, norm scales to AdamW, one
    # Shampoo / SOAP tensor per layer).
    accepted = optimizers.hyperparameters(config.optimizer.name)
    for key, rule in (("dimension_numbers", pipeline.stacked_dimension_numbers),
                      ("labels", pipeline.stacked_labels),
                      ("batch_axes", pipeline.stacked_batch_axes)):
      if key in accepted and hparams.get(key) is None:
        hparams[key] = rule
  try:
    tx = optimizers.create(config.optimizer.name, **hparams)
    if embed_lr is not None:
      tx = _with_embed_learning_rate(config, tx, hparams, embed_lr, scale, warmup_steps)
  except (ValueError, TypeError) as e:
    raise validate_lib.ConfigError(
        f"optimizer: {e}{_config_hint(config.optimizer.name, hparams)}") from e
  clip = config.train.get("grad_clip_norm")
  if clip:
    tx = clip_grad_fn(optax.chain(optax.clip_by_global_norm(clip), tx), clip)
  return optax.with_extra_args_support(tx), main_schedule or (lambda _: 0.0)


def _with_embed_learning_rate(config, tx, hparams: dict, embed_lr: Any, scale: float,
                              warmup_steps: Any = None):
  """`tx` on the hidden matrices, the same optimizer at `embed_lr` (scheduled) on the rest.

  The groups are Muon's (`routing.default_label`: its "adam" group, the embeddings, the output
  head and every tensor with < 2 dims, takes `embed_lr`; with pipeline stages, per layer as
  `pipeline.stacked_labels`), split by `optax.partition`. Each group's optimizer keeps its own
  state, exactly the one-group optimizer's on its leaves: an element-wise optimizer (AdamW) at
  `embed_lr == learning_rate` gives the unsplit updates bit for bit.
  """
  if not callable(hparams.get("learning_rate")):
    raise ValueError(f"embed_learning_rate={embed_lr!r} needs a `learning_rate` for the hidden "
                     f"matrices in {config.optimizer.name}'s block")
  peak = embed_lr * scale if isinstance(embed_lr, jax.Array) else float(embed_lr) * scale
  embed_tx = optimizers.create(config.optimizer.name,
                               **dict(hparams, learning_rate=make_schedule(config, peak,
                                                                            warmup_steps)))
  from optimizers import routing  # pylint: disable=g-import-not-at-top
  rule = (pipeline.stacked_labels if int(config.get("mesh", {}).get("stage", 1)) > 1
          else routing.default_label)
  labels = lambda params: jax.tree_util.tree_map_with_path(rule, params)
  return optax.partition({routing.MUON: tx, routing.ADAM: embed_tx}, labels)


def _config_hint(name: str, hparams: dict) -> str:
  """Points at the config files written for optimizer `name` when the config's optimizer
  section holds hyperparameters `name` does not take (a section written for another
  optimizer); nothing for a value out of range or an unknown name (whose own errors say
  what to change)."""
  try:
    foreign = set(hparams) - set(optimizers.hyperparameters(name))
  except (ValueError, KeyError):
    return ""
  if not foreign:
    return ""
  root = os.path.join(provenance.ROOT, "configs")
  try:
    files = sorted(f for f in os.listdir(root) if f.endswith(".py"))
  except OSError:
    return ""
  hits = []
  for f in files:
    with open(os.path.join(root, f)) as fh:
      text = fh.read()
    # `c.optimizer.name = "lion"` or `ml_collections.ConfigDict(dict(name="lion", ...))`.
    if re.search(r"""\bname\s*=\s*["']""" + re.escape(name) + r"""["']""", text):
      hits.append(f"configs/{f}")
  if not hits:
    return ""
  return (f". Hint: this config's optimizer section was written for "
          f"another optimizer; use --config={hits[0]}" + (f" (or {', '.join(hits[1:])})"
                                                         if len(hits) > 1 else ""))


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
# The initial train state.

def make_init_state(init_params: Callable, tx,
                    extra: Callable[[Any], dict] | None = None) -> Callable[[int], dict]:
  """seed -> the initial train state {"params", "opt_state", "step", "rng"}.

  `init_params(key)` is the workload's (or a `gpt.GPTConfig`, for the GPT's).
  """
  if isinstance(init_params, gpt.GPTConfig):
    init_params = functools.partial(gpt.init_params, init_params)

  def init_state(seed):
    key = jax.random.key(seed)
    params = init_params(key)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.key_data(jax.random.fold_in(key, 1))}
    return state | (extra(params) if extra else {})

  return init_state
