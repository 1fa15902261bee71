"""Sphinx extension: the pages generated from the code (the optimizer registry, config keys).

At `builder-inited` it writes `docs/_generated/registry.rst` (one section per registry entry:
the builder's docstring through autodoc, its hyperparameters with defaults, its parity cases)
and `docs/_generated/config.rst` (every key of `configs/speedrun_cpu.py` with its default, type
and the description in `CONFIG_KEYS`). The parity cases are read from `tests/parity/*.py` by
parsing their source, so building the docs never imports torch. `tests/test_docs.py` uses the
same functions to check that every entry and every key is documented.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import re
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
PARITY_DIR = ROOT / "tests" / "parity"
PARITY_FILES = ("test_torch_optim.py", "test_pytorch_optimizer.py", "test_authors.py")

# ---------------------------------------------------------------------------------------------
# Registry entries.


def _paragraphs(doc: str) -> list[list[str]]:
  paras, cur = [], []
  for line in doc.splitlines():
    if line.strip():
      cur.append(line)
    elif cur:
      paras.append(cur)
      cur = []
  if cur:
    paras.append(cur)
  return paras


_FORMULA = re.compile(r"(^|;\s+)\s*[\w'^\[\]]+(,\s*[\w'^\[\]]+)* (<-|=) ")


def _formula_lines(lines: list[str]) -> int:
  """How many of `lines` (a paragraph) are formulas: `x <- ...` / `x = ...` at the start of a
  line or after a `;`; a line with `=` or `<-` elsewhere continues them."""
  if not lines or not _FORMULA.search(lines[0]):
    return 0
  n = 1
  while n < len(lines) and (_FORMULA.search(lines[n]) or re.search(r"(<-| = )", lines[n])):
    n += 1
  return n


def math_lines(doc: str) -> list[str]:
  """The update's formulas: the leading formula lines of the paragraph after the summary."""
  paras = _paragraphs(doc)
  return paras[1][:_formula_lines(paras[1])] if len(paras) >= 2 else []


def paper(doc: str) -> str:
  """The paper: the `References:` section, else the summary line's (Author, year ...) citation."""
  m = re.search(r"^References:\n((?:[ \t]+.*\n?)+)", doc, re.M)
  if m:
    return " ".join(line.strip() for line in m.group(1).splitlines())
  summary = doc.splitlines()[0] if doc else ""
  m = re.search(r"\(([^()]*\b(?:19|20)\d\d\b[^()]*)\)", summary)
  return m.group(1) if m else ""


def _requirement_versions() -> dict[str, str]:
  out = {}
  path = ROOT / "requirements-test.txt"
  if path.exists():
    for line in path.read_text().splitlines():
      m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
      if m:
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
  return out


# How the parity files' reference helpers read as the optimizer they build (display only; an
# unknown helper is shown as written).
_REFERENCE_HELPERS = (
    (r"^_torch\('(\w+)',\s*", r"torch.optim.\1("),
    (r"^_po\(po\.(\w+),\s*", r"pytorch_optimizer.\1("),
    (r"^_muon\(float32=True,\s*", "torch.optim.Muon(Newton-Schulz in float32, "),
    (r"^_muon\(", "torch.optim.Muon("),
    (r"^_kron\(", "pytorch_optimizer.Kron(our random draws, "),
    (r"^lambda p: _normuon\(p,\s*", "pytorch_optimizer.NorMuon(Newton-Schulz in float32, "),
    (r"^lambda p: ", ""),
    (r"^_sf_adamw\(", "schedulefree.AdamWScheduleFree(lr="),
    (r"^_sf_sgd\(", "schedulefree.SGDScheduleFree(lr="),
    (r"^_soap\(every, wd, shampoo_b2, lr\)$",
     "pytorch_optimizer.SOAP(precondition_frequency=every, weight_decay=wd, "
     "shampoo_beta=shampoo_b2, lr=lr)"),
    (r"\bpo\.", "pytorch_optimizer."),
    (r"\(p, ", "("),
)


