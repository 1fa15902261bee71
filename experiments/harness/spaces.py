"""Search spaces as data: each optimizer's reference point, and one rule that builds every space.

Issue 39 (item 1): the hand-written ranges gave AdamW, the baseline, fewer and narrower
dimensions than the optimizers it is compared with (its learning-rate range cut off its optimum;
Muon tuned one learning rate per parameter group, AdamW one in all). Here an optimizer declares
only its reference point (`Reference`: the keys of its per-group learning rates and their
reference values, its momentum-like and b2-like keys, its weight-decay keys and convention, where
its warmup lives), and `build` applies one rule to all:

  * every learning rate (each group's): log-uniform over `LR_DECADES` decades centered
    geometrically on its reference, widened by whole decades (symmetrically) until it contains
    every old best value the reference lists;
  * the momentum-like hyperparameter (b1, Muon's / SGD's momentum) as `one_minus_<key>` over
    `ONE_MINUS_B1`, the b2-like one as `one_minus_<key>` over `ONE_MINUS_B2` (log-uniform: the
    distance to 1 is what matters);
  * weight decay log-uniform over `WEIGHT_DECAY`, the decoupled coefficient (multiplied by the
    learning rate, AdamW's convention); a coupled L2 (SGD) gets the range that gives the same
    per-step shrink at its reference momentum (`WEIGHT_DECAY` x (1 - momentum));
  * warmup as a fraction of the run, `warmup_fraction`, uniform (linear) over `WARMUP`; the run
    gets round(fraction x train.steps) warmup steps (`runs.run_config`).

AdamW (the baseline) gets every one of these dimensions; no optimizer gets a dimension AdamW
lacks (an optimizer's own extra knob stays at its config's value), so the baseline is tuned at
least as hard as anything it is compared with. Each space has an id (`space_id`: the optimizer
and a hash of its ranges) that every record of a drawn trial carries (`record["space"]`), so
records drawn from another space (older ones carry none: `LEGACY`) are never mixed with them.

`edges` finds the hyperparameters whose best trials sit at an edge of their range in several
studies; `extend` widens such a range by one decade (linear dimensions: by their width) on that
side, deterministically, and records the step in the new space's `history` (hence its id).
`EXTENSIONS` lists the extensions adopted, applied in order to the rule's spaces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from typing import Iterable, Sequence

from experiments.harness import scoring

# The rule's constants (NOTES_spaces.md says why each).
LR_DECADES = 2  # the narrowest learning-rate range, in decades
# b1 / momentum in [0.5, 0.99]: the legacy [0.7, 0.99] held the best momentum at 0.7 in 3 of 5
# studies (SGD on mds; PSGD on gpt_deep 2 of 3), and Schedule-Free won at 0.76 and 0.986.
ONE_MINUS_B1 = (1e-2, 0.5)
# b2 in [0.8, 0.998]: the legacy bests piled at b2 = 0.9, the old bound (AdamW and SOAP on the
# speedrun, 3 of 5 studies each); 0.998 reached two targets.
ONE_MINUS_B2 = (2e-3, 0.2)
WEIGHT_DECAY = (1e-4, 1e-1)  # decoupled: theta <- theta - lr * wd * theta
WARMUP = (0.0, 0.2)  # fraction of the run's steps
WARMUP_NAME = "warmup_fraction"
# Edge detection: a best value in the outer EDGE_FRACTION of its range (on the log scale for
# log dimensions) is at that edge; MIN_STUDIES studies so is a finding.
EDGE_FRACTION = 0.1
MIN_STUDIES = 3
EXTEND_DECADES = 1  # `extend` moves a log bound by this many decades


# What each dimension of the rule is for: the main (hidden-matrix) learning rate, the second
# group's (embeddings, head, vectors), momentum-like, b2-like, weight decay, warmup.
ROLES = ("learning_rate", "group_learning_rate", "b1", "b2", "weight_decay", "warmup")


@dataclasses.dataclass(frozen=True)
class Dim:
  """One dimension of a search space.

  name: the drawn name (`learning_rate`, `one_minus_b2`, `warmup_fraction`); `one_minus_<key>`
  sets <key> = 1 - the drawn value. log: log-uniform, else uniform. also: further keys set to
  the same value (Muon's `adam_weight_decay`, tied to its `weight_decay`). limits: the values
  `extend` may never pass. role: what the rule made it for (`ROLES`), the same across
  optimizers whose names differ (AdamW's `one_minus_b1`, Muon's `one_minus_momentum`).
  """
  name: str
  low: float
  high: float
  log: bool = True
  also: tuple[str, ...] = ()
  limits: tuple[float, float] = (0.0, math.inf)
  role: str = ""

  def position(self, value: float) -> float:
    """Where `value` (a drawn value) lies in the range: 0 at `low`, 1 at `high`."""
    if self.log:
      return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
    return (value - self.low) / (self.high - self.low)


@dataclasses.dataclass(frozen=True)
class Space:
  """An optimizer's search space: its dimensions in drawing order, how the drawn warmup reaches
  the run (`"schedule"`: schedule.warmup_steps; `"optimizer"`: the optimizer's own
  warmup_steps), and the extensions that made it (`(name, side, old bound, new bound)`)."""
  optimizer: str
  dims: tuple[Dim, ...]
  warmup: str = "schedule"
  history: tuple[tuple[str, str, float, float], ...] = ()

  def dim(self, name: str) -> Dim:
    """The dimension drawn as `name`."""
    for d in self.dims:
      if d.name == name:
        return d
    raise KeyError(f"{self.optimizer}'s space has no dimension {name!r}")

  def roles(self) -> dict[str, str]:
    """role -> drawn name, for the dimensions the rule made (`ROLES`)."""
    return {d.role: d.name for d in self.dims if d.role}

  def ranges(self) -> dict[str, tuple[float, float]]:
    """name -> (low, high), the shape of `records.SEARCH_SPACES`' entries."""
    return {d.name: (d.low, d.high) for d in self.dims}


@dataclasses.dataclass(frozen=True)
class Reference:
  """An optimizer's reference point, from which `build` makes its space.

  learning_rates: per parameter group, key -> reference value (the geometric center of its
    range); the hidden matrices' first, then the embeddings / head / vectors' group.
  old_best: key -> best values of earlier sweeps that the range must contain.
  b1, b2: the keys of its momentum-like and b2-like hyperparameters (None: it has none).
  weight_decay: its weight-decay keys (the first is the drawn name, the others are tied to it).
  coupled_momentum: for a coupled L2 (wd added to the gradient, then momentum with no
    dampening), the reference momentum that converts the decoupled range.
  warmup: see `Space`.
  """
  learning_rates: dict[str, float]
  old_best: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
  b1: str | None = "b1"
  b2: str | None = "b2"
  weight_decay: tuple[str, ...] = ("weight_decay",)
  coupled_momentum: float | None = None
  warmup: str = "schedule"


_GPT_ADAM = {"learning_rate": 1e-2, "embed_learning_rate": 1e-2}
# The old bests are those noted in the hand-written table this module replaced (issue 21's
# evidence, records/history/issue11): they must stay inside the new ranges.
REFERENCES: dict[str, Reference] = {
    # AdamW's best at the bottom of [1e-2, 1e-1] in 5 of 5 studies (issue 39): centered a
    # decade lower, 1e-2, the range [1e-3, 1e-1] holds the optimum that was cut off.
    "adamw": Reference(_GPT_ADAM, {"learning_rate": (0.0356, 0.0327, 2.3e-3)}),
    "adamw_8bit": Reference(_GPT_ADAM, {"learning_rate": (0.0356, 0.0327, 2.3e-3)}),
    "cautious": Reference(_GPT_ADAM, {"learning_rate": (0.0356,)}, b1="inner_hparams.b1",
                          b2="inner_hparams.b2"),
    # Grafted on Adam: AdamW's scale.
    "shampoo": Reference(_GPT_ADAM, {"learning_rate": (0.0356, 0.0327)}),
    # The SOAP authors' 3e-3 with b2 0.95 is Adam's scale too.
    "soap": Reference(_GPT_ADAM, {"learning_rate": (0.0356,)}),
    "schedule_free_adamw": Reference(_GPT_ADAM, {"learning_rate": (0.0356, 0.0327)},
                                     warmup="optimizer"),
    # AdEMAMix's alpha stays at its config's 5 (Pagliardini et al.: 5-8): AdamW has no
    # counterpart, and no entry gets a dimension the baseline lacks.
    "ademamix": Reference(_GPT_ADAM, {"learning_rate": (0.0183,)}),
    # Chen et al.: 3-10x below AdamW's rate; the old range's center.
    "lion": Reference({"learning_rate": 6.3e-3, "embed_learning_rate": 6.3e-3},
                      {"learning_rate": (3.6e-3,)}),
    # Geometric middle of the two rates that won, 9e-3; PSGD has no second moment.
    "psgd_kron": Reference({"learning_rate": 9e-3, "embed_learning_rate": 9e-3},
                           {"learning_rate": (0.0356, 2.3e-3)}, b2=None),
    # Muon 0.05 (4/5; Jordan's speedrun). Its AdamW group (embeddings, head, vectors): AdamW's
    # reference, 1e-2. The legacy studies' bests that reached a target spread from 9.6e-4
    # (speedrun) to 0.091 (logreg, where the legacy top, 0.1, held the best of 3-4 studies of
    # 5: `compare edges records/`), so the rule widens it to three decades, [3.2e-4, 0.32].
    "muon": Reference({"learning_rate": 5e-2, "adam_learning_rate": 1e-2},
                      {"learning_rate": (0.05,), "adam_learning_rate": (0.091, 9.6e-4)},
                      b1="momentum", b2="adam_b2",
                      weight_decay=("weight_decay", "adam_weight_decay")),
    "normuon": Reference({"learning_rate": 5e-2, "adam_learning_rate": 1e-2},
                         {"learning_rate": (0.05,), "adam_learning_rate": (0.091, 9.6e-4)},
                         b1="momentum", b2="adam_b2",
                         weight_decay=("weight_decay", "adam_weight_decay")),
    "dion": Reference({"learning_rate": 5e-2, "adam_learning_rate": 1e-2},
                      {"learning_rate": (0.05,), "adam_learning_rate": (0.091, 9.6e-4)},
                      b1="momentum", b2="adam_b2",
                      weight_decay=("weight_decay", "adam_weight_decay")),
    # Nesterov SGD (0.91, 0.82 won); weight decay is coupled L2 there (adam_family.sgd).
    "sgd": Reference({"learning_rate": 1.0, "embed_learning_rate": 1.0},
                     {"learning_rate": (0.91, 0.82)}, b1="momentum", b2=None,
                     coupled_momentum=0.9),
}

# The hand-written table this module replaced (every record without a `space` was drawn from
# it): kept so that old records can still be read against their own ranges (`edges`).
LEGACY = "legacy"
LEGACY_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "adamw": {"learning_rate": (1e-2, 1e-1), "one_minus_b2": (5e-3, 1e-1)},
    "adamw_8bit": {"learning_rate": (1e-2, 1e-1), "one_minus_b2": (5e-3, 1e-1)},
    "cautious": {"learning_rate": (1e-2, 1e-1), "one_minus_inner_hparams.b2": (5e-3, 1e-1)},
    "shampoo": {"learning_rate": (1e-2, 1e-1), "one_minus_b2": (5e-3, 1e-1)},
    "soap": {"learning_rate": (1e-2, 1e-1), "one_minus_b2": (5e-3, 1e-1)},
    "muon": {"learning_rate": (1.6e-2, 1.6e-1), "adam_learning_rate": (1e-4, 1e-1)},
    "normuon": {"learning_rate": (1.6e-2, 1.6e-1), "adam_learning_rate": (1e-4, 1e-1)},
    "dion": {"learning_rate": (1.6e-2, 1.6e-1), "adam_learning_rate": (1e-4, 1e-1)},
    "sgd": {"learning_rate": (0.3, 3.0), "one_minus_momentum": (1e-2, 0.3)},
    "lion": {"learning_rate": (2e-3, 2e-2), "one_minus_b2": (5e-3, 1e-1)},
    "schedule_free_adamw": {"learning_rate": (1e-2, 1e-1), "one_minus_b1": (1e-2, 0.3)},
    "ademamix": {"learning_rate": (1e-2, 1e-1), "alpha": (2.0, 10.0)},
    "psgd_kron": {"learning_rate": (3e-3, 3e-2), "one_minus_b1": (1e-2, 0.3)},
}

