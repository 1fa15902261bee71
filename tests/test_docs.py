"""The docs build with warnings as errors, and say something about every entry and config key.

`docs/_ext/project_docs.py` generates the optimizer and config pages from the code; these tests
make a new registry entry without its math, paper or parity reference, or a new config key
without a description, fail here rather than go undocumented.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import optimizers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import project_docs  # noqa: E402


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
       "docs", str(tmp_path / "html")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
  page = (tmp_path / "html" / "optimizers.html").read_text()
  for name in optimizers.names():
    assert f'id="opt-{name.replace("_", "-")}"' in page, name  # docutils' id form
  config_page = (tmp_path / "html" / "config.html").read_text()
  for key, _, _ in project_docs.config_keys():
    assert key in config_page, key
  for example in ("own_training_loop", "muon_custom_routing", "schedule_free_eval",
                  "sharded_mesh"):
    assert f"examples/{example}.py" in (tmp_path / "html" / "examples.html").read_text()


def test_every_registry_entry_has_math_paper_defaults_and_parity():
  missing = {}
  for name in optimizers.names():
    d = project_docs.entry_docs(name)
    problems = []
    if not d["math"]:
      problems.append("no formulas in the paragraph after the builder's summary line")
    if not re.search(r"\b(19|20)\d\d\b", d["paper"]):
      problems.append("no paper (a References: section, or (Author, year) in the summary)")
    if not d["hyperparameters"]:
      problems.append("no hyperparameters")
    if not d["parity"] and not d["parity_none"].startswith("none, because"):
      problems.append("no parity case in tests/parity/ and no reason in NONE")
    if problems:
      missing[name] = problems
  assert not missing, f"registry entries missing docs: {missing}"


def test_parity_cases_are_read_from_the_parity_suite():
  cases, none, _ = project_docs.parity_cases()
  assert set(cases) | set(none) == set(optimizers.names())
  for entry, rows in cases.items():
    for row in rows:
      assert row["id"] and row["reference"] and row["version"], (entry, row)
      assert isinstance(row["tolerance"], float) and 0 < row["tolerance"] < 1, (entry, row)


def test_every_config_key_has_a_description():
  keys = {key for key, _, _ in project_docs.config_keys()}
  undescribed = sorted(keys - set(project_docs.CONFIG_KEYS))
  stale = sorted(set(project_docs.CONFIG_KEYS) - keys)
  assert not undescribed, f"config keys without a description in CONFIG_KEYS: {undescribed}"
  assert not stale, f"CONFIG_KEYS describes keys the config no longer has: {stale}"


def test_python_code_blocks_of_the_pages_run():
  """The getting-started page's snippets (and the front page's) run as written."""
  for page in ("index.rst", "getting_started.rst"):
    text = (ROOT / "docs" / page).read_text()
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text, re.M)
    assert blocks, page
    for block in blocks:
      code = "\n".join(line[3:] for line in block.splitlines())
      exec(compile(code, f"docs/{page}", "exec"), {})  # noqa: S102 (our own docs)
