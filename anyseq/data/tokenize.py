"""``anyseq tokenize-dataset``: a manifest of mixed-media records -> token shards.

The job runs as a Lightning ``predict``, on one device or many:

    records (manifest lines / folder files)
      -> DataLoader workers: parse, apply the task template, decode and resize media,
         tokenize text, group media of one shape into batches            (RecordBatches)
      -> the device: batched media tokenizer inference                   (TokenizeModule)
      -> per shard: serialize with the grammar, commit atomically       (ShardCommitter)

Shard ``k`` holds manifest lines ``[k*R + 1, (k+1)*R]`` (R = --records-per-shard), whatever
the number of workers, devices or restarts, so the output is a pure function of the
manifest, the tokenizers and the settings, and a rerun skips committed shards and redoes
the rest (a committed shard whose manifest lines changed since is an error: each shard keeps
the SHA-256 of its lines, or in folder mode of its file names and captions; media files
themselves are not re-read). With several devices, rank ``r`` takes every ``world``-th pending shard; the
shard set merges by listing. Multi-GPU (one node, or several with ``--num-nodes``)::

    anyseq tokenize-dataset --manifest m.jsonl --out shards --text-tokenizer text.model \\
        --visual-tokenizer tok/visual --device cuda --devices 8 --workers 6

Byte-identical output needs deterministic tokenizer kernels: media batches are formed per
shard in line order (so --batch-size is part of the settings a resume must repeat) and cuDNN
runs in deterministic mode; the decoding worker count never matters.

Bad records never stop the run: each goes to ``errors.jsonl`` with its line, id, path and
reason. Exit status: 0 every record ok; 1 some records failed (their reasons are in
errors.jsonl); 2 the job could not run or was stopped (a rerun resumes it), every record failed,
or --fail-on-error stopped it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from anyseq.data.manifest import TASKS, FolderSource, ManifestSource, Record, RecordError, apply_template, scan
from anyseq.data.prepare import MediaSettings, Preparer
from anyseq.data.shards import (
    ShardWriter, committed_shards, read_meta, remove_stale, shard_index, write_text_atomic,
)
from anyseq.helpers import HelpFormatter
from anyseq.sequence import Segment, Serializer
from anyseq.tokenizers.base import MediaTokenizer, load_tokenizer
from anyseq.tokenizers.text import TextTokenizer
from anyseq.vocab import MODALITIES, TokenSpace, TokenSpaceMismatch

PROG = "anyseq tokenize-dataset"


class JobError(ValueError):
    """The job cannot run as asked (bad arguments, incompatible --out, ...)."""


class FatalRecordError(RuntimeError):
    """--fail-on-error: a record failed."""


def shard_lines(shard: int, per_shard: int, total: int) -> tuple[int, int]:
    """Half-open range of the 1-based manifest lines shard ``shard`` holds."""
    lo = shard * per_shard + 1
    return lo, min(lo + per_shard, total + 1)


def error_entry(line: int, rid: str | None, kind: str, path: str | None, reason: str) -> dict[str, Any]:
    return {"line": line, "id": rid, "kind": kind, "path": path, "reason": reason}


# ---------------------------------------------------------------------------------------------
# the job: arguments resolved into tokenizers, a token space and settings
# ---------------------------------------------------------------------------------------------
@dataclass
class Job:
    out: Path
    source: ManifestSource | FolderSource
    text_path: Path
    media: dict[str, MediaTokenizer]
    space: TokenSpace
    settings: MediaSettings
    records_per_shard: int
    total: int  # manifest lines / folder files
    template: dict[str, Any]
    batch_size: int
    workers: int
    fail_on_error: bool
    digests: list[str]  # SHA-256 of each shard's source items
    meta: dict[str, Any] = field(default_factory=dict)  # what every shard's meta.json shares

    @property
    def num_shards(self) -> int:
        return math.ceil(self.total / self.records_per_shard)

    def lines(self, shard: int) -> tuple[int, int]:
        return shard_lines(shard, self.records_per_shard, self.total)

    def check_out_dir(self) -> None:
        """Committed shards in --out must come from this very job (same space, tokenizers, settings)."""
        for shard in committed_shards(self.out):
            meta = read_meta(shard)
            try:
                self.space.check_compatible(TokenSpace.from_dict(meta["token_space"]), str(shard))
            except TokenSpaceMismatch as e:
                raise JobError(f"--out {self.out} already holds shards of another token space: {e} "
                               "Use a new --out (or delete it) to tokenize with these tokenizers.") from None
            if meta["settings"] != self.meta["settings"]:
                theirs, yours = _flat(meta["settings"]), _flat(self.meta["settings"])
                diff = {k: (theirs.get(k), yours.get(k)) for k in sorted({*theirs, *yours}) if theirs.get(k) != yours.get(k)}
                raise JobError(f"--out {self.out} holds shards made with other settings "
                               f"(setting: (theirs, yours)) {diff}; rerun with the same arguments to resume, "
                               "or use a new --out")
            k = shard_index(shard)
            if tuple(meta["lines"]) != self.lines(k):
                raise JobError(f"{shard} holds manifest lines {meta['lines']} but the source now gives that shard "
                               f"lines {list(self.lines(k))}: it changed since the shards were written; use a new --out")
            if meta.get("source_sha256", self.digests[k]) != self.digests[k]:
                raise JobError(f"{shard} was made from lines {meta['lines']} of the source, which have changed since "
                               "(their SHA-256 differs); use a new --out, or delete that shard folder to redo it")

    def pending(self) -> list[int]:
        done = {shard_index(p) for p in committed_shards(self.out)}
        return [k for k in range(self.num_shards) if k not in done]


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """{"media": {"image_size": 256}} -> {"media.image_size": 256}, to name the one setting that differs."""
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in settings.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}


def _media_tokenizer(path: str | None, modality: str) -> MediaTokenizer | None:
    if path is None:
        return None
    tok = load_tokenizer(path)
    kinds = ("image", "video", "visual") if modality == "visual" else ("audio",)
    if getattr(tok, "modality", None) not in kinds:
        raise JobError(f"--{modality}-tokenizer {path} is a tokenizer of {tok.modality}; expected a tokenizer of "
                       f"{' or '.join(kinds)}")
    return tok


def make_job(args: argparse.Namespace) -> Job:
    source = ManifestSource(args.manifest) if args.manifest else FolderSource(args.folder)
    text = TextTokenizer.load(args.text_tokenizer)
    media = {name: tok for name, tok in (("visual", _media_tokenizer(args.visual_tokenizer, "visual")),
                                         ("audio", _media_tokenizer(args.audio_tokenizer, "audio"))) if tok is not None}
    limits = {k: v for k, v in (("max_height", args.max_height), ("max_width", args.max_width),
                                ("max_frames", args.max_frames)) if v is not None}
    space = TokenSpace.for_tokenizers(text, media.get("visual"), media.get("audio"), **limits)
    settings = dict(image_size=args.image_size, video_frames=args.video_frames, video_fps=args.video_fps,
                    audio_seconds=args.audio_seconds, max_pixels=args.max_pixels)
    if "visual" in media:
        comp = media["visual"].compression
        f, ft = int(comp["height"]), int(comp.get("time", 1))
        if args.image_size % f or int(comp["width"]) != f:
            raise JobError(f"--image-size {args.image_size} must be a multiple of the visual tokenizer's spatial "
                           f"factor {f} (e.g. {max(f, args.image_size // f * f)})")
        if args.video_frames < 1 or (args.video_frames - 1) % ft:
            k = max(0, (args.video_frames - 1) // ft)
            raise JobError(f"--video-frames {args.video_frames} must be 1 + k*{ft} for the visual tokenizer "
                           f"(e.g. {1 + k * ft} or {1 + (k + 1) * ft})")
        side, frames = args.image_size // f, 1 + (args.video_frames - 1) // ft
        for axis, flag, value in (("h", "--max-height", side), ("w", "--max-width", side), ("t", "--max-frames", frames)):
            if value > space.max_shape[axis]:
                raise JobError(f"{value} latent {'frames' if axis == 't' else 'rows/columns'} exceed the token "
                               f"space's {flag} {space.max_shape[axis]}; raise {flag} or lower the media size")
        settings.update(spatial=f, temporal=ft, visual=True)
    if "audio" in media:
        settings.update(sample_rate=int(media["audio"].sample_rate), hop=int(media["audio"].compression["time"]),
                        audio=True)
    settings = MediaSettings(**settings)
    total, digests = scan(source, args.records_per_shard)
    if total == 0:
        raise JobError(f"{source.path}: holds no records")
    template = {"task": args.task, "p_caption_first": args.p_caption_first, "seed": args.seed,
                "prompt_loss": args.prompt_loss_weight}
    tokenizers = {"text": {"path": str(Path(args.text_tokenizer).resolve()), "fingerprint": text.fingerprint}}
    for name, path in (("visual", args.visual_tokenizer), ("audio", args.audio_tokenizer)):
        if name in media:
            tokenizers[name] = {"path": str(Path(path).resolve()), "fingerprint": media[name].fingerprint}
    meta = {
        "source_records": total,  # with each shard's "lines": whether a shard set is complete
        "token_space": {**space.to_dict(), "fingerprint": space.fingerprint},
        "tokenizers": tokenizers,
        # batch_size is here because batch composition may change float rounding (and a code) on GPUs
        "settings": {**source.describe(), **template, "records_per_shard": args.records_per_shard,
                     "batch_size": args.batch_size, "media": settings.to_dict()},
    }
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {args.out} is a file; expected a folder (a new one, or this job's shards to resume)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JobError(f"--out {args.out}: cannot create the folder ({e.strerror})") from None
    job = Job(out, source, Path(args.text_tokenizer).resolve(), media, space, settings,
              args.records_per_shard, total, template, args.batch_size, args.workers, args.fail_on_error, digests,
              meta)
    job.check_out_dir()
    return job


# ---------------------------------------------------------------------------------------------
# decoding workers: records -> batches of same-shape media (+ finished records and errors)
# ---------------------------------------------------------------------------------------------
@dataclass
class Pending:
    """A parsed record waiting for its media codes; media values are None until encoded."""

    line: int
    id: str | None
    kind: str
    parts: list[tuple[str, np.ndarray | None, float, str | None]]  # (modality, value, loss, path)


class Chunk:
    """One message from a worker: a media batch to encode and/or records and errors of a shard.

    ``lines`` is set on the last message of a shard: then the shard is complete.
    """

    def __init__(self, shard: int, modality: str | None = None, media: torch.Tensor | None = None,
                 keys: list[tuple[int, int]] | None = None):
        self.shard, self.modality, self.media, self.keys = shard, modality, media, keys or []
        self.records: list[Pending] = []
        self.errors: list[dict[str, Any]] = []
        self.lines: tuple[int, int] | None = None
        self.codes: list[np.ndarray | None] | None = None
        self.failed: dict[tuple[int, int], str] = {}


class _ShardBatcher:
    """Buckets one shard's prepared media by (modality, shape) into batches, in line order."""

    def __init__(self, shard: int, batch_size: int):
        self.shard, self.batch_size = shard, batch_size
        self.buckets: dict[tuple, list[tuple[tuple[int, int], np.ndarray]]] = {}
        self.records: list[Pending] = []
        self.errors: list[dict[str, Any]] = []

    def add(self, record: Record, arrays: list[tuple[str, np.ndarray, float]]) -> Iterator[Chunk]:
        parts = []
        for i, ((modality, array, loss), part) in enumerate(zip(arrays, record.parts)):
            path = None if part.path is None else str(part.path)
            if modality == "text":
                parts.append((modality, array, loss, path))
                continue
            parts.append((modality, None, loss, path))
            bucket = self.buckets.setdefault((modality, array.shape), [])
            bucket.append(((record.line, i), array))
            if len(bucket) == self.batch_size:
                yield self._batch((modality, array.shape))
        self.records.append(Pending(record.line, record.id, record.kind, parts))

    def _batch(self, key: tuple) -> Chunk:
        items = self.buckets.pop(key)
        chunk = Chunk(self.shard, key[0], torch.from_numpy(np.stack([a for _, a in items])), [k for k, _ in items])
        return self._attach(chunk)

    def _attach(self, chunk: Chunk) -> Chunk:
        chunk.records, chunk.errors, self.records, self.errors = self.records, self.errors, [], []
        return chunk

    def finish(self, lines: tuple[int, int]) -> Iterator[Chunk]:
        for key in list(self.buckets):
            yield self._batch(key)
        last = self._attach(Chunk(self.shard))
        last.lines = lines
        yield last


