#!/usr/bin/env bash
# The declared ranges' lower ends, tested: a second venv gets requirements-lowest.txt (each
# lower bound exactly), then `pip install ".[experiments]"` of this tree, which must keep every
# one of them (the ranges admit them: nothing is up- or downgraded), then the optimizers' tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/find_python.sh)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ci_lowest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip --quiet)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install -r requirements-lowest.txt
# A copy of the tree, so setuptools' build/ and .egg-info stay out of the checkout.
tar --exclude=./.venv --exclude=./.git --exclude=./runs -cf - . | (mkdir "$tmp/src" && tar -xf - -C "$tmp/src")
"${pip[@]}" install "$tmp/src[experiments]"
"$tmp/venv/bin/python" - requirements-lowest.txt <<'PYEOF'
import importlib.metadata as md, sys
from packaging.utils import canonicalize_name as canon  # pip's own vendored copy is not public
want = dict(l.strip().split("==") for l in open(sys.argv[1]) if "==" in l and l[0] != "#")
got = {canon(d.metadata["Name"]): d.version for d in md.distributions()}
bad = {k: (v, got.get(canon(k))) for k, v in want.items() if got.get(canon(k)) != v}
if bad:
  sys.exit(f"lowest.sh: pip install changed the lowest versions (wanted, got): {bad}")
print(f"lowest.sh: pip install kept all {len(want)} lowest versions")
PYEOF
cd "$tmp/src"
"$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 \
  tests/test_adam_family.py tests/test_dion.py tests/test_frontier_a.py tests/test_layout.py \
  tests/test_matrix_roots.py tests/test_muon.py tests/test_newton_schulz.py \
  tests/test_nonfinite.py tests/test_normuon.py tests/test_psgd_kron.py tests/test_quantized.py \
  tests/test_registry.py tests/test_sam.py tests/test_shampoo.py tests/test_soap.py
