"""Where a number came from: the git commit and the library versions, for run records."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Sequence

# The repository root (this file is experiments/training/provenance.py).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("jax", "jaxlib", "optax", "flax", "chex", "orbax-checkpoint", "numpy",
            "ml-collections", "absl-py", "tensorboardX", "scikit-learn", "optuna")


def git_info() -> dict:
  """{"sha": HEAD or None, "dirty": uncommitted changes or None} of this checkout."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=10).stdout.strip()
  try:
    return {"sha": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
  except (OSError, subprocess.SubprocessError):
    return {"sha": None, "dirty": None}


def versions(packages: Sequence[str] = PACKAGES) -> dict:
  """Python's and each installed package's version (None when not installed)."""
  out = {"python": platform.python_version()}
  for pkg in packages:
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = None
  return out
