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


def _parse_flags(argv):
  """absl's flag parsing, with config-file and config-override mistakes as one line and a hint
  (`configs_util.parse_config_flags`); --help and --helpfull exit 0."""
  return configs_util.parse_config_flags(argv)


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
