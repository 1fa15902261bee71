#!/usr/bin/env bash
# The main job: the CPU speedrun on the built-in corpus. Extra arguments go to the trainer,
# e.g. `bash scripts/speedrun.sh --config.optimizer.learning_rate=1e-3`.
# WORKDIR (default runs/speedrun_cpu) holds checkpoints and metrics; rerunning resumes there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
WORKDIR=${WORKDIR:-runs/speedrun_cpu}
CONFIG=${CONFIG:-configs/speedrun_cpu.py}
exec .venv/bin/python -m experiments.train --config="$CONFIG" --workdir="$WORKDIR" \
  --alsologtostderr "$@"
