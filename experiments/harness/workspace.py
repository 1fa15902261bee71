r"""WORKSPACE.md's results section, generated from a comparison's records.

  python -m experiments.compare all DIR --publish   # the sweep, then this as its last step

`update` replaces what lies between `<!-- results:begin -->` and `<!-- results:end -->`
(inserting the markers before the first `## ` heading when the file has none) with: the budget
each optimizer got, the AlgoPerf benchmark scores (Dahl et al. 2023, arXiv 2306.07179),
steps-to-target and time-to-target per workload with their spread over studies, per workload
one plain sentence, and every optimizer's ratios to the tuned baselines (AdamW, Muon), each with
its 95% bootstrap interval over studies and a rank test's p (`scoring.compare_to`): a ratio
whose interval contains 1 (or whose p is not below alpha) is "inconclusive"
(`scoring.inconclusive_text`).
`update` also rewrites README.md's headline between `<!-- headline:begin -->` and
`<!-- headline:end -->` (`headline`: the same ratios against AdamW, with the budget they took).
The text is a pure function of the records (no dates; fixed resampling seeds), so a rerun on the
same records leaves both files unchanged.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from experiments.harness import records as records_lib
from experiments.harness import report as report_lib
from experiments.harness import scoring

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin -->", "<!-- headline:end -->"
# The repository root (this file is experiments/harness/workspace.py).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def coverage(records: Sequence[dict]) -> dict[str, dict[str, tuple[int, int]]]:
  """optimizer -> workload -> (trials in its least-tried study, studies), for every workload in
  `records` ((0, 0) where the optimizer has no runs)."""
  workloads = sorted({r["workload"] for r in records})
  trials: dict[tuple, dict] = {}  # (optimizer, workload) -> study -> its trials
  for r in records:
    if scoring.is_tuning_trial(r):
      studies = trials.setdefault((r["optimizer"], r["workload"]), {})
      studies.setdefault(r["study"], set()).add(r["trial"])
  out: dict[str, dict[str, tuple[int, int]]] = {}
  for o in sorted({o for o, _ in trials}):
    out[o] = {}
    for w in workloads:
      per_study = [len(t) for t in trials.get((o, w), {}).values()]
      out[o][w] = (min(per_study), len(per_study)) if per_study else (0, 0)
  return out


def budget(records: Sequence[dict]) -> dict[str, tuple[int, int]]:
  """optimizer -> (trials per study, studies) on its best-covered workload (`coverage`): the
  budget its sweep gives every workload once done; `missing` lists where it is not yet."""
  return {o: max(per.values()) for o, per in coverage(records).items()}


def missing(records: Sequence[dict]) -> list[str]:
  """`optimizer: workload t x s, ...` where an optimizer got less than on its best-covered
  workload (a sweep still running, or stopped)."""
  out = []
  for o, per in coverage(records).items():
    most = max(per.values())
    short = [f"{w} {t} x {s}" for w, (t, s) in per.items() if (t, s) != most]
    if short:
      out.append(f"{o} ({most[0]} x {most[1]} elsewhere): {', '.join(short)}")
  return out


def budget_sentence(records: Sequence[dict]) -> str:
  """The budget line both generated sections print: trials per study x studies per optimizer,
  whether the tuning budget is the same for all, and what is still missing."""
  b = budget(records)
  trials = {t for t, _ in b.values()}
  text = ("**Budget** (trials per study x studies): " +
          ", ".join(f"{o} {t} x {s}" for o, (t, s) in b.items()))
  if len(trials) == 1:
    text += " - the same tuning budget per study for every optimizer"
    if len({s for _, s in b.values()}) > 1:
      text += " (fewer studies: wider intervals, not a handicap)"
    text += "."
  else:
    text += " - NOT the same for every optimizer: the scores are not a fair comparison."
  gaps = missing(records)
  if gaps:
    text += (" **Incomplete** (an optimizer without runs on a workload counts as never reaching "
             "its target there, so these scores are provisional): " + "; ".join(gaps) + ".")
  return text


def verdicts(records: Sequence[dict], workload: str, baseline: str,
             alpha: float) -> list[tuple[str, dict]]:
  """(optimizer, `scoring.compare_to`'s result for steps to target) for every other optimizer
  with runs on `workload`, by name. Samples: each study's best trial, so the noise measured is
  that of the whole tuning protocol."""
  return [(o, c) for (w, o), c in
          sorted(scoring.compare_to(records, baseline, "steps_to_target", alpha).items())
          if w == workload]


def workload_sentence(records: Sequence[dict], workload: str, baseline: str,
                      alpha: float) -> str:
  """One plain-language line: who reaches the target, and every optimizer's steps against the
  baseline's with its 95% interval and p, grouped into measurably fewer, measurably more and
  inconclusive."""
  medians = scoring.median_over_studies(records, "steps_to_target").get(workload, {})
  reached = sorted((m, o) for o, m in medians.items() if math.isfinite(m))
  if not reached:
    return f"- **{workload}**: no optimizer reached the target within the step budget."
  text = f"- **{workload}**: fastest {reached[0][1]} (median {reached[0][0]:.0f} steps)"
  if baseline not in medians:
    return text + f"; no {baseline} runs to compare with."
  base = medians[baseline]
  text += (f"; {baseline} {base:.0f} steps" if math.isfinite(base) else
           f"; {baseline} never reached the target")
  groups: dict[str, list[str]] = {k: [] for k in ("fewer", "more", "same", "only", "not")}
  both_never = []
  for o, c in verdicts(records, workload, baseline, alpha):
    if math.isnan(c["ratio"]):
      both_never.append(o)
    elif c["verdict"]:
      groups["fewer" if c["verdict"] < 0 else "more"].append(
          f"{o} {scoring.ratio_text(c, baseline)}")
    elif c["ratio"] == 0.0:
      groups["only"].append(f"{o} {scoring.interval_text(c)}")
    elif c["ratio"] == math.inf:
      groups["not"].append(f"{o} {scoring.interval_text(c)}")
    else:
      groups["same"].append(f"{o} {scoring.ratio_text(c, baseline)}")
  said = {"fewer": f"measurably fewer steps than {baseline}",
          "more": f"measurably more steps than {baseline}",
          "same": f"inconclusive against {baseline}",
          "only": f"reached it where {baseline} did not, inconclusive",
          "not": f"did not reach it where {baseline} did, inconclusive"}
  for k, words in said.items():
    if groups[k]:
      text += f"; {words}: {', '.join(groups[k])}"
  if both_never:
    text += f"; never reached, like {baseline}: {', '.join(both_never)}"
  return text + "."




def versus(records: Sequence[dict], baselines: Sequence[str] = ("adamw", "muon"),
           alpha: float = 0.01) -> list[str]:
  """Markdown: for each baseline with runs, every other optimizer's ratios to it with their
  intervals (`report.ratio_table`); then one plain line per optimizer saying where it measurably
  needs fewer or more steps than each baseline."""
  base = [b for b in baselines if any(r["optimizer"] == b for r in records)]
  if not base:
    return []
  lines = []
  found: dict[str, dict[str, tuple[list, list]]] = {}
  for b in base:
    table = report_lib.ratio_table(records, b, alpha)
    if not table:
      continue
    lines += ["", f"**Against tuned {b}**: {report_lib.ratios_legend(b, alpha)}", "", *table]
    for (w, o), c in sorted(scoring.compare_to(records, b, "steps_to_target", alpha).items()):
      fewer, more = found.setdefault(o, {}).setdefault(b, ([], []))
      if c["verdict"]:
        (fewer if c["verdict"] < 0 else more).append(
            f"{w} {scoring.ratio_text(c, b)}")
  if not lines:
    return []
  summary = []
  for o in sorted(set(found) - set(base)):
    said = []
    for b, (fewer, more) in found[o].items():
      said.append(f"measurably fewer steps than {b} on " + (", ".join(fewer) if fewer else
                                                             "no workload"))
      if more:
        said.append(f"measurably more than {b} on {', '.join(more)}")
    summary.append(f"- **{o}**: {'; '.join(said)}.")
  studies = max(len(v) for v in scoring.study_results(records).values())
  return lines[1:] + ["", *summary, "", f"With {studies} studies per optimizer the smallest "
                      "possible p is "
                      f"{2 / math.comb(2 * studies, studies):.2g}: only a large, consistent gap "
                      "over more studies can be measured."]


def headline(records: Sequence[dict], records_dir: str = "records", baseline: str = "adamw",
             alpha: float = 0.01) -> str:
  """README.md's results, between `<!-- headline:begin -->` and `<!-- headline:end -->`: the
  budget they took, then per workload every optimizer's steps to target against the baseline's,
  each ratio with its 95% interval and p (`workload_sentence`)."""
  cmd = f"python -m experiments.compare all {records_dir}"
  if not records:
    return f"No comparison recorded yet in `{records_dir}/`: run `{cmd}`."
  b = budget(records)
  optimizers = sorted(b)
  workloads = sorted({r["workload"] for r in records})
  lines = [f"Generated by `{cmd}` "
           f"from the {len(records)} runs in `{records_dir}/`: {len(optimizers)} optimizers on "
           f"{len(workloads)} workloads. Do not edit by hand.", "", budget_sentence(records), "",
           f"Steps to each workload's target against tuned {baseline}'s. "
           + report_lib.ratios_legend(baseline, alpha), ""]
  lines += [workload_sentence(records, w, baseline, alpha) for w in workloads]
  measurable = [(w, o, c) for (w, o), c in
                sorted(scoring.compare_to(records, baseline, "steps_to_target", alpha).items())
                if c["verdict"]]
  lines += ["", "Measurable differences from " + baseline + ": " +
            ("; ".join(f"{o} on {w}, {scoring.ratio_text(c, baseline)}" for w, o, c in measurable)
             + "." if measurable else "none at this budget.") +
            " Time to target, the scores and every table: WORKSPACE.md."]
  return "\n".join(lines)


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
  lines = [f"Generated by `{cmd}` "
           f"from {len(records)} runs in `{records_dir}/`; git {', '.join(shas)}; "
           f"{'; '.join(devices)}. Do not edit by hand.", ""]
  lines += [budget_sentence(records), ""]
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
  lines += ["**What it means, per workload** (steps to target against " + baseline + "'s; "
            "intervals and p as in the tables below):", ""]
  lines += [workload_sentence(records, w, baseline, alpha) for w in workloads]
  lines += [""] + versus(records, (baseline, "muon") if baseline != "muon" else (baseline,),
                         alpha)
  pngs = [f"compare_{w}.png" for w in workloads] + ["compare_profiles.png"]
  present = [p for p in pngs if os.path.exists(os.path.join(root, plots_dir, p))]
  if present:
    lines += [""] + [f"![{p[len('compare_'):-len('.png')]}]({plots_dir}/{p})" for p in present]
  return "\n".join(lines)


def replace_section(text: str, body: str) -> str:
  """`text` with the markers' content replaced by `body`; the markers are added before the
  first `## ` heading (or at the end) when missing."""
  new = _replace_between(text, BEGIN, END, body)
  if new is not None:
    return new
  block = f"{BEGIN}\n{body}\n{END}"
  at = text.find("\n## ")
  if at < 0:
    return text.rstrip("\n") + "\n\n" + block + "\n"
  return text[:at + 1] + "## Tuned comparison (generated)\n\n" + block + "\n\n" + text[at + 1:]


def _replace_between(text: str, begin: str, end: str, body: str) -> str | None:
  """`text` with what lies between the markers `begin` and `end` replaced by `body`; None
  when neither marker is in it; a ValueError when only one is."""
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    return head + f"{begin}\n{body}\n{end}" + rest.split(end, 1)[1]
  if begin in text or end in text:
    raise ValueError(f"only one of {begin} and {end} is in the file")
  return None


def replace_headline(text: str, body: str) -> str:
  """`text` with the headline markers' content replaced by `body`; unchanged without markers
  (the README's results paragraph is placed by hand, never inserted)."""
  new = _replace_between(text, HEADLINE_BEGIN, HEADLINE_END, body)
  return text if new is None else new


def _rewrite(path: str, edit) -> bool:
  with open(path) as f:
    old = f.read()
  new = edit(old)
  if new != old:
    with open(path, "w") as f:
      f.write(new)
  return new != old


def update(workspace: str, records_dir: str, plots_dir: str = "results",
           readme: str | None = None, **kwargs) -> bool:
  """Rewrites the section in `workspace` and the headline in `readme` (default: the
  README.md beside `workspace`, when it exists and has the headline markers) from
  `records_dir`; True if either file changed."""
  root = os.path.dirname(os.path.abspath(workspace))
  rel = os.path.relpath(records_dir, root)
  shown = rel if not rel.startswith("..") else records_dir
  records = records_lib.read_records(records_dir)
  changed = _rewrite(workspace, lambda old: replace_section(
      old, section(records, shown, plots_dir, root=root, **kwargs)))
  readme = readme or os.path.join(root, "README.md")
  if os.path.exists(readme):
    keep = {k: v for k, v in kwargs.items() if k in ("baseline", "alpha")}
    changed |= _rewrite(readme, lambda old: replace_headline(
        old, headline(records, shown, **keep)))
  return changed


BUDGETS_BEGIN, BUDGETS_END = "<!-- budgets:begin -->", "<!-- budgets:end -->"


def replace_budgets(text: str, body: str) -> str:
  """`text` with the budget comparison's markers' content replaced by `body`; the markers are
  appended at the end when the file has neither."""
  new = _replace_between(text, BUDGETS_BEGIN, BUDGETS_END, body)
  if new is not None:
    return new
  return text.rstrip("\n") + "\n\n" + f"{BUDGETS_BEGIN}\n{body}\n{BUDGETS_END}" + "\n"


def budgets_texts(records: Sequence[dict], records_dir: str, plots: dict[str, str],
                  baseline: str = "adamw", paired: bool = False, alpha: float | None = None,
                  computed: dict | None = None, plots_from_readme: dict[str, str] | None = None,
                  ) -> tuple[str, str]:
  """(README headline, WORKSPACE section) of a budget comparison (experiments/harness/
  budgets.py): the README gets the speed-up table per workload, the section everything
  (`budgets.headline`) and the plots. `plots` are paths relative to WORKSPACE.md,
  `plots_from_readme` relative to README.md (default: the same)."""
  from experiments.harness import budgets as budgets_lib  # pylint: disable=g-import-not-at-top
  alpha = budgets_lib.ALPHA if alpha is None else alpha
  if computed is None:
    computed = budgets_lib.results(records, None, baseline, paired, alpha)
  readme = budgets_lib.readme_headline(records, records_dir, computed, baseline, paired, alpha,
                                       plots_from_readme or plots,
                                       workspace_section="WORKSPACE.md, \"Comparisons a "
                                       "reviewer accepts\"")
  test = next((r["test"] for r in computed.values() if isinstance(r, dict)), None)
  section = (f"Generated by `{budgets_lib.command(records_dir, baseline, paired, None, test)}`."
             " Do not edit by hand.\n\n"
             + budgets_lib.headline(records, records_dir, None, baseline, paired, alpha,
                                    computed=computed)
             + "".join(f"\n\n![{w}]({p})" for w, p in sorted(plots.items())))
  return readme, section


def update_budgets(workspace: str, records_dir: str, plots: dict[str, str],
                   readme: str | None = None, **kwargs) -> bool:
  """Rewrites the budget comparison's section in `workspace` and the headline in `readme`
  (default: README.md beside `workspace`, when it exists) from `records_dir`; `plots`:
  {workload: png path}. True if either file changed. A pure function of the records (fixed
  resampling seeds): a rerun on the same records changes nothing."""
  root = os.path.dirname(os.path.abspath(workspace))
  rel = os.path.relpath(records_dir, root)
  shown = rel if not rel.startswith("..") else records_dir
  readme = readme or os.path.join(root, "README.md")
  records = records_lib.read_records(records_dir)
  rel_ws = {w: os.path.relpath(p, root) for w, p in plots.items()}
  rel_rm = {w: os.path.relpath(p, os.path.dirname(os.path.abspath(readme)))
            for w, p in plots.items()}
  head, section = budgets_texts(records, shown, rel_ws, plots_from_readme=rel_rm, **kwargs)
  changed = _rewrite(workspace, lambda old: replace_budgets(old, section))
  if os.path.exists(readme):
    changed |= _rewrite(readme, lambda old: replace_headline(old, head))
  return changed
