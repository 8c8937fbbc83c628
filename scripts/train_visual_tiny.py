"""The tiny visual tokenizer recipe, end to end: synthetic world -> `anyseq fit` (<= 10 min) -> evaluation -> benchmark.

    python scripts/train_visual_tiny.py --out runs/visual_tiny_quality [--minutes 10] [--steps 3000]

1. renders a synthetic world (coloured shapes on plain backgrounds, moving shapes) for
   training and a held-out one (another seed) for evaluation;
2. trains configs/tokenizer/visual_tiny.yaml with `anyseq fit`, stopped by whichever comes
   first of ``--steps`` and ``--minutes`` of wall time;
3. evaluates the exported tokenizer on the held-out world (PSNR, SSIM, codebook usage,
   perplexity, bpp, JPEG's PSNR at the same bpp, throughput) and benchmarks it.
Everything lands in ``--out``: metrics.json, reconstructions.png, benchmark.json, the log.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from anyseq.cli import main as anyseq
from anyseq.tokenizers import visual_benchmark, visual_eval
from anyseq.tokenizers.base import load_tokenizer
from anyseq.world import write_world

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/visual_tiny_quality")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=1500, help="training step budget (the cosine ends there)")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--videos", type=int, default=800)
    parser.add_argument("--held-out", type=int, default=256, help="held-out images (and a quarter as many clips)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    train = write_world(out / "world", args.images, args.videos, 0, seed=0)
    held_out = write_world(out / "held_out", args.held_out, args.held_out // 4, 0, seed=1)

    seconds = int(args.minutes * 60)
    start = time.perf_counter()
    rc = anyseq([
        "fit", "--config", str(ROOT / "configs/tokenizer/visual_tiny.yaml"),
        f"--data.init_args.data={train}", f"--data.init_args.val={held_out}",
        f"--model.init_args.export_dir={out / 'tokenizer'}",
        f"--trainer.max_steps={args.steps}", f"--trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}",
        f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=250", "--trainer.check_val_every_n_epoch=null", "--trainer.limit_val_batches=4",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={out}",
        "--trainer.logger.name=log", "--trainer.logger.version=0",
    ])
    if rc:
        return rc
    trained = time.perf_counter() - start

    tokenizer = load_tokenizer(out / "tokenizer")
    metrics = visual_eval.evaluate_folder(tokenizer, held_out, out / "eval")
    log = (out / "log" / "version_0" / "metrics.csv").read_text().splitlines()
    steps = max(int(line.split(",")[1]) for line in log[1:] if line.split(",")[1].isdigit()) + 1
    metrics["training"] = {"seconds": trained, "steps": steps, "images": args.images, "videos": args.videos}
    (out / "eval" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"trained {steps} steps in {trained:.0f} s")
    print(visual_eval.summary(metrics))
    return visual_benchmark.main(["--tokenizer", str(out / "tokenizer"), "--json", str(out / "benchmark.json")])


if __name__ == "__main__":
    sys.exit(main())
