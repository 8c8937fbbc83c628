"""The demo's transformer trained again with other seeds on a finished demo's shards, and judged
as the demo judges it: how much of a difference between two demo runs is run-to-run spread.

    .venv/bin/python scripts/demo_seeds.py --demo demo_out --seeds 1 2 --out runs/demo_seeds

Each seed trains with the demo folder's own plan (its plan.json) and tokenizers, under
``--out/seed_N``; the accuracies of every direction (and the demo's own seed-0 run, read from
its progress.json) are printed and written to ``--out/results.json``. A seed already in the
results is not trained again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from anyseq import demo
from anyseq.helpers import HelpFormatter


def accuracies(directions: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Accuracy per direction and setting (plain, guided), and text -> any's per medium."""
    table = {name: {kind: d[kind]["accuracy"] for kind in ("plain", "guided") if kind in d}
             for name, d in directions.items()}
    if "text->any" in directions:
        table["text->any"].update(directions["text->any"]["plain"]["per_attribute"])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `anyseq demo` output folder")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds to train the transformer with")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and results.json")
    parser.add_argument("--device", default="cpu", help="device for generation")
    args = parser.parse_args(argv)
    progress_file = args.demo / "progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
    if "evaluate" not in progress:
        parser.error(f"{progress_file}: not a finished demo (no evaluate stage); run `anyseq demo --out {args.demo}`")
    plan = demo.Plan.load(args.demo)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results["0"] = accuracies(progress["evaluate"]["directions"])
    for seed in args.seeds:
        if str(seed) in results:
            continue
        out = args.out / f"seed_{seed}"
        model = demo.stage_model(out, progress["tokenize"]["path"], plan, (f"--seed_everything={seed}",))
        evaluated = demo.evaluate(out, model["checkpoint"], Path(progress["world"]["held_out"]), plan, args.device)
        results[str(seed)] = accuracies(evaluated["directions"])
        args.out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