def _reference(expr: str) -> str:
  for pattern, repl in _REFERENCE_HELPERS:
    expr = re.sub(pattern, repl, expr)
  return expr


def _call_name(node: ast.Call) -> str:
  f = node.func
  return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _module_strings(tree: ast.Module) -> dict[str, str]:
  """Module-level names bound to string expressions (e.g. `PO = "pytorch_optimizer"`)."""
  env: dict[str, Any] = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
        node.targets[0], ast.Name):
      try:
        value = eval(compile(ast.Expression(node.value), "<parity>", "eval"),
                     {"__builtins__": {}}, dict(env))
      except Exception:  # not a plain constant: not needed
        continue
      if isinstance(value, (str, dict)):
        env[node.targets[0].id] = value
  return env


def _evaluate(node: ast.AST | None, env: dict[str, Any]) -> Any:
  if node is None:
    return None
  try:
    return eval(compile(ast.Expression(node), "<parity>", "eval"),
                {"__builtins__": {}}, dict(env))
  except Exception:  # an expression of the tests' own helpers
    return None


def _render_id(node: ast.AST, env: dict[str, Any]) -> str:
  value = _evaluate(node, env)
  if isinstance(value, str):
    return value
  for sub in ast.walk(node):
    if isinstance(sub, ast.JoinedStr):
      return "".join(v.value if isinstance(v, ast.Constant) else
                     "{" + ast.unparse(v.value) + "}" for v in sub.values) + "..."
  return ast.unparse(node)


def _conventions(docstring: str) -> dict[str, str]:
  """The module docstring's per-entry notes: lines `  <entry>  <text>` and their continuations."""
  out, name = {}, None
  for line in docstring.splitlines():
    m = re.match(r"^  ([a-z_0-9]+)\s{2,}(\S.*)$", line)
    if m:
      name = m.group(1)
      out[name] = m.group(2)
    elif name and re.match(r"^\s{4,}\S", line):
      out[name] += " " + line.strip()
    else:
      name = None
  return out


def parity_cases() -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], dict[str, str]]:
  """Parsed from tests/parity: ({entry: [case]}, {entry: reason without a case}, {entry: note})."""
  versions = _requirement_versions()
  cases: dict[str, list[dict[str, Any]]] = {}
  none: dict[str, str] = {}
  notes: dict[str, str] = {}
  for filename in PARITY_FILES:
    path = PARITY_DIR / filename
    tree = ast.parse(path.read_text())
    env = _module_strings(tree)
    for entry, note in _conventions(ast.get_docstring(tree) or "").items():
      notes[entry] = (notes[entry] + " " + note) if entry in notes else note
    if isinstance(env.get("NONE"), dict):
      none.update(env["NONE"])
    default_package = None
    for node in tree.body:  # the file's `case(...)` helper: its package default
      if isinstance(node, ast.FunctionDef) and node.name == "case":
        for arg, default in zip(node.args.args[::-1], node.args.defaults[::-1]):
          if arg.arg == "package":
            default_package = _evaluate(default, env)
        for sub in ast.walk(node):
          if isinstance(sub, ast.Call):
            for kw in sub.keywords:
              if kw.arg == "package" and isinstance(kw.value, ast.Constant):
                default_package = kw.value.value
    # Case factories other than `case` (e.g. `_soap_case(every, wd, ...)`): one row per call.
    factories = {}
    for node in tree.body:
      if isinstance(node, ast.FunctionDef) and node.name != "case":
        for sub in ast.walk(node):
          if isinstance(sub, ast.Call) and _call_name(sub) == "Case" and any(
              kw.arg == "entry" and isinstance(kw.value, ast.Constant) for kw in sub.keywords):
            factories[node.name] = sub
    calls = []
    case_lists = [n.value for n in tree.body if isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id.endswith("CASES") for t in n.targets)]
    for node in (sub for value in case_lists for sub in ast.walk(value)):
      if isinstance(node, ast.Call) and _call_name(node) in factories:
        calls.append((factories[_call_name(node)], ast.unparse(node)))
      elif isinstance(node, ast.Call) and _call_name(node) in ("case", "Case"):
        calls.append((node, None))
    for node, factory_call in calls:
      fields = dict(zip(("id", "entry", "hparams", "reference", "tolerance", "why"), node.args))
      fields.update({kw.arg: kw.value for kw in node.keywords if kw.arg})
      entry = fields.get("entry")
      if not (isinstance(entry, ast.Constant) and isinstance(entry.value, str)):
        continue  # the helper's own body
      package = _evaluate(fields.get("package"), env) or default_package or "?"
      key = re.sub(r"[-_.]+", "-", package).lower()
      cases.setdefault(entry.value, []).append(dict(
          id=factory_call or _render_id(fields["id"], env), file=f"tests/parity/{filename}",
          package=package, version=versions.get(key, ""),
          reference=_reference(ast.unparse(fields["reference"])) if "reference" in fields else "",
          tolerance=_evaluate(fields.get("tolerance"), env),
          why=_evaluate(fields.get("why"), env) or ""))
  return cases, none, notes


