#!/usr/bin/env bash
# The test suite, in .venv (created and filled from requirements.txt if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/python -m pytest -q "$@"