class RecordBatches(IterableDataset):
    """The pending shards of this rank, split between DataLoader workers by shard."""

    def __init__(self, job: Job, shards: list[int]):
        self.source, self.settings, self.text_path = job.source, job.settings, str(job.text_path)
        self.template, self.batch_size = job.template, job.batch_size
        self.records_per_shard, self.total = job.records_per_shard, job.total
        self.shards = shards

    def __iter__(self) -> Iterator[Chunk]:
        info = get_worker_info()
        mine = self.shards[info.id :: info.num_workers] if info is not None else self.shards
        if not mine:
            return
        wanted, last = set(mine), max(mine)
        prepare = Preparer(self.settings, self.text_path)
        batcher: _ShardBatcher | None = None
        for number, payload in self.source.items():
            k = (number - 1) // self.records_per_shard
            if k > last:
                break
            if k not in wanted:
                continue
            if batcher is None or batcher.shard != k:
                if batcher is not None:
                    yield from batcher.finish(shard_lines(batcher.shard, self.records_per_shard, self.total))
                batcher = _ShardBatcher(k, self.batch_size)
            yield from self._record(batcher, prepare, number, payload)
        if batcher is not None:
            yield from batcher.finish(shard_lines(batcher.shard, self.records_per_shard, self.total))

    def _record(self, batcher: _ShardBatcher, prepare: Preparer, number: int, payload: Any) -> Iterator[Chunk]:
        record = None
        try:
            record = self.source.parse(number, payload)
            if record is None:
                return
            record = apply_template(record, **self.template)
            arrays = prepare(record)
        except Exception as e:  # a bad record never stops the run, whatever it throws
            known = isinstance(e, RecordError)
            rid, kind = (record.id, record.kind) if record else (e.id, e.kind) if known else (None, "unknown")
            reason = e.reason if known else f"unexpected {type(e).__name__}: {e}"
            batcher.errors.append(error_entry(number, rid, kind, e.path if known else None, reason))
            return
        yield from batcher.add(record, arrays)


