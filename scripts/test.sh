#!/usr/bin/env bash
# Sets up a virtual environment (first run only) and runs the CPU test suite.
#   bash scripts/test.sh            # whole suite, both cores
#   bash scripts/test.sh tests/test_model.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[dev]"
# One BLAS thread per test worker: two workers already fill a 2-core machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
set +e
if [ "$#" -eq 0 ]; then
  .venv/bin/pytest -n "${ANYSEQ_TEST_WORKERS:-2}" --durations=15 -q tests
else
  .venv/bin/pytest "$@"
fi
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is not a failure of the code.
if [ "$rc" -eq 5 ]; then
  echo "no tests collected"
  exit 0
fi
exit "$rc"
