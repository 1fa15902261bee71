"""A sweep's progress line: runs done / total, elapsed, and an ETA summed per kind of run.

Runs of different workloads differ by 100x in cost (a vectorized MDS trial takes milliseconds, a
trainer run of the CPU speedrun minutes), and on one workload by 2x across optimizers (the
budget comparison's baseline trains to twice the others' budget), so one average over the runs
done so far says little about the runs left. Each kind, (workload, optimizer, vectorized),
keeps its own seconds per run: measured in this sweep once one of its runs has finished (a run
resumed from a checkpoint is not a measurement), else the prior the caller passes
(`trainer_priors`: from the records of earlier sittings), else the median of the other
optimizers' on that workload; where none exists the ETA names the kinds it does not count yet.
Written here: clu's and absl's progress helpers time one loop, not a mix of unlike ones.
"""

from __future__ import annotations

import collections
import datetime
import statistics
import time
from typing import Callable, Iterable, Mapping, Sequence

Kind = tuple[str, str, bool]  # (workload, optimizer, vectorized)

# A gap between two records' `finished` stamps is the later run's wall-clock when the sweep ran
# on without a stop between them: at least its training time, and (beside other work) at most
# this many times it.
_MAX_WALL_OVER_TRAIN = 4.0


def _duration(seconds: float) -> str:
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def _stamp(record: dict) -> float | None:
  try:
    return datetime.datetime.strptime(record["finished"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
  except (KeyError, TypeError, ValueError):
    return None


def trainer_priors(records: Iterable[dict]) -> dict[Kind, float]:
  """Seconds per trainer run of each (workload, optimizer) from earlier records.

  A run's wall-clock is the gap between its `finished` stamp and the one before it (records
  sorted by stamp), kept where the sweep plainly ran on between them: the gap is at least the
  run's training time (its curve's last time) and at most `_MAX_WALL_OVER_TRAIN` times it. It
  counts what the training time leaves out (compilation, evaluations, checkpoints, the budget
  comparison's branched cooldowns). The prior is the median of those gaps; a kind with none
  gets the median of its training times. Vectorized records are left out: their times come
  from their timing record, not a program's wall-clock.
  """
  rows = []
  for r in records:
    if r.get("vectorized_trials") or not r.get("curve"):
      continue
    rows.append((_stamp(r), r["workload"], r["optimizer"], float(r["curve"][-1][1])))
  walls, trains = collections.defaultdict(list), collections.defaultdict(list)
  stamped = sorted((row for row in rows if row[0] is not None), key=lambda row: row[0])
  for prev, row in zip(stamped, stamped[1:]):
    gap, train = row[0] - prev[0], row[3]
    if train > 0 and train <= gap <= _MAX_WALL_OVER_TRAIN * train:
      walls[row[1:3]].append(gap)
  for _, w, o, train in rows:
    trains[(w, o)].append(train)
  return {(w, o, False): statistics.median(walls.get((w, o)) or ts)
          for (w, o), ts in trains.items()}


class Progress:
  """Counts runs across a sweep's programs and prints one line as each starts.

  kinds: one entry per run still to do, its (workload, optimizer, vectorized); priors: seconds
  per run of a kind before this sweep measured one.
  """

  def __init__(self, kinds: Sequence[Kind], priors: Mapping[Kind, float] | None = None,
               clock: Callable[[], float] = time.time, out: Callable[[str], None] | None = None):
    self.total = len(kinds)
    self.left = collections.Counter(kinds)
    self.priors = dict(priors or {})
    self.spent: dict[Kind, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    self.done = 0
    self._clock = clock
    self._t0 = clock()
    self._out = out or (lambda line: print(line, flush=True))

  def _own(self, kind: Kind) -> float | None:
    seconds, runs = self.spent.get(kind, (0.0, 0))
    return seconds / runs if runs else self.priors.get(kind)

  def per_run(self, kind: Kind) -> float | None:
    """Seconds per run of `kind`: its own (measured, else its prior), else the median of the
    other optimizers' on the same workload (and vectorized or not), else None."""
    own = self._own(kind)
    if own is not None:
      return own
    kin = [self._own(k) for k in set(self.priors) | set(self.spent) | set(self.left)
           if k[0] == kind[0] and k[2] == kind[2] and k != kind]
    kin = [v for v in kin if v is not None]
    return statistics.median(kin) if kin else None

  def eta(self) -> tuple[float, list[str]]:
    """(seconds left over the kinds with an estimate, the workloads without one: `mds
    vectorized (12)`, its runs left without an estimate counted over its optimizers)."""
    total, unknown = 0.0, collections.Counter()
    for kind, n in sorted(self.left.items()):
      if n <= 0:
        continue
      per = self.per_run(kind)
      if per is None:
        unknown[f"{kind[0]}{' vectorized' if kind[2] else ''}"] += n
      else:
        total += per * n
    return total, [f"{what} ({n})" for what, n in sorted(unknown.items())]

  def start(self, what: str, n: int = 1) -> None:
    """Prints `[first-last/total] what (elapsed, ETA)` for a program of `n` runs."""
    first = self.done + 1
    span = f"{first}" if n == 1 else f"{first}-{self.done + n}"
    elapsed = self._clock() - self._t0
    eta, unknown = self.eta()
    line = f"[{span}/{self.total}] {what} (elapsed {_duration(elapsed)}, ETA {_duration(eta)}"
    if unknown:
      line += f" + runs not timed yet: {', '.join(unknown)}"
    self._out(line + ")")

  def finish(self, kind: Kind, n: int, seconds: float, timed: bool = True) -> None:
    """`n` runs of `kind` took `seconds` in all; timed=False: they count as done but their
    seconds are no measure of a run (one resumed from a checkpoint)."""
    if timed:
      spent = self.spent[kind]
      spent[0] += seconds
      spent[1] += n
    self.left[kind] -= n
    self.done += n
