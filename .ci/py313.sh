#!/usr/bin/env bash
# Smoke job on the next Python (3.13): the lock installs, the package imports, the registry's
# unit tests pass, and a 20-step speedrun runs on the built-in corpus with the same hash as 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON313:-}
if [ -z "$PY" ]; then
  for c in python3.13 "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.13*/bin/python3; do
    if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
      PY=$c; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "ERROR: py313.sh: no Python 3.13 found (python3.13 or pyenv's 3.13.x); install one" \
       "(pyenv install 3.13) or set PYTHON313=/path/to/python3.13" >&2
  exit 1
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ci_py313.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
py=$tmp/venv/bin/python
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet -r requirements.txt
"$py" --version
"$py" -c 'import optimizers, models, experiments.train; print(len(optimizers.names()), "optimizers")'
"$py" -m pytest -q -p no:cacheprovider -n 0 tests/test_registry.py
"$py" -m experiments.train --config=configs/speedrun_cpu.py --workdir="$tmp/run" \
  --config.train.steps=20 --config.data.cache_dir="$tmp/corpus" 2>&1 | tail -3
"$py" - "$tmp/run" <<'PYEOF'
import json, os, sys
from experiments.problems import data
run = json.load(open(os.path.join(sys.argv[1], "run.json")))
text = json.dumps(run)
assert data.SHIPPED["stdlib"] in text, "run.json does not name the shipped corpus's hash"
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "metrics.jsonl"))]
val = [r["val_loss"] for r in rows if "val_loss" in r and r.get("step") == 20]
assert val, rows[-3:]
print(f"py313.sh: Python {sys.version.split()[0]}, corpus {data.SHIPPED['stdlib'][:16]}..., "
      f"val_loss at step 20: {val[-1]:.4f}")
PYEOF