def _identity(chunk: Chunk) -> Chunk:
    return chunk


# ---------------------------------------------------------------------------------------------
# the device: batched media tokenizer inference
# ---------------------------------------------------------------------------------------------
class TokenizeModule(L.LightningModule):
    """Holds the media tokenizers (Lightning places them on each rank's device)."""

    def __init__(self, job: Job):
        super().__init__()
        self.job = job
        self.tokenizers = nn.ModuleDict(job.media)
        self.shards: list[int] = []
        self.encode_seconds = 0.0  # time in media tokenizers: the rest is waiting for decoded media

    def setup(self, stage: str) -> None:
        # every rank must split the same list: rank 0 lists --out once, before anyone commits
        pending = self.job.pending() if self.global_rank == 0 else None
        self.shards = self.trainer.strategy.broadcast(pending, src=0)
        if torch.cuda.is_available():
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    def predict_dataloader(self) -> DataLoader:
        mine = self.shards[self.global_rank :: self.trainer.world_size]
        workers = self.job.workers
        return DataLoader(RecordBatches(self.job, mine), batch_size=None, collate_fn=_identity, num_workers=workers,
                          prefetch_factor=2 if workers else None)

    def transfer_batch_to_device(self, chunk: Chunk, device: torch.device, dataloader_idx: int) -> Chunk:
        if chunk.media is not None:
            chunk.media = chunk.media.to(device)
        return chunk

    def predict_step(self, chunk: Chunk) -> Chunk:
        if chunk.media is not None:
            x = chunk.media
            x = x[:, None].float() if chunk.modality == "audio" else x.float().div(127.5).sub(1.0).movedim(-1, 1)
            start = time.perf_counter()
            chunk.codes, chunk.failed = self._encode(chunk.modality, x, chunk.keys)
            self.encode_seconds += time.perf_counter() - start
            chunk.media = None
        return chunk

    def _encode(self, modality: str, x: torch.Tensor, keys: list) -> tuple[list[np.ndarray | None], dict]:
        tok = self.tokenizers["audio" if modality == "audio" else "visual"]
        try:
            return list(tok.encode(x).cpu().numpy()), {}
        except Exception:  # find the items that break the batch; the others still land
            codes, failed = [], {}
            for key, item in zip(keys, x):
                try:
                    codes.append(tok.encode(item[None]).cpu().numpy()[0])
                except Exception as e:
                    codes.append(None)
                    failed[key] = f"{modality} tokenizer failed: {type(e).__name__}: {e}"
            return codes, failed

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier("tokenize-dataset")


