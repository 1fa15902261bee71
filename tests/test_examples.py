"""Every script in examples/ runs as a user would run it and ends with its own check passing."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_the_four_examples_exist():
  assert set(EXAMPLES) >= {"own_training_loop.py", "muon_custom_routing.py",
                           "schedule_free_eval.py", "sharded_mesh.py"}


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)  # as a user runs it: the script sets what it needs
  proc = subprocess.run([sys.executable, f"examples/{name}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{out[-4000:]}"
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith("OK:"), f"{name}: last line {last!r}"
