"""Any-to-any generation speed of a checkpoint, with the KV cache and without it (a benchmark, not a test).

    .venv/bin/python scripts/bench_generate.py --checkpoint demo_out/model/last.ckpt --out bench/generate_demo_cpu.json

For each output modality, the same batch of text prompts is sampled twice in one process,
through ``anyseq.generate.generate_ids`` (the code ``anyseq generate`` runs): with the cache
(prefill, then one token per step) and without it (the whole sequence every step). Same
seed, so both draw the same samples; the ratio is the figure to read on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from anyseq.checkpoint import load_bundle
from anyseq.generate import DEFAULTS, encode_prompt, generate_ids, make_target, prompt_ids

PROMPTS = {
    "text": "two short high beeps",  # continued as text
    "image": "a small red circle at the top left",
    "video": "a blue square moving left",
    "audio": "a rising tone",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--to", nargs="+", default=["image", "video", "audio", "text"], choices=sorted(PROMPTS))
    p.add_argument("--batch", type=int, default=8, help="samples per call (CFG doubles the rows)")
    p.add_argument("--height", type=int, default=4, help="image/video height and width in tokens")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)

    bundle = load_bundle(args.checkpoint, device=args.device)
    rows = []
    for to in args.to:
        prompt = prompt_ids(bundle, [encode_prompt(bundle, "text", PROMPTS[to])])
        target = make_target(bundle, to, height=args.height, width=args.height, frames=args.frames,
                             seconds=args.seconds, max_text_tokens=24)
        options = DEFAULTS[to] if to == "text" else replace(DEFAULTS[to], cfg_scale=3.0)
        timed = {}
        for cache in (True, False):
            generate_ids(bundle, [prompt] * 2, target, options, seed=0, use_cache=cache)  # warm-up
            outputs, seconds = generate_ids(bundle, [prompt] * args.batch, target, options, seed=0, use_cache=cache)
            timed[cache] = (outputs, seconds)
        new = sum(len(o) for o in timed[True][0])
        row = {
            "to": to, "batch": args.batch, "cfg_scale": options.cfg_scale, "prompt_tokens": len(prompt),
            "new_tokens": new, "same_samples": timed[True][0] == timed[False][0],
            "tokens_per_s_cache": new / timed[True][1], "tokens_per_s_no_cache": new / timed[False][1],
            "cache_speedup": timed[False][1] / timed[True][1],
        }  # fmt: skip
        rows.append(row)
        print(f"{to:>6}: {new} tokens, {row['tokens_per_s_cache']:.0f} tokens/s with the cache, "
              f"{row['tokens_per_s_no_cache']:.0f} without ({row['cache_speedup']:.2f}x), "
              f"same samples: {row['same_samples']}", flush=True)
    report = {"checkpoint": args.checkpoint, "device": args.device, "threads": torch.get_num_threads(),
              "params": bundle.model.num_params(), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
