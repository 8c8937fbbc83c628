#!/usr/bin/env bash
# Sets up a virtual environment (first run only) and runs the end-to-end demo.
#   bash scripts/demo.sh             # CPU default, ~23 min on 2 idle cores (+2 min first install) -> demo_out/report.html
#   bash scripts/demo.sh --quick     # seconds, sizes for tests
#   bash scripts/demo.sh --gpu       # larger world and models on a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
exec .venv/bin/anyseq demo "$@"
