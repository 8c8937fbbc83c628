"""Automatic judges for the synthetic world: what does a generated image, video, sound or caption show?

They read media the way a person would describe it, so the demo can score generations
against the prompt without a learned classifier:

- image: separate the shape from the plain background, then fit the three shapes by
  analysis-by-synthesis (render each with the observed area and centroid, blur it a little
  or not at all, keep the closest); the fit gives shape, size and position, the hue of the
  core pixels gives the colour.
- video: the same per frame, with one shape that must explain every frame; direction from
  the shape's motion between first and last frame.
- sound: a pitch track and an amplitude envelope of the strongest partial; two bursts are
  beeps, one burst is a tone whose pitch rises, falls or stays high/low.

Soft coverage, blurred templates and hue (not RGB distance) keep the judges robust to the
blur, ringing and desaturation of tokenizer reconstructions. Judges return None when there
is nothing to judge (no shape, silence).
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import asdict

import numpy as np

from anyseq.helpers import exists
from anyseq.world import (
    CENTRE,
    COLOURS,
    FILL,
    HIGH_HZ,
    LOW_HZ,
    RGB,
    SHAPES,
    SIDE,
    STEP,
    ImageScene,
    Scene,
    SoundScene,
    VideoScene,
    attributes,
    normalise,
    parse_caption,
    shape_mask,
)

MIN_CONTRAST = 40.0  # RGB distance from the background below which nothing is drawn
SCALES = (0.9, 1.0, 1.1)  # template sides tried, relative to the side the area implies
BLURS = (0.0, 0.6, 1.2, 1.8)  # Gaussian sigmas (pixels) the templates are tried at


# ----------------------------------------------------------------------------- images


def _background(frames: np.ndarray) -> np.ndarray:
    """Median colour of the border pixels of (T, H, W, 3) frames."""
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    return np.median(border.reshape(-1, 3), axis=0)


def _ramp(x: np.ndarray) -> np.ndarray:
    """Coverage from normalised contrast: 0 below a quarter, 1 above three quarters.

    Noise on the background counts for nothing and a blurred edge counts half.
    """
    return np.clip((x - 0.25) / 0.5, 0, 1)


def _alpha(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """How much of each pixel the shape covers, (T, H, W) in [0, 1], and the background colour.

    Distance from the background relative to the shape's full contrast: the inverse of the
    renderer's compositing. None if nothing stands out from the background.
    """
    frames = frames.astype(np.float64)
    background = _background(frames)
    distance = np.linalg.norm(frames - background, axis=-1)
    contrast = np.percentile(distance, 99.5)
    if contrast < MIN_CONTRAST:
        return None
    return np.clip(distance / contrast, 0, 1), background


def _near(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel in every direction (3x3 dilation)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


@functools.lru_cache(maxsize=64)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """G with G @ x @ G.T a Gaussian blur of x; outside the image counts as background."""
    if sigma == 0:
        return np.eye(size)
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True).max()


def _moments(weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Total weight and centroid (x, y) of a (H, W) map, in pixel units."""
    ys, xs = np.indices(weights.shape) + 0.5
    mass = weights.sum()
    return mass, np.array([(xs * weights).sum(), (ys * weights).sum()]) / mass


def _fits(alpha: np.ndarray) -> dict[str, tuple[float, tuple[float, float], float]]:
    """For each shape: (squared error, box centre (x, y), side) of its best template.

    Each shape is rendered with the observed area (at a few scales) and centroid, blurred at
    a few strengths and compared on the coverage ramp, so a blurred square is compared with
    blurred squares rather than with a sharp circle. Area and centroid are measured twice:
    on alpha next to the shape (exact for sharp anti-aliased edges) and on the ramp
    (unbiased by blur, which lowers the peak that alpha is relative to).
    """
    size = alpha.shape[0]
    coverage = _ramp(alpha)
    estimates = (_moments(alpha * _near(coverage > 0)), _moments(coverage))
    fits = {}
    for (mass, centroid), shape, scale in itertools.product(estimates, SHAPES, SCALES):
        side = np.sqrt(mass / FILL[shape]) * scale
        centre = (centroid[0], centroid[1] - (side / 6 if shape == "triangle" else 0))  # triangle centroid sits low
        template = shape_mask(shape, centre, side, size, supersample=4 if size <= 32 else 2)
        for sigma in BLURS:
            g = _blur_matrix(size, sigma)
            blurred = g @ template @ g.T
            error = ((_ramp(blurred / blurred.max()) - coverage) ** 2).sum()
            if shape not in fits or error < fits[shape][0]:
                fits[shape] = (error, centre, side)
    return fits


