"""A sweep's progress line: runs done / total, elapsed, and an ETA summed per workload.

Runs of different workloads differ by 100x in cost (a vectorized MDS trial takes milliseconds, a
trainer run of the CPU speedrun about 90 s), so one average over the runs done so far says
little about the runs left. Each (workload, vectorized or not) keeps its own seconds per run:
measured in this sweep once one of its runs has finished, before that the prior the caller
passes (e.g. from the records of earlier sittings), and where neither exists the ETA says which
kinds it does not count yet. Written here: clu's and absl's progress helpers time one loop, not
a mix of unlike ones.
"""

from __future__ import annotations

import collections
import statistics
import time
from typing import Callable, Iterable, Mapping, Sequence

Kind = tuple[str, bool]  # (workload, vectorized)


def _duration(seconds: float) -> str:
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def trainer_priors(records: Iterable[dict]) -> dict[Kind, float]:
  """Seconds per trainer run of each workload from earlier records: the median of their curves'
  last times (training time; a vectorized record's times come from its timing record and are
  not a program's wall-clock, so they are left out)."""
  times: dict[str, list[float]] = collections.defaultdict(list)
  for r in records:
    if r.get("vectorized_trials") or not r.get("curve"):
      continue
    times[r["workload"]].append(float(r["curve"][-1][1]))
  return {(w, False): statistics.median(ts) for w, ts in times.items()}


class Progress:
  """Counts runs across a sweep's programs and prints one line as each starts.

  kinds: one entry per run still to do, its (workload, vectorized); priors: seconds per run of
  a kind before this sweep measured one.
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

  def per_run(self, kind: Kind) -> float | None:
    seconds, runs = self.spent.get(kind, (0.0, 0))
    return seconds / runs if runs else self.priors.get(kind)

  def eta(self) -> tuple[float, list[str]]:
    """(seconds left over the kinds with an estimate, the workloads without one)."""
    total, unknown = 0.0, []
    for kind, n in sorted(self.left.items()):
      if n <= 0:
        continue
      per = self.per_run(kind)
      if per is None:
        unknown.append(f"{kind[0]}{' vectorized' if kind[1] else ''} ({n})")
      else:
        total += per * n
    return total, unknown

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

  def finish(self, kind: Kind, n: int, seconds: float) -> None:
    """`n` runs of `kind` took `seconds` in all."""
    spent = self.spent[kind]
    spent[0] += seconds
    spent[1] += n
    self.left[kind] -= n
    self.done += n
