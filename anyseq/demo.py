"""``anyseq demo``: the whole pipeline on a built-in synthetic world, judged automatically.

1. render a captioned world of shapes, moving shapes and tones (``anyseq.world``);
2. train the text, visual and audio tokenizers (their tiny recipes, through ``anyseq fit``);
3. tokenize the world with ``anyseq tokenize-dataset`` (both caption directions);
4. train the unified transformer with ``anyseq fit``;
5. generate in every direction with the same code as ``anyseq generate`` and let the world's
   judges score the samples against held-out prompts, next to chance, with and without CFG;
6. write ``report.html`` with samples, accuracies, tokenizer metrics, loss curve and timings.

Each stage records its outputs in ``progress.json``; rerunning the same command skips the
stages that finished, so an interrupted demo resumes.
"""

from __future__ import annotations

import argparse
import base64
import collections
import csv
import html
import json
import math
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from lightning.pytorch import Callback

import anyseq
from anyseq import judges, media, world
from anyseq.cli import main as anyseq_cli
from anyseq.helpers import HelpFormatter, exists

CONFIGS = Path(anyseq.__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Plan:
    """Sizes of one demo run. ``default`` took 40 min on a slow 2-core CPU (README); machine speed moves it most."""

    n_images: int = 2400
    n_videos: int = 800
    n_sounds: int = 800
    image_size: int = 32
    video_frames: int = 5
    sample_rate: int = 16000
    seconds: float = 1.0
    visual_steps: int = 2400  # the held-out images' shapes read right: 0.60 after 1200 steps, 0.79 after 2400
    audio_steps: int = 1800  # runs beside the visual tokenizer; legible 0.56-0.65 at 600 steps, 0.69-0.77 at 1800
    model_preset: str = "small"
    model_overrides: tuple[tuple[str, Any], ...] = (("dim", 192), ("n_layers", 4), ("n_heads", 6), ("n_kv_heads", 2),
                                                    ("ffn_dim", 512), ("max_seq_len", 256))
    model_steps: int = 3120  # 3120 beat 1560 in text -> audio (by 0.17-0.34) and text -> any at five of five seed and
    # tokenizer pairs (docs/demo_findings.md); 1560 beat 1170, and batch 12 x 780 beat 24 x 390 (same tokens)
    batch_size: int = 12
    seq_len: int = 192
    lr: float = 2e-3
    condition_dropout: float = 0.1
    eval_per_direction: int = 48
    samples_per_prompt: int = 4
    cfg_scale: float = 2.0
    media_temperature: float = 0.4  # sweep_demo_sampling.py: best accuracy with >= 94% of a prompt's samples distinct
    accelerator: str = "cpu"

    @classmethod
    def load(cls, out: Path) -> "Plan":
        """The plan a demo folder was made with (its plan.json)."""
        fields = json.loads((out / "plan.json").read_text())
        return cls(**{**fields, "model_overrides": tuple(map(tuple, fields["model_overrides"]))})


PLANS = {
    "default": Plan(),
    "quick": Plan(n_images=48, n_videos=16, n_sounds=16, visual_steps=4, audio_steps=4, model_steps=8,
                  batch_size=4, seq_len=128, eval_per_direction=2, samples_per_prompt=1,
                  model_overrides=(("dim", 64), ("n_layers", 2), ("n_heads", 4), ("n_kv_heads", 2), ("ffn_dim", 128),
                                   ("max_seq_len", 256))),
    "gpu": Plan(n_images=20000, n_videos=6000, n_sounds=6000, visual_steps=4000, audio_steps=4000,
                model_preset="small", model_overrides=(("max_seq_len", 512),), model_steps=6000, batch_size=64,
                seq_len=256, lr=1e-3, eval_per_direction=200, accelerator="gpu"),
}


# ---------------------------------------------------------------------------------------------
# stages: each returns a JSON-able summary and is skipped when progress.json says it finished
# ---------------------------------------------------------------------------------------------
class Progress:
    """Finished stages of one plan; a folder made with another plan is refused, not mixed in."""

    def __init__(self, out: Path, plan: Plan):
        self.path = out / "progress.json"
        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        plan_file, wanted = out / "plan.json", json.loads(json.dumps(asdict(plan)))  # tuples as JSON has them
        if self.done:
            saved = json.loads(plan_file.read_text()) if plan_file.exists() else None
            if saved != wanted:
                differ = ({k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v} if saved
                          else "no plan.json")
                raise SystemExit(f"anyseq demo: {out} holds stages of another plan (field: (saved, this run's) "
                                 f"{differ}); rerun with --fresh to start over, or choose another --out")
        plan_file.write_text(json.dumps(wanted, indent=2))

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name in self.done:
            return self._skip(name)
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        result = fn()
        return self._record(name, {**result, "seconds": time.perf_counter() - start})

    def _skip(self, name: str) -> dict[str, Any]:
        print(f"[demo] {name}: already done ({self.done[name]['seconds']:.0f} s), skipping", flush=True)
        return self.done[name]

    def _record(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        """A finished stage, saved at once: a rerun skips it."""
        self.done[name] = result
        self.path.write_text(json.dumps(self.done, indent=2))
        print(f"[demo] {name}: done in {result['seconds']:.0f} s", flush=True)
        return result

    def run_side_by_side(self, stages: dict[str, tuple[Callable[..., dict[str, Any]], tuple]]) -> dict[str, dict]:
        """Stages ``name: (fn, args)`` in spawned processes, side by side, sharing the cores.

        Small convolutions scale badly across threads: on a 2-core CPU the demo's two tokenizer
        trainings took 281 s side by side against ~435 s one after the other (600 steps each).
        Each starts at its share of the threads and takes the cores a finished sibling frees
        (``FreedCores``). Each stage is recorded as soon as it finishes, and a failing one is
        raised only once its siblings have finished and been recorded; a process that dies (killed
        for memory, say) ends the run with ``BrokenProcessPool`` rather than a hang. The price: the step at
        which a stage gains a thread depends on timing, and a thread count changes the order of
        float sums, so two runs' visual tokenizers are no longer bit for bit the same.
        """
        todo = {name: job for name, job in stages.items() if name not in self.done}
        for name in stages.keys() - todo.keys():
            self._skip(name)
        if todo:
            print(f"[demo] {' + '.join(todo)} (side by side) ...", flush=True)
            context = multiprocessing.get_context("spawn")
            running = context.Value("i", len(todo))
            failure: BaseException | None = None
            with ProcessPoolExecutor(len(todo), mp_context=context, initializer=_join_siblings,
                                     initargs=(running, torch.get_num_threads())) as pool:
                stage_of = {pool.submit(timed_stage, fn, args): name for name, (fn, args) in todo.items()}
                for future in as_completed(stage_of):  # a failure waits until its siblings are recorded
                    if exists(error := future.exception()):
                        failure = failure or error
                        continue
                    self._record(stage_of[future], future.result())
            if exists(failure):
                raise failure
        return {name: self.done[name] for name in stages}


_SIBLINGS: tuple[Any, int] | None = None  # in a side-by-side worker: (stages still running, the cores they share)


def _join_siblings(running, cores: int) -> None:
    global _SIBLINGS
    _SIBLINGS = (running, cores)


def _share_of_cores() -> int:
    running, cores = _SIBLINGS
    return max(1, cores // max(1, running.value))


class FreedCores(Callback):
    """Before each training step, a stage run side by side takes its share of the cores.

    The demo's audio codec finishes a quarter of the way through the visual tokenizer's
    training, which then goes on at two threads instead of one (0.24 s a step against 0.35 s
    over its first 240 steps on 2 cores). Outside a side-by-side stage it does nothing.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if _SIBLINGS is not None and (threads := _share_of_cores()) != torch.get_num_threads():
            torch.set_num_threads(threads)
            print(f"[demo] {type(pl_module).__name__}: {threads} threads from step {trainer.global_step}", flush=True)


def timed_stage(fn: Callable[..., dict[str, Any]], args: tuple) -> dict[str, Any]:
    """``fn(*args)`` with its seconds, a job for a spawned process beside others: at one thread,
    or in a side-by-side stage at its share of the cores (and no longer counted once done)."""
    torch.set_num_threads(1 if _SIBLINGS is None else _share_of_cores())
    start = time.perf_counter()
    try:
        result = fn(*args)
    finally:
        if _SIBLINGS is not None:
            with _SIBLINGS[0].get_lock():
                _SIBLINGS[0].value -= 1
    return {**result, "seconds": time.perf_counter() - start}


def _cli(argv: list[str]) -> None:
    try:
        rc = anyseq_cli(argv)
    except SystemExit as e:  # LightningCLI exits on a bad argument: an error a worker process can report
        rc = e.code
    if rc:
        raise RuntimeError(f"`anyseq {' '.join(argv)}` exited with {rc}")


def _quiet_trainer(root: Path, steps: int, plan: Plan) -> list[str]:
    """The training stages' trainer; an interrupted stage goes on from its last checkpoint."""
    return [f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root}",
            f"--trainer.accelerator={plan.accelerator}", "--trainer.enable_model_summary=false", "--ckpt_path=last"]


def stage_world(out: Path, plan: Plan) -> dict[str, Any]:
    size = dict(image_size=plan.image_size, video_frames=plan.video_frames, sample_rate=plan.sample_rate,
                seconds=plan.seconds)
    train = world.write_world(out / "world", plan.n_images, plan.n_videos, plan.n_sounds, seed=0, **size)
    n_eval = max(8, plan.eval_per_direction)
    held_out = world.write_world(out / "held_out", n_eval, n_eval, n_eval, seed=1, **size)
    return {"manifest": str(train), "held_out": str(held_out)}


def stage_text_tokenizer(out: Path, manifest: Path) -> dict[str, Any]:
    from anyseq.tokenizers.text import TextTokenizer

    captions = [json.loads(line)["text"] for line in manifest.read_text().splitlines()]
    path = out / "tokenizers" / "text.model"
    for size in (400, 360, 330, 310, 300, 290, 280):  # the largest vocabulary the captions support
        try:
            tok = TextTokenizer.train(captions, vocab_size=size, output=path)
            break
        except ValueError:
            continue
    return {"path": str(path), "vocab_size": tok.vocab_size}


def stage_media_tokenizer(
    out: Path, kind: str, manifest: Path, steps: int, plan: Plan, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The tiny recipe of ``kind`` on the world's media, adapted to the demo's budget.

    Visual: 1000 FSQ codes (the world's shapes use fewer than 600 of 4375) keep the
    transformer's vocabulary, and so its output layer, the slowest part of a CPU step, half
    as wide; learning rate 1e-3 (5e-4 reads the same at 600 steps, 3e-3 worse). The default
    plan's 2400 steps are the most expensive stage but pay: the judges read 0.27 of the
    held-out images right through the tokenizer after 600 steps, 0.58 after 1200 (colour 0.67
    -> 0.98), 0.79 after 2400 (shape 0.60 -> 0.79; clips 0.23, 0.33, 0.60). Audio: 100 tokens/s,
    so one clip and its caption fit one training row, and the mel loss leads (the judges hear
    pitch and loudness, not waveform phase); the iSTFT head at 100 frames/s x 1 level renders
    the tones at their pitch and loudness, where the conv decoder at 50 x 2 turned them into a
    quiet buzz on harmonics of its frame rate (docs/demo_findings.md). ``extra`` arguments go last
    (scripts/compare_demo_tokenizers.py tries variants with them).
    """
    export = out / "tokenizers" / kind
    data = {
        "visual": [f"--data.init_args.data={manifest}", "--model.init_args.tokenizer.quantizer.codebook_size=1000",
                   "--model.init_args.lr=1e-3"],
        "audio": [f"--data.init_args.train=[{manifest}]", "--data.init_args.val=null",
                  "--model.init_args.tokenizer.decoder=istft", "--model.init_args.tokenizer.frame_rate=100",
                  "--model.init_args.tokenizer.quantizer.num_quantizers=1",
                  "--model.init_args.mel_weight=6.0", "--model.init_args.waveform_weight=1.0"],
    }[kind]
    _cli(["fit", "--config", str(CONFIGS / "tokenizer" / f"{kind}_tiny.yaml"), *data,
          f"--model.init_args.export_dir={export}", "--trainer.callbacks+=anyseq.demo.FreedCores",
          *_quiet_trainer(out / "runs" / kind, steps, plan), *extra])
    return {"path": str(export)}


def stage_tokenize(out: Path, manifest: Path, toks: dict[str, str], plan: Plan) -> dict[str, Any]:
    shards = out / "shards"
    _cli(["tokenize-dataset", "--manifest", str(manifest), "--out", str(shards), "--text-tokenizer", toks["text"],
          "--visual-tokenizer", toks["visual"], "--audio-tokenizer", toks["audio"], "--task", "both", "--seed", "0",
          "--image-size", str(plan.image_size), "--video-frames", str(plan.video_frames),
          "--audio-seconds", str(plan.seconds), "--workers", "2"])
    stats = json.loads((shards / "stats.json").read_text())
    return {"path": str(shards), "stats": stats}


def stage_model(out: Path, shards: str, plan: Plan, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The unified transformer on the shards; ``extra`` ``anyseq fit`` arguments go last
    (scripts/compare_demo_transformers.py trains it again in variants and with other seeds)."""
    root = out / "runs" / "model"
    overrides = json.dumps(dict(plan.model_overrides))
    _cli(["fit", "--config", str(CONFIGS / "train" / "demo.yaml"),
          f"--model.init_args.preset={plan.model_preset}", f"--model.init_args.model_overrides={overrides}",
          f"--model.init_args.lr={plan.lr}", f"--data.init_args.train=[{shards}]",
          f"--data.init_args.batch_size={plan.batch_size}", f"--data.init_args.seq_len={plan.seq_len}",
          f"--data.init_args.condition_dropout={plan.condition_dropout}",
          "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}",
          "--trainer.logger.name=log",
          "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
          f"--trainer.callbacks.dirpath={out / 'model'}", "--trainer.callbacks.save_last=true",
          *_quiet_trainer(root, plan.model_steps, plan), *extra])
    return {"checkpoint": str(out / "model" / "last.ckpt"), "metrics": str(root / "log")}


def retrain_model(out: Path, shards: str, held_out: Path, plan: Plan, extra: tuple[str, ...], device: str) -> dict:
    """The transformer stage again with ``extra`` arguments, judged as the demo judges its own
    (scripts/compare_demo_transformers.py runs variants and seeds of it side by side)."""
    start = time.perf_counter()
    model = stage_model(out, shards, plan, extra)
    train_seconds = time.perf_counter() - start
    evaluated = evaluate(out, model["checkpoint"], held_out, plan, device)
    return {**model, "train_seconds": train_seconds, "directions": evaluated["directions"]}


# ---------------------------------------------------------------------------------------------
# evaluation: every direction, judged against held-out prompts
# ---------------------------------------------------------------------------------------------
DIRECTIONS = [("text", "image"), ("image", "text"), ("text", "video"), ("video", "text"),
              ("text", "audio"), ("audio", "text")]


def _held_out(manifest: Path, kind: str, n: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [r for r in rows if kind in r][:n]


def _chance(kind: str) -> float:
    return math.prod(1 / len(v) for v in world.attributes(kind).values())


def attributes_right(kind: str, scene: Any, judged: Any) -> dict[str, bool]:
    """Which attributes of ``scene`` the judge saw (all wrong when it saw nothing)."""
    names = world.attributes(kind)
    if judged is None:
        return {name: False for name in names}
    return {name: getattr(judged, name, None) == getattr(scene, name) for name in names}


def _grid(bundle, plan: Plan) -> int:
    """Latent rows (and columns) of the plan's image size under the visual tokenizer."""
    return plan.image_size // bundle.tokenizer("visual").compression["height"]


def direction_prompts(bundle, source: str, target: str, held_out: Path, plan: Plan) -> tuple[list, list]:
    """The held-out records of one direction, each ``plan.samples_per_prompt`` times, and their
    prompt ids (CFG's effect is a few points: one sample of 48 prompts is too noisy to see it)."""
    from anyseq.generate import encode_prompt, prompt_ids

    kind = target if source == "text" else source
    unique = _held_out(held_out, kind, plan.eval_per_direction)
    if source == "text":
        prompts = [encode_prompt(bundle, "text", r["text"]) for r in unique]
    else:
        prompts = [encode_prompt(bundle, kind, held_out.parent / r[kind]) for r in unique]
    k = plan.samples_per_prompt
    return [r for r in unique for _ in range(k)], [prompt_ids(bundle, [p]) for p in prompts for _ in range(k)]


def judge_direction(bundle, source: str, target: str, rows: list, ids: list, options, plan: Plan, stem: Path,
                    seed: int = 0) -> dict[str, Any]:
    """Sample ``target`` for every prompt with ``options``, decode each to ``{stem}_{i:03d}``, and
    judge it against its record's caption: accuracy (every attribute right), each attribute's,
    every row's output and verdict, and ``distinct``, the distinct outputs among a prompt's
    samples as a share of them (what a lower temperature gives up; 1 / samples: all alike)."""
    from anyseq.generate import generate_ids, make_target

    kind = target if source == "text" else source
    grid = _grid(bundle, plan)
    shape = make_target(bundle, target, height=grid, width=grid, frames=plan.video_frames, seconds=plan.seconds,
                        max_text_tokens=24)
    outputs, seconds = generate_ids(bundle, ids, shape, options, seed=seed)
    judged = []
    for i, (row, new) in enumerate(zip(rows, outputs)):
        scene, path = world.parse_caption(row["text"]), _decode(bundle, target, new, Path(f"{stem}_{i:03d}"))
        if target == "text":
            text = path.read_text()
            judged.append({"text": text, "verdict": attributes_right(kind, scene, world.parse_caption(text))})
        else:
            seen = judges.judge(kind, _read(path, target, plan), plan.sample_rate)
            judged.append({"file": path.name, "verdict": attributes_right(kind, scene, seen)})
    verdicts, k = [j["verdict"] for j in judged], plan.samples_per_prompt
    return {
        "accuracy": float(np.mean([all(v.values()) for v in verdicts])),
        "per_attribute": {a: float(np.mean([v[a] for v in verdicts])) for a in world.attributes(kind)},
        "distinct": float(np.mean([len(set(map(tuple, outputs[i:i + k]))) / k for i in range(0, len(outputs), k)])),
        "seconds": seconds,
        "tokens_per_s": sum(len(o) for o in outputs) / seconds,
        "rows": judged,
    }


def sampling_options(target: str, plan: Plan):
    """``anyseq generate``'s defaults for ``target``, media (and ``any``) at the plan's temperature."""
    from anyseq.generate import DEFAULTS

    return DEFAULTS[target] if target == "text" else replace(DEFAULTS[target], temperature=plan.media_temperature)


def evaluate(out: Path, checkpoint: str, held_out: Path, plan: Plan, device: str) -> dict[str, Any]:
    from anyseq.checkpoint import load_bundle

    bundle = load_bundle(checkpoint, device=device)
    samples_dir = out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for source, target in DIRECTIONS:
        kind = target if source == "text" else source
        rows, ids = direction_prompts(bundle, source, target, held_out, plan)
        default = sampling_options(target, plan)
        settings = {"guided": replace(default, cfg_scale=plan.cfg_scale)} if target != "text" else {}
        settings["plain"] = replace(default, cfg_scale=1.0)
        direction: dict[str, Any] = {"n": len(rows), "chance": _chance(kind), "samples": []}
        for name, options in settings.items():
            judged = judge_direction(bundle, source, target, rows, ids, options, plan,
                                     samples_dir / f"{source}2{target}_{name}")
            outputs = judged.pop("rows")
            if name == ("guided" if target != "text" else "plain"):  # the report shows 8 prompts' first samples
                k = plan.samples_per_prompt
                direction["samples"] = [
                    {"prompt": row["text"] if source == "text" else row[kind], "caption": row["text"], **output}
                    for row, output in list(zip(rows, outputs))[: 8 * k : k]]
            direction[name] = judged
            print(f"[demo] {source}->{target} ({name}): accuracy {judged['accuracy']:.2f} "
                  f"(chance {direction['chance']:.3f})", flush=True)
        results[f"{source}->{target}"] = direction
    results["text->any"] = _evaluate_any(bundle, held_out, plan, samples_dir)
    return {"directions": results}


MEDIUM_OF_SUFFIX = {".png": "image", ".gif": "video", ".wav": "audio"}


def _evaluate_any(bundle, held_out: Path, plan: Plan, samples_dir: Path) -> dict[str, Any]:
    """Captions of all three media, sampled with ``--to any``: the model picks the medium itself.

    Right when its first medium is the caption's and the judges find every attribute in it.
    """
    from anyseq.generate import decode_output, encode_prompt, generate_ids, make_target, prompt_ids

    kinds = ("image", "video", "audio")
    unique = [r for kind in kinds for r in _held_out(held_out, kind, max(1, plan.eval_per_direction // 3))]
    k = plan.samples_per_prompt
    rows = [r for r in unique for _ in range(k)]
    encoded = [prompt_ids(bundle, [encode_prompt(bundle, "text", r["text"])]) for r in unique]
    ids = [p for p in encoded for _ in range(k)]
    grid = _grid(bundle, plan)
    target = make_target(bundle, "any", height=grid, width=grid, frames=plan.video_frames, seconds=plan.seconds,
                         max_text_tokens=24)
    outputs, seconds = generate_ids(bundle, ids, target, sampling_options("any", plan), seed=0)
    row_kinds, verdicts, samples = [], [], []
    for i, (row, new) in enumerate(zip(rows, outputs)):
        kind = next(m for m in kinds if m in row)
        paths = decode_output(bundle, "any", new, samples_dir / f"text2any_{i:03d}", "gif")
        made = [p for p in paths if p.suffix in MEDIUM_OF_SUFFIX]
        right_medium = bool(made) and MEDIUM_OF_SUFFIX[made[0].suffix] == kind
        judged = judges.judge(kind, _read(made[0], kind, plan), plan.sample_rate) if right_medium else None
        verdict = {"medium": right_medium, **attributes_right(kind, world.parse_caption(row["text"]), judged)}
        row_kinds.append(kind)
        verdicts.append(verdict)
        if i % k == 0 and row_kinds[::k].count(kind) <= 3:  # 3 a medium
            output = {"file": made[0].name} if made else {"text": " | ".join(p.read_text() for p in paths)}
            samples.append({"prompt": row["text"], "caption": row["text"], **output, "verdict": verdict})
    right = [all(v.values()) for v in verdicts]
    accuracy = float(np.mean(right))
    per_kind = {k: float(np.mean([r for r, rk in zip(right, row_kinds) if rk == k])) for k in kinds}
    print(f"[demo] text->any: medium right {np.mean([v['medium'] for v in verdicts]):.2f}, accuracy {accuracy:.2f}",
          flush=True)
    return {
        "n": len(rows),
        "chance": float(np.mean([_chance(k) / len(kinds) for k in row_kinds])),
        "samples": samples,
        "plain": {"accuracy": accuracy,
                  "per_attribute": {"medium": float(np.mean([v["medium"] for v in verdicts])), **per_kind},
                  "seconds": seconds, "tokens_per_s": sum(len(o) for o in outputs) / seconds},
    }  # fmt: skip


def _decode(bundle, target: str, ids: list[int], stem: Path) -> Path:
    from anyseq.generate import decode_output

    return decode_output(bundle, target, ids, stem, "gif")[0]


def _read(path: Path, target: str, plan: Plan) -> Any:
    if target == "image":
        return media.read_image(path)
    if target == "video":
        return media.read_video(path)[0]
    return media.read_audio(path, sample_rate=plan.sample_rate)[0]


def round_trip(tokenizer, kind: str, x: np.ndarray, plan: Plan) -> np.ndarray:
    """Media (as :func:`_read` gives them) through the tokenizer and back, as the judges read media."""
    if kind == "audio":
        wav = torch.as_tensor(x, dtype=torch.float32)[None, None]
        return tokenizer.decode(tokenizer.encode(wav))[0].reshape(-1).numpy()
    pixels = media.image_to_tensor(x) if kind == "image" else media.video_to_tensor(x)
    decoded = tokenizer.decode(tokenizer.encode(torch.as_tensor(pixels)[None]))[0].numpy()
    return media.tensor_to_image(decoded) if kind == "image" else media.tensor_to_video(decoded)


MEDIA_OF = {"visual": ("image", "video"), "audio": ("audio",)}  # what each media tokenizer codes


def tokenizer_metrics(out: Path, toks: dict[str, str], held_out: Path, plan: Plan) -> dict[str, Any]:
    """Reconstruction metrics, and the judges' accuracy on reconstructions of held-out media:
    the reference for every text -> media direction (a sample is as legible as its decoder makes it);
    for audio also how loud and how far off in pitch the codec renders the tones."""
    from anyseq.tokenizers import audio_eval, visual_eval
    from anyseq.tokenizers.base import load_tokenizer

    metrics: dict[str, Any] = {"judged_round_trip": {}}
    for name, module in (("visual", visual_eval), ("audio", audio_eval)):
        tokenizer = load_tokenizer(toks[name])
        metrics[name] = module.evaluate_folder(tokenizer, held_out, out / "tokenizer_eval" / name)
        for kind in MEDIA_OF[name]:
            judged = legibility(tokenizer, kind, held_out, plan)
            metrics["judged_round_trip"][kind] = judged["judged_legible"]
            if "tones" in judged:
                metrics["audio_tones"] = judged["tones"]
    return metrics


def round_trips(tokenizer, kind: str, held_out: Path, plan: Plan) -> Iterator[tuple[world.Scene, Any, Any]]:
    """(true scene, original, reconstruction) of the first held-out media of ``kind``."""
    for r in _held_out(held_out, kind, plan.eval_per_direction):
        original = _read(held_out.parent / r[kind], kind, plan)
        yield world.parse_caption(r["text"]), original, round_trip(tokenizer, kind, original, plan)


def legibility(tokenizer, kind: str, held_out: Path, plan: Plan) -> dict[str, Any]:
    """How the judges read the tokenizer's reconstructions of the first held-out media of ``kind``:
    the share with every attribute right, each attribute's share, and what each value was taken for."""
    pairs, tones = [], []
    for scene, original, copy in round_trips(tokenizer, kind, held_out, plan):
        pairs.append((scene, judges.judge(kind, copy, plan.sample_rate)))
        if kind == "audio":
            tones.append(judges.tone_fidelity(original, copy, plan.sample_rate))
    verdicts = [attributes_right(kind, *pair) for pair in pairs]
    names = world.attributes(kind)
    heard = {name: collections.Counter(f"{getattr(truth, name)} -> {getattr(seen, name) if seen else 'nothing'}"
                                       for truth, seen in pairs) for name in names}
    result = {"judged_legible": sum(all(v.values()) for v in verdicts) / len(pairs), "n": len(pairs),
              "per_attribute": {name: sum(v[name] for v in verdicts) / len(pairs) for name in names},
              "heard": {name: dict(sorted(counts.items())) for name, counts in heard.items()}}
    if tones := [t for t in tones if exists(t)]:
        ratios, semitones = zip(*tones)
        result["tones"] = {"loudness_ratio": float(np.median(ratios)), "pitch_error_semitones": float(np.median(semitones))}
    return result


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif", ".wav": "audio/wav", ".mp4": "video/mp4"}[path.suffix]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _media_html(path: Path) -> str:
    if path.suffix == ".wav":
        return f'<audio controls src="{_data_uri(path)}"></audio>'
    return f'<img src="{_data_uri(path)}" width="96" style="image-rendering: pixelated">'


def training_log(path: str | Path) -> list[dict[str, str]]:
    """The logged rows of a CSVLogger folder (or of one metrics.csv), run after run: a stage
    resumed from its checkpoint logs to the next ``version_N`` from the checkpoint's step on, so
    the rows of the interrupted run from that step are dropped."""
    path = Path(path)
    runs = [path] if path.suffix == ".csv" else sorted(path.glob("version_*/metrics.csv"),
                                                      key=lambda p: int(p.parent.name.removeprefix("version_")))
    rows: list[dict[str, str]] = []
    for metrics in filter(Path.exists, runs):
        with metrics.open() as f:
            run = list(csv.DictReader(f))
        if run:
            rows = [r for r in rows if int(r["step"]) < int(run[0]["step"])] + run
    return rows


def _loss_svg(log: list[dict[str, str]]) -> str:
    if not log:
        return "<p>(no loss log)</p>"
    points = [(int(row["step"]), float(row["train/loss"])) for row in log if row.get("train/loss")]
    if len(points) < 2:
        return "<p>(too few logged steps for a curve)</p>"
    steps, losses = zip(*points)
    x0, x1, y0, y1 = min(steps), max(steps), min(losses), max(losses)
    w, h = 480, 200
    pts = " ".join(f"{(s - x0) / max(x1 - x0, 1) * w:.1f},{h - (v - y0) / max(y1 - y0, 1e-9) * h:.1f}" for s, v in points)
    return (f'<svg width="{w + 60}" height="{h + 30}"><g transform="translate(50,5)">'
            f'<polyline fill="none" stroke="#36c" stroke-width="1.5" points="{pts}"/>'
            f'<text x="-45" y="10" font-size="11">{y1:.2f}</text><text x="-45" y="{h}" font-size="11">{y0:.2f}</text>'
            f'<text x="0" y="{h + 20}" font-size="11">step {x0}</text>'
            f'<text x="{w - 60}" y="{h + 20}" font-size="11">step {x1}</text></g></svg>')


def write_report(out: Path, progress: dict[str, Any], plan: Plan) -> Path:
    e = html.escape
    parts = ["<!doctype html><meta charset=utf-8><title>anyseq demo</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:4px 8px;"
             "border-bottom:1px solid #ddd;vertical-align:top}.ok{color:#080}.bad{color:#a00}</style>",
             "<h1>anyseq demo: one transformer, every direction</h1>",
             f"<p>Plan: <code>{e(json.dumps(asdict(plan)))}</code></p>"]
    directions = progress["evaluate"]["directions"]
    round_trips = progress.get("tokenizer_metrics", {}).get("judged_round_trip", {})
    parts.append("<h2>Judged accuracy (all attributes right) vs chance</h2><table><tr><th>direction</th><th>n</th>"
                 "<th>accuracy, CFG</th><th>accuracy, no CFG</th><th>chance</th><th>tokenizer round trip</th>"
                 "<th>per attribute</th></tr>")
    for name, d in directions.items():
        source, target = name.split("->")
        guided = f"{d['guided']['accuracy']:.2f}" if "guided" in d else "–"
        round_trip = f"{round_trips[target]:.2f}" if source == "text" and target in round_trips else "–"
        best = d.get("guided", d["plain"])
        per = ", ".join(f"{a} {v:.2f}" for a, v in best["per_attribute"].items())
        parts.append(f"<tr><td>{e(name.replace('->', ' → '))}</td><td>{d['n']}</td><td>{guided}</td><td>{d['plain']['accuracy']:.2f}</td>"
                     f"<td>{d['chance']:.3f}</td><td>{round_trip}</td><td>{e(per)}</td></tr>")
    parts.append("</table><p>Tokenizer round trip: the judges' accuracy on the tokenizer's own reconstructions "
                 "of held-out media, the reference for text → media (a sample is only as legible as its decoder "
                 "makes it; canonical samples can be a little more legible than jittered real ones).</p>")
    samples_dir = out / "samples"
    for name, d in directions.items():
        source, target = name.split("->")
        parts.append(f"<h3>{e(name.replace('->', ' → '))}</h3><table><tr><th>prompt</th><th>output</th><th>judged</th></tr>")
        for s in d["samples"]:
            prompt = e(s["prompt"]) if source == "text" else _media_html(Path(progress["world"]["held_out"]).parent / s["prompt"])
            output = e(s["text"]) if "text" in s else _media_html(samples_dir / s["file"])
            verdict = " ".join(f"<span class={'ok' if v else 'bad'}>{e(a)}</span>" for a, v in s["verdict"].items())
            caption = "" if source == "text" else f"<br><small>{e(s['caption'])}</small>"
            parts.append(f"<tr><td>{prompt}{caption}</td><td>{output}</td><td>{verdict}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Transformer training loss</h2>" + _loss_svg(training_log(progress["model"]["metrics"])))
    if "tokenizer_metrics" in progress:
        parts.append("<h2>Tokenizers on held-out media</h2><pre>"
                     + e(json.dumps({k: v for k, v in progress["tokenizer_metrics"].items() if k != "seconds"},
                                    indent=1, default=str)) + "</pre>")
    stats = progress["tokenize"].get("stats", {})
    parts.append(f"<h2>Token shards</h2><pre>{e(json.dumps(stats, indent=1))}</pre>")
    parts.append("<h2>Timings</h2><table>" + "".join(
        f"<tr><td>{e(k)}</td><td>{v['seconds']:.0f} s</td></tr>" for k, v in progress.items() if "seconds" in v)
        + "</table>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="anyseq demo", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (rerun to resume)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for tests (accuracy meaningless)")
    size.add_argument("--gpu", action="store_true", help="larger world and models, for a GPU")
    p.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    p.add_argument("--device", default=None, help="device for generation (default: cuda with --gpu, else cpu)")
    args = p.parse_args(argv)
    plan = PLANS["quick" if args.quick else "gpu" if args.gpu else "default"]
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = args.device or ("cuda" if args.gpu else "cpu")
    progress = Progress(out, plan)
    w = progress.run("world", lambda: stage_world(out, plan))
    manifest, held_out = Path(w["manifest"]), Path(w["held_out"])
    text = progress.run("text_tokenizer", lambda: stage_text_tokenizer(out, manifest))
    media_tokenizers = progress.run_side_by_side({
        f"{kind}_tokenizer": (stage_media_tokenizer, (out, kind, manifest, steps, plan))
        for kind, steps in (("visual", plan.visual_steps), ("audio", plan.audio_steps))
    })
    visual, audio = media_tokenizers["visual_tokenizer"], media_tokenizers["audio_tokenizer"]
    toks = {"text": text["path"], "visual": visual["path"], "audio": audio["path"]}
    shards = progress.run("tokenize", lambda: stage_tokenize(out, manifest, toks, plan))
    model = progress.run("model", lambda: stage_model(out, shards["path"], plan))
    progress.run("tokenizer_metrics", lambda: tokenizer_metrics(out, toks, held_out, plan))
    progress.run("evaluate", lambda: evaluate(out, model["checkpoint"], held_out, plan, device))
    report = write_report(out, progress.done, plan)
    print(f"[demo] report: {report}", flush=True)
    for name, d in progress.done["evaluate"]["directions"].items():
        guided = f"with CFG {d['guided']['accuracy']:.2f}, " if "guided" in d else ""
        print(f"[demo] {name:>12}: accuracy {guided}without {d['plain']['accuracy']:.2f} (chance {d['chance']:.3f})",
              flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
