#!/usr/bin/env bash
# Regenerates the exact locks from the declared ranges, with pip's resolver (never by hand):
#   requirements.txt       pyproject.toml's dependencies + [experiments,test], newest in range
#   requirements-test.txt  the test-only references, linter and docs builder (TEST_ONLY below)
# Each is resolved in a new throwaway venv on the Python scripts/find_python.sh picks (3.12), so
# nothing of .venv leaks in. Then `bash scripts/test.sh` installs and tests the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
# Test-only: other authors' published optimizers for tests/parity/ (the library never imports
# them), the linter and Sphinx. torch==2.13.0 is the release the parity figures were taken with.
TEST_ONLY=(torch==2.13.0 schedulefree lion-pytorch pytorch_optimizer ruff filelock sphinx)
PY=$(bash scripts/find_python.sh)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lock.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip --quiet)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install ".[experiments,test]"
"${pip[@]}" uninstall -y second-order-optimizers
rm -rf build ./*.egg-info  # what setuptools left in the tree
{
  echo "# The exact lock (Python $("$tmp/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'), CPU), resolved by scripts/lock.sh from"
  echo "# pyproject.toml's ranges (dependencies + [experiments,test]). Do not edit by hand."
  "${pip[@]}" freeze --all --exclude pip --exclude setuptools --exclude wheel
} > "$tmp/base.txt"
"${pip[@]}" install "${TEST_ONLY[@]}"
{
  echo "# Test-only (scripts/lock.sh): the parity suite's references (tests/parity/; the library"
  echo "# never imports them), the linter (ruff) and the docs builder (Sphinx), with what they pull"
  echo "# in beyond requirements.txt. Do not edit by hand. torch==2.13.0 is PyPI's default build"
  echo "# here (Python 3.12 has no CPU wheel on the index): large, same results on the CPU."
  "${pip[@]}" freeze --all --exclude pip --exclude setuptools --exclude wheel \
    | grep -vxFf <(grep -v '^#' "$tmp/base.txt")
} > "$tmp/test.txt"
mv "$tmp/base.txt" requirements.txt
mv "$tmp/test.txt" requirements-test.txt
echo "lock.sh: wrote requirements.txt ($(grep -vc '^#' requirements.txt) pins) and" \
     "requirements-test.txt ($(grep -vc '^#' requirements-test.txt) pins)"
