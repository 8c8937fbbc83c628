"""Encode/decode throughput of a visual tokenizer: images/s and frames/s, on CPU or GPU.

    python -m anyseq.tokenizers.visual_benchmark --config configs/tokenizer/visual_tiny.yaml --size 32 --frames 5
    python -m anyseq.tokenizers.visual_benchmark --tokenizer runs/visual_tiny/tokenizer --device cuda --bf16

Throughput does not depend on what the weights learned, so a recipe's architecture with
random weights (``--config``) measures the same as the trained tokenizer (``--tokenizer``).
Times are medians over ``--iters`` timed calls after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from anyseq.tokenizers.base import config_from_dict, load_tokenizer
from anyseq.tokenizers.visual import VisualTokenizer, VisualTokenizerConfig


def tokenizer_from_recipe(path: str | Path) -> VisualTokenizer:
    """The architecture a training recipe (``model.init_args.tokenizer``) describes, randomly initialised."""
    recipe = yaml.safe_load(Path(path).read_text())
    try:
        fields = recipe["model"]["init_args"]["tokenizer"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: no model.init_args.tokenizer section (expected a visual tokenizer recipe)") from e
    return VisualTokenizer(config_from_dict(VisualTokenizerConfig, fields))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(
    tokenizer: VisualTokenizer,
    size: int,
    frames: int,
    batch: int,
    video_batch: int,
    warmup: int = 1,
    iters: int = 5,
    bf16: bool = False,
) -> dict[str, float]:
    device = tokenizer.device
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    video = torch.rand(video_batch, 3, frames, size, size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    kept = tokenizer.pixel_frames(tokenizer.latent_frames(frames))
    result = {}
    with autocast:
        for name, x, count in (("images", images, batch), ("frames", video, video_batch * kept)):
            codes = tokenizer.encode(x)
            result[f"encode_{name}_per_s"] = count / _median_seconds(lambda: tokenizer.encode(x), device, warmup, iters)
            result[f"decode_{name}_per_s"] = count / _median_seconds(lambda: tokenizer.decode(codes), device, warmup, iters)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tokenizer", help="a saved tokenizer folder")
    source.add_argument("--config", default="configs/tokenizer/visual_tiny.yaml", help="a recipe YAML (random weights)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="images per call")
    parser.add_argument("--video-batch", type=int, default=8, help="clips per call")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else tokenizer_from_recipe(args.config)
    tokenizer = tokenizer.to(args.device).eval()
    figures = benchmark(tokenizer, args.size, args.frames, args.batch, args.video_batch, args.warmup, args.iters, args.bf16)
    device = torch.cuda.get_device_name() if tokenizer.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    report = {"device": device, "source": args.tokenizer or args.config, "size": args.size, "frames": args.frames,
              "batch": args.batch, "video_batch": args.video_batch, "bf16": args.bf16,
              "params": sum(p.numel() for p in tokenizer.parameters()), **figures}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
