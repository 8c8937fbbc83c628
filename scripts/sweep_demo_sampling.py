"""The demo's checkpoint sampled under a grid of sampling settings, each judged as the demo judges it (an experiment, not a test).

    .venv/bin/python scripts/sweep_demo_sampling.py --demo demo_out --out runs/sampling \\
        --direction text->image --cfg 1 2 3 --temperature 1.0 0.7 --seeds 0 1

Every setting (CFG scale x temperature x top-k x top-p) samples the same held-out prompts of
each direction, ``samples_per_prompt`` times as the demo does, once per sampling ``--seeds``
value, so settings are compared on paired draws; what is not swept is as the demo samples it
(``anyseq.demo.sampling_options``: ``anyseq generate``'s defaults, media at the plan's
temperature). Writes every run (with the stem of its sample files under ``--out/samples``)
and, per setting, the mean accuracy over the seeds and the share of a prompt's samples that
differ (a lower temperature buys accuracy with diversity) to ``--out/results.json`` (runs
already there are not sampled again) and prints a table.
``--checkpoint`` judges another checkpoint trained on the demo's shards (e.g. a run of
scripts/compare_demo_transformers.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from anyseq import demo
from anyseq.helpers import HelpFormatter

MEDIA_DIRECTIONS = [f"{s}->{t}" for s, t in demo.DIRECTIONS if s == "text"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `anyseq demo` output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the samples and results.json")
    parser.add_argument("--checkpoint", type=Path, help="default: the demo's model/last.ckpt")
    parser.add_argument("--direction", action="append", choices=[f"{s}->{t}" for s, t in demo.DIRECTIONS],
                        help=f"default: {' '.join(MEDIA_DIRECTIONS)}")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0], help="classifier-free guidance scales")
    parser.add_argument("--temperature", type=float, nargs="+", help="default: the demo's for the direction")
    parser.add_argument("--top-k", type=int, nargs="+", help="0: all ids; default: the demo's for the direction")
    parser.add_argument("--top-p", type=float, nargs="+", help="1.0: off; default: the demo's for the direction")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds (paired across settings)")
    parser.add_argument("--device", default="cpu", help="device for generation")
    args = parser.parse_args(argv)
    plan_file = args.demo / "plan.json"
    if not plan_file.exists() or not (args.demo / "held_out" / "manifest.jsonl").exists():
        parser.error(f"{args.demo}: not a demo output folder (no plan.json or held_out/manifest.jsonl); "
                     f"run `anyseq demo --out {args.demo}`")
    checkpoint = args.checkpoint or args.demo / "model" / "last.ckpt"
    if not checkpoint.exists():
        parser.error(f"--checkpoint {checkpoint}: no such file")
    from anyseq.checkpoint import load_bundle

    plan, held_out = demo.Plan.load(args.demo), args.demo / "held_out" / "manifest.jsonl"
    bundle = load_bundle(str(checkpoint), device=args.device)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if results.get("checkpoint", str(checkpoint)) != str(checkpoint):
        parser.error(f"{results_file} holds runs of {results['checkpoint']}; choose another --out")
    results["checkpoint"] = str(checkpoint)
    runs = results.setdefault("runs", {})
    for direction in args.direction or MEDIA_DIRECTIONS:
        source, target = direction.split("->")
        default = demo.sampling_options(target, plan)
        rows, ids = demo.direction_prompts(bundle, source, target, held_out, plan)
        grid = itertools.product(args.cfg, args.temperature or [default.temperature], args.top_k or [default.top_k],
                                 args.top_p or [default.top_p])
        for cfg, temperature, top_k, top_p in grid:
            options = replace(default, cfg_scale=cfg, temperature=temperature, top_k=top_k, top_p=top_p)
            setting = f"{direction} cfg={cfg:g} temperature={temperature:g} top_k={top_k} top_p={top_p:g}"
            for seed in args.seeds:
                key = f"{setting} seed={seed}"
                if key in runs:
                    continue
                stem = args.out / "samples" / f"{source}2{target}_{len(runs):03d}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                judged = demo.judge_direction(bundle, source, target, rows, ids, options, plan, stem, seed=seed)
                judged.pop("rows")
                runs[key] = {"setting": setting, "seed": seed, "n": len(rows), "samples": stem.name, **judged}
                results_file.write_text(json.dumps(results, indent=2))
                print(f"[sweep] {key}: accuracy {judged['accuracy']:.3f}", flush=True)
    settings: dict[str, list] = {}
    for run in runs.values():
        settings.setdefault(run["setting"], []).append(run)
    results["settings"] = {s: {"accuracy": float(np.mean([r["accuracy"] for r in rs])), "seeds": len(rs),
                               "n": sum(r["n"] for r in rs), "distinct": float(np.mean([r["distinct"] for r in rs])),
                               "per_attribute": {a: float(np.mean([r["per_attribute"][a] for r in rs]))
                                                 for a in rs[0]["per_attribute"]}}
                           for s, rs in settings.items()}
    results_file.write_text(json.dumps(results, indent=2))
    print("| setting | seeds | n | accuracy | distinct samples | per attribute |\n|---|---|---|---|---|---|")
    for setting, s in results["settings"].items():
        attributes = ", ".join(f"{a} {v:.2f}" for a, v in s["per_attribute"].items())
        print(f"| {setting} | {s['seeds']} | {s['n']} | {s['accuracy']:.3f} | {s['distinct']:.2f} | {attributes} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
