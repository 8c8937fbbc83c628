"""A built-in synthetic world with known rules: shapes, motions and tones, with captions.

Every record is generated from a seed, so the demo and the tests need no downloads, and
because the rules are known, generated media can be judged automatically
(anyseq.judges). Three kinds of scene:

- image: one coloured shape on a plain dark background, "a small red circle at the top left"
- video: one shape moving in a straight line, "a blue square moving left"
- audio: one of six tone patterns, "a rising tone", "two short high beeps", ...

Renders carry small random variation (position and size of a pixel or two, colour and
background shade, tone frequency and timing, faint noise) so a dataset is not a handful of
identical samples; without an rng a render is the canonical, jitter-free one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from anyseq import media
from anyseq.helpers import exists

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
DIRECTIONS = ("left", "right", "up", "down")
PATTERNS = (
    "a rising tone",
    "a falling tone",
    "a steady high tone",
    "a steady low tone",
    "two short high beeps",
    "two short low beeps",
)

RGB = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40)}
SIDE = {"small": 0.25, "large": 0.45, "video": 0.3}  # bounding-box side, fraction of the image
CENTRE = {  # (x, y) of the shape's box centre, fraction of the image; y grows downwards
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / box area
LOW_HZ, HIGH_HZ = 300.0, 1200.0  # two octaves apart: a judge splits them at 600 Hz
BACKGROUND = 30
TRAVEL = 0.45  # how far a video shape moves, fraction of the image


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator | None:
    return np.random.default_rng(rng) if isinstance(rng, int) else rng


def _jitter(rng: np.random.Generator | None, scale: float, shape=None):
    """Uniform noise in [-scale, scale], or exactly zero for canonical renders."""
    if rng is None:
        return np.zeros(shape) if exists(shape) else 0.0
    return rng.uniform(-scale, scale, shape)


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class ImageScene:
    colour: str
    shape: str
    size: str
    position: str
    kind: ClassVar[str] = "image"
    template: ClassVar[str] = "a {size} {colour} {shape} at the {position}"


@dataclass(frozen=True)
class VideoScene:
    colour: str
    shape: str
    direction: str
    kind: ClassVar[str] = "video"
    template: ClassVar[str] = "a {colour} {shape} moving {direction}"


@dataclass(frozen=True)
class SoundScene:
    pattern: str
    kind: ClassVar[str] = "audio"
    template: ClassVar[str] = "{pattern}"


Scene = ImageScene | VideoScene | SoundScene
SCENES = (ImageScene, VideoScene, SoundScene)
VALUES = {
    "colour": COLOURS, "shape": SHAPES, "size": SIZES,
    "position": POSITIONS, "direction": DIRECTIONS, "pattern": PATTERNS,
}  # fmt: skip


def attributes(kind: str) -> dict[str, tuple[str, ...]]:
    """The judged attributes of a kind ("image", "video", "audio") and their classes.

    Chance level of an attribute is 1 / len(classes); of a whole scene, the product.
    """
    scene = {s.kind: s for s in SCENES}[kind]
    return {f.name: VALUES[f.name] for f in fields(scene)}


def _sample(scene_type, rng: np.random.Generator) -> Scene:
    return scene_type(**{name: str(rng.choice(values)) for name, values in attributes(scene_type.kind).items()})


def sample_image_scene(rng: np.random.Generator) -> ImageScene:
    return _sample(ImageScene, rng)


def sample_video_scene(rng: np.random.Generator) -> VideoScene:
    return _sample(VideoScene, rng)


def sample_sound_scene(rng: np.random.Generator) -> SoundScene:
    return _sample(SoundScene, rng)


# ----------------------------------------------------------------------------- captions


def caption(scene: Scene) -> str:
    return scene.template.format(**asdict(scene))


def _caption_pattern(scene_type) -> re.Pattern:
    groups = {
        name: "(?P<%s>%s)" % (name, "|".join(map(re.escape, values)))
        for name, values in attributes(scene_type.kind).items()
    }
    return re.compile(scene_type.template.format(**groups))  # templates are plain words


_PARSERS = [(scene_type, _caption_pattern(scene_type)) for scene_type in SCENES]


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace or final full stop."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def parse_caption(text: str) -> Scene | None:
    """The scene a caption describes exactly, or None (case and spacing do not matter)."""
    text = normalise(text)
    for scene_type, pattern in _PARSERS:
        if match := pattern.fullmatch(text):
            return scene_type(**match.groupdict())
    return None


# ----------------------------------------------------------------------------- images


def shape_mask(shape: str, centre: tuple[float, float], side: float, size: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of a shape with the given box centre and side (pixels).

    The triangle points up and fills its box's bottom edge.
    """
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    dx, dy = coords[None, :] - centre[0], coords[:, None] - centre[1]
    h = side / 2
    if shape == "circle":
        inside = dx**2 + dy**2 <= h**2
    elif shape == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif shape == "triangle":
        inside = (dy >= -h) & (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def _clamp_centre(centre, side: float, size: int) -> tuple[float, float]:
    low, high = side / 2, size - side / 2
    return tuple(float(np.clip(c, low, high)) for c in centre)


def _paint(masks: list[np.ndarray], colour: str, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Composite coverage masks (one per frame) of one colour onto a plain background."""
    background = BACKGROUND + _jitter(rng, 12)
    rgb = np.clip(np.array(RGB[colour]) + _jitter(rng, 15, 3), 0, 255)
    frames = []
    for mask in masks:
        frame = background * (1 - mask[..., None]) + rgb * mask[..., None]
        if exists(rng):
            frame = frame + rng.normal(0, 2, frame.shape)
        frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return np.stack(frames)


def render_image(scene: ImageScene, size: int = 32, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """uint8 (size, size, 3). `rng` (or a seed) adds variation; None gives the canonical render."""
    rng = _rng(rng)
    side = SIDE[scene.size] * size * (1 + _jitter(rng, 0.08))
    cx, cy = CENTRE[scene.position]
    move = max(1.0, size / 20)
    centre = _clamp_centre((cx * size + _jitter(rng, move), cy * size + _jitter(rng, move)), side, size)
    return _paint([shape_mask(scene.shape, centre, side, size)], scene.colour, size, rng)[0]


# ----------------------------------------------------------------------------- videos


def render_video(
    scene: VideoScene, size: int = 32, frames: int = 5, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """uint8 (frames, size, size, 3): the shape crosses the middle of the frame in a straight line.

    The default 5 frames is 1 + 4k, what a causal video tokenizer with 4x time compression takes.
    """
    if frames < 2:
        raise ValueError(f"a moving shape needs frames >= 2, got {frames}")
    rng = _rng(rng)
    side = SIDE["video"] * size * (1 + _jitter(rng, 0.08))
    step = np.array(STEP[scene.direction], dtype=float)
    travel = TRAVEL * size * (1 + _jitter(rng, 0.1))
    across = _jitter(rng, 0.15 * size) * step[::-1]  # a random lane perpendicular to the motion
    start = np.array([size / 2, size / 2]) - step * travel / 2 + across
    path = [start + step * travel * t / (frames - 1) for t in range(frames)]
    masks = [shape_mask(scene.shape, _clamp_centre(p, side, size), side, size) for p in path]
    return _paint(masks, scene.colour, size, rng)


# ----------------------------------------------------------------------------- sounds


def gate(t: np.ndarray, start: float, stop: float, ramp: float = 0.01) -> np.ndarray:
    """1 inside [start, stop], 0 outside, with linear ramps so notes do not click."""
    return np.clip(np.minimum(t - start, stop - t) / ramp, 0, 1)


def render_sound(
    scene: SoundScene, sample_rate: int = 16000, seconds: float = 1.0, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """float32 mono (round(seconds * sample_rate),) in [-1, 1]."""
    if scene.pattern not in PATTERNS:
        raise ValueError(f"unknown sound pattern {scene.pattern!r}; expected one of {PATTERNS}")
    rng = _rng(rng)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    low, high = LOW_HZ * (1 + _jitter(rng, 0.08)), HIGH_HZ * (1 + _jitter(rng, 0.08))
    amplitude = 0.5 * (1 + _jitter(rng, 0.3))
    kind = scene.pattern.split()[-2:]  # e.g. ["rising", "tone"], ["high", "beeps"]
    if kind[1] == "beeps":
        hz = np.full_like(t, high if kind[0] == "high" else low)
        length, gap = seconds * (0.2 + _jitter(rng, 0.03)), seconds * (0.2 + _jitter(rng, 0.05))
        first = seconds * (0.5 + _jitter(rng, 0.05)) - length - gap / 2
        envelope = gate(t, first, first + length) + gate(t, first + length + gap, first + 2 * length + gap)
    else:
        ends = {"rising": (low, high), "falling": (high, low), "high": (high, high), "low": (low, low)}
        start, stop = ends[kind[0]]
        hz = start * (stop / start) ** (t / seconds)  # exponential sweep: constant octaves per second
        envelope = gate(t, 0.02 * seconds, 0.98 * seconds)
    phase = 2 * np.pi * np.cumsum(hz) / sample_rate + _jitter(rng, np.pi)
    wave = amplitude * envelope * np.sin(phase)
    if exists(rng):
        wave = wave + rng.normal(0, 0.003, wave.shape)
    return np.clip(wave, -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------- datasets


def write_world(
    out_dir: str | Path,
    n_images: int,
    n_videos: int,
    n_sounds: int,
    seed: int = 0,
    image_size: int = 32,
    video_frames: int = 5,
    video_format: str = "gif",
    fps: float = 5.0,
    sample_rate: int = 16000,
    seconds: float = 1.0,
) -> Path:
    """Render a captioned dataset to files plus manifest.jsonl; returns the manifest path.

    Record i of a kind depends only on (seed, kind, i), so growing n never changes earlier
    records. Lines look like {"id": "image-000000", "text": caption, "image": "images/000000.png"}.
    """
    if video_format not in ("gif", "mp4"):
        raise ValueError(f"video_format={video_format!r}; expected 'gif' or 'mp4'")
    out = Path(out_dir)
    plan = [  # kind, folder, extension, count, sampler, writer of one scene
        ("image", "images", "png", n_images, sample_image_scene,
         lambda path, s, r: media.write_image(path, render_image(s, image_size, r))),
        ("video", "videos", video_format, n_videos, sample_video_scene,
         lambda path, s, r: media.write_video(path, render_video(s, image_size, video_frames, r), fps)),
        ("audio", "audio", "wav", n_sounds, sample_sound_scene,
         lambda path, s, r: media.write_audio(path, render_sound(s, sample_rate, seconds, r), sample_rate)),
    ]  # fmt: skip
    manifest = out / "manifest.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    with manifest.open("w") as f:
        for number, (kind, folder, ext, count, sample, write) in enumerate(plan):
            for i in range(count):
                rng = np.random.default_rng([seed, number, i])
                scene = sample(rng)
                relative = f"{folder}/{i:06d}.{ext}"
                write(out / relative, scene, rng)
                f.write(json.dumps({"id": f"{kind}-{i:06d}", "text": caption(scene), kind: relative}) + "\n")
    return manifest