def entry_docs(name: str) -> dict[str, Any]:
  """What the docs say about registry entry `name` (tests/test_docs.py checks every field)."""
  import optimizers
  builder = optimizers.get_builder(name)
  doc = inspect.getdoc(builder) or ""
  cases, none, notes = parity_cases()
  return dict(
      builder=f"{builder.__module__}.{builder.__qualname__}",
      summary=doc.splitlines()[0] if doc else "",
      math=math_lines(doc),
      paper=paper(doc),
      hyperparameters=optimizers.hyperparameters(name),
      parity=cases.get(name, []),
      parity_none=none.get(name, ""),
      parity_note=notes.get(name, ""))


def _default(value: Any) -> str:
  if value is inspect.Parameter.empty:
    return "(required)"
  return f"``{value!r}``"


def _cell(text: str) -> str:
  return " ".join(str(text).split()).replace("|", "\\|")


def registry_rst() -> str:
  import optimizers
  out = [".. This file is generated by docs/_ext/project_docs.py; do not edit.", ""]
  out += ["Summary", "=======", "", ".. list-table::", "   :header-rows: 1",
          "   :widths: 20 80", "", "   * - Name", "     - Summary"]
  for name in optimizers.names():
    d = entry_docs(name)
    out += [f"   * - :ref:`{name} <opt-{name}>`", f"     - {_cell(d['summary'])}"]
  out.append("")
  for name in optimizers.names():
    d = entry_docs(name)
    title = f"``{name}``"
    out += [f".. _opt-{name}:", "", title, "-" * len(title), "",
            f"**Paper**: {_cell(d['paper']).rstrip('.')}.", "",
            f"**Build**: ``optimizers.create(\"{name}\", ...)``, which calls:", "",
            f".. autofunction:: {d['builder']}", "", "**Hyperparameters** (defaults):", "",
            ".. list-table::", "   :header-rows: 1", "   :widths: 40 60", "",
            "   * - Hyperparameter", "     - Default"]
    for hp, value in d["hyperparameters"].items():
      out += [f"   * - ``{hp}``", f"     - {_default(value)}"]
    out += ["", "**Parity reference**:", ""]
    if d["parity"]:
      if d["parity_note"]:
        out += [f"Conventions matched: {_cell(d['parity_note'])}", ""]
      out += [".. list-table::", "   :header-rows: 1", "   :widths: 22 40 18 10", "",
              "   * - Case", "     - Reference", "     - Package", "     - Tolerance"]
      for c in d["parity"]:
        pkg = f"{c['package']} {c['version']}".strip()
        out += [f"   * - ``{c['id']}``", f"     - ``{_cell(c['reference'])}``",
                f"     - {pkg}", f"     - {c['tolerance']:g}" if isinstance(
                    c["tolerance"], float) else f"     - {c['tolerance']}"]
      out += ["", f"Cases in ``{d['parity'][0]['file']}``: the relative parameter difference "
              "after the last step must be at most the tolerance (``python -m tests.parity.table`` "
              "measures it). Why each tolerance:", ""]
      out += [f"* ``{c['id']}``: {_cell(c['why'])}" for c in d["parity"] if c["why"]] + [""]
    else:
      out += [f"No published reference: {_cell(d['parity_none'])}.", ""]
  return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The trainer's config keys (configs/speedrun_cpu.py): one description per key, here only.

