"""Reconstruction metrics of a visual tokenizer on a folder or manifest (``anyseq eval-tokenizer``).

Reports PSNR and SSIM (on uint8 pixels), codebook usage and code perplexity, bits per
pixel, encode/decode throughput, per-frame PSNR for clips, and beside every PSNR the PSNR
of JPEG (Pillow) at the same bits per pixel on the same images: the classical codec is the
physical reference a tokenizer is judged against. Writes ``metrics.json`` and
``reconstructions.png`` (rows: original, tokenizer, JPEG at the same bpp), plus
``video_reconstructions.png`` when there are clips.

JPEG bits are counted on the entropy-coded scan data only: the headers (quantisation and
Huffman tables, a few hundred bytes) are shared by every image a codec would send, just as
the tokenizer's codebook is, and at 32x32 they alone would cost several bits per pixel.
The whole-file bpp at the matched quality is reported too.

LPIPS-style distance and rFID are plugins: pass TorchScript feature networks on disk
(``--lpips-net``, ``--fid-net``); without them those metrics are simply absent.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from anyseq import media
from anyseq.tokenizers.base import load_tokenizer
from anyseq.tokenizers.visual import VisualTokenizer
from anyseq.tokenizers.visual_data import crop_to_multiple, fit_to_size, list_media
from anyseq.tokenizers.visual_losses import PerceptualLoss, load_feature_net


def exists(x) -> bool:
    return x is not None


# -- pixel metrics ----------------------------------------------------------------------------------
def to_uint8_range(x: Tensor) -> Tensor:
    """[-1, 1] -> float pixels rounded to the uint8 grid [0, 255] (what a saved PNG holds)."""
    return x.float().clamp(-1, 1).add(1).mul(127.5).round()


def psnr_uint8(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample PSNR (dB) of pixel tensors on the [0, 255] scale; capped at 100 dB for exact copies."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(255.0**2 / mse.clamp_min(255.0**2 * 1e-10))).clamp(max=100.0)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, peak: float = 255.0) -> Tensor:
    """Per-image SSIM (Wang et al. 2004) of (B, C, H, W) pixels on [0, peak], averaged over channels.

    Gaussian window, valid positions only (no padding); the window shrinks to the image for
    images smaller than it.
    """
    window = min(window, x.shape[-1], x.shape[-2])
    window -= 1 - window % 2  # odd
    g = _gaussian_window(window, sigma)
    channels = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window).to(torch.float64)
    x, y = x.double(), y.double()
    blur = lambda t: F.conv2d(t, kernel, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return score.flatten(1).mean(1).float()


# -- JPEG reference ---------------------------------------------------------------------------------
def jpeg_scan_bytes(data: bytes) -> int:
    """Bytes of entropy-coded scan data in a baseline JPEG (everything after the SOS header, before EOI)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI marker)")
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {position}")
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # start of scan: the coded data follows its header
            end = len(data) - 2 if data[-2:] == b"\xff\xd9" else len(data)
            return end - (position + 2 + length)
        position += 2 + length
    raise ValueError("JPEG stream has no scan (SOS marker)")


