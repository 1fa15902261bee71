r"""WORKSPACE.md's results section, generated from a comparison's records.

  python -m scripts.update_workspace records/ [--workspace=WORKSPACE.md] [--out_dir=results]
  python -m experiments.compare all records/   # the sweep, then this as its last step

`update` replaces what lies between `<!-- results:begin -->` and `<!-- results:end -->`
(inserting the markers before the first `## ` heading when the file has none) with: the budget
each optimizer got, the AlgoPerf benchmark scores (Dahl et al. 2023, arXiv 2306.07179),
steps-to-target and time-to-target per workload with their spread over studies, Welch t-tests of
every speed-up over the baseline, and per workload one plain sentence saying which claimed
speed-ups are within noise. The text is a pure function of the records (no dates), so a rerun on
the same records leaves the file unchanged.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from experiments.harness import records as records_lib
from experiments.harness import report as report_lib
from experiments.harness import scoring

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# The repository root (this file is experiments/harness/workspace.py).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def budget(records: Sequence[dict]) -> dict[str, tuple[int, int]]:
  """optimizer -> (trials per study, studies), the most any of its workloads got."""
  trials: dict[str, set] = {}
  studies: dict[str, set] = {}
  for r in records:
    if isinstance(r["study"], int):
      trials.setdefault(r["optimizer"], set()).add((r["workload"], r["study"], r["trial"]))
      studies.setdefault(r["optimizer"], set()).add((r["workload"], r["study"]))
  out = {}
  for o in sorted(trials):
    per_study: dict[tuple, int] = {}
    for w, s, _ in trials[o]:
      per_study[(w, s)] = per_study.get((w, s), 0) + 1
    per_workload: dict[str, int] = {}
    for w, _ in studies[o]:
      per_workload[w] = per_workload.get(w, 0) + 1
    out[o] = (max(per_study.values()), max(per_workload.values()))
  return out


def verdicts(records: Sequence[dict], workload: str, baseline: str,
             alpha: float) -> list[tuple[str, float, float, dict]]:
  """(optimizer, its median steps, the baseline's, Welch's result) for every optimizer whose
  median steps-to-target on `workload` beats the baseline's: the claimed speed-ups. Samples:
  each study's best trial, so the noise tested is that of the whole tuning protocol."""
  results = {o: bs for (w, o), bs in scoring.study_results(records).items() if w == workload}
  if baseline not in results:
    return []
  steps = {o: [scoring._value(r, "steps_to_target") for r in bs]  # pylint: disable=protected-access
           for o, bs in results.items()}
  base_med = float(np.median(steps[baseline]))
  out = []
  for o in sorted(steps):
    med = float(np.median(steps[o]))
    if o != baseline and math.isfinite(med) and med < base_med:
      t = scoring.welch(steps[o], steps[baseline], alpha)
      if t["holds"] is None and min(len(steps[o]), len(steps[baseline])) < 2:
        t["why"] = "one study, no spread to test against"
      out.append((o, med, base_med, t))
  return out


def workload_sentence(records: Sequence[dict], workload: str, baseline: str,
                      alpha: float) -> str:
  """One plain-language line: who reaches the target, and which speed-ups are within noise."""
  medians = scoring.median_over_studies(records, "steps_to_target").get(workload, {})
  reached = sorted((m, o) for o, m in medians.items() if math.isfinite(m))
  if not reached:
    return f"- **{workload}**: no optimizer reached the target within the step budget."
  never = sorted(o for o, m in medians.items() if not math.isfinite(m))
  text = f"- **{workload}**: fastest {reached[0][1]} (median {reached[0][0]:.0f} steps)"
  if baseline not in medians:
    text += f"; no {baseline} runs to compare with"
  elif not math.isfinite(medians[baseline]):
    text += f"; {baseline} never reached the target, so any speed-up over it is unmeasured"
  else:
    claims = verdicts(records, workload, baseline, alpha)
    if not claims:
      text += f"; nothing beats {baseline} ({medians[baseline]:.0f} steps)"
    else:
      noise = [f"{o} ({m / b:.2f}x, p = {t['p']:.2g})" for o, m, b, t in claims
               if t["holds"] is False]
      real = [f"{o} ({m / b:.2f}x, p = {t['p']:.2g})" for o, m, b, t in claims if t["holds"]]
      untested = [f"{o} ({m / b:.2f}x: {t['why']})" for o, m, b, t in claims
                  if t["holds"] is None]
      if real:
        text += (f"; significantly fewer steps than {baseline} ({medians[baseline]:.0f}) at "
                 f"alpha = {alpha:g}: {', '.join(real)}")
      if noise:
        text += (f"; within noise of {baseline} ({medians[baseline]:.0f} steps): "
                 f"{', '.join(noise)}")
      if untested:
        text += (f"; fewer steps than {baseline} ({medians[baseline]:.0f}) but untested, so "
                 f"not a finding: {', '.join(untested)}")
  if never:
    text += f"; never reached: {', '.join(never)}"
  return text + "."