CONFIG_KEYS = {
    "seed": "Seed of parameter initialization and data order.",
    # model
    "model.vocab_size": "Vocabulary size (256: bytes).",
    "model.num_layers": "Number of transformer blocks.",
    "model.width": "Residual stream width (model dimension).",
    "model.num_heads": "Attention heads per block (``width`` must be divisible by it).",
    "model.mlp_ratio": "MLP hidden width as a multiple of ``width``.",
    "model.max_seq_len": "Longest sequence the model accepts (``data.seq_len`` must not exceed "
                         "it).",
    "model.rope_base": "Base of the rotary position embeddings' frequencies.",
    "model.logit_softcap": "Soft cap ``c * tanh(logits / c)`` on the output logits (Gemma 2); "
                           "None or 0: no cap.",
    "model.remat": "Activation checkpointing: ``none``, ``block``, ``dots_saveable`` or "
                   "``offload_dots``; changes memory and time, not the math.",
    "model.dtype": "Compute dtype; parameters and optimizer states stay float32.",
    "model.init_std": "Standard deviation of the weight initialization; None: 1/sqrt(width).",
    "precision": "Mixed precision: ``bf16`` (bfloat16 compute, float32 master weights and "
                 "states), ``fp32``; None: ``model.dtype`` as set.",
    # data
    "data.source": "``stdlib`` (the built-in corpus of CPython sources), ``stdlib_docs`` (its "
                   "prose) or ``bin`` (FineWeb-style token shards).",
    "data.train_glob": "Glob of the training shards (``source=\"bin\"``).",
    "data.val_glob": "Glob of the validation shards (``source=\"bin\"``).",
    "data.cache_dir": "Where the built-in corpus is cached; None: ``$SOJ_CACHE_DIR`` or "
                      "``~/.cache/second_order_jax``.",
    "data.seq_len": "Tokens per training sequence.",
    # optimizer
    "optimizer.name": "Registry name (:doc:`optimizers`); the section's other keys are that "
                      "optimizer's hyperparameters (``optimizers.hyperparameters(name)``).",
    "optimizer.learning_rate": "Peak learning rate, scaled by ``schedule.lr_scaling`` and shaped "
                               "by the schedule.",
    "optimizer.embed_learning_rate": "Peak learning rate of the embeddings, the output head "
                                     "and the vectors (norm scales, biases), Muon's AdamW "
                                     "group, for any optimizer; the hidden matrices keep "
                                     "``learning_rate``. None: one rate for all.",
    "optimizer.b1": "First-moment (momentum) decay.",
    "optimizer.b2": "Second-moment decay.",
    "optimizer.eps": "Denominator epsilon.",
    "optimizer.weight_decay": "Decoupled weight decay (multiplied by the learning rate).",
    # schedule
    "schedule.name": "Learning-rate schedule: ``warmup_cosine``, ``wsd`` (warmup, stable, decay) "
                     "or ``constant``.",
    "schedule.warmup_steps": "Linear warmup from 0; at or above ``train.steps`` it is shortened "
                             "to the run (with a warning).",
    "schedule.final_lr_fraction": "Learning rate at the last step, as a fraction of the peak.",
    "schedule.decay_fraction": "``wsd`` only: fraction of the steps spent decaying.",
    "schedule.base_batch_size": "Batch size the peak rates were tuned at; rates are rescaled "
                                "for ``train.batch_size`` by ``lr_scaling``. None: no rescaling.",
    "schedule.lr_scaling": "How peak rates follow the batch: ``linear`` (Goyal et al. 2017), "
                           "``sqrt`` (Malladi et al. 2022) or ``none``.",
    # train
    "train.steps": "Total optimizer steps; the schedule spans them.",
    "train.stop_at_step": "End this invocation after this step (checkpointing first); rerunning "
                          "resumes. None: run to ``steps``.",
    "train.budgets": "Branched cooldowns (Hägele et al. 2024): sorted step budgets, the "
                     "longest equal to ``steps`` (``wsd`` schedule only); each shorter one forks "
                     "a cooldown off the run and records its final validation loss in "
                     "``budgets.jsonl``. Empty: off.",
    "train.batch_size": "Global batch, in sequences; each of its ``grad_accum_steps`` slices "
                        "must split evenly over the devices that hold batch rows.",
    "train.grad_accum_steps": "Gradient accumulation: the batch is processed in this many "
                              "slices per step.",
    "train.microbatches": "Pipeline parallelism (``mesh.stage`` > 1): micro-batches per "
                          "accumulation step.",
    "train.grad_clip_norm": "Clip the gradient to this global norm; None: no clipping.",
    "train.eval_every": "Steps between validation evaluations.",
    "train.target_val_loss": "Validation loss whose first eval step at or below it is logged as "
                             "``steps_to_target``; None: none.",
    "train.stop_at_target": "End the run at ``target_val_loss``.",
    "train.eval_batches": "Validation batches per evaluation.",
    "train.log_every": "Steps between training-metric rows in ``metrics.jsonl``.",
    "train.checkpoint_every": "Steps between checkpoints.",
    "train.checkpoint_every_s": "Also checkpoint at the first step after this many wall-clock "
                                "seconds since the last checkpoint; 0: only by steps.",
    "train.keep_checkpoints": "Checkpoints kept (the newest); None: every one.",
    "train.allow_config_change": "Resume under changed trajectory settings, recording the "
                                 "change (otherwise an error listing the differences).",
    "train.skip_nonfinite_updates": "Skip (do not apply) a step whose loss or update holds "
                                    "NaN/Inf, logged as ``skipped``.",
    "train.max_consecutive_skips": "Stop after more than this many skipped steps in a row.",
    "train.stall_warning_s": "Warn (with what to do) when no step finishes for this many "
                             "seconds; 0: never.",
    # parallelism
    "parallelism": "``jit`` (one jitted step over a device mesh; the main path) or ``pmap`` "
                   "(replicated data parallelism).",
    "mesh.data": "Data-parallel axis size: batch rows split, parameters replicated; -1: the "
                 "devices the other axes leave.",
    "mesh.fsdp": "ZeRO-3 axis size: parameters and optimizer states split over it too; -1: the "
                 "devices the other axes leave.",
    "mesh.model": "Tensor-parallel axis size (Megatron): attention heads and MLP units split.",
    "mesh.stage": "Pipeline-parallel stages (GPipe): the blocks split into contiguous stages.",
    # compression
    "compression.kind": "Gradient compression for data parallelism: ``none`` (plain all-reduce), "
                        "``powersgd``, ``topk`` or ``sign``.",
    "compression.rank": "PowerSGD rank.",
    "compression.min_compression_ratio": "PowerSGD: matrices compressed less than this are sent "
                                         "whole.",
    "compression.alternating": "PowerSGD: > 0, that many alternating half-steps.",
    "compression.fraction": "Top-k: share of each leaf's elements sent.",
    "compression.shared_indices": "Top-k: every device sends at one device's indices (cyclic).",
    "compression.uncompressed": "Regex on parameter paths whose leaves are sent uncompressed.",
    "compression.warmup_steps": "Plain all-reduce for this many first steps.",
    "compression.momentum": "> 0: DGC momentum correction (then use an optimizer without "
                            "momentum).",
    "compression.momentum_masking": "DGC: top-k zeroes the velocity it sent.",
    "compression.precondition": "``adam``: divide by sqrt(v) frozen after the warmup (1-bit "
                                "Adam); ``none``.",
    "compression.variance_refresh_every": "``precondition=\"adam\"``: > 0 refreshes v every so "
                                          "many steps.",
    "compression.precondition_after": "Precondition the exchanged mean instead of each device's "
                                      "gradient.",
    "compression.b2": "``precondition=\"adam\"``: decay of the variance average.",
    "compression.eps": "``precondition=\"adam\"``: denominator epsilon.",
    # distributed
    "distributed.enabled": "Call ``jax.distributed.initialize`` (cluster detected when there "
                           "is no coordinator).",
    "distributed.coordinator_address": "``host:port`` of process 0 (implies ``enabled``).",
    "distributed.num_processes": "Number of processes (with a coordinator).",
    "distributed.process_id": "This process's index (with a coordinator).",
    "distributed.cpu_collectives": "CPU backend's cross-process collectives: ``gloo`` or ``mpi``.",
    "distributed.initialization_timeout_s": "Seconds to wait for every process to join.",
    "distributed.preemption_check_every": "Steps between preemption checks (one small "
                                          "all-gather each).",
    # debug
    "debug.nonfinite_grad_steps": "Fault injection: comma-separated steps whose gradient is "
                                  "corrupted (tests the non-finite guards).",
    "debug.nonfinite_grad_kind": "The corruption: ``nan``, ``inf`` or ``huge`` (1e30).",
}


