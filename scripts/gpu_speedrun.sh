#!/usr/bin/env bash
# The GPU-sized speedrun (configs/speedrun_124m.py: 12 layers, width 768, 524,288 tokens per step)
# for a short stretch on one GPU, on the built-in corpus (a machine without network has no FineWeb
# shards): environment, step time, tokens/s, model FLOP utilization and the loss curve, written
# under $OUT. Then the CPU speedrun config (configs/speedrun_cpu.py) whole on the same GPU.
#
#   OUT=runs/gpu bash scripts/gpu_speedrun.sh [steps] [seconds for the 124M run]
#
# Wheels in .whl/ (packages the machine lacks, e.g. ml_collections) are installed to /tmp/site
# first. WORKSPACE.md ("The GPU speedrun") has the figures of the last run.
set -uo pipefail
OUT=${OUT:-runs/gpu}
STEPS=${1:-100}
LIMIT=${2:-330}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" - <<'EOF'
import importlib.metadata as md, jax
for p in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "ml_collections", "numpy"):
  try:
    print(p, md.version(p))
  except md.PackageNotFoundError:
    print(p, "missing")
print(jax.devices())
EOF
} 2>&1 | tee "$OUT/env.txt"

WD=/tmp/wd124m
rm -rf "$WD"
timeout "$LIMIT" "$PY" -m experiments.train --config=configs/speedrun_124m.py --workdir="$WD" \
    --config.data.source=stdlib --config.train.steps="$STEPS" \
    --config.schedule.warmup_steps=$((STEPS / 5)) --config.train.eval_every=$((STEPS / 2)) \
    --config.train.eval_batches=4 --config.train.log_every=10 \
    --config.train.checkpoint_every="$STEPS" --config.train.keep_checkpoints=1 \
    2>&1 | tee "$OUT/train_124m.log"
echo "124M run exit: ${PIPESTATUS[0]}" | tee -a "$OUT/train_124m.log"
cp "$WD/metrics.jsonl" "$OUT/metrics_124m.jsonl" 2>/dev/null

WD=/tmp/wdcpu
rm -rf "$WD"
timeout "${CPU_LIMIT:-120}" "$PY" -m experiments.train --config=configs/speedrun_cpu.py \
    --workdir="$WD" 2>&1 | tail -40 > "$OUT/train_cpu_config.log"
echo "CPU-config run exit: ${PIPESTATUS[0]}" | tee -a "$OUT/train_cpu_config.log"
cp "$WD/metrics.jsonl" "$OUT/metrics_cpu_config.jsonl" 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv >> "$OUT/env.txt" 2>&1
exit 0
