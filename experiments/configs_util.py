"""Loading `ml_collections` config files by path, as the binaries' `--config` flag does."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` (a Python file with `get_config(arg=None)`) and applies dotted overrides."""
  arg = None
  if ":" in os.path.basename(path):
    path, arg = path.rsplit(":", 1)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("_config_module", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(arg) if arg is not None else module.get_config()
  for key, value in (overrides or {}).items():
    parent = cfg
    *head, last = key.split(".")
    for part in head:
      parent = parent[part]
    parent[last] = value
  return cfg
