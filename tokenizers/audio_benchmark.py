"""Encode / decode speed of the audio tokenizer as a real-time factor (compute s per audio s).

Two workloads: one long signal (batch 1; ``--seconds``) and a batch of 1-second clips (what
tokenizing a dataset of short clips does; reported as clips per second too). The weights
come from a trained tokenizer folder, or are random for a recipe's architecture (speed does
not depend on the weights). The best of ``--repeats`` runs after a warm-up is reported.

    python -m anyseq.tokenizers.audio_benchmark --recipe configs/tokenizer/audio_tiny.yaml
    python -m anyseq.tokenizers.audio_benchmark --tokenizer runs/audio_tiny/tokenizer --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from anyseq.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from anyseq.tokenizers.base import config_from_dict, load_tokenizer


def tokenizer_from_recipe(path: str | Path) -> AudioTokenizer:
    """An untrained tokenizer with the architecture of a ``configs/tokenizer/audio_*.yaml`` recipe."""
    recipe = yaml.safe_load(Path(path).read_text())
    try:
        config = recipe["model"]["init_args"].get("tokenizer") or {}
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: expected model.init_args.tokenizer in an audio tokenizer recipe") from None
    return AudioTokenizer(config_from_dict(AudioTokenizerConfig, config))


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def benchmark(tokenizer: AudioTokenizer, seconds: float = 10.0, clips: int = 64, repeats: int = 3) -> list[dict[str, Any]]:
    device, sr = tokenizer.device, tokenizer.sample_rate
    g = torch.Generator().manual_seed(0)
    workloads = {
        f"1 x {seconds:g} s": torch.randn(1, 1, int(seconds * sr), generator=g) * 0.1,
        f"{clips} x 1 s": torch.randn(clips, 1, sr, generator=g) * 0.1,
    }
    rows = []
    for name, wav in workloads.items():
        wav = wav.to(device)
        audio_seconds = wav.shape[0] * wav.shape[-1] / sr
        codes = tokenizer.encode(wav)
        t_enc = best_time(lambda: tokenizer.encode(wav), device, repeats)
        t_dec = best_time(lambda: tokenizer.decode(codes), device, repeats)
        rows.append(
            {
                "workload": name,
                "audio_seconds": audio_seconds,
                "rtf_encode": t_enc / audio_seconds,
                "rtf_decode": t_dec / audio_seconds,
                "encode_clips_per_s": wav.shape[0] / t_enc,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audio_benchmark", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", help="trained tokenizer folder")
    src.add_argument("--recipe", help="audio tokenizer YAML recipe (random weights)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the long signal")
    p.add_argument("--clips", type=int, default=64, help="batch of 1 s clips")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else tokenizer_from_recipe(args.recipe)
    if not isinstance(tok, AudioTokenizer):
        print(f"error: {args.tokenizer} is not an audio tokenizer", file=sys.stderr)
        return 2
    tok = tok.to(args.device)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    params = sum(p.numel() for p in tok.parameters())
    print(
        f"{name}; {params / 1e6:.2f} M parameters; {tok.sample_rate} Hz, {tok.frame_rate:g} frames/s x "
        f"{tok.num_quantizers} levels = {tok.bitrate_kbps():.2f} kbps"
    )
    rows = benchmark(tok, args.seconds, args.clips, args.repeats)
    print(f"{'workload':>12} {'RTF encode':>11} {'RTF decode':>11} {'clips/s':>9}")
    for r in rows:
        print(f"{r['workload']:>12} {r['rtf_encode']:11.4f} {r['rtf_decode']:11.4f} {r['encode_clips_per_s']:9.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "parameters": params, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
