"""Where records come from (a JSONL manifest or a media folder), what they may hold, and
the task templates that decide the order of a pair's segments.

Manifest records, one JSON object per line (paths relative to the manifest)::

    {"id": "a", "text": "a red square"}                         a text document
    {"id": "b", "text": "a red square", "image": "b.png"}       a pair (also "video", "audio")
    {"id": "c", "image": "c.png"}                               a media document
    {"id": "d", "segments": [{"text": "..."}, {"image": "d.png"}, {"audio": "d.wav"}]}  interleaved

A pair becomes caption->media or media->caption by the task template (``both`` draws the
order per record from ``(seed, line)``, so it never depends on workers or resumes).
Blank lines are skipped; everything else that is not a valid record is a RecordError with
a reason a person understands. Folder mode: every media file under the folder (by
extension, see EXTENSIONS; .gif counts as video), in sorted order, with its same-named
``.txt`` caption is a pair record whose number is its rank in that order; a media file
without a caption is a failed record, a stray ``.txt`` is ignored.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

MEDIA = ("image", "video", "audio")
CONTENT = ("text", *MEDIA)
TASKS = ("caption-to-media", "media-to-caption", "both")
EXTENSIONS = {
    "image": {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"},
    "video": {".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"},
    "audio": {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"},
}
RECORD_SHAPES = (
    "a record holds 'text' and/or one of 'image'/'video'/'audio' (a pair), or 'segments' "
    "(a list of one-key objects), plus an optional 'id'"
)


class RecordError(ValueError):
    """A record that cannot be used; ``path`` names the file involved, if any."""

    def __init__(self, reason: str, path: str | Path | None = None, id: str | None = None, kind: str = "unknown"):
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else str(path)
        self.id, self.kind = id, kind


@dataclass
class Part:
    """One segment before tokenization: text, or the path of a media file."""

    modality: str
    text: str | None = None
    path: Path | None = None
    loss: float = 1.0


@dataclass
class Record:
    line: int  # 1-based manifest line (folder mode: rank of the file)
    id: str | None
    kind: str  # text | image | video | audio | interleaved (for the statistics)
    parts: list[Part] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"{where} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"{where} is not valid Unicode ({e.reason} at character {e.start})") from None
    return value


def _path(value: object, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where} must be a non-empty file path string, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _content(obj: dict, where: str, base: Path) -> Part:
    (modality, value), = obj.items()
    if modality == "text":
        return Part("text", text=_text(value, f"{where}'text'"))
    return Part(modality, path=_path(value, f"{where}{modality!r}", base))


def parse_record(raw: bytes, line: int, base: Path) -> Record | None:
    """One manifest line -> Record (None for a blank line); RecordError says what is wrong."""
    if line == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)  # editors on Windows may open the file with one
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise RecordError(f"line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object, got {type(obj).__name__}; {RECORD_SHAPES}")
    try:
        return _record(obj, line, base)
    except RecordError as e:  # name the record as far as it can be named
        rid = obj.get("id")
        e.id = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
        e.kind = _kind(obj)
        raise


def _kind(obj: dict) -> str:
    """The statistics key of a record: its media modality, text, or interleaved."""
    if "segments" in obj:
        return "interleaved"
    return next((m for m in MEDIA if m in obj), "text" if "text" in obj else "unknown")


def _record(obj: dict, line: int, base: Path) -> Record:
    unknown = sorted(set(obj) - {"id", "segments", *CONTENT})
    if unknown:
        raise RecordError(f"unknown keys {unknown}; {RECORD_SHAPES}")
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int, type(None))):
        raise RecordError(f"'id' must be a string or an integer, got {type(rid).__name__}")
    rid = None if rid is None else str(rid)

    if "segments" in obj:
        extra = sorted(set(obj) & set(CONTENT))
        if extra:
            raise RecordError(f"a record with 'segments' cannot also hold {extra}; put them in the segments")
        segments = obj["segments"]
        if not isinstance(segments, list) or not segments:
            raise RecordError("'segments' must be a non-empty list of objects like {\"text\": ...} or {\"image\": ...}")
        parts = []
        for i, seg in enumerate(segments):
            if not isinstance(seg, dict) or len(seg) != 1 or next(iter(seg)) not in CONTENT:
                raise RecordError(
                    f"segments[{i}] must be an object with exactly one of {list(CONTENT)}, got {json.dumps(seg)[:80]}"
                )
            parts.append(_content(seg, f"segments[{i}] ", base))
        return Record(line, rid, _kind(obj), parts)

    media = [m for m in MEDIA if m in obj]
    if len(media) > 1:
        raise RecordError(f"a pair holds one media file, got {media}; use 'segments' for several")
    if not media and "text" not in obj:
        raise RecordError(f"the record has no content; {RECORD_SHAPES}")
    parts = [_content({k: obj[k]}, "", base) for k in ("text", *media) if k in obj]
    return Record(line, rid, _kind(obj), parts)


def apply_template(record: Record, task: str, p_caption_first: float, seed: int, prompt_loss: float = 1.0) -> Record:
    """Order a pair's segments for the task; the first one (the prompt) gets ``prompt_loss``."""
    if record.kind not in MEDIA or len(record.parts) != 2:
        return record
    text, media = record.parts
    if task == "both":
        caption_first = np.random.default_rng([seed, record.line]).random() < p_caption_first
    else:
        caption_first = task == "caption-to-media"
    first, second = (text, media) if caption_first else (media, text)
    first.loss = prompt_loss
    record.parts = [first, second]
    return record


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
class ManifestSource:
    """Streams a JSONL manifest line by line (never loads it whole)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        if self.path.is_dir():
            raise FileNotFoundError(f"{path}: is a folder, not a JSONL manifest; for a folder of media files with "
                                    "same-named .txt captions use --folder")
        if not self.path.is_file():
            raise FileNotFoundError(f"{path}: manifest not found")
        self.base = self.path.parent

    def describe(self) -> dict[str, str]:
        return {"manifest": str(self.path)}

    def items(self) -> Iterator[tuple[int, bytes]]:
        with self.path.open("rb") as f:
            yield from enumerate(f, 1)

    def content(self, raw: bytes) -> bytes:
        return raw

    def parse(self, number: int, raw: bytes) -> Record | None:
        return parse_record(raw, number, self.base)


def media_kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    return next((m for m, exts in EXTENSIONS.items() if ext in exts), None)


class FolderSource:
    """Media files under a folder (sorted walk) with same-named ``.txt`` captions."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"{path}: folder not found")

    def describe(self) -> dict[str, str]:
        return {"folder": str(self.path)}

    def _files(self) -> Iterator[Path]:
        for root, dirs, files in os.walk(self.path):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if media_kind(path) is not None:
                    yield path

    def items(self) -> Iterator[tuple[int, Path]]:
        return enumerate(self._files(), 1)

    def content(self, path: Path) -> bytes:
        """The file's name and caption (not the media bytes: hashing every file would cost a read of all)."""
        caption = path.with_suffix(".txt")
        return str(path.relative_to(self.path)).encode() + b"\0" + (caption.read_bytes() if caption.is_file() else b"")

    def parse(self, number: int, path: Path) -> Record:
        kind = media_kind(path)
        rid = str(path.relative_to(self.path))
        caption = path.with_suffix(".txt")

        def fail(reason: str) -> RecordError:
            return RecordError(reason, caption, rid, kind)

        if not caption.is_file():
            raise fail(f"no caption file {caption.name} next to {path.name}")
        raw = caption.read_bytes()
        try:
            text = _text(raw.decode("utf-8-sig").strip("\r\n"), "the caption")
        except UnicodeDecodeError as e:
            raise fail(f"caption is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
        except RecordError as e:
            raise fail(e.reason) from None
        return Record(number, rid, kind, [Part("text", text=text), Part(kind, path=path)])


def scan(source: ManifestSource | FolderSource, per_shard: int) -> tuple[int, list[str]]:
    """The number of source items, and the SHA-256 of each shard's ``per_shard`` consecutive
    items: a rerun checks that the records behind committed shards did not change since."""
    digests, total = [], 0
    for total, item in source.items():
        if (total - 1) % per_shard == 0:
            digests.append(hashlib.sha256())
        digests[-1].update(source.content(item))
    return total, [d.hexdigest() for d in digests]
