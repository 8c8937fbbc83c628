"""The demo's audio codec trained in variants, each judged on the held-out sounds (an experiment, not a test).

    .venv/bin/python scripts/compare_demo_codecs.py --steps 600 --out runs/demo_codecs \
        --variant conv= --variant istft=--model.init_args.tokenizer.decoder=istft

Each variant is ``"name=ARG ARG ..."`` (split like a shell line): ``anyseq fit`` arguments
appended to the demo's own audio recipe (``anyseq.demo.stage_media_tokenizer``). The demo's world is written under ``--out``
unless ``--world`` points at an existing demo output. Prints and writes, per variant, the
training seconds, the share of held-out sounds judged right through the codec and the
confusions (true pattern -> heard pattern). Use one thread per variant (OMP_NUM_THREADS=1)
and run variants side by side on separate cores to compare times.
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import time
from pathlib import Path

from anyseq import demo
from anyseq.tokenizers.base import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="'name=ARG ARG ...' (anyseq fit arguments)")
    parser.add_argument("--steps", type=int, default=demo.PLANS["default"].audio_steps)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--world", type=Path, help="an `anyseq demo` output folder whose world/ and held_out/ to reuse")
    args = parser.parse_args(argv)
    plan = demo.PLANS["default"]
    if args.world:
        manifest, held_out = args.world / "world" / "manifest.jsonl", args.world / "held_out" / "manifest.jsonl"
    else:
        paths = demo.stage_world(args.out, plan)
        manifest, held_out = Path(paths["manifest"]), Path(paths["held_out"])
    results = {}
    for variant in args.variant:
        name, _, extra = variant.partition("=")
        start = time.perf_counter()
        trained = demo.stage_media_tokenizer(args.out / name, "audio", manifest, args.steps, plan,
                                             tuple(shlex.split(extra)))
        seconds = time.perf_counter() - start
        pairs = demo.judged_round_trips(load_tokenizer(trained["path"]), "audio", held_out, plan)
        heard = collections.Counter(f"{truth.pattern} -> {judged.pattern if judged else 'silence'}"
                                    for truth, judged in pairs)
        accuracy = sum(judged == truth for truth, judged in pairs) / len(pairs)
        results[name] = {"arguments": extra, "steps": args.steps, "train_seconds": round(seconds, 1),
                         "judged_legible": accuracy, "n": len(pairs), "heard": dict(sorted(heard.items()))}
        print(json.dumps({name: results[name]}, indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
