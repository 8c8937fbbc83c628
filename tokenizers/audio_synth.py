"""Synthetic sounds for training and testing the audio codec without downloading anything.

Six families with known structure: steady tones with harmonics, chirps (linear and
exponential sweeps), noise bursts with decaying envelopes, vowel-like sounds (a glottal
harmonic series shaped by formant resonances, with vibrato), short beeps, and the captioned
sound scenes of :mod:`anyseq.world` (what the demo's transformer learns to generate); a clip
mixes one to three of them. Everything is numpy, deterministic given the generator.

    python -m anyseq.tokenizers.audio_synth --out runs/audio_data/train --count 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

KINDS = ("tone", "chirp", "noise", "vowel", "beeps", "scene")

# First three formants (Hz) of five vowels, adult male averages (Peterson & Barney).
FORMANTS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410), "u": (300, 870, 2240)}


def _envelope(n: int, sr: int, attack: float = 0.01, release: float = 0.02) -> np.ndarray:
    env = np.ones(n)
    a, r = min(n, max(1, int(attack * sr))), min(n, max(1, int(release * sr)))
    env[:a] = np.linspace(0, 1, a)
    env[n - r :] *= np.linspace(1, 0, r)
    return env


def _harmonics(freq: np.ndarray, sr: int, amplitude: Callable[[np.ndarray], np.ndarray], count: int) -> np.ndarray:
    """Sum of harmonics k * freq(t) (below Nyquist) with amplitudes amplitude(k * freq)."""
    phase = 2 * np.pi * np.cumsum(freq) / sr
    out = np.zeros_like(phase)
    for k in range(1, count + 1):
        f = k * freq
        out += np.where(f < 0.45 * sr, amplitude(f), 0.0) * np.sin(k * phase)
    return out


def tone(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0 = rng.uniform(110, 1760)
    decay = rng.uniform(0.3, 1.0)
    x = _harmonics(np.full(n, f0), sr, lambda f: np.exp(-decay * f / f0), int(rng.integers(1, 6)))
    return x * _envelope(n, sr)


def chirp(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, f1 = rng.uniform(100, 0.4 * sr, size=2)
    t = np.linspace(0, 1, n)
    freq = f0 * (f1 / f0) ** t if rng.random() < 0.5 else f0 + (f1 - f0) * t
    return np.sin(2 * np.pi * np.cumsum(freq) / sr) * _envelope(n, sr)


def noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(int(rng.integers(1, 5))):
        start, length = int(rng.integers(0, n)), int(rng.uniform(0.03, 0.3) * sr)
        stop = min(n, start + length)
        burst = rng.standard_normal(stop - start)
        if rng.random() < 0.5:  # low-passed ("rumble") by a moving average
            width = int(rng.integers(2, 16))
            burst = np.convolve(burst, np.ones(width) / np.sqrt(width))[: len(burst)]
        out[start:stop] += burst * np.exp(-np.arange(stop - start) / (rng.uniform(0.2, 1.0) * length))
    return out * 0.5


def vowel(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f1, f2, f3 = FORMANTS[str(rng.choice(list(FORMANTS)))]
    t = np.arange(n) / sr
    pitch = rng.uniform(90, 260) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))  # vibrato
    bandwidth = np.array([80.0, 100.0, 140.0])

    def formant_gain(f: np.ndarray) -> np.ndarray:
        peaks = sum(g / (1 + ((f - c) / b) ** 2) for c, b, g in zip((f1, f2, f3), bandwidth, (1.0, 0.6, 0.3)))
        return peaks / np.sqrt(f / 100)  # glottal source tilt

    x = _harmonics(pitch, sr, formant_gain, int(0.45 * sr / pitch.min()))
    return x * _envelope(n, sr, 0.03, 0.05)


def beeps(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    f = rng.uniform(400, 3000)
    length = int(rng.uniform(0.04, 0.12) * sr)
    gap = length + int(rng.uniform(0.05, 0.2) * sr)
    for start in range(int(rng.integers(0, gap)), n - length, gap):
        out[start : start + length] = np.sin(2 * np.pi * f * np.arange(length) / sr) * _envelope(length, sr, 0.005, 0.005)
    return out


def scene(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    from anyseq import world

    return world.render_sound(world.sample_sound_scene(rng), sr, n / sr, rng).astype(np.float64)


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "tone": tone,
    "chirp": chirp,
    "noise": noise,
    "vowel": vowel,
    "beeps": beeps,
    "scene": scene,
}


def synth_clip(
    rng: np.random.Generator, seconds: float, sample_rate: int, kinds: tuple[str, ...] = KINDS, noise_floor_db: float = -60.0
) -> np.ndarray:
    """float32 (N,) mono: one to three sounds of the given kinds, peak-normalised to 0.3..0.9,
    over a faint white-noise floor (real recordings are never digitally silent, and log-spectral
    losses and metrics would otherwise be dominated by how exactly a codec reproduces zeros)."""
    n = int(round(seconds * sample_rate))
    x = sum(GENERATORS[str(k)](rng, n, sample_rate) * rng.uniform(0.3, 1.0) for k in rng.choice(kinds, int(rng.integers(1, 4))))
    peak = np.abs(x).max()
    x = x / peak * rng.uniform(0.3, 0.9) if peak > 0 else x
    return (x + 10 ** (noise_floor_db / 20) * rng.standard_normal(n)).astype(np.float32)


def write_corpus(folder: str | Path, count: int, seconds: float, sample_rate: int, seed: int = 0) -> list[Path]:
    """``count`` synthetic clips as 16-bit WAVs named ``clip_00000.wav`` ...; returns their paths."""
    from anyseq.media import write_audio

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    return [write_audio(folder / f"clip_{i:05d}.wav", synth_clip(rng, seconds, sample_rate), sample_rate) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audio_synth", description="write synthetic audio clips for codec training")
    p.add_argument("--out", required=True, help="folder for clip_00000.wav ...")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = write_corpus(args.out, args.count, args.seconds, args.sample_rate, args.seed)
    print(f"wrote {len(paths)} clips of {args.seconds:g} s to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