# Adopted extensions, per optimizer, in order: (drawn name, "low" | "high"), each applied with
# `extend` to the rule's space. Empty until a sweep's `compare edges` report is acted on.
EXTENSIONS: dict[str, tuple[tuple[str, str], ...]] = {}


def lr_range(reference: float, old_best: Sequence[float] = ()) -> tuple[float, float]:
  """`LR_DECADES` decades centered on `reference`, one more decade (half each side) at a time
  until every value of `old_best` lies inside."""
  decades = LR_DECADES
  while any(abs(math.log10(b / reference)) > decades / 2 for b in old_best):
    decades += 1
  half = 10.0 ** (decades / 2)
  return reference / half, reference * half


def build(optimizer: str, ref: Reference) -> Space:
  """The rule (module docstring): the space of `optimizer` from its reference point."""
  one_minus = (0.0, 1.0)
  dims = [Dim(k, *lr_range(v, ref.old_best.get(k, ())),
              role="learning_rate" if i == 0 else "group_learning_rate")
          for i, (k, v) in enumerate(ref.learning_rates.items())]
  if ref.b1:
    dims.append(Dim(f"one_minus_{ref.b1}", *ONE_MINUS_B1, limits=one_minus, role="b1"))
  if ref.b2:
    dims.append(Dim(f"one_minus_{ref.b2}", *ONE_MINUS_B2, limits=one_minus, role="b2"))
  if ref.weight_decay:
    shrink = 1.0 - ref.coupled_momentum if ref.coupled_momentum is not None else 1.0
    dims.append(Dim(ref.weight_decay[0], WEIGHT_DECAY[0] * shrink, WEIGHT_DECAY[1] * shrink,
                    also=tuple(ref.weight_decay[1:]), role="weight_decay"))
  dims.append(Dim(WARMUP_NAME, *WARMUP, log=False, limits=(0.0, 0.5), role="warmup"))
  return Space(optimizer, tuple(dims), ref.warmup)