def _colour(frames: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> str:
    """Named colour with the hue closest to the shape's core pixels, as seen against the background.

    Hue -- the direction of the colour offset once its grey part is removed -- ignores both
    how much a blurred edge mixed in the background and how much a codec desaturated it.
    """
    core = alpha > 0.75 * alpha.max()
    offset = np.median(frames[core].reshape(-1, 3).astype(np.float64), axis=0) - background

    def hue(rgb: np.ndarray) -> np.ndarray:
        chroma = rgb - rgb.mean()
        return chroma / (np.linalg.norm(chroma) + 1e-9)

    return max(COLOURS, key=lambda name: hue(offset) @ hue(np.array(RGB[name]) - background))


def _nearest(anchors: dict[str, tuple[float, float]], point: np.ndarray) -> str:
    return min(anchors, key=lambda name: np.linalg.norm(point - np.array(anchors[name])))


def _check(media: np.ndarray, ndim: int, layout: str) -> np.ndarray:
    media = np.asarray(media)
    if media.dtype != np.uint8 or media.ndim != ndim or media.shape[-1] != 3 or media.shape[-2] != media.shape[-3]:
        raise ValueError(f"expected uint8 {layout} with square frames, got {media.dtype} of shape {media.shape}")
    return media


def judge_image(image: np.ndarray) -> ImageScene | None:
    """The scene a uint8 (S, S, 3) image shows, or None if it shows no shape."""
    image = _check(image, 3, "(S, S, 3)")
    found = _alpha(image[None])
    if not exists(found):
        return None
    alpha, background = found[0][0], found[1]
    size = image.shape[0]
    fits = _fits(alpha)
    shape = min(fits, key=lambda name: fits[name][0])
    _, centre, side = fits[shape]
    small_large = "small" if side / size < (SIDE["small"] + SIDE["large"]) / 2 else "large"
    position = _nearest(CENTRE, np.array(centre) / size)
    return ImageScene(_colour(image, alpha, background), shape, small_large, position)


# ----------------------------------------------------------------------------- videos


def judge_video(frames: np.ndarray) -> VideoScene | None:
    """The scene a uint8 (T, S, S, 3) video shows, or None if a frame shows no shape."""
    frames = _check(frames, 4, "(T, S, S, 3)")
    found = _alpha(frames)
    if not exists(found) or len(frames) < 2 or (_ramp(found[0]).sum(axis=(1, 2)) == 0).any():
        return None
    alpha, background = found
    fits = [_fits(a) for a in alpha]
    shape = min(SHAPES, key=lambda name: sum(fit[name][0] for fit in fits))  # one shape explains every frame
    motion = np.array(fits[-1][shape][1]) - np.array(fits[0][shape][1])
    direction = _nearest(STEP, motion / (np.linalg.norm(motion) + 1e-9))
    return VideoScene(_colour(frames, alpha, background), shape, direction)


# ----------------------------------------------------------------------------- sounds

SPLIT_HZ = float(np.sqrt(LOW_HZ * HIGH_HZ))  # geometric middle of low and high
SWEEP_OCTAVES = 0.5  # pitch change between first and last third that counts as rising/falling


def partials(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ~32 ms frame (hop 16 ms): amplitude and frequency (Hz) of the strongest partial.

    Measuring the spectral peak rather than the RMS keeps the envelope of a tone clear of
    broadband noise, which spreads its energy over every bin.
    """
    n = 1 << int(np.ceil(np.log2(0.032 * sample_rate)))
    hop = n // 2
    if len(samples) < n:
        samples = np.pad(samples, (0, n - len(samples)))
    count = 1 + (len(samples) - n) // hop
    frames = np.lib.stride_tricks.sliding_window_view(samples, n)[::hop][:count]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1))
    peak = spectrum[:, 1:-1].argmax(axis=1) + 1
    left, mid, right = (spectrum[np.arange(count), peak + d] for d in (-1, 0, 1))
    # a Hann-windowed sine of amplitude A has main-lobe bins A*n/4 and A*n/8 either side
    amplitude = np.sqrt((left**2 + mid**2 + right**2) / 1.5) * 4 / n
    # parabolic interpolation of the log-magnitude peak: sub-bin pitch
    left, mid, right = (np.log(x + 1e-12) for x in (left, mid, right))
    curvature = left - 2 * mid + right
    offset = 0.5 * (left - right) / np.where(curvature == 0, -1e-12, curvature)
    return amplitude, (peak + np.clip(offset, -0.5, 0.5)) * sample_rate / n


def _sounding(amplitude: np.ndarray) -> np.ndarray | None:
    """Frames at least half as loud as the loud end (95th percentile) of a sound; None for silence."""
    loud = np.percentile(amplitude, 95)
    return amplitude > 0.5 * loud if loud >= 1e-3 else None


def _bursts(active: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of active frames; gaps of one frame are bridged, one-frame runs dropped."""
    active = active.copy()
    active[1:-1] |= active[:-2] & active[2:]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(int), [0]])))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]


