#!/usr/bin/env bash
# The kernels against other Triton releases, without a GPU: each version is installed alone
# into a temporary folder placed ahead of the venv's Triton, then the interpreter tests and
# the sm_90 compile check run against it (torch.compile's test is left out: Inductor needs
# the Triton that torch was built with).
#   bash scripts/check_triton_versions.sh 3.7.1 3.8.0 3.9.0
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || { echo "usage: bash scripts/check_triton_versions.sh VERSION..." >&2; exit 2; }
PY=.venv/bin/python
status=0
for version in "$@"; do
  site=$(mktemp -d)
  if ! "$PY" -m pip install -q --no-deps --target "$site" "triton==$version"; then
    echo "triton $version: could not be installed" >&2; status=1; rm -rf "$site"; continue
  fi
  echo "== triton $(PYTHONPATH=$site "$PY" -c 'import triton; print(triton.__version__)')"
  PYTHONPATH=$site "$PY" -m pytest -q -n 2 tests/test_kernels_attention.py tests/test_kernels_decode.py \
    tests/test_kernels_loss.py tests/test_kernels_norm.py tests/test_kernels_compile.py -k "not compiled_function" \
    2>&1 | tail -1 || status=1
  rm -rf "$site"
done
exit "$status"
