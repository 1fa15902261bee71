"""Config validation in one place, before a run writes anything; and config drift on resume.

`validate(config)` raises `ConfigError` (one line naming the field, its value and what is
allowed) for settings that would crash later or silently train nothing. `drift(saved, current)`
lists the fields whose change would alter a resumed run's trajectory or its logged numbers.
"""

from __future__ import annotations

import copy
import glob as glob_lib
import math
import os
import re
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config that cannot run: the message names the field."""


SCHEDULES = ("warmup_cosine", "wsd", "constant")
LR_SCALINGS = ("linear", "sqrt", "none")
DATA_SOURCES = ("stdlib", "stdlib_docs", "bin")

# Fields whose change on resume alters neither the trajectory nor the logged numbers: how often
# to log or checkpoint, where to stop this invocation, the device layout (only reduction order),
# where the corpus cache lives (the corpus hash is checked separately), which budgets branch off
# the run (a branch leaves the main run's state and data as they were).
RESUME_SAFE = (
    "train.stop_at_step", "train.log_every", "train.checkpoint_every", "train.checkpoint_every_s",
    "train.keep_checkpoints", "train.stall_warning_s", "train.allow_config_change",
    "train.eval_every",
    "data.cache_dir", "mesh.", "parallelism", "train.microbatches", "distributed.", "debug.",
    "model.remat", "train.budgets",
)


def _get(config: ml_collections.ConfigDict, dotted: str, default: Any = None) -> Any:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "get") or part not in node:
      return default
    node = node[part]
  return node


get = _get  # `get(config, "train.log_every")`: a dotted field, or the default when absent


def _require(ok: bool, field: str, value: Any, why: str) -> None:
  if not ok:
    raise ConfigError(f"{field}={value!r}: {why}")


def _int_at_least(config, field: str, low: int, optional: bool = False) -> None:
  value = _get(config, field)
  if value is None and optional:
    return
  _require(isinstance(value, int) and not isinstance(value, bool) and value >= low, field, value,
           f"must be an integer >= {low}" + (" (or None)" if optional else ""))


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """Raises ConfigError for a config that cannot run; returns warnings (strings) otherwise."""
  warnings = []
  for section in ("model", "data", "optimizer", "schedule", "train"):
    if section not in config:
      raise ConfigError(f"the config has no '{section}' section; start from "
                        "configs/speedrun_cpu.py")
  t = config.train
  _int_at_least(config, "train.steps", 1)
  _int_at_least(config, "train.batch_size", 1)
  _int_at_least(config, "train.grad_accum_steps", 1)
  _int_at_least(config, "train.checkpoint_every", 1)
  every_s = _get(config, "train.checkpoint_every_s")
  _require(every_s is None or (isinstance(every_s, (int, float)) and not isinstance(every_s, bool)
                               and math.isfinite(every_s) and every_s >= 0),
           "train.checkpoint_every_s", every_s,
           "must be a number of seconds >= 0 (0 or None: no wall-clock checkpoints)")
  _int_at_least(config, "train.log_every", 1)
  _int_at_least(config, "train.eval_every", 0)
  _int_at_least(config, "train.eval_batches", 1)
  _int_at_least(config, "train.keep_checkpoints", 1, optional=True)
  _int_at_least(config, "train.stop_at_step", 1, optional=True)
  _int_at_least(config, "schedule.warmup_steps", 0)
  _require(t.batch_size % t.grad_accum_steps == 0, "train.batch_size", t.batch_size,
           f"must be divisible by train.grad_accum_steps={t.grad_accum_steps}")
  clip = _get(config, "train.grad_clip_norm")
  _require(clip is None or (clip > 0 and math.isfinite(clip)), "train.grad_clip_norm", clip,
           "must be positive (or None to disable clipping)")
  if _get(config, "train.skip_nonfinite_updates"):
    _int_at_least(config, "train.max_consecutive_skips", 1)
  parallelism = _get(config, "parallelism", "jit")
  _require(parallelism in ("jit", "pmap"), "parallelism", parallelism, "choose jit or pmap")
  kind = _get(config, "compression.kind", "none")
  if kind != "none":
    _require(kind in ("powersgd", "topk", "sign"), "compression.kind", kind,
             "choose none, powersgd, topk or sign")
    _require(parallelism == "jit", "compression.kind", kind, "needs parallelism='jit'")
    _require(_get(config, "mesh.fsdp", 1) == 1, "compression.kind", kind,
             "compresses data-parallel gradients: it needs mesh.fsdp=1 (replicated params)")
    alternating = _get(config, "compression.alternating", 0)
    _require(alternating >= 0, "compression.alternating", alternating,
             "must be >= 0 (0: PowerSGD's Algorithm 1; k: k alternating half-steps)")
    pattern = _get(config, "compression.uncompressed", "") or ""
    try:
      re.compile(pattern)
    except re.error as e:
      _require(False, "compression.uncompressed", pattern, f"is not a valid regex ({e})")
  check_model_parallel(config, int(_get(config, "mesh.model", 1)),
                       int(_get(config, "mesh.stage", 1)))
  s = config.schedule
  _require(s.name in SCHEDULES, "schedule.name", s.name, f"choose from {', '.join(SCHEDULES)}")
  scaling = _get(config, "schedule.lr_scaling", "linear")
  _require(scaling in LR_SCALINGS, "schedule.lr_scaling", scaling,
           f"choose from {', '.join(LR_SCALINGS)}")
  base = _get(config, "schedule.base_batch_size")
  _require(base is None or base >= 1, "schedule.base_batch_size", base, "must be >= 1 or None")
  frac = float(_get(config, "schedule.final_lr_fraction", 0.0))
  _require(0.0 <= frac <= 1.0, "schedule.final_lr_fraction", frac, "must be in [0, 1]")
  if s.name == "wsd":
    d = float(s.decay_fraction)
    _require(0.0 < d <= 1.0, "schedule.decay_fraction", d, "must be in (0, 1]")
  why = check_budgets(config)
  if why:
    raise ConfigError(why)
  if s.warmup_steps >= t.steps:
    warnings.append(short_warmup_warning(s.name, s.warmup_steps, t.steps))
  for key, value in config.optimizer.items():
    if key.endswith("learning_rate") and isinstance(value, (int, float)):
      _require(math.isfinite(value) and value >= 0, f"optimizer.{key}", value,
               "must be a finite number >= 0")
  if "seq_len" not in config.data:  # not a token workload (MDS, logistic regression, MLP)
    return warnings
  _int_at_least(config, "data.seq_len", 1)
  seq_len, max_len = config.data.seq_len, _get(config, "model.max_seq_len")
  _require(max_len is None or seq_len <= max_len, "data.seq_len", seq_len,
           f"exceeds model.max_seq_len={max_len}")
  _require(config.data.source in DATA_SOURCES, "data.source", config.data.source,
           f"choose from {', '.join(DATA_SOURCES)}")
  if config.data.source == "bin":
    for field in ("data.train_glob", "data.val_glob"):
      pattern = _get(config, field)
      _require(bool(pattern), field, pattern, "data.source='bin' needs a glob of .bin shards")
      matches = sorted(glob_lib.glob(os.path.expanduser(pattern)))
      _require(bool(matches), field, pattern, "matches no file")
      dirs = [m for m in matches if os.path.isdir(m)]
      if dirs:
        raise ConfigError(f"{field}={pattern!r}: matches a directory ({dirs[0]}), not a shard "
                          "file; end the glob with *.bin")
  return warnings


def short_warmup_warning(schedule: str, warmup_steps: int, steps: int) -> str:
  """What `train_state.make_schedule` does with a warmup as long as the run or longer: it shortens
  the warmup to `steps` (a linear ramp from 0 over the whole run; step k uses the schedule at
  k - 1, so the last step uses (steps - 1) / steps of the peak) and never starts the decay."""
  what = (f"the warmup is shortened to the run's {steps} steps" if warmup_steps > steps
          else "the warmup takes the whole run")
  decay = f"; the {schedule} decay never starts" if schedule in ("warmup_cosine", "wsd") else ""
  return (f"schedule.warmup_steps={warmup_steps} >= train.steps={steps}: {what} (the learning "
          f"rate rises linearly from 0 and the last step uses {(steps - 1) / steps:.0%} of the "
          f"peak{decay}); set schedule.warmup_steps below {steps} to reach the peak")


def check_model_parallel(config: ml_collections.ConfigDict, model: int, stage: int) -> None:
  """Tensor (`mesh.model`) and pipeline (`mesh.stage`) sizes against the model and the rest of
  the config; -1 (not yet resolved) passes here and is checked again with the mesh's sizes."""
  for field, value in (("mesh.model", model), ("mesh.stage", stage)):
    _require(value == -1 or value >= 1, field, value, "must be >= 1 (or -1: remaining devices)")
  _require(stage != -1, "mesh.stage", stage,
           "must be given explicitly: the stage count fixes the parameters' layout")
  if model <= 1 and stage <= 1:
    return
  field = "mesh.model" if model > 1 else "mesh.stage"
  value = model if model > 1 else stage
  _require(_get(config, "parallelism", "jit") == "jit", field, value,
           "needs parallelism='jit' (pmap replicates the whole model on every device)")
  _require(_get(config, "compression.kind", "none") == "none", field, value,
           "cannot be combined with gradient compression (compression.kind='none')")
  _require(_get(config, "model.num_heads") is not None, field, value,
           "needs a GPT workload (a model with num_heads and num_layers)")
  m = config.model
  if model > 1:
    # Heads dividing implies the width (heads x head_dim) and the MLP's units divide too.
    _require(m.num_heads % model == 0, "mesh.model", model,
             f"must divide model.num_heads={m.num_heads}")
  if stage > 1:
    _require(m.num_layers % stage == 0, "mesh.stage", stage,
             f"must divide model.num_layers={m.num_layers}")
    micro = _get(config, "train.microbatches", 1)
    _require(isinstance(micro, int) and micro >= 1, "train.microbatches", micro,
             "must be an integer >= 1")
    rows = config.train.batch_size // config.train.grad_accum_steps
    _require(rows % micro == 0, "train.microbatches", micro,
             f"must divide the {rows} rows of each accumulation step")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b.c": value} of a nested dict / ConfigDict."""
  if isinstance(tree, ml_collections.ConfigDict):
    tree = tree.to_dict()
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