def config_keys() -> list[tuple[str, Any, str]]:
  """(key, default, type name) of every leaf of configs/speedrun_cpu.py's `get_config()`."""
  from configs import speedrun_cpu
  rows = []

  def walk(c, prefix):
    for k in sorted(c.keys()):
      v = c[k]
      if hasattr(v, "items"):
        walk(v, prefix + k + ".")
      else:
        t = c.get_type(k)
        rows.append((prefix + k, v, getattr(t, "__name__", str(t))))

  walk(speedrun_cpu.get_config(), "")
  return rows


def config_rst() -> str:
  out = [".. This file is generated by docs/_ext/project_docs.py; do not edit.", ""]
  sections: dict[str, list] = {}
  for key, value, type_name in config_keys():
    sections.setdefault(key.split(".")[0] if "." in key else "(top level)", []).append(
        (key, value, type_name))
  for section, rows in sections.items():
    title = section if section == "(top level)" else f"``{section}``"
    out += [title, "-" * len(title), "", ".. list-table::", "   :header-rows: 1",
            "   :widths: 28 14 8 50", "", "   * - Key", "     - Default", "     - Type",
            "     - Description"]
    for key, value, type_name in rows:
      out += [f"   * - ``{key}``", f"     - ``{value!r}``", f"     - {type_name}",
              f"     - {CONFIG_KEYS.get(key, '')}"]
    out.append("")
  return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Sphinx hooks.


