r"""Trains a model as a config file says; resumes from the checkpoints in --workdir if any.

  python -m experiments.train --config=configs/speedrun_cpu.py --workdir=runs/speedrun_cpu \
      --config.optimizer.learning_rate=1e-3

  python -m experiments.train --config=configs/speedrun_cpu_muon.py --print_config

Exit status: 0 when done (or already done, or after --help), 1 when the loss diverged (the last good
checkpoint is kept), 2 for a user error (bad config or flag, unusable data or checkpoint, workdir in
use: one `ERROR:` line says what and how to fix it; `--traceback` shows the Python traceback too),
3 when the workdir cannot be written (no space left, read-only, no permission, a file in the way:
one `ERROR:` line names the path and the cause; a checkpoint cut short is removed, so a rerun
resumes from the last complete one), 128+N when stopped by signal N after saving a checkpoint
(rerun the same command to resume).
"""

import os

# Before numpy/jax load OpenBLAS: JAX's CPU eigh/qr call it, and its thread pool fighting for
# busy cores made a batch of QRs (SOAP's basis refresh) hundreds of times slower here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import difflib
import importlib.util
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments.training import checkpoints
from experiments import configs_util
from experiments.problems import data
from experiments.parallel import distributed
from experiments.training import loop as trainer
from experiments.training import metrics
from experiments.training import validate
from experiments.training import workdir_lock

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False,
                                  "Print the resolved config (file plus overrides) and exit.")
_TRACEBACK = flags.DEFINE_bool("traceback", False,
                               "On a user error, print the Python traceback too.")

# Errors a user can fix from the message alone: one line, no traceback.
USER_ERRORS = (validate.ConfigError, checkpoints.CheckpointError, data.ShardError,
               workdir_lock.WorkdirLockedError, metrics.MetricsHistoryError, FileNotFoundError)


STORAGE_ERROR_STATUS = 3


def _fail_storage(error: checkpoints.StorageError):
  """One line and status 3. Standard output and error are closed first: orbax's and
  TensorStore's threads whose writes failed print tracebacks until the interpreter is gone."""
  if _TRACEBACK.value:
    traceback.print_exc()
  sys.stdout.flush()
  sys.stderr.flush()
  real = os.dup(checkpoints.real_stderr())
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)
  os.dup2(devnull, 2)
  os.write(real, f"ERROR: {' '.join(str(error).split())}\n".encode())
  sys.exit(STORAGE_ERROR_STATUS)


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
def _config_arg(argv) -> str | None:
  """The value of the last `--config` flag (`--config=x`, `--config x`, `-config=x`)."""
  args, spec = configs_util.flag_args(argv), None
  for i, a in enumerate(args):
    name, eq, value = a.lstrip("-").partition("=")
    if not a.startswith("-") or name != "config":
      continue
    if eq:
      spec = value
    elif i + 1 < len(args):
      spec = args[i + 1]
  return spec


def _available_configs() -> list[str]:
  try:
    return sorted(f"configs/{f}" for f in os.listdir(CONFIGS_DIR)
                  if f.endswith(".py") and not f.startswith("_"))
  except OSError:
    return []


def _config_file_problem(spec: str) -> str | None:
  """Why `--config=spec` cannot give a config (one line), or None when it can.

  Loads the file and calls `get_config` as ml_collections' flag will (everything after the first
  ':' is get_config's argument), so that a missing, failing or incomplete config file is a user
  error here rather than a traceback later.
  """
  path, *arg = spec.split(":", 1)
  if not os.path.isfile(path):
    available = _available_configs()
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


def _parse_flags(argv):
  """absl's flag parsing, with config-file and config-override mistakes as one line and a hint;
  --help and --helpfull exit 0."""
  spec = None if configs_util.wants_help(argv) else _config_arg(argv)
  if spec is not None:
    problem = _config_file_problem(spec)
    if problem:
      configs_util.fail(problem)

  def explain(e: Exception) -> str:
    if "--traceback" in argv:
      traceback.print_exc()
    return _explain_flag_error(argv, e)

  return configs_util.parse_flags(argv, explain, configs_util.fail)


def _explain_flag_error(argv, error: Exception) -> str:
  config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if config_path and overrides:
    try:
      base = configs_util.load(config_path)
    except Exception as e:  # pylint: disable=broad-except
      return f"--config={config_path}: cannot load it: {type(e).__name__}: {e}"
    for key in overrides:
      missing, close = validate.closest_key(base, key)
      if missing != key or close:
        hint = f"; did you mean {close!r}?" if close else ""
        return (f"--config.{key}: the config has no field {missing!r}{hint} "
                f"(--print_config lists every field)")
  text = str(error).strip().splitlines()
  return text[-1] if text else type(error).__name__


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    configs_util.fail("--config is required, e.g. --config=configs/speedrun_cpu.py")
  if _PRINT_CONFIG.value:
    print(config)
    return
  if not _WORKDIR.value:
    configs_util.fail("--workdir is required: the directory for checkpoints, metrics and logs")
  configs_util.quiet_library_info()  # the chatter would come before an `ERROR:` line too
  try:
    distributed.initialize(config)  # before any JAX computation
  except validate.ConfigError as e:
    configs_util.fail(e)
  try:
    summary = trainer.train_and_evaluate(config, _WORKDIR.value)
  except trainer.TrainingDivergedError as e:
    logging.error("%s", e)
    configs_util.fail(e, status=1)
  except checkpoints.StorageError as e:
    _fail_storage(e)
  except USER_ERRORS as e:
    if _TRACEBACK.value:
      traceback.print_exc()
    configs_util.fail(e)
  except OSError as e:  # a write failed mid-run (metrics, TensorBoard, run records)
    error = checkpoints.storage_error(e, _WORKDIR.value, "write to")
    if error is None:
      raise
    _fail_storage(error)
  _report(summary, config)
  if summary["stopped_by_signal"]:
    sys.exit(128 + summary["stopped_by_signal"])


def _report(summary: dict, config) -> None:
  val = summary["val_loss"]
  name = summary.get("metric", "val_loss")
  val_text = (f"{name} {val:.4f} (at step {summary['val_step']})" if val is not None
              else "no validation result yet")
  total = int(config.train.steps)
  if summary["already_complete"]:
    head = f"Already complete: step {summary['step']}/{total}, nothing to do"
  elif summary["stopped_by_signal"]:
    head = f"Stopped by signal {summary['stopped_by_signal']} at step {summary['step']}/{total}"
  elif summary["step"] < total and summary["steps_to_target"] is None:
    head = f"Paused at step {summary['step']}/{total} (rerun to continue)"
  else:
    head = f"Done: step {summary['step']}/{total}"
  target = ("" if summary["steps_to_target"] is None
            else f"; target reached at step {summary['steps_to_target']}")
  line = f"{head}; {val_text}{target}; workdir {_WORKDIR.value}"
  logging.info("%s", line)
  print(line, flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