# Keys added after runs were written, with the value that means what their absence meant: a run
# saved without the key resumes under that value as the same trajectory.
ADDED_KEYS = {"optimizer.embed_learning_rate": None}


def drift(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (saved value, current value)} for fields that differ and matter on resume."""
  a, b = flatten(saved), flatten(current)
  out = {}
  for key in sorted(set(a) | set(b)):
    if key in ADDED_KEYS:
      a.setdefault(key, ADDED_KEYS[key])
      b.setdefault(key, ADDED_KEYS[key])
    if a.get(key, _MISSING) == b.get(key, _MISSING):
      continue
    if any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUME_SAFE):
      continue
    out[key] = (a.get(key, _MISSING), b.get(key, _MISSING))
  return out


class _Missing:
  def __repr__(self):
    return "<absent>"


_MISSING = _Missing()


# ---------------------------------------------------------------------------------------------
# train.budgets (branched cooldowns, experiments/training/budgets.py): the config's side, here so
# that the schedule (train_state) and validation need nothing of the branching action.

def wsd_decay_steps(steps: int, decay_fraction: float) -> int:
  """Steps of a `steps`-step WSD run's linear decay (at least one)."""
  return max(int(round(int(steps) * float(decay_fraction))), 1)


def budgets_of(config) -> tuple[int, ...]:
  """The config's `train.budgets` as a tuple of ints (empty: branching is off)."""
  value = config.train.get("budgets") or ()
  return tuple(int(b) for b in value)


