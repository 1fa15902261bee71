"""Metric sinks: `metrics.jsonl` (one JSON object per line, each with `step`) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events under `<workdir>/tb`."""

  def __init__(self, workdir: str, resume_step: int | None = None, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None and os.path.exists(self.path):
      _truncate_after(self.path, resume_step)
    self._file = open(self.path, "a", buffering=1)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {"step": int(step)}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      record[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf
      if self._tb is not None:
        self._tb.add_scalar(k, v, int(step))
    self._file.write(json.dumps(record) + "\n")

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def _truncate_after(path: str, step: int) -> None:
  """Drops records past `step`: a resumed run recomputes them."""
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)["step"] <= step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(lines)
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if l.strip()]


def steps_to_target(records: list[dict], target: float) -> float | None:
  """First step where the validation curve reaches `target`, linearly interpolated."""
  val = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), float)]
  for (s0, v0), (s1, v1) in zip(val, val[1:]):
    if v1 <= target:
      return float(s1) if v0 <= target or v0 == v1 else s0 + (v0 - target) / (v0 - v1) * (s1 - s0)
  return None


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