# ---------------------------------------------------------------------------------------------
# per shard: serialize and commit
# ---------------------------------------------------------------------------------------------
class _OpenShard:
    def __init__(self):
        self.records: list[Pending] = []
        self.errors: list[dict[str, Any]] = []
        self.codes: dict[tuple[int, int], np.ndarray] = {}
        self.failed: dict[tuple[int, int], str] = {}


class ShardCommitter(BasePredictionWriter):
    """Gathers each shard's records and codes; commits the shard when its last message arrives."""

    def __init__(self, job: Job):
        super().__init__(write_interval="batch")
        self.job = job
        self.serializer = Serializer(job.space)
        self.open: dict[int, _OpenShard] = {}
        self.progress = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            from tqdm import tqdm

            mine = pl_module.shards[0 :: trainer.world_size]
            total = sum(hi - lo for lo, hi in map(self.job.lines, mine))
            self.progress = tqdm(total=total, unit="rec", desc="tokenize", disable=None, file=sys.stderr,
                                 dynamic_ncols=True)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self.progress.close()

    def write_on_batch_end(self, trainer, pl_module, chunk: Chunk, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        shard = self.open.setdefault(chunk.shard, _OpenShard())
        shard.records.extend(chunk.records)
        shard.errors.extend(chunk.errors)
        if chunk.codes is not None:
            shard.codes.update(zip(chunk.keys, chunk.codes))
        shard.failed.update(chunk.failed)
        if self.job.fail_on_error and chunk.errors:
            e = chunk.errors[0]
            raise FatalRecordError(f"line {e['line']}{' (' + e['path'] + ')' if e['path'] else ''}: {e['reason']}")
        if self.progress is not None:
            self.progress.update(len(chunk.records) + len(chunk.errors))
        if chunk.lines is not None:
            self.commit(chunk.shard, self.open.pop(chunk.shard), chunk.lines)

    def commit(self, index: int, shard: _OpenShard, lines: tuple[int, int]) -> None:
        writer = ShardWriter(self.job.out, index)
        errors = list(shard.errors)
        ok = Counter()
        for rec in sorted(shard.records, key=lambda r: r.line):
            try:
                segments = [Segment(m, self._value(shard, rec, i, value, path), loss)
                            for i, (m, value, loss, path) in enumerate(rec.parts)]
                writer.add(self.serializer.serialize(segments), rec.line)
                ok[rec.kind] += 1
            except RecordError as e:
                errors.append(error_entry(rec.line, rec.id, rec.kind, e.path, e.reason))
            except ValueError as e:  # e.g. a media grid larger than the token space's shape tokens
                errors.append(error_entry(rec.line, rec.id, rec.kind, None, f"cannot serialize: {e}"))
        if self.job.fail_on_error and len(errors) > len(shard.errors):
            e = errors[len(shard.errors)]
            raise FatalRecordError(f"line {e['line']}: {e['reason']}")
        errors.sort(key=lambda e: e["line"])
        failed = Counter(e["kind"] for e in errors)
        meta = {**self.job.meta, "lines": list(lines), "source_sha256": self.job.digests[index],
                "records": {"ok": dict(sorted(ok.items())), "failed": dict(sorted(failed.items()))}}
        remove_stale(self.job.out, index)
        writer.commit(meta, errors)

    @staticmethod
    def _value(shard: _OpenShard, rec: Pending, i: int, value: np.ndarray | None, path: str | None):
        if value is not None:
            return value
        key = (rec.line, i)
        if key in shard.failed:
            raise RecordError(shard.failed.pop(key), path)
        return shard.codes.pop(key)


# ---------------------------------------------------------------------------------------------
# the program
# ---------------------------------------------------------------------------------------------
def summarize(job: Job, seconds: float, this_run: list[int], encode_seconds: float) -> tuple[dict[str, Any], list[dict]]:
    """stats.json and the merged errors of every committed shard (in line order)."""
    ok, failed, tokens, errors = Counter(), Counter(), Counter(), []
    shards = committed_shards(job.out)
    ran = set(this_run)
    records_this_run = 0
    for shard in shards:
        meta = read_meta(shard)
        ok.update(meta["records"]["ok"])
        failed.update(meta["records"]["failed"])
        tokens.update(meta["tokens_per_modality"])
        if shard_index(shard) in ran:
            records_this_run += sum(meta["records"]["ok"].values()) + sum(meta["records"]["failed"].values())
        with (shard / "errors.jsonl").open() as f:
            errors.extend(json.loads(line) for line in f)
    stats = {
        "records": {"ok": sum(ok.values()), "failed": sum(failed.values()),
                    "ok_per_kind": dict(sorted(ok.items())), "failed_per_kind": dict(sorted(failed.items()))},
        "documents": sum(ok.values()),
        "tokens": sum(tokens.values()),
        "tokens_per_modality": {m: tokens.get(m, 0) for m in MODALITIES},
        "shards": len(shards),
        "shards_this_run": len(this_run),
        "records_this_run": records_this_run,
        "seconds": round(seconds, 3),
        "encode_seconds": round(encode_seconds, 3),  # in media tokenizers (rank 0)
        "records_per_second": round(records_this_run / seconds, 2) if seconds > 0 else None,
    }
    return stats, errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Turn a manifest of text/image/video/audio records into token shards for `anyseq fit`. "
                    "Resumable: rerun the same command after an interruption and it continues where it stopped.",
        epilog="Exit status: 0 every record ok; 1 some records failed (see OUT/errors.jsonl); 2 the job could not "
               "run or was stopped (rerun to resume), every record failed, or --fail-on-error stopped it. Several "
               "GPUs: add --device cuda --devices N "
               "(Lightning DDP; each rank writes its own shards, the folder merges by listing).",
        formatter_class=HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="JSONL manifest, one record per line; media paths relative to it")
    src.add_argument("--folder", help="folder of media files, each with a same-named .txt caption")
    p.add_argument("--out", required=True, help="output folder of the shard set (created; a rerun resumes it)")
    p.add_argument("--text-tokenizer", required=True, help="sentencepiece .model of `anyseq train-text-tokenizer`")
    p.add_argument("--visual-tokenizer", help="saved image/video tokenizer folder (needed for image/video records)")
    p.add_argument("--audio-tokenizer", help="saved audio tokenizer folder (needed for audio records)")
    p.add_argument("--task", choices=TASKS, default="both",
                   help="order of a pair's segments: caption then media, media then caption, or either per record")
    p.add_argument("--p-caption-first", type=float, default=0.5, help="with --task both: chance of caption-to-media")
    p.add_argument("--prompt-loss-weight", type=float, default=1.0,
                   help="loss weight of a pair's first segment (0 trains on the second segment only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the task template draws")
    p.add_argument("--workers", type=int, default=2, help="decoding worker processes (0: decode in the main process)")
    p.add_argument("--batch-size", type=int, default=16, help="media items per tokenizer batch")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the media tokenizers run")
    p.add_argument("--devices", type=int, default=1, help="devices (processes) per node; >1 runs Lightning DDP")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes for multi-node runs (Lightning's launcher env)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy (auto: ddp when --devices > 1)")
    p.add_argument("--image-size", type=int, default=256,
                   help="images and video frames are resized and centre-cropped to this square side")
    p.add_argument("--video-frames", type=int, default=17, help="most frames per video (1 + k * temporal factor)")
    p.add_argument("--video-fps", type=float, default=None, help="resample videos to this frame rate (default: keep each file's rate)")
    p.add_argument("--audio-seconds", type=float, default=10.0, help="audio is cut to this length")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="larger images are refused (decompression bombs)")
    p.add_argument("--records-per-shard", type=int, default=1000,
                   help="manifest lines per shard; shards are the unit of resume and of worker parallelism")
    p.add_argument("--fail-on-error", action="store_true", help="stop at the first bad record instead of reporting it")
    p.add_argument("--max-height", type=int, default=None, help="token space: largest latent height (shape tokens)")
    p.add_argument("--max-width", type=int, default=None, help="token space: largest latent width")
    p.add_argument("--max-frames", type=int, default=None, help="token space: most latent frames")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("batch_size", "records_per_shard", "image_size", "video_frames", "devices", "num_nodes", "max_pixels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if not 0.0 <= args.p_caption_first <= 1.0:
        p.error(f"--p-caption-first must be in [0, 1], got {args.p_caption_first}")
    if args.audio_seconds <= 0 or args.prompt_loss_weight < 0 or (args.video_fps is not None and args.video_fps <= 0):
        p.error("--audio-seconds and --video-fps must be positive, --prompt-loss-weight non-negative")


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    start = time.perf_counter()
    try:
        job = make_job(args)
    except (JobError, ValueError, FileNotFoundError, TypeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    _quiet_lightning()
    try:
        trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=args.devices,
                            num_nodes=args.num_nodes, strategy=args.strategy, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[ShardCommitter(job)])
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        print(f"{PROG}: error: --device {args.device} --devices {args.devices} --strategy {args.strategy}: {e}",
              file=sys.stderr)
        return 2
    module = TokenizeModule(job)
    try:
        trainer.predict(module, return_predictions=False)
    except FatalRecordError as e:
        print(f"{PROG}: stopped at a bad record (--fail-on-error): {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the finished shards are committed; say so, and never exit 1 ("some records failed")
        if not isinstance(e, OSError):
            traceback.print_exc()
        print(f"{PROG}: error: stopped by {type(e).__name__}: {e} (a decoding worker killed for memory, a full "
              f"disk, or a bug); the {len(committed_shards(job.out))} committed shards are kept: rerun the same "
              "command to resume", file=sys.stderr)
        return 2
    if trainer.global_rank != 0:
        return 0
    stats, errors = summarize(job, time.perf_counter() - start, module.shards, module.encode_seconds)
    write_text_atomic(job.out / "errors.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
    write_text_atomic(job.out / "stats.json", json.dumps(stats, indent=2) + "\n")
    r = stats["records"]
    print(f"{PROG}: {r['ok']} records ok, {r['failed']} failed -> {job.out} ({stats['shards']} shards, "
          f"{stats['tokens']} tokens); this run {stats['records_this_run']} records in {stats['seconds']:.1f} s "
          f"({stats['records_per_second']} records/s)"
          + (f"; reasons in {job.out / 'errors.jsonl'}" if r["failed"] else ""), file=sys.stderr)
    if r["ok"] == 0:
        what = (f"every record failed; see {job.out / 'errors.jsonl'}" if r["failed"]
                else f"{job.source.path} holds only blank lines, no records")
        print(f"{PROG}: error: {what}", file=sys.stderr)
        return 2
    return 1 if r["failed"] else 0
