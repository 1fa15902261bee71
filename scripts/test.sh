#!/usr/bin/env bash
# The test suite, in .venv (created and filled from requirements.txt if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST_REQUIREMENTS=1 bash scripts/setup_venv.sh
# Lint first (pyproject.toml says which rules): a finding fails the run before any test.
.venv/bin/ruff check .
# One XLA compilation cache for the whole run, shared by the pytest workers and the trainer
# processes the tests start: many tests compile the same tiny train step (a resume test compiles
# it once per process), and a cache hit skips XLA. A new, empty cache each run, so every run
# (CI's included) compiles everything once; JAX_COMPILATION_CACHE_DIR=DIR keeps one instead.
# The size limit turns on the cache's file lock, so no process reads an entry half written.
if [[ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/test_xla_cache.XXXXXX")"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
export JAX_COMPILATION_CACHE_MAX_SIZE="${JAX_COMPILATION_CACHE_MAX_SIZE:-8000000000}"
# Two pytest workers by default (pytest-xdist): a test mostly compiles (one core each), so two
# workers roughly halve the suite on CI's 2 cores. More workers: TEST_WORKERS=N (each holds 8
# fake devices and 1-2 GB); TEST_WORKERS=0 runs in this process.
.venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist worksteal --durations=15 "$@"
