#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 (3.12 preferred: the version the lock is tested on).
# Sourced or run by scripts/setup_venv.sh and scripts/lock.sh. Looks at $PYTHON (when set, only
# there), python3.12, python3, pyenv's installed 3.12.x, python3.13, pyenv's 3.13.x and newer.
# With none, prints one line saying what to install and exits 1.
set -euo pipefail

version_of() {  # version_of CMD: "3.12" or nothing (a pyenv shim for a missing version fails).
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

candidates=()
if [ -n "${PYTHON:-}" ]; then
  candidates=("$PYTHON")
else
  pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  candidates=(python3.12 python3)
  candidates+=("$pyenv_root"/versions/3.12*/bin/python3)
  candidates+=(python3.13 "$pyenv_root"/versions/3.1[3-9]*/bin/python3)
fi
fallback=""
for c in "${candidates[@]}"; do
  command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
  v=$(version_of "$c")
  [ -n "$v" ] || continue
  minor=${v#3.}
  if [ "${v%%.*}" = 3 ] && [ "$minor" -ge 12 ]; then
    path=$(command -v "$c" 2>/dev/null || echo "$c")
    if [ "$v" = 3.12 ]; then echo "$path"; exit 0; fi
    [ -n "$fallback" ] || fallback=$path
  fi
done
if [ -n "$fallback" ]; then echo "$fallback"; exit 0; fi
if [ -n "${PYTHON:-}" ]; then
  echo "ERROR: PYTHON=$PYTHON is not a Python >= 3.12; point it at one (e.g. PYTHON=python3.12)" >&2
else
  echo "ERROR: no Python >= 3.12 found (tried python3.12, python3, python3.13 and pyenv's" \
       "versions); install one (pyenv install 3.12, or apt-get install python3.12) or set" \
       "PYTHON=/path/to/python3.12" >&2
fi
exit 1