def versus(records: Sequence[dict], baselines: Sequence[str] = ("adamw", "muon"),
           alpha: float = 0.01) -> list[str]:
  """Markdown: every other optimizer's median steps to target as a ratio to each baseline's,
  per workload, with Welch's one-sided test of each speed-up; then one plain line per
  optimizer saying where it beats the tuned baselines."""
  medians = scoring.median_over_studies(records, "steps_to_target")
  results = scoring.study_results(records)
  workloads = sorted(medians)
  base = [b for b in baselines if any(b in medians[w] for w in workloads)]
  others = sorted({o for w in workloads for o in medians[w]} - set(base))
  if not base or not others:
    return []

  def cell(w, o, b) -> tuple[str, bool]:
    """(the cell's text, whether o needs fewer median steps than b)."""
    mo, mb = medians[w].get(o, math.inf), medians[w].get(b, math.inf)
    if not math.isfinite(mo):
      return "never", False
    if not math.isfinite(mb):
      return f"{b} never", True
    steps = [[scoring._value(r, "steps_to_target")  # pylint: disable=protected-access
              for r in results[(w, x)]] for x in (o, b)]
    significant = scoring.welch(*steps, alpha).get("holds")
    return f"{mo / mb:.2f}{'*' if significant else ''}", mo < mb

  lines = [f"**Against tuned {' and '.join(base)}**: median steps to target as a ratio to "
           f"{' / '.join(base)} (below 1: fewer steps; `*`: Welch p < {alpha:g} over the "
           "studies' best trials; `never`: not reached; `<baseline> never`: reached where the "
           "baseline did not, counted as fewer steps).", "",
           "| optimizer | " + " | ".join(workloads) + " |", "|---|" + "---|" * len(workloads)]
  summary = []
  for o in others:
    cells = {(w, b): cell(w, o, b) for w in workloads for b in base}
    lines.append(f"| {o} | " + " | ".join(" / ".join(cells[w, b][0] for b in base)
                                          for w in workloads) + " |")
    wins = {b: [cells[w, b][0].endswith("*") and w + "*" or w for w in workloads
                if cells[w, b][1]] for b in base}
    everywhere = [w for w in workloads if all(cells[w, b][1] for b in base)]
    said = "; ".join(f"fewer steps than {b} on {len(wins[b])}/{len(workloads)} workloads"
                     + (f" ({', '.join(wins[b])})" if wins[b] else "") for b in base)
    summary.append(f"- **{o}**: {said}; fewer median steps than "
                   + ("every baseline" if len(base) > 1 else base[0]) + " on "
                   + (f"{', '.join(everywhere)}." if everywhere else "no workload."))
  studies = max(len(v) for v in results.values())
  return lines + ["", *summary, "", f"A ratio without `*` is not a finding: with {studies} "
                  "studies per optimizer only a large, consistent gap passes the test."]


