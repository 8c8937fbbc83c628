"""The demo's transformer trained again, in variants and with other seeds, on a finished demo's shards, and judged as the demo judges it (an experiment, not a test).

    .venv/bin/python scripts/compare_demo_transformers.py --demo demo_out --out runs/demo_seeds --seeds 1 2
    .venv/bin/python scripts/compare_demo_transformers.py --demo demo_out --out runs/demo_lr --jobs 2 \\
        --variant "lr4e-3=--model.init_args.lr=4e-3" --variant "batch12=--data.init_args.batch_size=12 \\
        --trainer.max_steps=780"

Each variant is ``"name=ARG ARG ..."`` (split like a shell line): ``anyseq fit`` arguments
appended to the demo's own transformer stage (``anyseq.demo.stage_model``, with the folder's
plan.json and tokenizers); ``base=`` (the default) is the demo's recipe unchanged, so its seeds
measure the run-to-run spread. Every (variant, seed) runs under ``--out/NAME/seed_N``; the
demo's own run is the row ``demo``, seed 0. Per run: the accuracy of every direction (plain
and guided), text -> any's per medium, the training seconds and the training losses per
modality (mean of the last five logged batches). ``--jobs 2`` runs two at a time in spawned
processes at one thread each, as the demo runs its two tokenizers (compare times only between
runs made the same way). Runs already in ``--out/results.json`` are not trained again.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
from pathlib import Path
from typing import Any, Callable

from anyseq import demo
from anyseq.helpers import HelpFormatter

LAST_LOGGED = 5  # training-loss rows averaged for the final losses (one row per 10 steps)


def accuracies(directions: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Accuracy per direction and setting (plain, guided), and text -> any's per medium."""
    table = {name: {kind: d[kind]["accuracy"] for kind in ("plain", "guided") if kind in d}
             for name, d in directions.items()}
    if "text->any" in directions:
        table["text->any"].update(directions["text->any"]["plain"]["per_attribute"])
    return table


def final_losses(metrics: str) -> dict[str, float]:
    """Mean training loss per modality over the last logged batches of a run's CSV log
    (none for a run too short to log one)."""
    rows = [r for r in demo.training_log(metrics) if r.get("train/loss")]
    if not rows:
        return {}
    losses = {}
    for name in (k for k in rows[0] if k.startswith("train/loss")):
        values = [float(r[name]) for r in rows[-LAST_LOGGED:] if r[name]]  # a batch may lack a modality
        if values:
            losses[name.removeprefix("train/")] = round(sum(values) / len(values), 4)
    return losses


def summary(run: dict[str, Any]) -> dict[str, Any]:
    return {"directions": accuracies(run["directions"]), "train_seconds": round(run["train_seconds"], 1),
            "final_losses": final_losses(run["metrics"])}


def table(results: dict[str, Any]) -> str:
    """One markdown row per run: seconds, image loss and each direction's accuracy (plain / guided)."""
    directions = list(next(iter(results.values()))["seeds"].values())[0]["directions"]
    head = ["variant", "seed", "train s", "image loss", *[name.replace("->", " → ") for name in directions]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, variant in results.items():
        for seed, run in variant["seeds"].items():
            cells = [" / ".join(f"{acc[k]:.2f}" for k in ("plain", "guided") if k in acc)
                     for acc in run["directions"].values()]
            lines.append(f"| {name} | {seed} | {run['train_seconds']:.0f} | "
                         f"{run['final_losses'].get('loss_image', float('nan')):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `anyseq demo` output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and results.json")
    parser.add_argument("--variant", action="append", help="'name=ARG ARG ...' (anyseq fit arguments); "
                        "default: base= (the demo's recipe)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to train each variant with")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (more than 1: one thread each)")
    parser.add_argument("--device", default="cpu", help="device for generation")
    args = parser.parse_args(argv)
    progress_file = args.demo / "progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
    if "evaluate" not in progress:
        parser.error(f"{progress_file}: not a finished demo (no evaluate stage); run `anyseq demo --out {args.demo}`")
    variants = dict(v.partition("=")[::2] for v in (args.variant or ["base="]))
    if "demo" in variants:
        parser.error("--variant demo=...: 'demo' names the demo's own run; choose another name")
    plan, shards = demo.Plan.load(args.demo), progress["tokenize"]["path"]
    held_out = Path(progress["world"]["held_out"])
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    own = {**progress["model"], "train_seconds": progress["model"]["seconds"],
           "directions": progress["evaluate"]["directions"]}
    results["demo"] = {"arguments": "", "seeds": {"0": summary(own)}}
    args.out.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2))
    todo = [(name, seed) for name in variants for seed in args.seeds
            if str(seed) not in results.get(name, {}).get("seeds", {})]

    def job(name: str, seed: int) -> tuple:
        extra = (*shlex.split(variants[name]), f"--seed_everything={seed}")
        return demo.retrain_model, (args.out / name / f"seed_{seed}", shards, held_out, plan, extra, args.device)

    def record(name: str, seed: int, run: dict[str, Any]) -> None:
        entry = results.setdefault(name, {"arguments": variants[name], "seeds": {}})
        entry["seeds"][str(seed)] = summary(run)
        results_file.write_text(json.dumps(results, indent=2))
        print(f"[compare] {name} seed {seed}: {json.dumps(entry['seeds'][str(seed)])}", flush=True)

    failed = []

    def collect(name: str, seed: int, run: Callable[[], dict[str, Any]]) -> None:
        try:
            record(name, seed, run())
        except Exception as e:  # one broken variant does not stop the others; a rerun retries it
            failed.append(f"{name} seed {seed}")
            print(f"[compare] {name} seed {seed} failed: {e}", flush=True)

    if args.jobs > 1 and len(todo) > 1:
        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(todo))) as pool:
            pending = [(name, seed, pool.apply_async(demo.timed_stage, job(name, seed))) for name, seed in todo]
            for name, seed, run in pending:
                collect(name, seed, run.get)
    else:
        for name, seed in todo:
            fn, fn_args = job(name, seed)
            collect(name, seed, lambda: fn(*fn_args))
    print(table(results))
    if failed:
        print(f"[compare] failed: {', '.join(failed)} (see the errors above)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
