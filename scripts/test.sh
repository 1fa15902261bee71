#!/usr/bin/env bash
# The test suite, in .venv (created and filled from requirements.txt if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST_REQUIREMENTS=1 bash scripts/setup_venv.sh
# Two pytest workers by default (pytest-xdist): a test mostly compiles (one core each), so two
# workers roughly halve the suite on CI's 2 cores. More workers: TEST_WORKERS=N (each holds 8
# fake devices and 1-2 GB); TEST_WORKERS=0 runs in this process.
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist worksteal --durations=15 "$@"