def judge_sound(samples: np.ndarray, sample_rate: int) -> SoundScene | None:
    """The pattern a float mono (N,) sound plays, or None for silence."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 1 or not np.isfinite(samples).all():
        raise ValueError(f"expected finite float mono samples (N,), got shape {samples.shape}")
    amplitude, pitch = partials(samples, sample_rate)
    sounding = _sounding(amplitude)
    if not exists(sounding):
        return None
    bursts = _bursts(sounding)
    if not bursts:
        return None
    voiced = np.concatenate([pitch[a:b] for a, b in bursts])
    height = "high" if np.median(voiced) > SPLIT_HZ else "low"
    if len(bursts) >= 2:
        return SoundScene(f"two short {height} beeps")
    third = max(1, len(voiced) // 3)
    change = np.log2(np.median(voiced[-third:]) / np.median(voiced[:third]))
    if abs(change) >= SWEEP_OCTAVES:
        return SoundScene("a rising tone" if change > 0 else "a falling tone")
    return SoundScene(f"a steady {height} tone")


def _sounding_partials(original: np.ndarray, copy: np.ndarray, sample_rate: int) -> tuple[np.ndarray, ...] | None:
    """The strongest partial's amplitude and pitch in an original and its copy, over the
    original's sounding frames: (amplitude, hz, amplitude_copy, hz_copy); None if silent."""
    (a, hz), (b, hz_copy) = (partials(np.asarray(x, np.float64), sample_rate) for x in (original, copy))
    sounding = _sounding(a)
    if not exists(sounding):
        return None
    n = min(len(a), len(b))
    keep = sounding[:n]
    return (a[:n][keep], hz[:n][keep], b[:n][keep], hz_copy[:n][keep]) if keep.any() else None


def tone_fidelity(original: np.ndarray, copy: np.ndarray, sample_rate: int) -> tuple[float, float] | None:
    """How a copy (a codec's reconstruction) renders an original's tones: over the original's
    sounding frames, the median ratio of the strongest partial's amplitude (copy / original)
    and the median distance of its pitch in semitones. None if the original is silent.

    Why beside the judged pattern: a codec whose tones come back at a tenth of their loudness
    or moved onto a harmonic of its frame rate is often still judged right, by luck of where
    the moved pitch lands."""
    if not exists(found := _sounding_partials(original, copy, sample_rate)):
        return None
    a, hz, b, hz_copy = found
    return float(np.median(b / a)), float(np.median(np.abs(12 * np.log2(hz_copy / hz))))


def loudness_by_frame(original: np.ndarray, copy: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(pitch in Hz of the original, loudness copy / original) per sounding frame of the original:
    where in pitch a copy fades, which the median of :func:`tone_fidelity` hides."""
    if not exists(found := _sounding_partials(original, copy, sample_rate)):
        return np.zeros(0), np.zeros(0)
    a, hz, b, _ = found
    return hz, b / a


# ----------------------------------------------------------------------------- captions


def _mentioned(text: str, values: tuple[str, ...]) -> str | None:
    """The one value the text names (whole words), or None if it names none or several."""
    found = [v for v in values if re.search(rf"\b{re.escape(v)}\b", text)]
    return found[0] if len(found) == 1 else None


def judge_caption(text: str, reference: Scene) -> dict[str, bool]:
    """Per-attribute correctness of a caption against the true scene, plus "exact".

    An attribute counts when the caption names exactly one of its classes and that is the
    true one, so a slightly ungrammatical caption still earns credit for what it gets
    right; "exact" needs the whole caption to parse back to the scene.
    """
    text = normalise(text)
    truth = asdict(reference)
    scores = {name: _mentioned(text, values) == truth[name] for name, values in attributes(reference.kind).items()}
    scores["exact"] = parse_caption(text) == reference
    return scores


def judge(kind: str, media: np.ndarray, sample_rate: int | None = None) -> Scene | None:
    """Dispatch by kind ("image", "video", "audio")."""
    if kind == "audio":
        if not exists(sample_rate):
            raise ValueError("judging audio needs its sample_rate")
        return judge_sound(media, sample_rate)
    return {"image": judge_image, "video": judge_video}[kind](media)
