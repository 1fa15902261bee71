r"""Trains a model as a config file says; resumes from the checkpoints in --workdir if any.

  python -m experiments.train --config=configs/speedrun_cpu.py --workdir=runs/speedrun_cpu \
      --config.optimizer.learning_rate=1e-3

Exit status: 0 when done, 1 when the loss diverged (the last good checkpoint is kept), 128+N when
stopped by signal N after saving a checkpoint (resubmit the same command to resume).
"""

import os

# Before numpy/jax load OpenBLAS: JAX's CPU eigh/qr call it, and its thread pool fighting for
# busy cores made a batch of QRs (SOAP's basis refresh) hundreds of times slower here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import logging as py_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import checkpoints
from experiments import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax logs every save step by step at INFO; keep its warnings, drop the chatter.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "/orbax/" not in r.pathname)
  try:
    summary = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (trainer.TrainingDivergedError, checkpoints.CheckpointError) as e:
    logging.error("%s", e)
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  logging.info("Done: %s", summary)
  if summary["stopped_by_signal"]:
    sys.exit(128 + summary["stopped_by_signal"])


if __name__ == "__main__":
  app.run(main)
