"""pyproject.toml packages the library: the wheel's packages, data and dependency ranges.

The wheel is built from a copy of the packaged files (setuptools writes `build/` and an
`.egg-info` beside the sources), with the venv's own setuptools and no network. Its metadata
must declare ranges, not the lock's pins, so that installing the library into an environment
that already holds a compatible jax keeps that jax; pip's resolver checks it on this venv
(whose jax 0.12.1 is newer than the lowest declared), and `.ci/run` checks it again with a
real install into a second venv holding the lowest versions.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("optimizers", "models", "experiments", "configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("wheel")
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  for package in PACKAGES:
    shutil.copytree(os.path.join(ROOT, package), src / package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  (name,) = os.listdir(tmp_path / "dist")
  return tmp_path / "dist" / name


def _metadata(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    text = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  return names, text


def test_the_wheel_holds_the_packages_and_the_corpora(wheel):
  names, _ = _metadata(wheel)
  packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
  assert packages == {"optimizers", "optimizers/shampoo", "models", "experiments",
                      "experiments/harness", "experiments/parallel", "experiments/problems",
                      "experiments/training", "configs"}
  assert "experiments/harness/workspace.py" in names and "optimizers/shampoo/soap.py" in names
  assert not any(n.startswith(("tests/", "scripts/", "docs/", "examples/")) for n in names)
  for kind in ("stdlib", "stdlib_docs"):
    for split in ("train", "val"):
      assert f"experiments/problems/corpora/{kind}.{split}.xz" in names


def test_the_metadata_declares_ranges_that_hold_the_lock(wheel):
  _, text = _metadata(wheel)
  assert "Requires-Python: >=3.12\n" in text
  reqs = [Requirement(l.split(": ", 1)[1]) for l in text.splitlines()
          if l.startswith("Requires-Dist: ")]
  core = {r.name for r in reqs if r.marker is None}
  assert core == {"jax", "optax", "numpy"}  # the optimizers need nothing else
  extras = {r.name for r in reqs if r.marker is not None and "experiments" in str(r.marker)}
  assert {"flax", "orbax-checkpoint", "absl-py", "ml_collections"} <= extras
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    lock = dict(l.strip().split("==") for l in f if "==" in l and not l.startswith("#"))
  lock = {canonicalize_name(k): v for k, v in lock.items()}
  with open(os.path.join(ROOT, "requirements-lowest.txt")) as f:
    lowest = dict(l.strip().split("==") for l in f if "==" in l and not l.startswith("#"))
  lowest = {canonicalize_name(k): v for k, v in lowest.items()}
  for r in reqs:
    ops = {s.operator for s in r.specifier}
    assert ops == {">=", "<"}, f"{r}: a range with a tested lower end and a next-break cap"
    name = canonicalize_name(r.name)
    assert Version(lock[name]) in r.specifier, f"the lock's {r.name} is outside {r}"
    # The lower end is what .ci/lowest.sh installs and tests.
    (low,) = [s.version for s in r.specifier if s.operator == ">="]
    assert lowest.get(name) == low, f"{r.name}: requirements-lowest.txt has {lowest.get(name)}"


def test_installing_the_wheel_keeps_a_newer_compatible_jax(wheel):
  # Resolved offline against this venv: a newer jax than the lowest declared is already there.
  import jax  # pylint: disable=g-import-not-at-top
  out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                        "--quiet", "--report", "-", f"{wheel}[experiments]"],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  report = json.loads(out.stdout)
  would_install = {i["metadata"]["name"] for i in report["install"]}
  assert would_install == {"second-order-optimizers"}, would_install
  assert Version(jax.__version__) > Version("0.11.1")
