"""Throughput of ``anyseq tokenize-dataset`` (a benchmark, not a test).

    bash scripts/bench_tokenize_dataset.sh --records 3000 --workers 1 2 --out bench/tokenize

Writes a synthetic world (60% images, 20% videos, 20% sounds, plus 1% bad records), trains a
small text tokenizer, builds untrained visual and audio tokenizers of the chosen width, and
runs the whole job once per worker count (fresh output each time) on the chosen device.
Reports records/s from each run's stats.json (tokenizer loading and manifest counting
included; Python and library imports excluded), the seconds spent inside the media
tokenizers (the rest of the main process' time is waiting for decoded media), and checks
that every run wrote the same shards, byte for byte. The decoding side alone (the part the
workers parallelize: parse, decode, resize, text tokenization, batching) is timed too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from anyseq.data.shards import committed_shards
from anyseq.data.tokenize import main as tokenize
from anyseq.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from anyseq.tokenizers.quantizer import QuantizerConfig
from anyseq.tokenizers.text import TextTokenizer
from anyseq.tokenizers.visual import VisualTokenizer, VisualTokenizerConfig
from anyseq.world import write_world


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for shard in committed_shards(out):
        for f in sorted(shard.iterdir()):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def prepare(root: Path, records: int, image_size: int, channels: int) -> tuple[Path, list[str]]:
    images, videos = records * 6 // 10, records * 2 // 10
    manifest = write_world(root / "world", images, videos, records - images - videos, image_size=image_size,
                           video_frames=5, sample_rate=16000, seconds=1.0)
    lines = manifest.read_text().splitlines()
    bad = ['{"text": "a red circle", "image": "missing.png"}', "{not json"]
    mixed = [line for i, good in enumerate(lines) for line in ([good, bad[i % 2]] if i % 100 == 50 else [good])]
    bench = manifest.with_name("bench.jsonl")  # beside the media: paths are relative to the manifest
    bench.write_text("\n".join(mixed) + "\n")
    TextTokenizer.train([json.loads(l)["text"] for l in lines], vocab_size=400, output=root / "text.model")
    torch.manual_seed(0)
    fsq = QuantizerConfig(kind="fsq", codebook_size=1024)
    VisualTokenizer(VisualTokenizerConfig(spatial_compression=8, temporal_compression=4, channels=channels,
                                          channel_mult=[1, 1, 2, 2], num_res_blocks=1, latent_dim=4, quantizer=fsq)
                    ).save(root / "visual")
    AudioTokenizer(AudioTokenizerConfig(sample_rate=16000, frame_rate=50, channels=channels, max_channels=4 * channels,
                                        latent_dim=8, dilations=[1, 3], activation="elu",
                                        quantizer=QuantizerConfig(kind="fsq", codebook_size=1000, num_quantizers=4))
                   ).save(root / "audio")
    return bench, ["--text-tokenizer", str(root / "text.model"), "--visual-tokenizer",
                                  str(root / "visual"), "--audio-tokenizer", str(root / "audio")]


def decode_rate(argv: list[str], workers: int) -> float:
    """Records/s of the decoding side alone (parse, decode, resize, tokenize text, batch): what workers parallelize."""
    from torch.utils.data import DataLoader

    from anyseq.data.tokenize import RecordBatches, _identity, build_parser, make_job

    job = make_job(build_parser().parse_args(argv))
    batches = RecordBatches(job, list(range(job.num_shards)))
    loader = DataLoader(batches, batch_size=None, collate_fn=_identity, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    start, records = time.perf_counter(), 0
    for chunk in loader:
        records += len(chunk.records) + len(chunk.errors)
    return records / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_tokenize_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=3000, help="synthetic records (plus 1%% bad ones)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decoding worker counts to compare")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--image-size", type=int, default=64, help="side of the synthetic images and video frames")
    p.add_argument("--channels", type=int, default=4,
                   help="width of the untrained tokenizers (small: the CPU run then shows the decoding side)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--records-per-shard", type=int, default=250)
    p.add_argument("--out", default="runs/bench_tokenize", help="work folder (overwritten; results.json lands there)")
    args = p.parse_args(argv)
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    manifest, tok_args = prepare(root, args.records, args.image_size, args.channels)
    results = []
    for workers in args.workers:
        out = root / f"shards-w{workers}"
        job = ["--manifest", str(manifest), "--out", str(out), "--workers", str(workers), "--device", args.device,
               "--image-size", str(args.image_size), "--video-frames", "5", "--audio-seconds", "1",
               "--batch-size", str(args.batch_size), "--records-per-shard", str(args.records_per_shard), *tok_args]
        decoding = decode_rate(job, workers)
        rc = tokenize(job)
        stats = json.loads((out / "stats.json").read_text())
        results.append({"workers": workers, "device": args.device, "exit": rc, "records": stats["records_this_run"],
                        "decode_records_per_second": round(decoding, 2),
                        "ok": stats["records"]["ok"], "failed": stats["records"]["failed"],
                        "tokens": stats["tokens"], "seconds": stats["seconds"], "encode_seconds": stats["encode_seconds"],
                        "records_per_second": stats["records_per_second"], "digest": digest(out)})
    print(f"{'workers':>7} {'device':>6} {'records':>8} {'failed':>6} {'tokens':>9} {'seconds':>8} {'encoding':>8} "
          f"{'records/s':>10} {'decoding alone, records/s':>26}")
    for r in results:
        print(f"{r['workers']:>7} {r['device']:>6} {r['records']:>8} {r['failed']:>6} {r['tokens']:>9} "
              f"{r['seconds']:>8.1f} {r['encode_seconds']:>8.1f} {r['records_per_second']:>10.1f} "
              f"{r['decode_records_per_second']:>26.1f}")
    same = len({r["digest"] for r in results}) == 1
    print(f"identical shards across runs: {same}")
    (root / "results.json").write_text(json.dumps({"args": vars(args), "results": results, "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
