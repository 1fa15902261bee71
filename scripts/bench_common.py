"""Shared pieces of the benchmark scripts: median timing, state bytes, the speedrun model."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np


def median_time(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5) -> float:
  """Median wall-clock seconds of `fn()` (its outputs are waited for), after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def tree_bytes(tree: Any) -> int:
  """Bytes held by the array leaves of a pytree (works on abstract shapes too)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree) if hasattr(x, "shape"))


def speedrun_params(config_path: str = "configs/speedrun_cpu.py", seed: int = 0):
  """Parameters (plain dict) of the model a speedrun config trains."""
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  from models import gpt  # pylint: disable=g-import-not-at-top
  cfg = configs_util.load(config_path)
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  return gpt.init_params(model_cfg, jax.random.key(seed))


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
  cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  for j, r in enumerate(cells):
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if j == 0:
      print("  ".join("-" * w for w in widths))


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)
