#!/usr/bin/env bash
# Creates .venv (if missing) with a Python >= 3.12 (scripts/find_python.sh; PYTHON=... picks one)
# and installs requirements.txt, the exact lock, into it (again only when the lock changed).
# WITH_TEST_REQUIREMENTS=1 (set by scripts/test.sh) also installs requirements-test.txt, the
# parity suite's reference implementations, the linter and the docs builder (test-only).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    echo "setup_venv: .venv is $(.venv/bin/python --version 2>&1 || echo broken);" \
         "the project needs Python >= 3.12: rebuilding it" >&2
    rm -rf .venv
  fi
fi
if [ ! -x .venv/bin/python ]; then
  PY=$(bash scripts/find_python.sh)
  "$PY" -m venv .venv
fi
install() {  # install FILE: pip install -r FILE unless the stamp says it is already in.
  local file=$1 stamp=.venv/.$1.sha256 want
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$file"
    echo "$want" > "$stamp"
  fi
}
install requirements.txt
if [ "${WITH_TEST_REQUIREMENTS:-0}" = 1 ]; then
  install requirements-test.txt
fi