def section(records: Sequence[dict], records_dir: str = "records", plots_dir: str = "results",
            baseline: str = "adamw", r_max: float = 4.0, alpha: float = 0.01,
            root: str = _ROOT) -> str:
  """The markdown between the markers (without them); PNGs in `root/plots_dir` are linked."""
  cmd = f"python -m experiments.compare all {records_dir}"
  if not records:
    return (f"No comparison recorded yet in `{records_dir}/`. Run `{cmd}` (the CPU comparison; "
            "its budget is above) or add `--quick` to check the pipeline.")
  optimizers = sorted({r["optimizer"] for r in records})
  workloads = sorted({r["workload"] for r in records})
  shas = sorted({(r.get("git_sha") or "?")[:7] for r in records})
  devices = sorted({str(r.get("device")) for r in records})
  lines = [f"Generated by `python -m scripts.update_workspace {records_dir}` (run by `{cmd}`) "
           f"from {len(records)} runs in `{records_dir}/`; git {', '.join(shas)}; "
           f"{'; '.join(devices)}. Do not edit by hand.", ""]
  b = budget(records)
  fair = len(set(b.values())) == 1
  lines += ["**Budget** (trials per study x studies, on every workload): " +
            ", ".join(f"{o} {t} x {s}" for o, (t, s) in b.items()) +
            (" - the same for every optimizer." if fair else
             " - NOT the same for every optimizer: the scores are not a fair comparison."), ""]
  by_time = scoring.scores(records, r_max, "time_to_target_s")
  by_steps = scoring.scores(records, r_max, "steps_to_target")
  lines += [f"**AlgoPerf benchmark score** B (r_max = {r_max:g}; 1 = fastest on every workload, "
            f"0 = never within {r_max:g}x of the fastest; each workload's figure is the median "
            "over studies of each study's best trial):", "",
            "| optimizer | B by time to target | B by steps to target |", "|---|---|---|"]
  for o in sorted(optimizers, key=lambda o: (-by_time[o], -by_steps[o], o)):
    lines.append(f"| {o} | {by_time[o]:.3f} | {by_steps[o]:.3f} |")
  lines += ["", "**Steps to target**: median [min, max] over studies (number of studies); "
            "`never`: not reached within the step budget.", "",
            report_lib.table(records, "steps_to_target"), "",
            "**Training time to target (s)**, compilation included, evaluation excluded; same "
            "layout.", "", report_lib.table(records, "time_to_target_s"), ""]
  lines += [f"**Welch t-tests** of each speed-up over {baseline} (one-sided, steps to target of "
            f"each study's best trial, alpha = {alpha:g}):", ""]
  any_test = False
  for w in workloads:
    for o, med, base_med, t in verdicts(records, w, baseline, alpha):
      any_test = True
      if t["holds"] is None:
        lines.append(f"- {w}, {o} ({med:.0f} vs {base_med:.0f} steps): untestable, {t['why']}.")
      else:
        lines.append(f"- {w}, {o} ({med:.0f} vs {base_med:.0f} steps): t = {t['t']:.2f}, "
                     f"p = {t['p']:.3g}: {'significant' if t['holds'] else 'within noise'}.")
  if not any_test:
    lines.append(f"- no optimizer needs fewer median steps than {baseline} on any workload.")
  lines += ["", "**What it means, per workload:**", ""]
  lines += [workload_sentence(records, w, baseline, alpha) for w in workloads]
  against = versus(records, (baseline, "muon") if baseline != "muon" else (baseline,), alpha)
  if against:
    lines += [""] + against
  pngs = [f"compare_{w}.png" for w in workloads] + ["compare_profiles.png"]
  present = [p for p in pngs if os.path.exists(os.path.join(root, plots_dir, p))]
  if present:
    lines += [""] + [f"![{p[len('compare_'):-len('.png')]}]({plots_dir}/{p})" for p in present]
  return "\n".join(lines)


def replace_section(text: str, body: str) -> str:
  """`text` with the markers' content replaced by `body`; the markers are added before the
  first `## ` heading (or at the end) when missing."""
  block = f"{BEGIN}\n{body}\n{END}"
  if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]
  if BEGIN in text or END in text:
    raise ValueError(f"only one of {BEGIN} and {END} is in the file")
  at = text.find("\n## ")
  if at < 0:
    return text.rstrip("\n") + "\n\n" + block + "\n"
  return text[:at + 1] + "## Tuned comparison (generated)\n\n" + block + "\n\n" + text[at + 1:]


def update(workspace: str, records_dir: str, plots_dir: str = "results", **kwargs) -> bool:
  """Rewrites the section in `workspace` from `records_dir`; True if the file changed."""
  with open(workspace) as f:
    old = f.read()
  root = os.path.dirname(os.path.abspath(workspace))
  rel = os.path.relpath(records_dir, root)
  new = replace_section(old, section(records_lib.read_records(records_dir),
                                     rel if not rel.startswith("..") else records_dir,
                                     plots_dir, root=root, **kwargs))
  if new != old:
    with open(workspace, "w") as f:
      f.write(new)
  return new != old