def legacy_space(optimizer: str) -> Space:
  """The hand-written table's space of `optimizer` (all log-uniform)."""
  return Space(optimizer, tuple(Dim(k, lo, hi) for k, (lo, hi) in
                                LEGACY_RANGES[optimizer].items()))


def space_id(space: Space) -> str:
  """`<optimizer>-<8 hex>`: a hash of the dimensions and history, recorded with every trial."""
  blob = json.dumps([space.optimizer, space.warmup,
                     [dataclasses.astuple(d) for d in space.dims], space.history],
                    sort_keys=True, default=repr)
  return f"{space.optimizer}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------
# Edges and extensions.

@dataclasses.dataclass(frozen=True)
class Finding:
  """A hyperparameter whose best trials sit at one edge of its range in `count` of `studies`."""
  workload: str
  optimizer: str
  budget: float | None
  hparam: str  # the drawn name (`one_minus_b2`: "low" is b2 near 1)
  side: str  # "low" | "high"
  count: int
  studies: int
  space: str  # the id of the space the trials were drawn from

  def line(self) -> str:
    """One line of the report: workload optimizer budget hparam side count/studies space."""
    budget = "-" if self.budget is None else f"{self.budget:g}"
    return (f"{self.workload} {self.optimizer} {budget} {self.hparam} {self.side} "
            f"{self.count}/{self.studies} space={self.space}")


