"""pyproject.toml packages the library: a wheel holds every package `pip install -e .` exposes.

The wheel is built from a copy of the packaged files (setuptools writes `build/` and an
`.egg-info` beside the sources), with the venv's own setuptools and no network.
"""

import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("optimizers", "models", "experiments", "configs")


def test_the_wheel_holds_the_packages_and_the_pins(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "requirements.txt", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  for package in PACKAGES:
    shutil.copytree(os.path.join(ROOT, package), src / package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  (wheel,) = os.listdir(tmp_path / "dist")
  with zipfile.ZipFile(tmp_path / "dist" / wheel) as z:
    names = z.namelist()
    metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
  assert packages == {"optimizers", "optimizers/shampoo", "models", "experiments",
                      "experiments/harness", "experiments/parallel", "experiments/problems",
                      "experiments/training", "configs"}
  assert "experiments/harness/workspace.py" in names and "optimizers/shampoo/soap.py" in names
  assert not any(n.startswith(("tests/", "scripts/")) for n in names)
  # The dependencies are requirements.txt's pins, every one of them.
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  assert pins and all(f"Requires-Dist: {pin}\n" in metadata for pin in pins)
