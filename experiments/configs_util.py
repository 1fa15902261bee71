"""Loading `ml_collections` config files by path, as the binaries' `--config` flag does, and
the binaries' shared flag parsing (`parse_flags`; `run`, the scripts' `app.run`)."""

from __future__ import annotations

import difflib
import importlib.util
import logging as py_logging
import os
import sys
import traceback
from typing import Callable, NoReturn

from absl import flags
from absl import logging
import ml_collections
# `is_config_flag` is documented for outside users but not re-exported by the package.
from ml_collections.config_flags import config_flags

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
    rest = flags.FLAGS(argv)
    # A config file flag that failed to load keeps the error until its value is first read
    # (ml_collections' deferred error): read each given one here, where it is a flag error.
    for name in flags.FLAGS:
      flag = flags.FLAGS[name]
      if config_flags.is_config_flag(flag) and flag.present:
        getattr(flag.value, "keys")
    return rest
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
  refuses (unknown, malformed, a config file that does not load) and an `app.UsageError` or
  `validate.ConfigError` raised by `main` are one `ERROR:` line and status 2, as for the
  trainer and `compare`; `main`'s return value is the exit status, as absl's."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from experiments.training import validate  # pylint: disable=g-import-not-at-top

  def checked_main(argv):
    try:
      return main(argv)
    except (app.UsageError, validate.ConfigError) as e:
      fail(str(e))

  app.run(checked_main, flags_parser=lambda argv: parse_config_flags(
      argv, lambda e: f"{e} (--help lists the flags)"))


# The repository's configs/ (this file is experiments/configs_util.py).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_arg(argv) -> str | None:
  """The value of the last `--config` flag (`--config=x`, `--config x`, `-config=x`)."""
  args, spec = flag_args(argv), None
  for i, a in enumerate(args):
    name, eq, value = a.lstrip("-").partition("=")
    if not a.startswith("-") or name != "config":
      continue
    if eq:
      spec = value
    elif i + 1 < len(args):
      spec = args[i + 1]
  return spec


def available_configs() -> list[str]:
  """The config files of configs/, as `configs/<name>.py`."""
  try:
    return sorted(f"configs/{f}" for f in os.listdir(CONFIGS_DIR)
                  if f.endswith(".py") and not f.startswith("_"))
  except OSError:
    return []


def config_file_problem(spec: str) -> str | None:
  """Why `--config=spec` cannot give a config (one line), or None when it can.

  Loads the file and calls `get_config` as ml_collections' flag will (everything after the first
  ':' is get_config's argument), so that a missing, failing or incomplete config file is a user
  error here rather than a traceback later.
  """
  path, *arg = spec.split(":", 1)
  if not os.path.isfile(path):
    available = available_configs()
    stem = lambda f: os.path.splitext(os.path.basename(f))[0]
    close = difflib.get_close_matches(stem(path), [stem(f) for f in available], n=1, cutoff=0.6)
    hint = f"did you mean 'configs/{close[0]}.py'? " if close else ""
    what = "is a directory" if os.path.isdir(path) else "does not exist"
    return (f"--config={spec}: the config file {path!r} {what}; {hint}the configs are: "
            f"{', '.join(available) or '(none found in ' + CONFIGS_DIR + ')'}")
  try:
    module_spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    return _with_traceback(f"--config={spec}: loading {path!r} raised {type(e).__name__}: {e}")
  if not callable(getattr(module, "get_config", None)):
    return (f"--config={spec}: {path!r} defines no get_config(); a config file is a Python file "
            "with `def get_config(): ...` returning an ml_collections.ConfigDict (copy "
            "configs/speedrun_cpu.py)")
  try:
    config = module.get_config(*arg)
  except Exception as e:  # pylint: disable=broad-except
    call = f"get_config({arg[0]!r})" if arg else "get_config()"
    return _with_traceback(f"--config={spec}: {call} in {path!r} raised {type(e).__name__}: {e}")
  if config is None:
    return f"--config={spec}: get_config() in {path!r} returned None (a missing return?)"
  return None


def _with_traceback(message: str) -> str:
  if "--traceback" in sys.argv:
    traceback.print_exc()
  return message


def explain_flag_error(argv: list[str], error: Exception) -> str:
  """One line for a flag absl refused: an override naming no field of the config gets the
  closest field; otherwise the error's last line."""
  config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if config_path and overrides:
    try:
      base = load(config_path)
    except Exception as e:  # pylint: disable=broad-except
      return f"--config={config_path}: cannot load it: {type(e).__name__}: {e}"
    for key in overrides:
      missing, close = closest_key(base, key)
      if missing != key or close:
        hint = f"; did you mean {close!r}?" if close else ""
        listing = (" (--print_config lists every field)" if "print_config" in flags.FLAGS
                   else "")
        return f"--config.{key}: the config has no field {missing!r}{hint}{listing}"
  text = str(error).strip().splitlines()
  return text[-1] if text else type(error).__name__


def parse_config_flags(argv: list[str],
                       fallback: Callable[[Exception], str] | None = None) -> list[str]:
  """`parse_flags` for a binary with a `--config` file flag: a missing, failing or incomplete
  config file (`config_file_problem`) and an override naming no field (`explain_flag_error`)
  are one `ERROR:` line (status 2) with a hint; `--traceback` in argv prints the traceback too.
  `fallback` words any other refused flag (default: the error's last line)."""
  spec = None if wants_help(argv) else config_arg(argv)
  if spec is not None:
    problem = config_file_problem(spec)
    if problem:
      fail(problem)

  def explain(e: Exception) -> str:
    if "--traceback" in argv:
      traceback.print_exc()
    text = explain_flag_error(argv, e)
    return fallback(e) if fallback and not text.startswith("--config") else text

  return parse_flags(argv, explain, fail)


def closest_key(config: ml_collections.ConfigDict, dotted: str) -> tuple[str, str | None]:
  """(the first missing part of `dotted`, its closest existing sibling or None)."""
  node, done = config, []
  for part in dotted.split("."):
    if isinstance(node, ml_collections.ConfigDict) and part in node:
      node = node[part]
      done.append(part)
      continue
    siblings = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    match = difflib.get_close_matches(part, siblings, n=1, cutoff=0.5)
    here = ".".join(done + [part])
    return here, ".".join(done + [match[0]]) if match else None
  return dotted, None


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
