#!/usr/bin/env bash
# Records/s of `anyseq tokenize-dataset` with 1 and 2 decoding workers (a benchmark, not a test).
#   bash scripts/bench_tokenize_dataset.sh                          # 3000 records, CPU
#   bash scripts/bench_tokenize_dataset.sh --device cuda --workers 2 8
# Every option: bash scripts/bench_tokenize_dataset.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
# -P: keep the repository root off sys.path (tokenizers/ must only import as anyseq.tokenizers)
exec "${PYTHON:-.venv/bin/python}" -P -m anyseq.data.benchmark "$@"