def _write(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if not path.exists() or path.read_text() != text:  # unchanged: no rebuild
    path.write_text(text)


def _generate(app) -> None:
  out = pathlib.Path(app.srcdir) / "_generated"
  _write(out / "registry.rst", registry_rst())
  _write(out / "config.rst", config_rst())


def _builders() -> set[str]:
  import optimizers
  return {f"{b.__module__}.{b.__qualname__}" for b in map(optimizers.get_builder,
                                                          optimizers.names())}


def _math_as_literal(app, what, name, obj, options, lines) -> None:
  """A builder's formulas (see `math_lines`) as a literal block, their lines kept."""
  if what != "function" or name not in _builders():
    return
  starts = [i for i in range(1, len(lines)) if lines[i].strip() and not lines[i - 1].strip()]
  if not starts:
    return
  start = end = starts[0]
  while end < len(lines) and lines[end].strip():
    end += 1
  n = _formula_lines(lines[start:end])
  if n:
    rest = [""] if start + n < end else []
    lines[start:start + n] = ["::", ""] + ["  " + line for line in lines[start:start + n]] + rest


def setup(app):
  app.connect("builder-inited", _generate)
  # Before napoleon (priority 500): the raw docstring's paragraphs.
  app.connect("autodoc-process-docstring", _math_as_literal, priority=400)
  return {"version": "1", "parallel_read_safe": True}
