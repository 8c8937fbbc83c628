"""``anyseq generate``: any-to-any sampling from a checkpoint to files.

The prompt is a list of segments given in order (``--text``, ``--image``, ``--video``,
``--audio``, repeatable); ``--to`` names the output modality, or ``any``: the model writes the
rest of the record, text and whichever media it opens (Chameleon's mixed-modal output). Media
prompts are encoded by the checkpoint's tokenizers, the target is sampled under its grammar (so
it always decodes), and the result is written as .txt / .png / .gif|.mp4 / .wav plus one line
per sample in ``samples.jsonl``.

Many prompts at once: ``--prompts FILE`` reads one record per line in the manifest's format
(``{"text": ...}``, ``{"image": "a.png"}``, ``{"segments": [...]}``), and the rows (each
prompt's first sample, then each one's second...) are sampled in batches of ``--batch-size``.
Each row draws from a seed of its own, made from ``(seed, prompt name, sample)``, not from its
batch. A rerun into the same folder samples again only the batches holding a row that
``samples.jsonl`` has no finished record of, and writes those rows as an uninterrupted run
would have; with another --num-samples or --batch-size it keeps what is there too (exactly the
same samples on a CPU; a GPU may round a row differently in another batch). A folder whose
records claim the files for other settings (or another prompt) is refused: its files keep one
meaning, and their names stay ``{to}_{seed}_{name}_{sample}``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anyseq.checkpoint import Bundle, load_bundle
from anyseq.helpers import HelpFormatter, error_message, out_of_range
from anyseq.sampling import SamplingOptions, sample
from anyseq.sequence import Constraint, Segment

MEDIA_TOKENIZER = {"image": "visual", "video": "visual", "audio": "audio", "text": "text"}

# Per-modality defaults (Emu3 / LlamaGen / Chameleon practice); flags override them.
DEFAULTS = {
    "text": SamplingOptions(temperature=0.7, top_p=0.9),
    "image": SamplingOptions(temperature=1.0, top_k=2048, cfg_scale=3.0),
    "video": SamplingOptions(temperature=1.0, top_k=2048, cfg_scale=3.0),
    "audio": SamplingOptions(temperature=1.0, top_k=250, cfg_scale=3.0),
    "any": SamplingOptions(temperature=1.0, top_k=2048),  # no CFG: a mixed record has no one condition
}


# -- prompt: media -> segments ----------------------------------------------------------------
def _squared(pixels: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 (H, W, 3) or (T, H, W, 3) prepared as ``anyseq tokenize-dataset`` prepares training
    media, the model's only kind: the centre square resized to ``size``; as is without a size."""
    from anyseq.data.prepare import resize_crop

    if size is None:
        return pixels
    return resize_crop(pixels, size) if pixels.ndim == 3 else np.stack([resize_crop(f, size) for f in pixels])


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
        image = _squared(np.asarray(media.read_image(value) if is_path else value), image_size)
        x = crop_to_multiple(torch.as_tensor(media.image_to_tensor(image)), tok.compression["height"])  # (3, H, W)
        return Segment("image", tok.encode(x[None].to(device))[0].cpu().numpy())
    if kind == "video":
        frames = media.read_video(value, max_frames=video_frames)[0] if is_path else value
        ft = tok.compression.get("time", 1)
        frames = _squared(np.asarray(frames[: 1 + (len(frames) - 1) // ft * ft]), image_size)  # causal: 1 + k*ft
        x = crop_to_multiple(torch.as_tensor(media.video_to_tensor(frames)), tok.compression["height"])  # (3, T, H, W)
        return Segment("video", tok.encode(x[None].to(device))[0].cpu().numpy())
    samples = media.read_audio(value, sample_rate=tok.sample_rate)[0] if is_path else value
    wav = torch.as_tensor(samples, dtype=torch.float32)[None, None].to(device)
    return Segment("audio", tok.encode(wav)[0].cpu().numpy())


def prompt_ids(bundle: Bundle, segments: list[Segment]) -> list[int]:
    """A prompt's ids: <bos> and its segments, without <eos>, so the model continues the record."""
    return bundle.serializer.serialize(segments, eos=False).ids.tolist()


@dataclass
class Prompt:
    """One prompt: its segments as (kind, text or path), the name its output files carry, and
    where it was given, so that a medium that cannot be encoded is named where it was asked for."""

    segments: list[tuple[str, Any]]
    name: str | None = None  # None: the command line's prompt (files ``{to}_{seed}_{i}``)
    where: str | None = None  # FILE:LINE of a --prompts record; None: the command line's flags


def read_input(path: str | Path, flag: str, expected: str) -> bytes:
    """The bytes of a file a flag names, or a one-line error saying why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{flag} {path}: {(err.strerror or 'cannot be read').lower()}; expected {expected}") from None


def read_text_file(path: str | Path) -> str:
    """``--text-file``: UTF-8 (a leading byte-order mark, as Windows editors write, is dropped)."""
    data = read_input(path, "--text-file", "a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"--text-file {path}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
                         "expected a UTF-8 text file") from None


def read_prompts(path: str | Path, keep: list[str] | None = None) -> list[Prompt]:
    """The prompts of a JSONL file (manifest records; media paths relative to the file), with
    only the ``keep`` modalities of each record if given (a held-out manifest's captions, say).
    Every media file must be there and readable now, not only when its batch comes."""
    from anyseq.data.manifest import RecordError, parse_record

    path = Path(path)
    data = read_input(path, "--prompts", 'a JSONL file, one record per line, e.g. {"text": "a red circle"}')
    prompts, names = [], {}
    for line, raw in enumerate(io.BytesIO(data), 1):
        try:
            record = parse_record(raw, line, path.resolve().parent)
        except RecordError as e:
            raise ValueError(f"{path}:{line}: {e.reason}") from None
        if record is None:
            continue
        if keep:
            record.parts = [p for p in record.parts if p.modality in keep]
            if not record.parts:
                raise ValueError(f"{path}:{line}: no {' or '.join(keep)} segment to keep (--keep)")
        for part in record.parts:
            if part.path is not None:
                try:
                    part.path.open("rb").close()
                except OSError as err:
                    reason = (err.strerror or "cannot be read").lower()
                    raise ValueError(f"{path}:{line}: {part.modality} file {part.path}: {reason}") from None
        name = re.sub(r"[^\w-]", "_", record.id) if record.id is not None else f"line{line}"
        if name in names:
            who = f"id {record.id!r}" if record.id is not None else "a record without an id"
            raise ValueError(f"{path}:{line}: {who} names its files {name!r}, as line {names[name]} does; "
                             'give each record an "id" of its own')
        names[name] = line
        segments = [(p.modality, p.text if p.path is None else str(p.path)) for p in record.parts]
        prompts.append(Prompt(segments, name, f"{path}:{line}"))
    if not prompts:
        raise ValueError(f"{path}: no prompts; expected one JSON record per line, e.g. {{\"text\": \"a red circle\"}}")
    return prompts


def encode_prompt_ids(bundle: Bundle, prompt: Prompt, image_size: int | None, video_frames: int | None) -> list[int]:
    """The ids of a :class:`Prompt`; a medium that cannot be encoded is an error naming the flag
    or the ``--prompts`` line that gave it, and the file."""
    from anyseq.media import MediaError

    segments = []
    for kind, value in prompt.segments:
        bundle.tokenizer(MEDIA_TOKENIZER[kind])  # the tokenizer's own errors name the tokenizer, not this prompt
        try:
            segments.append(encode_prompt(bundle, kind, value, image_size, video_frames))
        except ValueError as err:
            reason = str(err).removeprefix(f"{err.path}: ") if isinstance(err, MediaError) else str(err)
            where = f"{prompt.where}: {kind} {value}" if prompt.where else f"--{kind} {value}"
            raise ValueError(f"{where}: {reason}") from None
    return prompt_ids(bundle, segments)


# -- target: modality -> constraint -------------------------------------------------------------
@dataclass
class Target:
    modality: str  # text | image | video | audio | any
    shape: dict[str, Any]  # the grammar's constraint arguments (for any: per modality)
    max_tokens: int


def media_shape(
    bundle: Bundle, modality: str, height: int | None, width: int | None, frames: int, seconds: float
) -> dict[str, int | None]:
    """A medium's grammar shape: sizes in tokens (None: the model chooses), video time and audio
    frames from frames and seconds through the tokenizer's factors."""
    if modality == "image":
        return {"h": height, "w": width}
    if modality == "video":
        return {"t": 1 + (frames - 1) // bundle.tokenizer("visual").compression.get("time", 1), "h": height, "w": width}
    return {"frames": max(1, int(round(seconds * bundle.tokenizer("audio").frame_rate)))}


def make_target(
    bundle: Bundle,
    to: str,
    height: int | None = None,
    width: int | None = None,
    frames: int = 5,
    seconds: float = 1.0,
    max_text_tokens: int = 64,
) -> Target:
    """The output to sample: its modality, grammar shape and token budget.

    ``height``/``width`` are in tokens; ``frames`` in video frames; ``seconds`` of audio. For
    ``any``, media without a size are free (up to the token space's largest), and the budget
    holds ``max_text_tokens`` of text beside the longest medium.
    """
    most = bundle.space.max_shape  # the largest grid its shape tokens can state
    if wrong := out_of_range(  # each would sample a shape nobody asked for (a 0 height was taken as 'free')
        ("--height", height, height is None or height >= 1, "at least 1 token"),
        ("--height", height, height is None or height <= most["h"], f"<= {most['h']} for this checkpoint"),
        ("--width", width, width is None or width >= 1, "at least 1 token"),
        ("--width", width, width is None or width <= most["w"], f"<= {most['w']} for this checkpoint"),
        ("--frames", frames, frames >= 1, "at least 1"),
        ("--seconds", seconds, seconds > 0, "above 0"),
        ("--max-text-tokens", max_text_tokens, max_text_tokens >= 1, "at least 1"),
    ):
        raise ValueError(f"--to {to}: {wrong}")
    if to == "text":
        return Target("text", {"max_tokens": max_text_tokens}, max_text_tokens + 1)
    ser = bundle.serializer
    if to == "any":
        shapes = {m: media_shape(bundle, m, height, width, frames, seconds) for m in ser.grammars if m != "text"}
        lengths = {m: ser.grammar(m).length(**shape) for m, shape in shapes.items()}
        target = Target("any", shapes, max_text_tokens + max(lengths.values(), default=0) + 1)
        if target.max_tokens >= bundle.model.config.max_seq_len:
            free = ", ".join(f"{m} {n} tokens" for m, n in lengths.items())
            raise ValueError(f"--to any: the longest media ({free}) do not fit the model's context of "
                             f"{bundle.model.config.max_seq_len}; bound them with --height/--width (tokens), "
                             "--frames, --seconds")
        return target
    if to in ("image", "video") and (height is None or width is None):
        raise ValueError(f"--to {to} needs its size: --height/--width in tokens or --height-px/--width-px in pixels")
    shape = media_shape(bundle, to, height, width, frames, seconds)
    return Target(to, shape, ser.grammar(to).length(**shape))


def target_for(bundle: Bundle, args: argparse.Namespace) -> Target:
    height, width = args.height, args.width
    visual = "image" in bundle.serializer.grammars
    if args.to in ("image", "video", "any") and (height is None or width is None) and visual:
        f = bundle.tokenizer("visual").compression["height"]
        for flag, px in (("--height-px", args.height_px), ("--width-px", args.width_px)):
            if px is not None and px < f:
                raise ValueError(f"{flag} {px} is less than one token: the visual tokenizer makes a token of {f} pixels")
        height = height if height is not None else (args.height_px // f if args.height_px else None)
        width = width if width is not None else (args.width_px // f if args.width_px else None)
    target = make_target(bundle, args.to, height, width, args.frames, args.seconds, args.max_text_tokens)
    if args.to in ("video", "any") and "video" in bundle.serializer.grammars:
        ft = bundle.tokenizer("visual").compression.get("time", 1)
        if (used := 1 + (args.frames - 1) // ft * ft) != args.frames:
            print(f"[generate] --frames {args.frames} floored to {used}: the visual tokenizer makes videos of "
                  f"1 + k * {ft} frames", file=sys.stderr)
    return target


def constraint_for(bundle: Bundle, target: Target) -> Constraint:
    if target.modality == "any":
        return bundle.serializer.constraint(target.max_tokens, target.shape)
    return bundle.serializer.grammar(target.modality).constraint(**target.shape)


# -- output: ids -> files -------------------------------------------------------------------------
def write_segment(bundle: Bundle, segment: Segment, stem: Path, video_format: str) -> Path:
    """A parsed segment (text ids or media codes) decoded to a file named ``stem`` + its suffix."""
    from anyseq import media

    if segment.modality == "text":
        path = stem.with_suffix(".txt")
        path.write_text(bundle.tokenizer("text").decode(list(segment.value)), encoding="utf-8")
        return path
    tok = bundle.tokenizer(MEDIA_TOKENIZER[segment.modality])
    device = bundle.model.tok_embeddings.weight.device
    out = tok.decode(torch.as_tensor(segment.value)[None].to(device))[0].float().cpu()
    if segment.modality == "image":
        path = stem.with_suffix(".png")
        media.write_image(path, media.tensor_to_image(out.numpy()))
    elif segment.modality == "video":
        path = stem.with_suffix(f".{video_format}")
        media.write_video(path, media.tensor_to_video(out.numpy()), fps=8)
    else:
        path = stem.with_suffix(".wav")
        media.write_audio(path, out.reshape(-1).numpy(), tok.sample_rate)
    return path


def decode_output(bundle: Bundle, modality: str, ids: list[int], stem: Path, video_format: str) -> list[Path]:
    """Sampled ids to files: one for a modality; for ``any``, one per segment (``stem_0``, ``stem_1``...)."""
    if modality == "any":
        segments = bundle.serializer.parse(ids)
        return [write_segment(bundle, seg, stem.with_name(f"{stem.name}_{j}"), video_format)
                for j, seg in enumerate(segments)]
    if modality == "text":
        value = [t for t in ids if bundle.space.is_text(t)]
    else:
        value = bundle.serializer.grammar(modality).parse(ids)
    return [write_segment(bundle, Segment(modality, value), stem, video_format)]


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
        allow_abbrev=False,  # '--prompt TEXT' must not be taken for '--prompts FILE'
        description="Sample any modality from a prompt of any modalities, with a trained checkpoint.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by `anyseq fit`")
    p.add_argument("--to", choices=["text", "image", "video", "audio", "any"], default="text",
                   help="output modality; any: the rest of the record, text and whichever media the model opens")
    p.set_defaults(prompt=[])
    g = p.add_argument_group("prompt (repeatable, kept in order)")
    g.add_argument("--text", dest="prompt_text", action=_PromptAction, help="text segment")
    g.add_argument("--text-file", dest="prompt_text_file", action=_PromptAction, help="text segment read from a file")
    g.add_argument("--image", dest="prompt_image", action=_PromptAction, help="image file")
    g.add_argument("--video", dest="prompt_video", action=_PromptAction, help="video file (.mp4/.gif/...)")
    g.add_argument("--audio", dest="prompt_audio", action=_PromptAction, help="audio file (.wav/.flac/...)")
    g.add_argument("--prompts", metavar="FILE",
                   help='many prompts instead: a JSONL file, one manifest record per line ({"text": ...}, '
                        '{"image": "a.png"}, {"segments": [...]}; paths relative to the file; "id" names the files)')
    g.add_argument("--keep", nargs="+", choices=["text", "image", "video", "audio"], metavar="MODALITY",
                   help="with --prompts: only these segments of each record (--keep text: a manifest's captions)")
    s = p.add_argument_group("output shape")
    s.add_argument("--height", type=int, help="image/video height in tokens")
    s.add_argument("--width", type=int, help="image/video width in tokens")
    s.add_argument("--height-px", type=int, help="image/video height in pixels (divided by the tokenizer's factor)")
    s.add_argument("--width-px", type=int, help="image/video width in pixels")
    s.add_argument("--frames", type=int, default=5, help="video frames (floored to 1 + k * temporal factor)")
    s.add_argument("--seconds", type=float, default=1.0, help="audio length")
    s.add_argument("--max-text-tokens", type=int, default=64,
                   help="longest text answer (for any: text beside the media)")
    s.add_argument("--image-size", type=int,
                   help="crop prompt images/videos to their centre square and resize it to this size, as "
                        "`anyseq tokenize-dataset --image-size` prepares training data")
    s.add_argument("--video-frames", type=int, help="read at most this many prompt video frames")
    k = p.add_argument_group("sampling (defaults depend on --to)")
    k.add_argument("--temperature", type=float, help="0 = greedy")
    k.add_argument("--top-k", type=int, help="keep the k most likely ids (0 = all)")
    k.add_argument("--top-p", type=float, help="nucleus mass (1 = off)")
    k.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = off)")
    k.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    k.add_argument("--batch-size", type=int, default=8,
                   help="rows (prompt x sample) per sampling call, twice that with CFG")
    k.add_argument("--seed", type=int, default=0, help="fixes every sample (each draws from (seed, prompt, sample))")
    k.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (for comparison)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="samples",
                   help="output folder (files + samples.jsonl); a rerun with the same settings resumes it")
    o.add_argument("--stdout", action="store_true", help="also print text outputs")
    o.add_argument("--video-format", choices=["gif", "mp4"], default="gif", help="file format of videos")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the models run")
    o.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="the transformer's dtype (bfloat16 on CUDA, float32 elsewhere)")
    t = p.add_argument_group("tokenizer locations (when moved since training)")
    for kind in ("text", "visual", "audio"):
        t.add_argument(f"--{kind}-tokenizer", metavar="PATH",
                       help=f"the {kind} tokenizer, instead of the path the checkpoint recorded")
    return p


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    chosen = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cfg_scale": args.cfg}
    return replace(DEFAULTS[args.to], **{k: v for k, v in chosen.items() if v is not None})


def generate_ids(
    bundle: Bundle,
    prompts: list[list[int]],
    target: Target,
    options: SamplingOptions,
    seed: int | list[int] = 0,
    use_cache: bool = True,
) -> tuple[list[list[int]], float]:
    """Sample one target per prompt (same modality and shape); returns new ids and seconds.

    ``seed``: one stream for the whole batch, or each row's own seed (a list), so that a row's
    sample does not depend on the rows beside it.
    """
    space = bundle.space
    uncond = [[space.special("<bos>")] + [space.special("<uncond>")] * (len(p) - 1) for p in prompts]
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
        generator=[torch.Generator().manual_seed(s) for s in seed] if isinstance(seed, list)
        else torch.Generator().manual_seed(seed),
    )
    return outputs, time.perf_counter() - start


def sample_seed(seed: int, name: str | None, sample: int) -> int:
    """The seed of one sample of a prompt: independent streams for every (seed, prompt name,
    sample); the command line's unnamed prompt draws (seed, sample), so its first sample is
    what one batch seeded (seed, 0) drew before samples had seeds of their own."""
    words = [seed, sample] + ([int.from_bytes(name.encode(), "little")] if name else [])
    return int(np.random.SeedSequence(words).generate_state(1)[0])


OUTPUT_SUFFIXES = (".txt", ".png", ".gif", ".mp4", ".wav")


def _unfinished(out_dir: Path, wanted: dict[str, list], settings: dict[str, Any]) -> set[str]:
    """The file stems of ``wanted`` (stem -> its prompt as recorded) with no finished sample in
    ``samples.jsonl``: none recorded, or a file of its last record gone.

    A stem whose last record has other settings or another prompt is an error: sampling it
    here would overwrite the files that record claims.
    """
    log, claims = out_dir / "samples.jsonl", {}
    for n, line in enumerate(log.read_bytes().splitlines() if log.is_file() else [], 1):
        try:
            record = json.loads(line)
        except ValueError:  # the line being written when a run was killed
            continue
        if isinstance(record, dict) and "stem" in record:
            claims[Path(record["stem"]).name] = (n, record)  # by name: the folder may be named another way now
    stored = json.loads(json.dumps(settings))  # compare as stored (tuples become lists)
    todo = set()
    for stem, prompt in wanted.items():
        if stem not in claims:
            todo.add(stem)
            continue
        n, record = claims[stem]
        other = [f"{k} {record[k]!r} there, now {v!r}" if k in record else f"{k} unrecorded there"
                 for k, v in stored.items() if record.get(k, ...) != v]
        other += ["another prompt"] if record.get("prompt") != prompt else []
        if other:
            raise ValueError(f"--out {out_dir}: {log.name}:{n} made {stem} with other settings ({'; '.join(other)}), "
                             "and this run would overwrite its files; give a new --out for these settings")
        if not all((out_dir / Path(f).name).exists() for f in record.get("files", [])):
            todo.add(stem)
    return todo


def _earlier_files(out_dir: Path, to: str) -> dict[str, list[Path]]:
    """The output files in ``out_dir`` by the stem of the sample that wrote them (for ``any``,
    ``{stem}_{j}`` is its segment j): a sample sampled again first removes what an earlier try left,
    which a killed run never recorded or a record no longer lists (an ``any`` record of fewer segments)."""
    pattern = re.compile(r"(.+)_\d+" if to == "any" else r"(.+)")
    files: dict[str, list[Path]] = {}
    for path in out_dir.iterdir():
        if path.suffix in OUTPUT_SUFFIXES and (match := pattern.fullmatch(path.stem)):
            files.setdefault(match[1], []).append(path)
    return files


def _open_log(path: Path):
    """``samples.jsonl`` for appending, on a fresh line: a killed run may have left half of one."""
    log = path.open("a", encoding="utf-8")
    if log.tell():
        with path.open("rb") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                log.write("\n")
    return log


def parse_device(name: str) -> torch.device:
    """``--device`` as a torch device that exists here, or a clear error (not CUDA's init traceback)."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a torch device ({err}); expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device on this machine; use --device cpu")
    return device


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.prompts and args.prompt:
        raise ValueError("give the prompt as --text/--image/--video/--audio or as --prompts FILE, not both")
    if wrong := out_of_range(
        ("--num-samples", args.num_samples, args.num_samples >= 1, "at least 1"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
        ("--seed", args.seed, args.seed >= 0, "at least 0"),
        ("--image-size", args.image_size, args.image_size is None or args.image_size >= 1, "at least 1 pixel"),
        ("--video-frames", args.video_frames, args.video_frames is None or args.video_frames >= 1, "at least 1"),
    ):
        raise ValueError(wrong)
    if args.keep and not args.prompts:
        raise ValueError("--keep selects segments of --prompts FILE records; there is no --prompts")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: a file, not a folder; expected a folder for the samples (made if missing)")
    prompts = read_prompts(args.prompts, args.keep) if args.prompts else [Prompt(
        [("text", read_text_file(v)) if kind == "text_file" else (kind, v) for kind, v in (args.prompt or [])])]
    options = sampling_options(args)  # checked before minutes of loading a large model
    device = parse_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    bundle = load_bundle(
        args.checkpoint,
        device=device,
        dtype=getattr(torch, dtype),
        tokenizer_paths={"text": args.text_tokenizer, "visual": args.visual_tokenizer, "audio": args.audio_tokenizer},
    )
    target = target_for(bundle, args)
    settings = {  # all that makes a sample besides its prompt and seed: a rerun with all of them equal resumes
        "checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_mtime": Path(args.checkpoint).stat().st_mtime,
        "to": args.to, "options": asdict(options), "shape": target.shape, "max_tokens": target.max_tokens,
        "seed": args.seed, "image_size": args.image_size, "video_frames": args.video_frames,
        "video_format": args.video_format, "kv_cache": not args.no_cache, "dtype": dtype, "device": device.type,
    }  # fmt: skip

    def stem(prompt: Prompt, i: int) -> str:
        return "_".join([args.to, str(args.seed), *([prompt.name] if prompt.name else []), f"{i:03d}"])

    def described(prompt: Prompt) -> list[dict[str, Any]]:
        return [{"kind": kind, "value": v} for kind, v in prompt.segments]

    rows = [(p, i) for i in range(args.num_samples) for p in prompts]  # more samples: more batches at the end
    unfinished = _unfinished(out_dir, {stem(p, i): described(p) for p, i in rows}, settings)
    kept = len(rows) - len(unfinished)
    # A batch is the unit of work: one with a sample to make is sampled whole, so that a rerun of
    # the same command draws each sample beside the same rows as an uninterrupted run (on a GPU,
    # kernels may round a row differently in another batch).
    batches = [rows[k : k + args.batch_size] for k in range(0, len(rows), args.batch_size)]
    batches = [batch for batch in batches if any(stem(p, i) in unfinished for p, i in batch)]
    encoded: dict[int, list[int]] = {}  # every prompt to sample, encoded once and before the first sample
    for p, _ in (row for batch in batches for row in batch):
        if id(p) not in encoded:
            encoded[id(p)] = encode_prompt_ids(bundle, p, args.image_size, args.video_frames)
    log_path = out_dir / "samples.jsonl"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        log = _open_log(log_path)
    except OSError as err:
        raise ValueError(f"--out {out_dir}: cannot write there ({(err.strerror or str(err)).lower()}); "
                         "expected a folder this user may write in") from None
    earlier = _earlier_files(out_dir, args.to)
    records, new_tokens, seconds = [], 0, 0.0
    with log:
        for b, batch in enumerate(batches):
            outputs, took = generate_ids(bundle, [encoded[id(p)] for p, _ in batch], target, options,
                                         [sample_seed(args.seed, p.name, i) for p, i in batch],
                                         use_cache=not args.no_cache)
            seconds += took
            new_tokens += sum(len(o) for o in outputs)
            for (p, i), ids in zip(batch, outputs):
                if stem(p, i) not in unfinished:  # finished before: drawn again only beside the others
                    continue
                for path in earlier.get(stem(p, i), []):
                    path.unlink(missing_ok=True)
                paths = decode_output(bundle, args.to, ids, out_dir / stem(p, i), args.video_format)
                record = {
                    **({"file": str(paths[0])} if args.to != "any" else {}),
                    "files": [str(path) for path in paths], "stem": str(out_dir / stem(p, i)), **settings,
                    "prompt": described(p), "sample": i, "prompt_tokens": len(encoded[id(p)]), "new_tokens": len(ids),
                    "seconds": round(took, 4),
                }  # fmt: skip
                log.write(json.dumps(record) + "\n")
                records.append(record)
                if args.stdout:
                    for path in paths:
                        if path.suffix == ".txt":
                            print(path.read_text(encoding="utf-8"))
            log.flush()
            if len(batches) > 1:
                print(f"[generate] batch {b + 1}/{len(batches)}: {len(batch)} samples in {took:.2f} s", file=sys.stderr)
    cfg = " plus as many CFG twins" if options.cfg_scale != 1 else ""
    resumed = f"; {kept} already in {log_path}" if kept else ""
    print(f"generated {len(records)} x {args.to}: {new_tokens} tokens in {seconds:.2f} s "
          f"({new_tokens / max(seconds, 1e-9):.1f} tokens/s{cfg}){resumed} -> {out_dir}", file=sys.stderr)
    return records


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"anyseq generate: error: {error_message(err)}", file=sys.stderr)
        return 2
    return 0
