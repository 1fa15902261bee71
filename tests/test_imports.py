"""The project's import graph: no cycles, and the library never imports the scripts.

Data flows one way (../shared/STYLE.md): `scripts/` uses `experiments/`, which uses
`optimizers/` and `models/`; `configs/` are data. The graph is read from the source with `ast`,
so nothing is imported to build it.

Function-level imports count as edges like top-level ones. An import moved into a function to
dodge a cycle still ties the two modules together (neither can be read, tested or moved without
the other), so the layering this test guards is that of every import in the file. The one thing
not counted is the implicit import of a module's parent packages: importing `a.b` runs
`a/__init__.py`, but a package whose `__init__` gathers its submodules (the optimizer registry)
would otherwise be in a cycle with each of them by construction.
"""

from __future__ import annotations

import ast
import os

PACKAGES = ("optimizers", "models", "experiments", "scripts", "configs")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_modules(root: str = ROOT) -> dict[str, str]:
  """Dotted module name -> file path, for every `.py` file of the project's packages."""
  out = {}
  for package in PACKAGES:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
      dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
      rel = os.path.relpath(dirpath, root).split(os.sep)
      for name in sorted(filenames):
        if name.endswith(".py"):
          parts = rel if name == "__init__.py" else rel + [name[:-3]]
          out[".".join(parts)] = os.path.join(dirpath, name)
  return out


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
  """The dotted names one import statement may bind to a project module, most specific first."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  assert isinstance(node, ast.ImportFrom)
  if node.level:
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    base = ".".join(parts + ([node.module] if node.module else []))
  else:
    base = node.module or ""
  # `from pkg import name` imports the submodule `pkg.name` when there is one, else `pkg`.
  return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  """Module -> the project modules it imports (anywhere in the file, functions included)."""
  modules = project_modules(root)
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    edges = set()
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      names = _imported(node, module, is_package)
      if isinstance(node, ast.ImportFrom):
        # Each alias is a submodule or a name in the base module.
        subs = [n for n in names[:-1] if n in modules]
        edges.update(subs)
        if len(subs) < len(names) - 1 and names[-1] in modules:
          edges.add(names[-1])
      else:
        edges.update(n for n in names if n in modules)
    edges.discard(module)
    graph[module] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None when it has none."""
  state = {}  # module -> 1 while on the DFS path, 2 when done
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_graph_sees_the_project():
  graph = import_graph()
  assert {"optimizers", "optimizers.shampoo.shampoo", "experiments.training.loop",
          "scripts.bench_train_step", "configs.speedrun_cpu"} <= set(graph)
  assert "experiments.problems.data" in graph["experiments.training.loop"]
  assert "optimizers" in graph["experiments.training.loop"]


# The names modules had before they moved into the layer packages: gone, with no alias modules
# left behind (the project has no release and no outside users of them).
OLD_NAMES = ("trainer", "pmap_step", "sharding", "distributed", "pipeline", "compression",
             "memory", "checkpoints", "metrics", "validate", "watchdog", "workdir_lock",
             "provenance", "train_state", "workloads", "data", "finetune", "compare_plots")


def test_experiments_is_in_layers_with_no_alias_modules():
  import importlib  # pylint: disable=g-import-not-at-top
  packages = {m.split(".")[1] for m in project_modules() if m.count(".") >= 2 and
              m.startswith("experiments.")}
  assert {"training", "parallel", "problems", "harness"} <= packages
  # Top level: the two binaries and the config loader, nothing else.
  top = {m for m in project_modules() if m.startswith("experiments.") and m.count(".") == 1}
  assert top == {"experiments.train", "experiments.compare", "experiments.configs_util"} | {
      f"experiments.{p}" for p in packages}, top
  for old in OLD_NAMES:
    try:
      importlib.import_module(f"experiments.{old}")
    except ModuleNotFoundError:
      continue
    raise AssertionError(f"experiments.{old} still imports")
  # No module anywhere rebinds itself in sys.modules (the way an alias module works).
  for module, path in project_modules().items():
    with open(path) as f:
      assert "sys.modules[__name__]" not in f.read(), module
  # Paths a moved module derives from its own file still reach the repository root.
  from experiments.training import provenance  # pylint: disable=g-import-not-at-top
  assert os.path.exists(os.path.join(provenance.ROOT, "requirements.txt"))


def test_the_lower_layers_never_import_the_loop():
  graph = import_graph()
  for module, deps in graph.items():
    if module.startswith(("experiments.parallel", "experiments.problems")):
      assert not {d for d in deps if d.startswith("experiments.training.")} - {
          "experiments.training.train_state", "experiments.training.validate",
          "experiments.training.checkpoints"}, module


def test_the_main_loop_fits_on_one_screen():
  import inspect  # pylint: disable=g-import-not-at-top
  from experiments.training import loop  # pylint: disable=g-import-not-at-top
  lines = inspect.getsource(loop.loop).splitlines()
  assert len(lines) <= 80, len(lines)
  assert "periodic" in loop.__doc__ and "actions" in loop.loop.__doc__


def test_no_import_cycles():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_experiments_never_import_scripts():
  bad = {m: sorted(d for d in deps if d.split(".")[0] == "scripts")
         for m, deps in import_graph().items() if m.split(".")[0] == "experiments"}
  bad = {m: d for m, d in bad.items() if d}
  assert not bad, f"experiments/ imports scripts/: {bad}"


def test_the_library_never_imports_experiments_or_scripts():
  bad = {m: sorted(d for d in deps if d.split(".")[0] in ("experiments", "scripts"))
         for m, deps in import_graph().items() if m.split(".")[0] in ("optimizers", "models")}
  bad = {m: d for m, d in bad.items() if d}
  assert not bad, f"optimizers/ or models/ import experiments/ or scripts/: {bad}"