def budget_fork_step(config, budget: int) -> int:
  """The step after which a `budget`-step WSD run starts its decay: where its branch forks."""
  return int(budget) - wsd_decay_steps(budget, config.schedule.decay_fraction)


def budget_config(config, budget: int):
  """`config` as a standalone run of `budget` steps (no budgets of its own)."""
  # A deep copy keeps its fields' references to train.steps (AdEMAMix's warmups): they follow.
  c = copy.deepcopy(config)
  with c.unlocked():
    c.train.steps = int(budget)
    c.train.budgets = ()
  return c


def check_budgets(config) -> str | None:
  """Why `train.budgets` cannot run with this config (one line), or None when it can."""
  budgets = config.train.get("budgets") or ()
  if not budgets:
    return None
  field = f"train.budgets={tuple(budgets)!r}"
  if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in budgets):
    return f"{field}: every budget must be a positive integer number of steps"
  if list(budgets) != sorted(set(budgets)):
    return f"{field}: the budgets must be sorted, each once"
  steps = config.train.steps
  if budgets[-1] != steps:
    return (f"{field}: the longest budget must be train.steps={steps} (the main run is the "
            "longest budget)")
  if config.schedule.name == "constant":
    # No decay to branch (Schedule-Free: its averaging stands in for one): a B-step run of the
    # same schedule is the main run's first B steps, so each budget is an evaluation of it.
    every = int(config.train.get("eval_every") or 0)
    off = [b for b in budgets if not every or b % every]
    if off:
      return (f"{field}: with schedule.name='constant' each budget is the main run's evaluation "
              f"at that step, so every budget must be a multiple of train.eval_every={every} "
              f"({off[0]} is not)")
    return None
  if config.schedule.name != "wsd":
    return (f"{field}: branched cooldowns need schedule.name='wsd' (got "
            f"{config.schedule.name!r}) or 'constant' (no decay: each budget is an evaluation "
            "of the main run): only their stable phase is shared by every budget")
  warmup = int(config.schedule.warmup_steps)
  for b in budgets[:-1]:
    fork = budget_fork_step(config, b)
    if fork < warmup:
      return (f"{field}: budget {b}'s decay would start at step {fork}, before "
              f"the warmup ends at schedule.warmup_steps={warmup}")
  if config.train.get("stop_at_target") and config.train.get("target_val_loss") is not None:
    return (f"{field}: cannot be combined with train.stop_at_target=True (the main run must "
            "reach the longest budget)")
  if not config.train.get("eval_every"):
    return f"{field}: needs train.eval_every > 0 (the longest budget is the main run's final eval)"
  # A hyperparameter tied to the run length (AdEMAMix's warmups follow train.steps) would differ
  # between the main run's first steps and a B-step run's: the branch could not match it.
  for b in budgets[:-1]:
    a = config.optimizer.copy_and_resolve_references().to_dict()
    other = budget_config(config, b).optimizer.to_dict()
    tied = sorted(k for k in a if a[k] != other.get(k))
    if tied:
      return (f"{field}: optimizer.{tied[0]} follows train.steps, so a branch cannot match a "
              f"{b}-step run; set it to a number")
  return None