def _drawn_value(record: dict, dim: Dim) -> float | None:
  """The value `dim` drew for `record` (1 - b2 for `one_minus_b2`), None if not there."""
  hp = record.get("hparams", {})
  if dim.name.startswith("one_minus_"):
    v = hp.get(dim.name[len("one_minus_"):])
    return None if v is None else 1.0 - float(v)
  v = hp.get(dim.name)
  return None if v is None else float(v)


def _budget_loss(record: dict, budget) -> float:
  for m in record.get("budget_metrics") or ():
    if m.get("budget") == budget:
      v = m.get("val_loss")
      return math.inf if v is None or not math.isfinite(float(v)) else float(v)
  return math.inf


def best_per_study(records: Sequence[dict]) -> dict[float | None, list[dict]]:
  """budget -> each study's best trial among `records` (one workload, optimizer and space).

  Records carrying `budget_metrics` ([{"budget": B, "val_loss": x, ...}]): per budget B, the
  trial with the lowest val_loss at B. Others (budget None): `scoring.study_results`' rule.
  """
  out: dict[float | None, list[dict]] = {}
  with_budgets = [r for r in records if r.get("budget_metrics")]
  budgets = sorted({m["budget"] for r in with_budgets for m in r["budget_metrics"]})
  for b in budgets:
    by_study: dict = {}
    for r in with_budgets:
      if scoring.is_tuning_trial(r) and math.isfinite(_budget_loss(r, b)):
        by_study.setdefault(r["study"], []).append(r)
    if by_study:
      out[b] = [min(rs, key=lambda r: _budget_loss(r, b)) for _, rs in sorted(by_study.items())]
  plain = [r for r in records if not r.get("budget_metrics")]
  for bests in scoring.study_results(plain).values():
    out.setdefault(None, []).extend(bests)
  return out


