#!/usr/bin/env bash
# The tiny audio codec's quality run, about 10 minutes on a 2-core CPU: synthesise clips,
# train with `anyseq fit`, evaluate (SI-SDR, mel and STFT distance per number of levels,
# codebook usage, kbps, Opus beside it), benchmark encode/decode real-time factors.
#   bash scripts/train_audio_tiny.sh            # 1600 steps
#   bash scripts/train_audio_tiny.sh 300        # fewer steps
# Outputs under runs/audio_tiny/: tokenizer/, eval/metrics.json + eval/examples/*.wav,
# bench_cpu.json, lightning_logs/ (CSV metrics).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/.venv/bin}
STEPS=${1:-1600}
# One BLAS thread: on a shared 2-core machine two threads per process run several times slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
DATA=$ROOT/runs/audio_data
OUT=$ROOT/runs/audio_tiny
mkdir -p "$OUT"
cd "$OUT"  # never run python in the repo root: ./tokenizers would shadow Hugging Face's package

[ -d "$DATA/train" ] || "$BIN/python" -m anyseq.tokenizers.audio_synth --out "$DATA/train" --count 2000 --seed 0
[ -d "$DATA/val" ] || "$BIN/python" -m anyseq.tokenizers.audio_synth --out "$DATA/val" --count 64 --seed 1

start=$(date +%s)
"$BIN/anyseq" fit --config "$ROOT/configs/tokenizer/audio_tiny.yaml" \
  --data.init_args.train="[$DATA/train]" --data.init_args.val="[$DATA/val]" \
  --trainer.max_steps="$STEPS" --trainer.default_root_dir="$OUT" --trainer.enable_progress_bar=false \
  --trainer.logger=lightning.pytorch.loggers.CSVLogger --trainer.logger.save_dir="$OUT" \
  --model.init_args.export_dir="$OUT/tokenizer"
echo "training: $(( $(date +%s) - start )) s for $STEPS steps"

"$BIN/anyseq" eval-tokenizer --tokenizer "$OUT/tokenizer" --data "$DATA/val" --out "$OUT/eval"
"$BIN/python" -m anyseq.tokenizers.audio_benchmark --tokenizer "$OUT/tokenizer" --device cpu --out "$OUT/bench_cpu.json"
