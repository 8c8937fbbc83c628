"""Reconstruction metrics of a trained audio tokenizer (``anyseq eval-tokenizer`` for audio).

For every file: SI-SDR, mel distance and multi-scale STFT distance of the reconstruction,
with all levels and with each smaller number of leading levels (how gracefully quality
drops with the bitrate); over all files: codebook usage and perplexity per level, kbps and
the real-time factor (compute seconds per audio second) of encode and decode. Beside them,
the same metrics for Opus (PyAV's libopus) at its bitrate nearest the codec's, when the
machine has an Opus encoder. Writes ``metrics.json`` and a few reconstructions next to
copies of their originals.

    anyseq eval-tokenizer --tokenizer runs/audio_tiny/tokenizer --data runs/audio_data/val --out runs/audio_eval
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyseq import media
from anyseq.tokenizers.audio import AudioTokenizer
from anyseq.tokenizers.audio_data import list_audio_files
from anyseq.tokenizers.audio_losses import MultiScaleMelLoss, MultiScaleSTFTLoss, si_sdr
from anyseq.tokenizers.base import load_tokenizer

OPUS_MIN_KBPS = 6.0  # libopus accepts 6..510 kbps
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


# -- Opus reference ------------------------------------------------------------------------------
def opus_encoder() -> str | None:
    """Name of PyAV's Opus encoder, or None when this build has none."""
    import av

    for name in ("libopus", "opus"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different types per version for unknown codecs
            continue
    return None


def _align(estimate: np.ndarray, reference: np.ndarray, max_lag: int) -> np.ndarray:
    """Shift ``estimate`` by the lag (|lag| <= max_lag) that best correlates it with ``reference``."""
    n = len(reference)
    padded = np.pad(estimate, (max_lag, max_lag + max(0, n - len(estimate))))
    scores = [float(np.dot(padded[max_lag + lag : max_lag + lag + n], reference)) for lag in range(-max_lag, max_lag + 1)]
    lag = int(np.argmax(scores)) - max_lag
    return padded[max_lag + lag : max_lag + lag + n]


def opus_roundtrip(samples: np.ndarray, sample_rate: int, kbps: float, encoder: str = "libopus") -> tuple[np.ndarray, float]:
    """Encode to Ogg Opus in memory and decode back -> (samples aligned to the input, payload kbps).

    The payload bitrate counts Opus packets only (no container), over the clip's duration.
    The decoder's resampling delay (a few samples) is removed by cross-correlation.
    """
    import av

    if sample_rate not in OPUS_RATES:
        raise ValueError(f"Opus encodes {OPUS_RATES} Hz, not {sample_rate}")
    buffer, payload = io.BytesIO(), 0
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream(encoder, rate=sample_rate)
        stream.bit_rate = int(max(kbps, OPUS_MIN_KBPS) * 1000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            payload += packet.size
            container.mux(packet)
    buffer.seek(0)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    with av.open(buffer, "r") as container:
        frames = [g for f in container.decode(container.streams.audio[0]) for g in resampler.resample(f)]
    frames += resampler.resample(None)
    decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return _align(decoded, samples, sample_rate // 200), payload * 8 / (len(samples) / sample_rate) / 1000


# -- metrics ---------------------------------------------------------------------------------------
class Distances:
    """SI-SDR (dB, higher is better), mel and multi-scale STFT distances (lower is better)."""

    def __init__(self, sample_rate: int):
        self.mel, self.stft = MultiScaleMelLoss(sample_rate), MultiScaleSTFTLoss()

    def __call__(self, estimate: Tensor, reference: Tensor) -> dict[str, float]:
        estimate, reference = estimate.reshape(1, -1).float().cpu(), reference.reshape(1, -1).float().cpu()
        return {
            "si_sdr": float(si_sdr(estimate, reference)[0]),
            "mel_distance": float(self.mel(estimate, reference)),
            "stft_distance": float(self.stft(estimate, reference)),
        }


def codebook_stats(counts: np.ndarray) -> dict[str, float]:
    """Fraction of codes used at least once, and perplexity (2^entropy) of their histogram."""
    total = counts.sum()
    p = counts[counts > 0] / max(total, 1)
    return {"usage": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_folder(
    tokenizer: AudioTokenizer,
    folder_or_manifest: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    examples: int = 4,
    max_seconds: float | None = None,
    chunk_seconds: float = 30.0,
    opus: bool = True,
) -> dict[str, Any]:
    """Evaluate ``tokenizer`` on the audio files of a folder or manifest; writes ``out_dir/metrics.json``.

    Files longer than ``chunk_seconds`` are encoded with ``encode_chunked``; ``max_seconds``
    crops every file first. Unreadable files are skipped and listed under ``skipped``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sr, levels, device = tokenizer.sample_rate, tokenizer.num_quantizers, tokenizer.device
    skipped: dict[str, str] = {}
    files = list_audio_files([folder_or_manifest], skipped)
    distances = Distances(sr)
    encoder = opus_encoder() if opus and sr in OPUS_RATES else None
    opus_kbps = max(OPUS_MIN_KBPS, tokenizer.bitrate_kbps())
    per_level: list[list[dict[str, float]]] = [[] for _ in range(levels)]
    opus_rows: list[dict[str, float]] = []
    counts = np.zeros((levels, tokenizer.codebook_sizes[0]), np.int64)
    seconds = encode_time = decode_time = 0.0
    used = 0
    for path in files:
        if limit is not None and used >= limit:
            break
        try:
            samples, _ = media.read_audio(path, sr, seconds=max_seconds)
        except media.MediaError as e:
            skipped[str(path)] = str(e)
            continue
        wav = torch.from_numpy(samples)[None, None].to(device)
        _sync(device)
        start = time.perf_counter()
        long = len(samples) > chunk_seconds * sr
        codes = tokenizer.encode_chunked(wav, chunk_seconds) if long else tokenizer.encode(wav)
        _sync(device)
        encode_time += time.perf_counter() - start
        start = time.perf_counter()
        recon = tokenizer.decode(codes)[..., : len(samples)]
        _sync(device)
        decode_time += time.perf_counter() - start
        seconds += len(samples) / sr
        for lv in range(levels):
            counts[lv] += np.bincount(codes[0, :, lv].cpu().numpy(), minlength=counts.shape[1])
            partial = recon if lv == levels - 1 else tokenizer.decode(codes[..., : lv + 1])[..., : len(samples)]
            per_level[lv].append(distances(partial, wav))
        if encoder is not None:
            decoded, kbps = opus_roundtrip(samples, sr, opus_kbps, encoder)
            opus_rows.append({**distances(torch.from_numpy(decoded), wav), "kbps": kbps})
        if used < examples:
            stem = f"{used:02d}_{path.stem}"
            media.write_audio(out_dir / "examples" / f"{stem}_original.wav", samples, sr)
            media.write_audio(out_dir / "examples" / f"{stem}_recon.wav", recon.reshape(-1).cpu().numpy(), sr)
            if opus_rows:
                media.write_audio(out_dir / "examples" / f"{stem}_opus.wav", decoded, sr)
        used += 1
    if not used:
        raise ValueError(f"{folder_or_manifest}: no readable audio files to evaluate (skipped: {skipped})")

    metrics: dict[str, Any] = {
        "tokenizer": {
            "fingerprint": tokenizer.fingerprint,
            "sample_rate": sr,
            "frame_rate": tokenizer.frame_rate,
            "levels": levels,
            "codebook_sizes": tokenizer.codebook_sizes,
        },
        "data": str(folder_or_manifest),
        "files": used,
        "seconds": seconds,
        "kbps": tokenizer.bitrate_kbps(),
        **_mean(per_level[-1]),
        "si_sdr_median": float(np.median([r["si_sdr"] for r in per_level[-1]])),
        "by_levels": [{"levels": lv + 1, "kbps": tokenizer.bitrate_kbps(lv + 1), **_mean(rows)} for lv, rows in enumerate(per_level)],
        "codebook": [{"level": lv, **codebook_stats(c)} for lv, c in enumerate(counts)],
        "rtf_encode": encode_time / seconds,
        "rtf_decode": decode_time / seconds,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "skipped": skipped,
    }
    if encoder is not None:
        metrics["opus"] = {"encoder": encoder, "target_kbps": opus_kbps, **_mean(opus_rows)}
    else:
        reason = "disabled" if not opus else (f"Opus does not encode {sr} Hz" if sr not in OPUS_RATES else "PyAV has no Opus encoder")
        metrics["opus"] = {"skipped": reason}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def format_metrics(m: dict[str, Any]) -> str:
    lines = [
        f"{m['files']} files, {m['seconds']:.1f} s; RTF encode {m['rtf_encode']:.4f}, decode {m['rtf_decode']:.4f} "
        f"({m['device']}); SI-SDR median {m['si_sdr_median']:.2f} dB"
    ]
    lines.append(f"{'':>10} {'kbps':>6} {'SI-SDR':>8} {'mel':>7} {'STFT':>7}")
    for row in m["by_levels"]:
        lines.append(f"{row['levels']:>3} levels {row['kbps']:6.2f} {row['si_sdr']:8.2f} {row['mel_distance']:7.3f} {row['stft_distance']:7.3f}")
    o = m["opus"]
    if "skipped" in o:
        lines.append(f"Opus: skipped ({o['skipped']})")
    else:
        lines.append(f"{'Opus':>10} {o['kbps']:6.2f} {o['si_sdr']:8.2f} {o['mel_distance']:7.3f} {o['stft_distance']:7.3f}")
    lines.append("codebook usage per level: " + ", ".join(f"{c['usage']:.2f} (ppl {c['perplexity']:.0f})" for c in m["codebook"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="anyseq eval-tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="folder written by AudioTokenizer.save (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="folder of audio files or a .jsonl manifest")
    p.add_argument("--out", required=True, help="output folder for metrics.json and example WAVs")
    p.add_argument("--limit", type=int, help="evaluate at most this many files")
    p.add_argument("--examples", type=int, default=4, help="reconstructions to write next to their originals")
    p.add_argument("--max-seconds", type=float, help="crop each file to this many seconds")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="files longer than this are encoded in chunks")
    p.add_argument("--no-opus", action="store_true", help="skip the Opus reference")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.tokenizer, map_location=args.device)
        if not isinstance(tokenizer, AudioTokenizer):
            raise TypeError(f"{args.tokenizer}: holds a {type(tokenizer).__name__}, not an AudioTokenizer")
        metrics = evaluate_folder(
            tokenizer, args.data, args.out, args.limit, args.examples, args.max_seconds, args.chunk_seconds, not args.no_opus
        )
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"anyseq eval-tokenizer: error: {e}", file=sys.stderr)
        return 2
    print(format_metrics(metrics))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
