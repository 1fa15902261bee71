"""Loading `ml_collections` config files by path, as the binaries' `--config` flag does, and
the binaries' shared flag parsing (`parse_flags`; `run`, the scripts' `app.run`)."""

from __future__ import annotations

import importlib.util
import logging as py_logging
import os
import sys
from typing import Callable, NoReturn

from absl import flags
from absl import logging
import ml_collections

# absl's help flags: they print and exit 1; the binaries exit 0 (a user asked for the help).
HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def flag_args(argv: list[str]) -> list[str]:
  """The flag arguments of `argv` (before a `--` that ends them)."""
  args = list(argv[1:])
  return args[:args.index("--")] if "--" in args else args


def wants_help(argv: list[str]) -> bool:
  """Whether `argv` asks for a help flag."""
  return any(a.startswith("-") and a.lstrip("-").split("=", 1)[0] in HELP_FLAGS
             for a in flag_args(argv))


def parse_flags(argv: list[str], explain: Callable[[Exception], str],
                fail: Callable[[str], NoReturn]) -> list[str]:
  """absl's flag parsing for `app.run(..., flags_parser=...)`: a help flag exits 0, and a flag
  absl refuses goes to `fail(explain(error))` (the binary's one `ERROR:` line) instead of a
  traceback and absl's usage text."""
  help_asked = wants_help(argv)
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    if help_asked and e.code in (None, 0, 1):  # absl's help flags exit 1 after printing it
      sys.exit(0)
    raise
  except Exception as e:  # pylint: disable=broad-except
    fail(explain(e))


def fail(message: str, status: int = 2) -> NoReturn:
  """The binaries' one `ERROR:` line on stderr (whitespace folded), then exit `status`."""
  print(f"ERROR: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(status)


def run(main: Callable[[list[str]], object]) -> None:
  """`absl.app.run(main)` for the scripts under scripts/: `--help` exits 0 and a flag absl
  refuses (unknown, malformed) is one `ERROR:` line and status 2, as for the trainer and
  `compare`; `main`'s return value is the exit status, as absl's."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=lambda argv: parse_flags(
      argv, lambda e: f"{e} (--help lists the flags)", fail))


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


def quiet_library_info() -> None:
  """Drops two libraries' INFO chatter from absl's log handler, keeping their warnings: orbax's
  step-by-step save logs, and JAX's line for each optional backend it could not start on this
  machine (TPU, the IFRT proxy), which would otherwise come before every line a user reads."""
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or not (
          "/orbax/" in r.pathname or "Unable to initialize backend" in r.getMessage()))
