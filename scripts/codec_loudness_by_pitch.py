"""How loud an audio codec renders the held-out tones, by the original's pitch (an experiment, not a test).

    .venv/bin/python scripts/codec_loudness_by_pitch.py runs/codecs/base/tokenizers/audio --world demo_out

The judged pattern and the median loudness of ``compare_demo_tokenizers.py`` hide where in
pitch a codec fails: a sweep that fades over one stretch of its range is judged two beeps,
while the median over all frames stays near 1. This prints, per pitch band of the originals'
sounding frames (``--patterns`` chooses which sounds, sweeps by default), the number of
frames and the median loudness of the strongest partial, copy / original.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("tokenizer", type=Path, help="an exported audio codec folder")
    parser.add_argument("--world", type=Path, required=True, help="an `anyseq demo` output folder (its held_out/)")
    parser.add_argument("--patterns", nargs="+", default=["a rising tone", "a falling tone"], help="sound patterns")
    parser.add_argument("--bands", type=int, default=10, help="pitch bands, equal in octaves, over the world's tones (276-1296 Hz)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.patterns) - set(world.PATTERNS)):
        parser.error(f"--patterns: unknown {unknown}; the world's patterns are {list(world.PATTERNS)}")
    edges = np.geomspace(world.LOW_HZ * 0.92, world.HIGH_HZ * 1.08, args.bands + 1)
    table = loudness_by_pitch(load_tokenizer(args.tokenizer), args.world / "held_out" / "manifest.jsonl",
                              args.patterns, edges, demo.PLANS["default"])
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
