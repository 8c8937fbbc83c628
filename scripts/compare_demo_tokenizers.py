"""The demo's visual tokenizer or audio codec trained in variants, each judged on held-out media (an experiment, not a test).

    .venv/bin/python scripts/compare_demo_tokenizers.py --kind audio --steps 600 --out runs/demo_codecs \
        --variant istft= --variant conv=--model.init_args.tokenizer.decoder=conv

Each variant is ``"name=ARG ARG ..."`` (split like a shell line): ``anyseq fit`` arguments
appended to the demo's own recipe for ``--kind`` (``anyseq.demo.stage_media_tokenizer``). The
demo's world is written under ``--out`` unless ``--world`` points at an existing demo output.
Prints and writes, per variant, the training seconds, the share of held-out media judged right
through the tokenizer (every attribute; images and videos for the visual tokenizer), each
attribute's share and its confusions (true value -> judged value). Use one thread per variant
(OMP_NUM_THREADS=1) and run variants side by side on separate cores to compare times.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from anyseq import demo
from anyseq.helpers import HelpFormatter
from anyseq.tokenizers.base import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--kind", choices=sorted(demo.MEDIA_OF), required=True, help="which of the demo's tokenizers")
    parser.add_argument("--variant", action="append", required=True, help="'name=ARG ARG ...' (anyseq fit arguments)")
    parser.add_argument("--steps", type=int, help="training steps (default: the demo plan's for --kind)")
    parser.add_argument("--out", type=Path, required=True, help="folder for each variant's run and results.json")
    parser.add_argument("--world", type=Path, help="an `anyseq demo` output folder whose world/ and held_out/ to reuse")
    args = parser.parse_args(argv)
    plan = demo.PLANS["default"]
    steps = args.steps or {"visual": plan.visual_steps, "audio": plan.audio_steps}[args.kind]
    if args.world:
        manifest, held_out = args.world / "world" / "manifest.jsonl", args.world / "held_out" / "manifest.jsonl"
    else:
        paths = demo.stage_world(args.out, plan)
        manifest, held_out = Path(paths["manifest"]), Path(paths["held_out"])
    results = {}
    for variant in args.variant:
        name, _, extra = variant.partition("=")
        start = time.perf_counter()
        trained = demo.stage_media_tokenizer(args.out / name, args.kind, manifest, steps, plan,
                                             tuple(shlex.split(extra)))
        seconds = time.perf_counter() - start
        tokenizer = load_tokenizer(trained["path"])
        results[name] = {"arguments": extra, "steps": steps, "train_seconds": round(seconds, 1),
                         **{kind: demo.legibility(tokenizer, kind, held_out, plan) for kind in demo.MEDIA_OF[args.kind]}}
        print(json.dumps({name: results[name]}, indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
