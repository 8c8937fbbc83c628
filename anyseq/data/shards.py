"""Token shards: the on-disk format, an atomic writer and the reader.

A shard set is a folder of shard folders, each committed atomically (written into a hidden
temporary folder beside it, fsynced, then renamed), so a reader never sees half a shard::

    shards/
      shard-000000/
        tokens.bin    uint32 token ids of every document, concatenated (np.memmap)
        index.npy     int64 (N+1,) document offsets into tokens.bin
        spans.npy     structured (S,): doc int64, modality uint8, start int64, stop int64, weight float32
                      one row per segment, sorted by doc; start/stop are relative to the document
        lines.npy     int64 (N,) the manifest line (1-based) each document came from
        errors.jsonl  the records of this shard's lines that failed, with reasons
        meta.json     format version, token space (+ fingerprint), tokenizers {name: {path, fingerprint}},
                      counts (documents, tokens, tokens per modality, records ok/failed per kind),
                      the manifest lines it covers [first, stop) of the source's records, their
                      SHA-256, and the settings that made it
      shard-000001/ ...

Per-token metadata is rebuilt from the spans with the grammar's conventions: tokens outside
every span (<bos>, <eos>) are text, segment -1, loss weight 1; a span's tokens carry its
modality, its segment index (its rank within the document) and its weight. Shard sets
written by several ranks merge by listing: shard names are the index of the manifest line
range they hold, so any number of ranks produce the same folders.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from anyseq.helpers import read_json_object
from anyseq.sequence import Segment, Serialized, Serializer
from anyseq.vocab import MODALITIES, TokenSpace, TokenSpaceMismatch

FORMAT = "anyseq-token-shards"
VERSION = 1
PREFIX = "shard-"
TMP_PREFIX = ".tmp-"
SPAN_DTYPE = np.dtype([("doc", "<i8"), ("modality", "u1"), ("start", "<i8"), ("stop", "<i8"), ("weight", "<f4")])
DAMAGED = "the shard is damaged: delete its folder and rerun `anyseq tokenize-dataset` to redo it"
HINT = "create it with `anyseq tokenize-dataset --manifest records.jsonl --out DIR --text-tokenizer text.model`"


def shard_name(index: int) -> str:
    return f"{PREFIX}{index:06d}"


def shard_index(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def committed_shards(root: Path) -> list[Path]:
    """Committed shard folders of a shard set, in index order (temporary folders are hidden)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=shard_index)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, never leaving a partial file behind."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Collects serialized documents of one shard in memory and commits them in one go."""

    def __init__(self, root: str | Path, index: int):
        self.root = Path(root)
        self.index = index
        self.tokens: list[np.ndarray] = []
        self.spans: list[tuple[int, int, int, int, float]] = []
        self.lines: list[int] = []
        self.modality_tokens = np.zeros(len(MODALITIES), np.int64)

    def add(self, doc: Serialized, line: int) -> None:
        if doc.ids.size and (doc.ids.min() < 0 or doc.ids.max() > np.iinfo(np.uint32).max):
            raise ValueError(f"manifest line {line}: token ids do not fit uint32")
        d = len(self.lines)
        self.tokens.append(doc.ids.astype(np.uint32))
        for name, start, stop in doc.spans:
            weight = float(doc.loss_weight[start]) if stop > start else 1.0  # one weight per segment
            self.spans.append((d, MODALITIES.index(name), start, stop, weight))
        self.lines.append(line)
        self.modality_tokens += np.bincount(doc.modality, minlength=len(MODALITIES))

    def commit(self, meta: dict[str, Any], errors: Sequence[dict[str, Any]] = ()) -> Path:
        """Write the shard into a temporary folder, fsync it and rename it into place."""
        final = self.root / shard_name(self.index)
        if final.exists():
            raise FileExistsError(f"{final}: shard already committed; refusing to overwrite it")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{final.name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        tokens = np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.uint32)
        index = np.zeros(len(self.tokens) + 1, np.int64)
        np.cumsum([len(t) for t in self.tokens], out=index[1:])
        tokens.tofile(tmp / "tokens.bin")
        np.save(tmp / "index.npy", index)
        np.save(tmp / "spans.npy", np.array(self.spans, dtype=SPAN_DTYPE))
        np.save(tmp / "lines.npy", np.asarray(self.lines, np.int64))
        (tmp / "errors.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
        counts = {
            "documents": len(self.lines),
            "tokens": int(len(tokens)),
            "tokens_per_modality": {m: int(n) for m, n in zip(MODALITIES, self.modality_tokens)},
        }
        payload = {"format": FORMAT, "version": VERSION, "shard": self.index, **meta, **counts}
        (tmp / "meta.json").write_text(json.dumps(payload, indent=2) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        os.rename(tmp, final)
        _fsync(self.root)
        return final


def write_shard_set(
    root: str | Path,
    records: Iterable[Sequence[Segment]],
    space: TokenSpace,
    tokenizers: dict[str, dict[str, str]] | None = None,
    per_shard: int = 1000,
) -> Path:
    """Serialize in-memory records (lists of Segments) into a shard set, without a manifest."""
    serializer, root, records = Serializer(space), Path(root), list(records)
    meta = {"source_records": len(records), "token_space": {**space.to_dict(), "fingerprint": space.fingerprint},
            "tokenizers": tokenizers or {}, "settings": {"source": "write_shard_set"}}
    writer, n = None, 0
    for n, segments in enumerate(records):
        if n % per_shard == 0:
            if writer is not None:
                writer.commit({**meta, "lines": [n - per_shard + 1, n + 1]})
            writer = ShardWriter(root, n // per_shard)
        writer.add(serializer.serialize(segments), n + 1)
    if writer is None:
        raise ValueError("write_shard_set got no records")
    writer.commit({**meta, "lines": [n // per_shard * per_shard + 1, n + 2]})
    return root


def remove_stale(root: Path, index: int) -> None:
    """Delete temporary folders a killed run left for shard ``index`` (never committed data)."""
    for tmp in root.glob(f"{TMP_PREFIX}{shard_name(index)}.*"):
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
@dataclass
class Document:
    """One document (or a slice of it) with per-token metadata (see the module docstring)."""

    ids: np.ndarray  # uint32 (n,)
    modality: np.ndarray  # uint8 (n,), index into MODALITIES
    loss_weight: np.ndarray  # float32 (n,)
    segment: np.ndarray  # int16 (n,), -1 for <bos>/<eos>

    def __len__(self) -> int:
        return len(self.ids)


def read_meta(shard: Path) -> dict[str, Any]:
    path = shard / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{shard}: not a committed shard (no meta.json)")
    meta = read_json_object(path, f"a shard's metadata: {DAMAGED}")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this anyseq reads {FORMAT!r} version {VERSION}"
        )
    return meta


class _Shard:
    """Lazily opened arrays of one shard folder (memmaps are reopened after pickling)."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path, self.meta = path, meta
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta, "_arrays": None}

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            n_tokens, path = self.meta["tokens"], self.path / "tokens.bin"
            size = path.stat().st_size if path.is_file() else None
            if size != 4 * n_tokens:
                raise ValueError(f"{path}: {'missing' if size is None else f'{size} bytes'}; its meta.json says "
                                 f"{n_tokens} uint32 tokens ({4 * n_tokens} bytes): {DAMAGED}")
            tokens = np.memmap(path, np.uint32, "r", shape=(n_tokens,)) if n_tokens else np.zeros(0, np.uint32)
            spans = np.load(self.path / "spans.npy", mmap_mode="r")
            self._arrays = {
                "tokens": tokens,
                "index": np.load(self.path / "index.npy"),
                "spans": spans,
                "span_docs": np.asarray(spans["doc"]),
                "lines": np.load(self.path / "lines.npy"),
            }
        return self._arrays


def _warn_if_incomplete(root: Path, shards: list[dict[str, Any]]) -> None:
    """A shard set still being written (or cut short) reads, with a warning naming the missing lines."""
    total = shards[0].get("source_records")  # (absent in sets written before it was recorded)
    if total is None:
        return
    covered = np.zeros(total + 2, np.int64)  # +1 at a shard's first line, -1 past its last
    for meta in shards:
        lo, hi = meta["lines"]
        covered[lo] += 1
        covered[hi] -= 1
    missing = np.flatnonzero(np.cumsum(covered)[1 : total + 1] == 0) + 1
    if len(missing):
        warnings.warn(f"{root}: the shards hold {total - len(missing)} of the source's {total} records (lines "
                      f"{missing[0]}..{missing[-1]} are missing, {len(missing)} in all): its `anyseq "
                      "tokenize-dataset` has not finished; rerun it to complete the set", stacklevel=3)


class ShardSet:
    """Every committed shard under one or more shard-set folders, as one list of documents.

    All shards must share one token space (and match ``space`` when given); a folder that is
    missing or holds no shards is a ``FileNotFoundError`` saying how to create it.
    """

    def __init__(self, paths: str | Path | Iterable[str | Path], space: TokenSpace | None = None):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        if not paths:
            raise ValueError("ShardSet needs at least one shard folder")
        self.paths = paths
        self._shards: list[_Shard] = []
        for root in paths:
            if not root.exists():
                raise FileNotFoundError(f"{root}: shard folder does not exist; {HINT}")
            folders = [root] if (root / "meta.json").is_file() else committed_shards(root)
            if not folders:
                raise FileNotFoundError(f"{root}: holds no committed token shards ({PREFIX}*/); {HINT}")
            shards = [_Shard(f, read_meta(f)) for f in folders]
            _warn_if_incomplete(root, [s.meta for s in shards])
            self._shards.extend(shards)
        first = self._shards[0].meta
        self.space = TokenSpace.from_dict(first["token_space"])
        if space is not None:
            space.check_compatible(self.space, f"shard folder {self._shards[0].path}")
        for shard in self._shards[1:]:
            self.space.check_compatible(TokenSpace.from_dict(shard.meta["token_space"]), f"shard folder {shard.path}")
        self.tokenizers: dict[str, dict[str, str]] = first["tokenizers"]
        counts = [s.meta["documents"] for s in self._shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_tokens(self) -> int:
        return sum(s.meta["tokens"] for s in self._shards)

    @property
    def lengths(self) -> np.ndarray:
        """Token count of every document (int64)."""
        if self._lengths is None:
            parts = [np.diff(s.arrays["index"]) for s in self._shards]
            self._lengths = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._lengths

    def _locate(self, i: int) -> tuple[_Shard, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range (the shard set holds {len(self)})")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._shards[k], i - int(self._starts[k])

    def spans(self, i: int) -> np.ndarray:
        """The segments of document ``i`` (SPAN_DTYPE rows, in order)."""
        shard, j = self._locate(i)
        a = shard.arrays
        lo, hi = np.searchsorted(a["span_docs"], [j, j + 1])
        return np.asarray(a["spans"][lo:hi])

    def line(self, i: int) -> int:
        shard, j = self._locate(i)
        return int(shard.arrays["lines"][j])

    def document(self, i: int, start: int = 0, stop: int | None = None) -> Document:
        """Document ``i``, or its tokens ``[start, stop)`` (only that slice is read)."""
        shard, j = self._locate(i)
        a = shard.arrays
        offset, end = int(a["index"][j]), int(a["index"][j + 1])
        stop = end - offset if stop is None else min(stop, end - offset)
        ids = np.array(a["tokens"][offset + start : offset + stop])
        n = len(ids)
        modality = np.zeros(n, np.uint8)
        weight = np.ones(n, np.float32)
        segment = np.full(n, -1, np.int16)
        for k, span in enumerate(self.spans(i)):
            lo, hi = max(int(span["start"]) - start, 0), min(int(span["stop"]) - start, n)
            if lo < hi:
                modality[lo:hi] = span["modality"]
                weight[lo:hi] = span["weight"]
                segment[lo:hi] = k
        return Document(ids, modality, weight, segment)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ShardSubset":
        return ShardSubset(self, np.asarray(indices, np.int64))


class ShardSubset:
    """A selection of a ShardSet's documents (e.g. a held-out validation split)."""

    def __init__(self, base: ShardSet, indices: np.ndarray):
        self.base, self.indices = base, indices
        self.space, self.tokenizers, self.paths = base.space, base.tokenizers, base.paths

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def lengths(self) -> np.ndarray:
        return self.base.lengths[self.indices]

    def spans(self, i: int) -> np.ndarray:
        return self.base.spans(int(self.indices[i]))

    def line(self, i: int) -> int:
        return self.base.line(int(self.indices[i]))

    def document(self, i: int, start: int = 0, stop: int | None = None) -> Document:
        return self.base.document(int(self.indices[i]), start, stop)


def check_same_space(sets: Sequence[ShardSet | ShardSubset]) -> TokenSpace:
    """The token space every shard set shares, or TokenSpaceMismatch naming the odd one out."""
    space = sets[0].space
    for s in sets[1:]:
        if s.space != space:
            space.check_compatible(s.space, f"shard folder {', '.join(map(str, s.paths))}")
    return space