def _jpeg(image: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    data = buffer.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def jpeg_at_bpp(image: np.ndarray, bpp: float) -> dict[str, Any]:
    """JPEG of a uint8 (H, W, 3) image at the highest Pillow quality whose scan data fits ``bpp``.

    Binary search over quality 1..95. If even quality 1 needs more bits, quality 1 is
    reported with ``above_target: True``.
    """
    pixels = image.shape[0] * image.shape[1]
    scan_bpp = lambda data: 8 * jpeg_scan_bytes(data) / pixels  # noqa: E731
    low, high, best = 1, 95, None
    while low <= high:
        quality = (low + high) // 2
        data, decoded = _jpeg(image, quality)
        if scan_bpp(data) <= bpp:
            best, low = (quality, data, decoded), quality + 1
        else:
            high = quality - 1
    above = best is None
    quality, data, decoded = best if not above else (1, *_jpeg(image, 1))
    reference = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    result = torch.from_numpy(decoded.copy()).permute(2, 0, 1)[None].float()
    return {
        "quality": quality,
        "bpp": scan_bpp(data),
        "file_bpp": 8 * len(data) / pixels,
        "psnr": float(psnr_uint8(result, reference)),
        "ssim": float(ssim(result, reference)),
        "above_target": above,
        "decoded": decoded,
    }


# -- loading -------------------------------------------------------------------------------------------
def _prepare(x: Tensor, size: int | None, multiple: int) -> Tensor:
    return fit_to_size(x, size) if exists(size) else crop_to_multiple(x, multiple)


def _load(items, tokenizer: VisualTokenizer, size: int | None, frames: int | None, limit: int | None):
    """Decoded images (3, H, W) and clips (3, T, H, W) in [-1, 1], plus skipped files."""
    s, ft = tokenizer.config.spatial_compression, tokenizer.config.temporal_compression
    images, videos, skipped = [], [], {}
    for item in items:
        chosen = images if item.kind == "image" else videos
        if exists(limit) and len(chosen) >= limit:
            continue
        try:
            if item.kind == "image":
                x = media.image_to_tensor(media.read_image(item.path))
                chosen.append((item.path, _prepare(x, size, s)))
            else:
                clip, _ = media.read_video(item.path, max_frames=frames)
                clip = clip[: 1 + (len(clip) - 1) // ft * ft]
                x = _prepare(media.video_to_tensor(clip).transpose(0, 1), size, s).transpose(0, 1)
                chosen.append((item.path, x.contiguous()))
        except (media.MediaError, ValueError) as e:
            skipped[item.path] = f"{type(e).__name__}: {e}"
    return images, videos, skipped


def _batches(samples: list[tuple[str, Tensor]], batch_size: int):
    """Batches of equal-shape samples (sizes may differ across a folder)."""
    groups: dict[tuple, list[Tensor]] = defaultdict(list)
    for _, x in samples:
        groups[tuple(x.shape)].append(x)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield torch.stack(group[i : i + batch_size])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _roundtrip(tokenizer: VisualTokenizer, samples, batch_size: int):
    """Encode and decode everything in batches; returns inputs, outputs, codes and timings."""
    device = tokenizer.device
    inputs, outputs, codes, t_enc, t_dec = [], [], [], 0.0, 0.0
    for batch in _batches(samples, batch_size):
        batch = batch.to(device)
        _sync(device)
        start = time.perf_counter()
        c = tokenizer.encode(batch)
        _sync(device)
        middle = time.perf_counter()
        recon = tokenizer.decode(c)
        _sync(device)
        t_enc, t_dec = t_enc + middle - start, t_dec + time.perf_counter() - middle
        inputs.append(batch[:, :, : recon.shape[2]] if batch.ndim == 5 else batch)
        outputs.append(recon)
        codes.append(c.flatten().cpu())
    return inputs, outputs, codes, t_enc, t_dec


# -- grids ------------------------------------------------------------------------------------------------
def _grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """uint8 tiles (H, W, 3) in rows -> one image with ``pad`` white pixels between tiles."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[pad + i * (h + pad) : pad + i * (h + pad) + h, pad + j * (w + pad) : pad + j * (w + pad) + w] = tile
    return out


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


# -- the evaluation -----------------------------------------------------------------------------------------
def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def _features(net, images: list[Tensor], batch_size: int) -> Tensor:
    out = []
    with torch.no_grad():
        for batch in images:
            for i in range(0, len(batch), batch_size):
                f = net(batch[i : i + batch_size].float())
                out.append((f if isinstance(f, Tensor) else f[-1]).flatten(1).cpu())
    return torch.cat(out)


def evaluate_folder(
    tokenizer: VisualTokenizer,
    folder_or_manifest: str | Path,
    out_dir: str | Path,
    size: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    video_frames: int | None = 33,
    grid_count: int = 8,
    lpips_net: str | None = None,
    fid_net: str | None = None,
) -> dict[str, Any]:
    """Reconstruct every image and clip of a folder or manifest; write metrics.json and grids; return the metrics.

    Args:
        size: center-crop to ``size x size`` after resizing the short side (default: each
            file's own size, center-cropped to a multiple of the spatial compression).
        limit: at most this many images and this many clips.
        video_frames: read at most this many frames per clip (cut to ``1 + ft k``).
        grid_count: images (and clips) shown in the reconstruction grids.
        lpips_net, fid_net: TorchScript feature networks (see ``visual_losses.load_feature_net``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = list_media(folder_or_manifest)
    images, videos, skipped = _load(items, tokenizer, size, video_frames, limit)
    if not images and not videos:
        raise ValueError(f"{folder_or_manifest}: no decodable images or videos to evaluate ({len(skipped)} skipped)")
    k = tokenizer.codebook_size
    metrics: dict[str, Any] = {
        "tokenizer": {"fingerprint": tokenizer.fingerprint, "codebook_size": k, "compression": tokenizer.compression},
        "data": str(folder_or_manifest),
        "skipped": skipped,
    }
    all_codes = []
    rows: list[list[np.ndarray]] = [[], [], []]
    if images:
        x_in, x_out, codes, t_enc, t_dec = _roundtrip(tokenizer, images, batch_size)
        all_codes += codes
        real = torch.cat([to_uint8_range(x) for x in x_in]).cpu()
        fake = torch.cat([to_uint8_range(x) for x in x_out]).cpu()
        bpp = math.log2(k) * sum(c.numel() for c in codes) / (real.shape[0] * real.shape[2] * real.shape[3])
        jpegs, jpeg_grid = [], []
        for i, (r, f) in enumerate(zip(real, fake)):
            ref = r.permute(1, 2, 0).to(torch.uint8).numpy()
            j = jpeg_at_bpp(ref, math.log2(k) / tokenizer.config.spatial_compression**2)
            decoded = j.pop("decoded")
            jpegs.append(j)
            if i < grid_count:
                rows[0].append(ref)
                rows[1].append(f.permute(1, 2, 0).to(torch.uint8).numpy())
                rows[2].append(decoded)
        metrics["images"] = {
            "count": int(real.shape[0]),
            "psnr": float(psnr_uint8(fake, real).mean()),
            "ssim": float(ssim(fake, real).mean()),
            "bpp": bpp,
            "encode_images_per_s": real.shape[0] / max(t_enc, 1e-9),
            "decode_images_per_s": real.shape[0] / max(t_dec, 1e-9),
            "jpeg": {
                "psnr": float(np.mean([j["psnr"] for j in jpegs])),
                "ssim": float(np.mean([j["ssim"] for j in jpegs])),
                "bpp": float(np.mean([j["bpp"] for j in jpegs])),
                "file_bpp": float(np.mean([j["file_bpp"] for j in jpegs])),
                "mean_quality": float(np.mean([j["quality"] for j in jpegs])),
                "above_target": int(sum(j["above_target"] for j in jpegs)),
                "note": "scan-data bits; 'above_target' images need more bits than the tokenizer even at quality 1",
            },
        }
        for path, name, loss in ((lpips_net, "lpips", True), (fid_net, "rfid", False)):
            net = load_feature_net(path, name)
            if not exists(net):
                continue
            net = net.to(tokenizer.device)
            if loss:
                distance = PerceptualLoss(net)
                with torch.no_grad():
                    values = [distance(a.float(), b.float()).cpu() for a, b in zip(x_in, x_out)]
                metrics["images"][name] = float(torch.cat(values).mean())
            else:
                feats_real, feats_fake = _features(net, x_in, batch_size), _features(net, x_out, batch_size)
                metrics["images"][name] = frechet_distance(feats_real, feats_fake)
        scale = max(1, 96 // real.shape[-1])
        grid = _grid([[_upscale(t, scale) for t in row] for row in rows])
        media.write_image(out / "reconstructions.png", grid)
        metrics["images"]["grid"] = str(out / "reconstructions.png")
    if videos:
        x_in, x_out, codes, t_enc, t_dec = _roundtrip(tokenizer, videos, max(1, batch_size // 4))
        all_codes += codes
        per_frame: dict[int, list[float]] = defaultdict(list)
        frame_ssim, frames_total, grid_rows = [], 0, []
        for a, b in zip(x_in, x_out):
            real, fake = to_uint8_range(a).cpu(), to_uint8_range(b).cpu()  # (B, 3, T, H, W)
            frames_total += real.shape[0] * real.shape[2]
            for t in range(real.shape[2]):
                per_frame[t] += psnr_uint8(fake[:, :, t], real[:, :, t]).tolist()
                frame_ssim += ssim(fake[:, :, t], real[:, :, t]).tolist()
            for clip_real, clip_fake in zip(real, fake):
                if len(grid_rows) < 2 * min(grid_count, 4):
                    for clip in (clip_real, clip_fake):
                        grid_rows.append([f.permute(1, 2, 0).to(torch.uint8).numpy() for f in clip.unbind(1)])
        metrics["videos"] = {
            "count": sum(x.shape[0] for x in x_in),
            "frames": frames_total,
            "psnr": float(np.mean([v for values in per_frame.values() for v in values])),
            "ssim": float(np.mean(frame_ssim)),
            "per_frame_psnr": [float(np.mean(per_frame[t])) for t in sorted(per_frame)],
            "encode_frames_per_s": frames_total / max(t_enc, 1e-9),
            "decode_frames_per_s": frames_total / max(t_dec, 1e-9),
        }
        by_shape = defaultdict(list)  # grid rows must share a size: keep the most common one
        for row in grid_rows:
            by_shape[(len(row), *row[0].shape)].append(row)
        rows_v = max(by_shape.values(), key=len)
        scale = max(1, 96 // rows_v[0][0].shape[1])
        media.write_image(out / "video_reconstructions.png", _grid([[_upscale(t, scale) for t in r] for r in rows_v]))
        metrics["videos"]["grid"] = str(out / "video_reconstructions.png")
    codes = torch.cat(all_codes)
    counts = torch.bincount(codes, minlength=k).double()
    p = counts[counts > 0] / counts.sum()
    metrics["codebook"] = {
        "tokens": int(codes.numel()),
        "usage": float((counts > 0).double().mean()),
        "used_codes": int((counts > 0).sum()),
        "perplexity": float(torch.exp(-(p * p.log()).sum())),
        "max_perplexity": float(min(k, codes.numel())),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    lines = []
    if "images" in metrics:
        m, j = metrics["images"], metrics["images"]["jpeg"]
        lines.append(
            f"images  n={m['count']}  PSNR {m['psnr']:.2f} dB (JPEG at same bpp {j['psnr']:.2f} dB, q={j['mean_quality']:.1f}, "
            f"{j['above_target']} above target)  SSIM {m['ssim']:.3f} (JPEG {j['ssim']:.3f})  bpp {m['bpp']:.3f}  "
            f"encode {m['encode_images_per_s']:.0f} img/s  decode {m['decode_images_per_s']:.0f} img/s"
        )
    if "videos" in metrics:
        m = metrics["videos"]
        per_frame = " ".join(f"{v:.1f}" for v in m["per_frame_psnr"])
        lines.append(
            f"videos  n={m['count']}  PSNR {m['psnr']:.2f} dB (per frame: {per_frame})  SSIM {m['ssim']:.3f}  "
            f"encode {m['encode_frames_per_s']:.0f} frames/s  decode {m['decode_frames_per_s']:.0f} frames/s"
        )
    c = metrics["codebook"]
    lines.append(f"codebook usage {100 * c['usage']:.1f}% ({c['used_codes']} codes)  perplexity {c['perplexity']:.1f}")
    if metrics["skipped"]:
        lines.append(f"skipped {len(metrics['skipped'])} bad file(s): " + ", ".join(metrics["skipped"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anyseq eval-tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="folder written by VisualTokenizer.save")
    parser.add_argument("--data", required=True, help="folder of images/videos or a manifest.jsonl")
    parser.add_argument("--out", required=True, help="folder for metrics.json and the reconstruction grids")
    parser.add_argument("--size", type=int, default=None, help="resize + center-crop to SIZE x SIZE (default: native)")
    parser.add_argument("--limit", type=int, default=None, help="at most N images and N clips")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--video-frames", type=int, default=33, help="frames read per clip (cut to 1 + ft k)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lpips-net", default=None, help="TorchScript feature network for an LPIPS-style distance")
    parser.add_argument("--fid-net", default=None, help="TorchScript feature network (e.g. Inception pool) for rFID")
    args = parser.parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.tokenizer, map_location=args.device)
        if not isinstance(tokenizer, VisualTokenizer):
            raise TypeError(f"{args.tokenizer}: holds a {type(tokenizer).__name__}, not a VisualTokenizer")
        metrics = evaluate_folder(
            tokenizer, args.data, args.out, size=args.size, limit=args.limit, batch_size=args.batch_size,
            video_frames=args.video_frames, lpips_net=args.lpips_net, fid_net=args.fid_net,
        )
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"anyseq eval-tokenizer: error: {e}", file=sys.stderr)
        return 2
    print(summary(metrics))
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
