#!/usr/bin/env bash
# The kernels' GPU checks in one run, most important first, each under its own time limit:
#   1. the GPU-only tests (bf16 at realistic sizes, backward determinism, fused-loss peak memory);
#   2. the benchmark table (kernels.json / kernels.md, written after each measurement);
#   3. the whole CPU kernel matrix again, compiled on the GPU (odd lengths, GQA, fp32/fp16);
#   4. activation checkpointing's memory and time on the GPU (100m, bf16, 4 x 2048 tokens);
#   5. the sampler's own cost per step on the GPU (masks and draws, against the host round trip).
# Meant for a machine with torch, triton and pytest installed and no package registry: anyseq
# is laid out as pyproject.toml installs it (kernels/ as anyseq.kernels) in a temporary folder
# on PYTHONPATH, without its dependencies (the kernel tests need none of them).
# The default limits (150 + 315 + 90 + 25 + 15 s) fit one 10-minute command of the device tool; the
# benchmark writes each row as it is measured, so a later run with `--only SECTIONS` fills in
# what a cut-off run left.
#   bash scripts/gpu_check.sh OUT --quick      # OUT/{gpu.txt,gpu_tests.txt,kernels.json,kernels.md,...}
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_check.sh OUT [benchmark options]}
shift
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
site=$(mktemp -d)
cp -r anyseq "$site/anyseq" && cp -r kernels "$site/anyseq/kernels" && cp -r tokenizers "$site/anyseq/tokenizers" || exit 1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
kernel_tests=(tests/test_kernels_attention.py tests/test_kernels_decode.py tests/test_kernels_loss.py
              tests/test_kernels_norm.py tests/test_kernels_model_parity.py tests/test_kernels_compile.py)
timeout "${GPU_TESTS_S:-150}" "$PY" -P -m pytest -q -rs -m gpu "${kernel_tests[@]}" 2>&1 | tee "$out/gpu_tests.txt"
timeout "${BENCH_S:-315}" "$PY" -P -m anyseq.kernels.benchmark --out "$out" "$@" 2>&1 | tee "$out/benchmark.log"
timeout "${MATRIX_S:-90}" "$PY" -P -m pytest -q -rs -m "not gpu" "${kernel_tests[@]}" 2>&1 | tee "$out/kernel_matrix.txt"
timeout "${AC_S:-25}" "$PY" -P scripts/bench_activation_checkpointing.py --device cuda --dtype bfloat16 \
    --presets 100m --batch 4 --seq 2048 --steps 3 --out "$out/activation_checkpointing.json" 2>&1 | tee "$out/ac.log"
timeout "${SAMPLER_S:-15}" "$PY" -P scripts/bench_sampler.py --device cuda --steps 50 --out "$out/sampler_cuda.json" \
    2>&1 | tee "$out/sampler.log"
