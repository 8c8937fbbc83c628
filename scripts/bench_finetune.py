"""Fine-tuning onto new modalities, measured on the demo's data (a benchmark, not a test).

    .venv/bin/python scripts/bench_finetune.py --demo demo_out --out bench/finetune_demo_cpu.json

A text-only model (the tiny preset, ``--steps`` on the demo world's captions alone) is the
checkpoint; ``init_from`` then starts a model for the demo's text + image + video + audio
shards from it: the body and the text rows carry over, the media rows start fresh. The figure
to read is the loss each model starts the new data at (validation loss of the untouched model,
per modality), beside a fresh model's, all in one process with the same batches.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import lightning as L

from anyseq.checkpoint import init_from_checkpoint, read_checkpoint
from anyseq.cli import main as anyseq
from anyseq.config import ModelConfig
from anyseq.data.datamodule import ShardDataModule
from anyseq.data.shards import ShardSet
from anyseq.model import Transformer
from anyseq.training import AnySeqModule

ROOT = Path(__file__).resolve().parents[1]


def start_losses(shards: Path, seq_len: int, batch_size: int, batches: int, **module_args) -> dict[str, float]:
    """Validation losses of a model as it would start training on ``shards`` (no step taken)."""
    L.seed_everything(0)
    data = ShardDataModule(train=[str(shards)], val=[str(shards)], seq_len=seq_len, batch_size=batch_size,
                           num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=batches)
    (metrics,) = trainer.validate(AnySeqModule(**module_args), datamodule=data, verbose=False)
    return {k.removeprefix("val/"): round(float(v), 4) for k, v in metrics.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=Path("demo_out"), help="a finished `anyseq demo` folder")
    p.add_argument("--work", type=Path, default=Path("runs/bench_finetune"), help="where the text-only run goes")
    p.add_argument("--steps", type=int, default=60, help="training steps of the text-only model")
    p.add_argument("--seq-len", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--val-batches", type=int, default=16)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    world, shards = args.demo / "world" / "manifest.jsonl", args.demo / "shards"
    if not world.exists() or not (shards / "stats.json").exists():
        sys.exit(f"{args.demo}: no finished demo there (world/manifest.jsonl and shards/); run `anyseq demo` first")

    captions = args.work / "captions.jsonl"
    captions.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in world.read_text().splitlines()]
    captions.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in records if "text" in r))
    text_shards, run = args.work / "text_shards", args.work / "text_run"
    rc = anyseq(["tokenize-dataset", "--manifest", str(captions), "--out", str(text_shards),
                 "--text-tokenizer", str(args.demo / "tokenizers" / "text.model")])
    if rc != 0:
        return rc
    shutil.rmtree(run, ignore_errors=True)  # a fresh text-only model each run (seconds)
    rc = anyseq([
        "fit", "--config", str(ROOT / "configs" / "train" / "demo.yaml"), "--model.init_args.preset=tiny",
        f"--data.init_args.train=[{text_shards}]", f"--data.init_args.seq_len={args.seq_len}",
        f"--data.init_args.batch_size={args.batch_size}", f"--trainer.max_steps={args.steps}",
        f"--trainer.default_root_dir={run}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", f"--trainer.callbacks.dirpath={run}",
        "--trainer.callbacks.save_last=true",
    ])  # fmt: skip
    if rc != 0:
        return rc
    checkpoint = run / "last.ckpt"

    space = ShardSet(shards).space
    ranges = init_from_checkpoint(Transformer(ModelConfig.from_preset("tiny").with_vocab(space.size)), space,
                                  read_checkpoint(str(checkpoint)), str(checkpoint))
    shape = (args.seq_len, args.batch_size, args.val_batches)
    report = {
        "demo": str(args.demo), "text_steps": args.steps, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "val_batches": args.val_batches,
        "text_only_on_captions": start_losses(text_shards, *shape, init_from=str(checkpoint), preset=None),
        "fine_tune_start": start_losses(shards, *shape, init_from=str(checkpoint), preset=None),
        "fresh_start": start_losses(shards, *shape, preset="tiny"),
        "rows": ranges,
    }  # fmt: skip
    for name in ("text_only_on_captions", "fine_tune_start", "fresh_start"):
        print(f"{name:>22}: " + ", ".join(f"{k} {v:.2f}" for k, v in report[name].items()), flush=True)
    print(f"rows carried: {', '.join(ranges['carried'])}; fresh: {', '.join(ranges['fresh'])}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
