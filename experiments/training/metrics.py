"""Metric sinks: `metrics.jsonl` (one JSON object per line, each with `step`) and TensorBoard."""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import threading
from typing import Any, Mapping

from absl import logging
import numpy as np


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events under `<workdir>/tb`.

  On open, the log is made consistent with the checkpoint the run continues from: rows past
  `resume_step` (or every row, when the run starts from scratch with `resume_step=None`) are
  dropped, since the run recomputes them, and a torn last line (power loss, full disk) is
  dropped with a warning. So a resumed run leaves exactly one row per (step, key).
  """

  def __init__(self, workdir: str, resume_step: int | None = None, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.path):
      _truncate_after(self.path, -1 if resume_step is None else resume_step)
    self.rows = len(read_metrics(workdir)) if os.path.exists(self.path) else 0
    self._file = open(self.path, "a", buffering=1)
    self._tb = None
    if tensorboard:
      SummaryWriter = _tensorboardx_summary_writer()  # pylint: disable=invalid-name
      _keep_tensorboard_write_errors()
      # A queue that never fills: if the writer thread dies (a full disk), adding an event must
      # not block; the thread's error is raised here instead (`_raise_tensorboard_error`).
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), max_queue=1 << 30,
                               purge_step=0 if resume_step is None else resume_step + 1)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    _raise_tensorboard_error()
    record = {"step": int(step)}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      record[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf
      if self._tb is not None:
        self._tb.add_scalar(k, v, int(step))
    self._file.write(json.dumps(record) + "\n")
    self.rows += 1

  def write_event(self, step: int, name: str, detail: Any) -> None:
    """A non-scalar row, e.g. {"step": 20, "event": "config_change", "detail": {...}}."""
    self._file.write(json.dumps({"step": int(step), "event": name, "detail": detail},
                                default=str) + "\n")
    self.rows += 1

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


# OSErrors of tensorboardX's writer threads (a failed write ends the thread), for the main thread.
_tensorboard_errors: list[OSError] = []


def _keep_tensorboard_write_errors() -> None:
  """tensorboardX's writer thread dies on a failed write (a full disk) with a thread traceback
  on stderr, and the run goes on without events: the error is kept instead, for the next
  `MetricWriter.write` to raise in the main thread (one line from the trainer)."""
  previous = threading.excepthook
  if getattr(previous, "keeps_tensorboard_errors", False):
    return

  def hook(args):
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_EventLoggerThread":
      _tensorboard_errors.append(args.exc_value)
      return
    previous(args)

  hook.keeps_tensorboard_errors = True
  threading.excepthook = hook


def _raise_tensorboard_error() -> None:
  if _tensorboard_errors:
    raise _tensorboard_errors.pop(0)


def _tensorboardx_summary_writer():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch when it is installed (only to accept torch tensors, which nothing
  here passes), and that import costs ~1.7 s per process: a None entry in `sys.modules` makes
  `import torch` fail fast there. A process that has already imported torch keeps it.
  """
  import sys  # pylint: disable=g-import-not-at-top
  block = "torch" not in sys.modules and "tensorboardX" not in sys.modules
  if block:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


class NullWriter:
  """MetricWriter's interface, writing nothing (every process but the main one)."""

  rows = None

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    del step, scalars

  def write_event(self, step: int, name: str, detail: Any) -> None:
    del step, name, detail

  def close(self) -> None:
    pass


def _parse_lines(path: str) -> tuple[list[tuple[str, dict]], int]:
  """(well-formed rows with their text, number of unreadable lines)."""
  rows, bad = [], 0
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict) or "step" not in record:
          raise ValueError(line)
      except ValueError:
        bad += 1
        continue
      rows.append((line if line.endswith("\n") else line + "\n", record))
  return rows, bad


def _truncate_after(path: str, step: int) -> None:
  """Keeps the rows up to `step` (a resumed run recomputes the rest) and drops torn lines."""
  rows, bad = _parse_lines(path)
  if bad:
    logging.warning("%s: dropped %d unreadable line(s) (a torn write?)", path, bad)
  kept = [line for line, r in rows if r["step"] <= step]
  if len(kept) < len(rows):
    logging.info("%s: dropped %d row(s) past step %d; this run recomputes them", path,
                 len(rows) - len(kept), step)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


class MetricsHistoryError(RuntimeError):
  """metrics.jsonl lost rows that the checkpoint a run resumes from says it held."""


def check_history(workdir: str, step: int, expected_rows: int | None) -> None:
  """Makes sure a resume from checkpoint `step` continues the whole history in metrics.jsonl.

  `expected_rows` is the number of rows the file held when the checkpoint was saved (None for
  checkpoints written before it was recorded: nothing to check). A missing or truncated file is
  rebuilt from the TensorBoard events under `<workdir>/tb` (the same scalars, as float32; event
  rows such as config changes are not there) with a warning; without events to rebuild it from,
  MetricsHistoryError says what to do, rather than a history that silently starts at `step`.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not expected_rows:
    return
  rows = [r for r in read_metrics(workdir) if r["step"] <= step] if os.path.exists(path) else []
  if len(rows) >= expected_rows:
    return
  what = (f"{path} is missing" if not os.path.exists(path) else
          f"{path} holds {len(rows)} row(s) up to step {step}")
  rebuilt = rows_from_tensorboard(os.path.join(workdir, "tb"), step)
  have = {(r["step"], k) for r in rows if "event" not in r for k in r if k != "step"}
  if not rebuilt or not have <= {(r["step"], k) for r in rebuilt for k in r if k != "step"}:
    raise MetricsHistoryError(
        f"{what}, but checkpoint step {step} was saved when it held {expected_rows}: it was "
        "deleted or truncated, and there are no TensorBoard events under "
        f"{os.path.join(workdir, 'tb')} to rebuild it from. Put the file back (from a backup), "
        "or start the run over in a new --workdir; resuming here would log a history that "
        f"starts at step {step}.")
  events = [r for r in rows if "event" in r]
  kept = sorted(rebuilt + events, key=lambda r: (r["step"], "event" in r))
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)
  os.replace(tmp, path)
  logging.warning("%s, but checkpoint step %d was saved when it held %d: rebuilt it from the "
                  "TensorBoard events (%d rows up to step %d; float32 values).", what, step,
                  expected_rows, len(rebuilt), step)


def rows_from_tensorboard(tb_dir: str, last_step: int) -> list[dict]:
  """One row per step up to `last_step` from the scalars in the TensorBoard event files (the
  last value written for each step and tag wins: reruns of a step write the same values)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  values: dict[int, dict[str, Any]] = {}
  for name in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    for data in _tfrecords(name):
      event = event_pb2.Event.FromString(data)
      if event.step > last_step or not event.HasField("summary"):
        continue
      for v in event.summary.value:
        if v.HasField("simple_value"):
          x = float(v.simple_value)
          values.setdefault(int(event.step), {})[v.tag] = x if math.isfinite(x) else str(x)
  return [{"step": s, **values[s]} for s in sorted(values)]


def _tfrecords(path: str):
  """The records of a TFRecord file (length, its CRC, data, its CRC); stops at a torn end."""
  with open(path, "rb") as f:
    while True:
      head = f.read(12)
      if len(head) < 12:
        return
      (length,) = struct.unpack("<Q", head[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def read_metrics(workdir: str) -> list[dict]:
  """The rows of `<workdir>/metrics.jsonl`; a torn line (a crash mid-write) is skipped."""
  rows, _ = _parse_lines(os.path.join(workdir, "metrics.jsonl"))
  return [r for _, r in rows]


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
