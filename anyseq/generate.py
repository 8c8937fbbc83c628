"""``anyseq generate``: any-to-any sampling from a checkpoint to files.

The prompt is a list of segments given in order (``--text``, ``--image``, ``--video``,
``--audio``, repeatable); ``--to`` names the output modality. Media prompts are encoded by
the checkpoint's tokenizers, the target is sampled under its grammar (so it always
decodes), and the result is written as .txt / .png / .gif|.mp4 / .wav plus one line per
sample in ``samples.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from anyseq.checkpoint import Bundle, load_bundle
from anyseq.sampling import SamplingOptions, sample
from anyseq.sequence import Constraint, Segment

MEDIA_TOKENIZER = {"image": "visual", "video": "visual", "audio": "audio", "text": "text"}

# Per-modality defaults (Emu3 / LlamaGen / Chameleon practice); flags override them.
DEFAULTS = {
    "text": SamplingOptions(temperature=0.7, top_p=0.9),
    "image": SamplingOptions(temperature=1.0, top_k=2048, cfg_scale=3.0),
    "video": SamplingOptions(temperature=1.0, top_k=2048, cfg_scale=3.0),
    "audio": SamplingOptions(temperature=1.0, top_k=250, cfg_scale=3.0),
}


# -- prompt: media -> segments ----------------------------------------------------------------
def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return x
    flat = x.reshape(-1, *x.shape[-3:]) if x.ndim == 4 else x[None]
    out = torch.nn.functional.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*x.shape[:-2], size, size)


def encode_prompt(
    bundle: Bundle, kind: str, value: Any, image_size: int | None = None, video_frames: int | None = None
) -> Segment:
    """A prompt segment from text, a media file path, or decoded media (uint8 HW3 / THW3, float audio)."""
    from anyseq import media
    from anyseq.tokenizers.visual_data import crop_to_multiple

    is_path = isinstance(value, (str, Path))

    if kind == "text":
        return Segment("text", bundle.tokenizer("text").encode(value))
    tok = bundle.tokenizer(MEDIA_TOKENIZER[kind])
    device = bundle.model.tok_embeddings.weight.device
    if kind == "image":
        x = torch.as_tensor(media.image_to_tensor(media.read_image(value) if is_path else value))  # (3, H, W)
        x = crop_to_multiple(_resize(x, image_size), tok.compression["height"])
        return Segment("image", tok.encode(x[None].to(device))[0].cpu().numpy())
    if kind == "video":
        frames = media.read_video(value, max_frames=video_frames)[0] if is_path else value
        ft = tok.compression.get("time", 1)
        frames = frames[: 1 + (len(frames) - 1) // ft * ft]  # causal tokenizers take 1 + k*ft frames
        x = torch.as_tensor(media.video_to_tensor(frames))  # (3, T, H, W)
        x = crop_to_multiple(_resize(x.transpose(0, 1), image_size).transpose(0, 1), tok.compression["height"])
        return Segment("video", tok.encode(x[None].to(device))[0].cpu().numpy())
    samples = media.read_audio(value, sample_rate=tok.sample_rate)[0] if is_path else value
    wav = torch.as_tensor(samples, dtype=torch.float32)[None, None].to(device)
    return Segment("audio", tok.encode(wav)[0].cpu().numpy())


# -- target: modality -> constraint -------------------------------------------------------------
@dataclass
class Target:
    modality: str
    shape: dict[str, int | None]
    max_tokens: int


def make_target(
    bundle: Bundle,
    to: str,
    height: int | None = None,
    width: int | None = None,
    frames: int = 5,
    seconds: float = 1.0,
    max_text_tokens: int = 64,
) -> Target:
    """The output segment to sample: its modality, grammar shape and token budget.

    ``height``/``width`` are in tokens; ``frames`` in video frames; ``seconds`` of audio.
    """
    if to == "text":
        return Target("text", {"max_tokens": max_text_tokens}, max_text_tokens + 1)
    g = bundle.serializer.grammar(to)
    tok = bundle.tokenizer(MEDIA_TOKENIZER[to])
    if to in ("image", "video"):
        if height is None or width is None:
            raise ValueError(f"--to {to} needs its size: --height/--width in tokens or --height-px/--width-px in pixels")
        if to == "image":
            return Target("image", {"h": height, "w": width}, g.length(height, width))
        t = 1 + (frames - 1) // tok.compression.get("time", 1)
        return Target("video", {"t": t, "h": height, "w": width}, g.length(t, height, width))
    n = max(1, int(round(seconds * tok.frame_rate)))
    return Target("audio", {"frames": n}, 2 + (n + (g.levels - 1) * g.delay) * g.levels)


def target_for(bundle: Bundle, args: argparse.Namespace) -> Target:
    height, width = args.height, args.width
    if args.to in ("image", "video") and (height is None or width is None):
        f = bundle.tokenizer("visual").compression["height"]
        height = height if height is not None else (args.height_px // f if args.height_px else None)
        width = width if width is not None else (args.width_px // f if args.width_px else None)
    return make_target(bundle, args.to, height, width, args.frames, args.seconds, args.max_text_tokens)


def constraint_for(bundle: Bundle, target: Target) -> Constraint:
    return bundle.serializer.grammar(target.modality).constraint(**target.shape)


# -- output: ids -> files -------------------------------------------------------------------------
def decode_output(bundle: Bundle, modality: str, ids: list[int], stem: Path, video_format: str) -> Path:
    from anyseq import media

    s = bundle.space
    if modality == "text":
        text_ids = [t for t in ids if s.is_text(t)]
        path = stem.with_suffix(".txt")
        path.write_text(bundle.tokenizer("text").decode(text_ids))
        return path
    codes = bundle.serializer.grammar(modality).parse(ids)
    tok = bundle.tokenizer(MEDIA_TOKENIZER[modality])
    device = bundle.model.tok_embeddings.weight.device
    out = tok.decode(torch.as_tensor(codes)[None].to(device))[0].float().cpu()
    if modality == "image":
        path = stem.with_suffix(".png")
        media.write_image(path, media.tensor_to_image(out.numpy()))
    elif modality == "video":
        path = stem.with_suffix(f".{video_format}")
        media.write_video(path, media.tensor_to_video(out.numpy()), fps=8)
    else:
        path = stem.with_suffix(".wav")
        media.write_audio(path, out.reshape(-1).numpy(), tok.sample_rate)
    return path


# -- the program ---------------------------------------------------------------------------------
class _PromptAction(argparse.Action):
    """Keeps --text/--image/--video/--audio in the order they were given."""

    def __call__(self, parser, namespace, values, option_string=None):
        prompt = list(getattr(namespace, "prompt", None) or [])
        prompt.append((self.dest.removeprefix("prompt_"), values))
        namespace.prompt = prompt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anyseq generate",
        description="Sample any modality from a prompt of any modalities, with a trained checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by `anyseq fit`")
    p.add_argument("--to", choices=["text", "image", "video", "audio"], default="text", help="output modality")
    p.set_defaults(prompt=[])
    g = p.add_argument_group("prompt (repeatable, kept in order)")
    g.add_argument("--text", dest="prompt_text", action=_PromptAction, help="text segment")
    g.add_argument("--text-file", dest="prompt_text_file", action=_PromptAction, help="text segment read from a file")
    g.add_argument("--image", dest="prompt_image", action=_PromptAction, help="image file")
    g.add_argument("--video", dest="prompt_video", action=_PromptAction, help="video file (.mp4/.gif/...)")
    g.add_argument("--audio", dest="prompt_audio", action=_PromptAction, help="audio file (.wav/.flac/...)")
    s = p.add_argument_group("output shape")
    s.add_argument("--height", type=int, help="image/video height in tokens")
    s.add_argument("--width", type=int, help="image/video width in tokens")
    s.add_argument("--height-px", type=int, help="image/video height in pixels (divided by the tokenizer's factor)")
    s.add_argument("--width-px", type=int, help="image/video width in pixels")
    s.add_argument("--frames", type=int, default=5, help="video frames (rounded to 1 + k * temporal factor)")
    s.add_argument("--seconds", type=float, default=1.0, help="audio length")
    s.add_argument("--max-text-tokens", type=int, default=64, help="longest text answer")
    s.add_argument("--image-size", type=int, help="resize prompt images/videos to this square size first")
    s.add_argument("--video-frames", type=int, help="read at most this many prompt video frames")
    k = p.add_argument_group("sampling (defaults depend on --to)")
    k.add_argument("--temperature", type=float, help="0 = greedy")
    k.add_argument("--top-k", type=int)
    k.add_argument("--top-p", type=float)
    k.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = off)")
    k.add_argument("--num-samples", type=int, default=1)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (for comparison)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="samples", help="output folder (files + samples.jsonl)")
    o.add_argument("--stdout", action="store_true", help="also print text outputs")
    o.add_argument("--video-format", choices=["gif", "mp4"], default="gif")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    o.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="the transformer's dtype (default: bfloat16 on CUDA, float32 elsewhere)")
    t = p.add_argument_group("tokenizer locations (when moved since training)")
    t.add_argument("--text-tokenizer")
    t.add_argument("--visual-tokenizer")
    t.add_argument("--audio-tokenizer")
    return p


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    chosen = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cfg_scale": args.cfg}
    return replace(DEFAULTS[args.to], **{k: v for k, v in chosen.items() if v is not None})


def generate_ids(
    bundle: Bundle,
    prompts: list[list[int]],
    target: Target,
    options: SamplingOptions,
    seed: int = 0,
    use_cache: bool = True,
) -> tuple[list[list[int]], float]:
    """Sample one target per prompt (same modality and shape); returns new ids and seconds."""
    space = bundle.space
    uncond = [[space.special("<bos>")] + [space.special("<uncond>")] * (len(p) - 1) for p in prompts]
    torch.manual_seed(seed)
    start = time.perf_counter()
    outputs = sample(
        bundle.model,
        prompts,
        [constraint_for(bundle, target) for _ in prompts],
        options,
        pad_id=space.special("<pad>"),
        uncond_prompts=uncond if options.cfg_scale != 1.0 else None,
        max_new_tokens=target.max_tokens,
        use_cache=use_cache,
        generator=torch.Generator().manual_seed(seed),
    )
    return outputs, time.perf_counter() - start


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    dtype = args.dtype or ("bfloat16" if torch.device(args.device).type == "cuda" else "float32")
    bundle = load_bundle(
        args.checkpoint,
        device=args.device,
        dtype=getattr(torch, dtype),
        tokenizer_paths={"text": args.text_tokenizer, "visual": args.visual_tokenizer, "audio": args.audio_tokenizer},
    )
    prompt_spec = [("text", Path(v).read_text()) if kind == "text_file" else (kind, v) for kind, v in (args.prompt or [])]
    segments = [encode_prompt(bundle, kind, v, args.image_size, args.video_frames) for kind, v in prompt_spec]
    prompt = bundle.serializer.serialize(segments, eos=False).ids.tolist()
    target = target_for(bundle, args)
    options = sampling_options(args)
    n = args.num_samples
    outputs, seconds = generate_ids(bundle, [prompt] * n, target, options, args.seed, use_cache=not args.no_cache)
    new_tokens = sum(len(o) for o in outputs)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    with open(out_dir / "samples.jsonl", "a") as log:
        for i, ids in enumerate(outputs):
            stem = out_dir / f"{args.to}_{args.seed}_{i:03d}"
            path = decode_output(bundle, args.to, ids, stem, args.video_format)
            record = {
                "file": str(path),
                "to": args.to,
                "prompt": [{"kind": kind, "value": v} for kind, v in prompt_spec],
                "options": asdict(options),
                "shape": target.shape,
                "seed": args.seed,
                "sample": i,
                "prompt_tokens": len(prompt),
                "new_tokens": len(ids),
                "seconds": round(seconds, 4),
                "kv_cache": not args.no_cache,
                "dtype": dtype,
            }
            log.write(json.dumps(record) + "\n")
            records.append(record)
            if args.stdout and args.to == "text":
                print(path.read_text())
    print(
        f"generated {n} x {args.to}: {new_tokens} tokens in {seconds:.2f} s "
        f"({new_tokens / max(seconds, 1e-9):.1f} tokens/s{' plus as many CFG twins' if options.cfg_scale != 1 else ''}) -> {out_dir}",
        file=sys.stderr,
    )
    return records


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"anyseq generate: error: {msg}", file=sys.stderr)
        return 2
    return 0
