"""How loud an audio codec renders the held-out tones, by the original's pitch (an experiment, not a test).

    .venv/bin/python scripts/codec_loudness_by_pitch.py runs/codecs/base/tokenizers/audio --world demo_out
    .venv/bin/python scripts/codec_loudness_by_pitch.py runs/codecs/base/tokenizers/audio --steady

The judged pattern and the median loudness of ``compare_demo_tokenizers.py`` hide where in
pitch a codec fails: a sweep that fades over one stretch of its range is judged two beeps,
while the median over all frames stays near 1. This prints, per pitch band of the originals'
sounding frames (``--patterns`` chooses which sounds, sweeps by default), the number of
frames and the median loudness of the strongest partial, copy / original.

``--steady`` probes with steady sine tones, one at each band's centre, instead: whether a fade
belongs to a pitch (every sound there fades) or to the sweeps' motion through it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import torch

from anyseq import demo, judges, world
from anyseq.helpers import HelpFormatter
from anyseq.tokenizers.base import load_tokenizer


def loudness_by_pitch(tokenizer, held_out: Path, patterns: list[str], edges: np.ndarray, plan: demo.Plan) -> dict:
    hz, loudness = [], []
    for scene, original, copy in demo.round_trips(tokenizer, "audio", held_out, plan):
        if scene.pattern in patterns:
            pitch, ratio = judges.loudness_by_frame(original, copy, plan.sample_rate)
            hz.append(pitch)
            loudness.append(ratio)
    if not hz:
        raise SystemExit(f"{held_out}: none of the first {plan.eval_per_direction} held-out sounds plays {patterns}")
    hz, loudness = np.concatenate(hz), np.concatenate(loudness)
    band = np.digitize(hz, edges) - 1
    return {f"{lo:.0f}-{hi:.0f} Hz": {"frames": int(inside.sum()),
                                      "loudness": round(float(np.median(loudness[inside])), 3)}
            for k, (lo, hi) in enumerate(zip(edges, edges[1:])) if (inside := band == k).any()}


def steady_tones(tokenizer, edges: np.ndarray, plan: demo.Plan) -> dict:
    """Each band's centre as a steady tone at the world's amplitude: its loudness and pitch error."""
    t = np.arange(round(plan.seconds * plan.sample_rate)) / plan.sample_rate
    table = {}
    for hz in np.sqrt(edges[:-1] * edges[1:]):
        tone = 0.5 * np.sin(2 * np.pi * hz * t) * world.gate(t, 0.02 * plan.seconds, 0.98 * plan.seconds)
        copy = demo.round_trip(tokenizer, "audio", tone.astype(np.float32), plan)
        loudness, semitones = judges.tone_fidelity(tone, copy, plan.sample_rate)
        table[f"{hz:.0f} Hz"] = {"loudness": round(loudness, 3), "pitch_error_semitones": round(semitones, 2)}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("tokenizer", type=Path, help="an exported audio codec folder")
    parser.add_argument("--world", type=Path, help="an `anyseq demo` output folder (its held_out/)")
    parser.add_argument("--steady", action="store_true", help="probe with a steady tone per band, not the held-out sounds")
    parser.add_argument("--patterns", nargs="+", default=["a rising tone", "a falling tone"], help="sound patterns")
    parser.add_argument("--bands", type=int, default=10, help="pitch bands, equal in octaves, over the world's tones (276-1296 Hz)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.patterns) - set(world.PATTERNS)):
        parser.error(f"--patterns: unknown {unknown}; the world's patterns are {list(world.PATTERNS)}")
    if not (args.steady or args.world):
        parser.error("give --world <demo folder> (its held-out sounds) or --steady (probe tones)")
    edges = np.geomspace(world.LOW_HZ * 0.92, world.HIGH_HZ * 1.08, args.bands + 1)
    tokenizer, plan = load_tokenizer(args.tokenizer), demo.PLANS["default"]
    with torch.inference_mode():
        table = (steady_tones(tokenizer, edges, plan) if args.steady else
                 loudness_by_pitch(tokenizer, args.world / "held_out" / "manifest.jsonl", args.patterns, edges, plan))
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