def space_of(record: dict) -> tuple[str, Space | None]:
  """(id, space) of the space `record` was drawn from; None where it is unknown here."""
  sid = record.get("space") or LEGACY
  if sid == LEGACY:
    opt = record["optimizer"]
    return sid, legacy_space(opt) if opt in LEGACY_RANGES else None
  return sid, KNOWN.get(sid)


def tuning_records(records: Iterable[dict]) -> list[dict]:
  """The records `edges` looks at: trials drawn from a known space (not the self-tuning
  ruleset's, which draw nothing)."""
  return [r for r in records if space_of(r)[1] is not None and r.get("hparams")]


def edges(records: Iterable[dict], edge_fraction: float = EDGE_FRACTION,
          min_studies: int = MIN_STUDIES) -> list[Finding]:
  """Every (workload, optimizer, budget, space, hyperparameter, side) whose best trial lies in
  the outer `edge_fraction` of its range in at least `min_studies` studies.

  Records are grouped by workload, optimizer and the space that drew them (records of the
  self-tuning ruleset, drawn from no space, have no hyperparameters drawn and give nothing).
  """
  groups: dict[tuple, list[dict]] = {}
  for r in tuning_records(records):
    groups.setdefault((r["workload"], r["optimizer"], space_of(r)[0]), []).append(r)
  out = []
  for (w, o, sid), rs in sorted(groups.items()):
    space = space_of(rs[0])[1]
    for budget, bests in sorted(best_per_study(rs).items(),
                                key=lambda kv: (kv[0] is not None, kv[0] or 0)):
      for dim in space.dims:
        sides = {"low": 0, "high": 0}
        for r in bests:
          v = _drawn_value(r, dim)
          if v is None or (dim.log and v <= 0):
            continue
          p = dim.position(v)
          if p <= edge_fraction:
            sides["low"] += 1
          elif p >= 1.0 - edge_fraction:
            sides["high"] += 1
        for side, n in sides.items():
          if n >= min_studies:
            out.append(Finding(w, o, budget, dim.name, side, n, len(bests), sid))
  return out


