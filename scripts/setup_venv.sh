#!/usr/bin/env bash
# Creates .venv (if missing) and installs requirements.txt into it (again only when it changed).
# WITH_TEST_REQUIREMENTS=1 (set by scripts/test.sh) also installs requirements-test.txt, the
# parity suite's reference implementations (torch CPU and others; test-only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
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
