"""README's headline, recomputed from `records/budgets/` without the harness.

An audit written apart from experiments/harness/budgets.py, from the method as README's
footnote states it: each study's best trial at each budget (the lowest loss; a study counts once
all its trials ran), medians over studies, the baseline's curve from the studies both share (the
paired design) made non-increasing, the baseline budget that reaches the optimizer's loss by
linear interpolation in log budget, divided by the budget; beyond the baseline's budgets a
bound (≤ / ≥). It imports nothing of the project, so a change to the harness that moved a
published figure away from what the README says it is fails here.

The headline names how many runs it was made from (N); records are only ever appended, so while
a sweep runs on (or a refusal to publish, `compare edges`, holds the headline back) it is
checked against the N runs that finished first, by their `finished` stamps.
"""

import collections
import glob
import json
import math
import os
import re
import statistics

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELL = re.compile(r"^\**\s*(≤|≥)?\s*([0-9.]+)x(?: \[(≤ |≥ )?([0-9.]+), (≤ |≥ )?([0-9.]+)\])?")


def _records() -> list[dict]:
  """The tuning runs of records/budgets/ (studies 1000+ are reference runs), oldest first."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "records", "budgets", "*.jsonl"))):
    with open(path) as f:
      out += [json.loads(line) for line in f if line.strip()]
  return sorted((r for r in out if r["study"] < 1000), key=lambda r: r["finished"])


def _published_records(headline: str) -> list[dict]:
  """The runs the headline was made from: the first N it names."""
  records = _records()
  (runs,) = re.findall(r"from the (\d+) tuning runs", headline)
  assert int(runs) <= len(records), (runs, len(records))
  return records[:int(runs)]


def _headline() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  return text[text.index("<!-- headline:begin -->"):text.index("<!-- headline:end -->")]


def _tables(headline: str) -> list[tuple[str, str, list[int], list[list[str]]]]:
  """(workload, baseline, budgets, rows of cells) of every table in the headline."""
  found = re.findall(r"\*\*(\w+)\*\* \([^\n]*\n\n\| speed-up over (\w+) \|([^\n]*)\n\|[-| ]*\n"
                     r"((?:\|[^\n]*\n)+)", headline)
  return [(w, base, [int(b) for b in re.findall(r"(\d+) steps", hdr)],
           [[c.strip() for c in row.strip().strip("|").split("|")]
            for row in rows.strip().splitlines()]) for w, base, hdr, rows in found]


def _loss_at(record: dict, budget: int) -> float | None:
  for m in record.get("budget_metrics") or ():
    if m["budget"] == budget:
      v = m.get(record.get("metric", "val_loss"))
      return math.inf if v is None or not math.isfinite(v) else float(v)
  return None


def _speedup(loss: float, budgets: list[int], curve: list[float], budget: int):
  """(bound sign or "", baseline budget reaching `loss` / `budget`)."""
  if loss > curve[0]:
    return "≤", budgets[0] / budget
  if loss < curve[-1]:
    return "≥", budgets[-1] / budget
  for (b0, c0), (b1, c1) in zip(zip(budgets, curve), zip(budgets[1:], curve[1:])):
    if c0 >= loss >= c1:
      frac = 0.0 if c0 == c1 else (c0 - loss) / (c0 - c1)
      return "", math.exp(math.log(b0) + frac * (math.log(b1) - math.log(b0))) / budget
  raise AssertionError("unreachable: the curve is non-increasing")


def test_every_headline_speedup_is_recomputed_from_the_records():
  headline = _headline()
  records = _published_records(headline)
  tables = _tables(headline)
  assert tables, "no table in README's headline"
  checked = 0
  for workload, base, budgets, rows in tables:
    rs = [r for r in records if r["workload"] == workload]
    planned = max(r.get("trials_per_study") or 0 for r in rs)
    trials = collections.defaultdict(set)
    for r in rs:
      trials[(r["optimizer"], r["study"])].add(r["trial"])
    complete = {k for k, v in trials.items() if len(v) >= planned}

    def best(optimizer, study, budget):
      losses = [_loss_at(r, budget) for r in rs
                if r["optimizer"] == optimizer and r["study"] == study]
      return min(v for v in losses if v is not None)

    base_budgets = sorted({m["budget"] for r in rs if r["optimizer"] == base
                           for m in r["budget_metrics"]})
    for cells in rows:
      optimizer = cells[0]
      studies = sorted(s for o, s in complete if o == optimizer and (base, s) in complete)
      assert studies, (workload, optimizer)
      curve = [statistics.median(best(base, s, b) for s in studies) for b in base_budgets]
      for i in range(1, len(curve)):
        curve[i] = min(curve[i], curve[i - 1])
      for budget, cell in zip(budgets, cells[1:]):
        loss = statistics.median(best(optimizer, s, budget) for s in studies)
        sign, value = _speedup(loss, base_budgets, curve, budget)
        m = CELL.match(cell)
        assert m, cell
        # The README prints two decimals: agreement to half a unit of the last one.
        assert (m.group(1) or "") == sign and abs(float(m.group(2)) - value) <= 0.005 + 1e-9, (
            workload, optimizer, budget, cell, sign, value)
        if m.group(4) is not None:  # the interval holds the point estimate
          assert float(m.group(4)) <= float(m.group(2)) <= float(m.group(6)), cell
        checked += 1
  assert checked >= 4 * 6


def test_the_headline_counts_are_the_records():
  headline = _headline()
  tuning = _published_records(headline)
  for workload, counts in re.findall(r"\*\*(\w+)\*\* \([^\n]*Trials per study x studies: "
                                     r"([^\n]*)\.", headline):
    rs = [r for r in tuning if r["workload"] == workload]
    planned = max(r.get("trials_per_study") or 0 for r in rs)
    for optimizer, per, studies in re.findall(r"(\w+) (\d+) x (\d+)", counts):
      trials = collections.defaultdict(set)
      for r in rs:
        if r["optimizer"] == optimizer:
          trials[r["study"]].add(r["trial"])
      assert int(per) == planned
      assert int(studies) == sum(len(t) >= planned for t in trials.values()), optimizer


@pytest.mark.parametrize("cell,parsed", [
    ("2.49x [2.16, 2.84]*", (None, "2.49", "2.16", "2.84")),
    ("**≥ 2.00x [1.98, ≥ 2.00]***", ("≥", "2.00", "1.98", "2.00")),
    ("≤ 1.00x [≤ 1.00, ≤ 1.00]*", ("≤", "1.00", "1.00", "1.00")),
])
def test_cells_parse(cell, parsed):
  m = CELL.match(cell)
  assert (m.group(1), m.group(2), m.group(4), m.group(6)) == parsed