def extend(space: Space, findings: Iterable[Finding | tuple[str, str]]) -> Space:
  """`space` with each finding's bound moved outward: a log dimension's by `EXTEND_DECADES`
  decades, a linear one's by its width, never past the dimension's limits. The other bound
  stays (the old best stays inside). Findings for other optimizers are ignored; each (name,
  side) is applied once, in sorted order, and recorded in the result's `history`."""
  wanted = sorted({(f.hparam, f.side) if isinstance(f, Finding) else tuple(f)
                   for f in findings
                   if not isinstance(f, Finding) or f.optimizer == space.optimizer})
  dims = {d.name: d for d in space.dims}
  history = list(space.history)
  for name, side in wanted:
    d = dims[name]
    old = d.low if side == "low" else d.high
    if d.log:
      factor = 10.0 ** EXTEND_DECADES
      new = old / factor if side == "low" else old * factor
    else:
      new = old - (d.high - d.low) if side == "low" else old + (d.high - d.low)
    # Clipped to the limits (b = 1 - x cannot go below 0; a warmup not past half the run).
    new = min(max(new, d.limits[0]), d.limits[1])
    if new == old or (d.log and new <= 0):
      warnings.warn(f"{space.optimizer}: {name}'s {side} bound {old:g} is at its limit")
      continue
    dims[name] = dataclasses.replace(d, **{side: new})
    history.append((name, side, old, new))
  return dataclasses.replace(space, dims=tuple(dims[d.name] for d in space.dims),
                             history=tuple(history))


def _rule_spaces() -> tuple[dict[str, Space], dict[str, Space]]:
  """(optimizer -> current space, id -> every space known: the rule's, each extension step's
  and the legacy ones)."""
  current, known = {}, {}
  for opt, ref in REFERENCES.items():
    space = build(opt, ref)
    known[space_id(space)] = space
    for step in EXTENSIONS.get(opt, ()):
      space = extend(space, [step])
      known[space_id(space)] = space
    current[opt] = space
  return current, known


SPACES, KNOWN = _rule_spaces()


def warmup_steps(fraction: float, steps: int) -> int:
  """The warmup steps of a drawn `warmup_fraction` in a run of `steps` steps."""
  return int(round(float(fraction) * int(steps)))


def static_names(optimizer: str) -> tuple[str, ...]:
  """Drawn names that a vectorized program cannot trace (one value per program): the warmup
  where the optimizer itself takes it as a step count (Schedule-Free's `warmup_steps`, which
  branches in Python); a schedule's warmup is traced (`train_state.make_schedule`)."""
  space = SPACES.get(optimizer)
  return (WARMUP_NAME,) if space is not None and space.warmup == "optimizer" else ()


def space_id_of(optimizer: str) -> str:
  """The id of `optimizer`'s current space."""
  return space_id(SPACES[optimizer])


# ---------------------------------------------------------------------------------------------
# Drawing.

def draw(space: Space, num_trials: int, study: int) -> list[dict]:
  """`num_trials` points of `space`, scrambled Sobol (optuna's QMCSampler) with seed `study`.

  Returns the values under the run's names (`one_minus_b2` becomes `b2` = 1 - x; a tied key
  gets its dimension's value), in the space's order: a pure function of its arguments.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  dists = {d.name: optuna.distributions.FloatDistribution(d.low, d.high, log=d.log)
           for d in space.dims}
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  with warnings.catch_warnings():
    # QMCSampler is marked experimental (optuna 5.0); Sobol warns when n is not a power of 2.
    warnings.simplefilter("ignore")
    sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=study)
    opt_study = optuna.create_study(sampler=sampler)
    # optuna draws a study's first trial with its independent (random) sampler; the Sobol
    # points start at the second, so the first is drawn and dropped.
    drawn = [opt_study.ask(dists).params for _ in range(num_trials + 1)][1:]
  out = []
  for params in drawn:
    hp = {}
    for d in space.dims:
      v = float(params[d.name])
      if d.name.startswith("one_minus_"):
        hp[d.name[len("one_minus_"):]] = 1.0 - v
      else:
        hp[d.name] = v
      for key in d.also:
        hp[key] = v
    out.append(hp)
  return out
