"""Images and video clips for visual tokenizer training, from a folder or a manifest.

A source is a folder (searched recursively; the file suffix says image or video) or a
``manifest.jsonl`` whose records name an ``"image"`` or ``"video"`` path relative to the
manifest (other records, e.g. audio, are ignored). Decoding goes through ``anyseq.media``:
Pillow for images (every mode to RGB, EXIF orientation applied), PyAV for video.

A file that cannot be decoded does not stop training: the sample is dropped from its batch
and the batch carries ``(path, error)`` so the training module can report every skipped
file, whichever worker process met it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from anyseq import media
from anyseq.data.resumable import ResumableDataModule, index_generator
from anyseq.helpers import default, exists

Kind = Literal["image", "video"]
KINDS: tuple[Kind, ...] = ("image", "video")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"}  # GIFs are clips (possibly one frame)


@dataclass(frozen=True)
class MediaItem:
    path: str
    kind: Kind


def _kind_of(path: Path) -> Kind | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def list_media(source: str | Path) -> list[MediaItem]:
    """Every image and video a folder (recursively) or a manifest.jsonl names, in a stable order."""
    source = Path(source)
    if source.is_dir():
        found = (MediaItem(str(p), _kind_of(p)) for p in sorted(source.rglob("*")) if p.is_file() and _kind_of(p))
        return list(found)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such folder or manifest (expected a folder of images/videos or a .jsonl)")
    items = []
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{number}: not valid JSON ({e.msg}); expected one record per line") from e
        for kind in KINDS:
            if isinstance(record, dict) and kind in record:
                path = Path(record[kind])
                items.append(MediaItem(str(path if path.is_absolute() else source.parent / path), kind))
    return items


def fit_to_size(x: Tensor, size: int, scale: float = 1.0, crop: torch.Generator | None = None,
                flip: bool = False) -> Tensor:
    """(..., 3, H, W) in [-1, 1] -> (..., 3, size, size): resize the short side to ``size * scale``, then crop.

    The crop is drawn from ``crop`` (training) or central (None: evaluation); ``flip`` mirrors
    it left-right. Leading dims (frames) share one crop.
    """
    height, width = x.shape[-2:]
    short = round(size * scale)
    if min(height, width) != short:
        ratio = short / min(height, width)
        new = (max(size, round(height * ratio)), max(size, round(width * ratio)))
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=new, mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(-1, 1).reshape(*lead, 3, *new)
    height, width = x.shape[-2:]
    if exists(crop):
        top, left = (int(torch.randint(0, n - size + 1, (), generator=crop)) for n in (height, width))
    else:
        top, left = (height - size) // 2, (width - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.flip(-1) if flip else x


def crop_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Center-crop the last two axes down to multiples of ``multiple`` (a tokenizer's spatial factor)."""
    height, width = x.shape[-2:]
    h, w = height // multiple * multiple, width // multiple * multiple
    if h == 0 or w == 0:
        raise ValueError(f"{height}x{width} pixels is smaller than the tokenizer's spatial compression {multiple}; "
                         f"expected at least {multiple}x{multiple} pixels")
    top, left = (height - h) // 2, (width - w) // 2
    return x[..., top : top + h, left : left + w]


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class VisualDataset(Dataset):
    """Decoded, resized samples: images (3, size, size) and clips (3, frames, size, size) in [-1, 1].

    Training samples get a random scale in ``[1, max_scale]``, a random crop and a random
    left-right flip; evaluation samples a central crop at scale 1. A clip starts at a random
    frame among the first ``clip_window * frames`` decoded frames (at ``fps`` if given) and
    repeats its last frame when the video is shorter than ``frames``.

    In training, index ``epoch * len(ds) + i`` is item ``i`` of that epoch's order (shuffled
    with ``(seed, epoch)``) with draws from its own generator (``anyseq.data.resumable``), so
    a resumed run reads the samples an unbroken one would, in any worker.
    """

    def __init__(
        self,
        items: list[MediaItem],
        size: int,
        frames: int = 17,
        fps: float | None = None,
        train: bool = True,
        max_scale: float = 1.25,
        flip: bool = True,
        clip_window: int = 4,
        max_pixels: int = 64_000_000,
        seed: int = 0,
    ):
        kinds = {item.kind for item in items}
        if len(kinds) > 1:
            raise ValueError(f"a VisualDataset holds one kind of media, got {sorted(kinds)}")
        if size < 1 or frames < 1 or max_scale < 1:
            raise ValueError(f"VisualDataset needs size >= 1, frames >= 1, max_scale >= 1; got {size}, {frames}, {max_scale}")
        self.items, self.size, self.frames, self.fps = items, size, frames, fps
        self.train, self.max_scale, self.flip = train, max_scale, flip
        self.clip_window, self.max_pixels, self.seed = clip_window, max_pixels, seed

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, index: int) -> MediaItem:
        if not self.train:
            return self.items[index]
        epoch, i = divmod(index, len(self.items))
        return self.items[epoch_order(self.seed, epoch, len(self.items))[i]]

    def _decode(self, item: MediaItem, g: torch.Generator | None) -> Tensor:
        if item.kind == "image":
            return media.image_to_tensor(media.read_image(item.path, max_pixels=self.max_pixels))
        window = self.frames * (self.clip_window if self.train else 1)
        frames, _ = media.read_video(item.path, max_frames=window, fps=self.fps)
        start = int(torch.randint(0, len(frames) - self.frames + 1, (), generator=g)) if exists(g) and len(frames) > self.frames else 0
        clip = frames[start : start + self.frames]
        if len(clip) < self.frames:
            clip = clip[list(range(len(clip))) + [len(clip) - 1] * (self.frames - len(clip))]
        return media.video_to_tensor(clip).transpose(0, 1)  # (T, 3, H, W): frames share one crop

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._item(index)
        g = index_generator(self.seed, index) if self.train else None
        try:
            x = self._decode(item, g)
        except media.MediaError as e:
            return {"pixels": None, "path": item.path, "error": f"{type(e).__name__}: {e}"}
        scale = 1 + float(torch.rand((), generator=g)) * (self.max_scale - 1) if exists(g) else 1.0
        flip = exists(g) and self.flip and bool(torch.rand((), generator=g) < 0.5)
        x = fit_to_size(x, self.size, scale, crop=g, flip=flip)
        if item.kind == "video":
            x = x.transpose(0, 1)  # (3, T, size, size)
        return {"pixels": x.contiguous(), "path": item.path, "error": None}


def collate(samples: list[dict[str, Any]], kind: Kind) -> dict[str, Any]:
    """Stack the decodable samples; the others travel along as ``skipped`` [(path, error)]."""
    good = [s["pixels"] for s in samples if exists(s["pixels"])]
    skipped = [(s["path"], s["error"]) for s in samples if not exists(s["pixels"])]
    pixels = torch.stack(good) if good else torch.empty(0)
    return {"kind": kind, "pixels": pixels, "skipped": skipped}


class _Collate:
    """Picklable per-kind collate (worker processes need to pickle it)."""

    def __init__(self, kind: Kind):
        self.kind = kind

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples, self.kind)


class VisualDataModule(ResumableDataModule):
    """Images and/or clips from a folder or manifest, batched by kind.

    A training batch is ``{"image": batch, "video": batch}`` (only the kinds the data has;
    the shorter stream cycles), each ``{"kind", "pixels", "skipped"}``. An interrupted run
    resumes on the batches the unbroken run would have trained (``anyseq.data.resumable``).

    Args:
        data: training folder or manifest.jsonl.
        val: validation folder or manifest (no validation without one).
        size: training crop (a multiple of the tokenizer's spatial compression).
        video_frames: frames per clip; ``1 + k * temporal_compression`` uses every frame.
        video_fps: resample clips to this frame rate (None: the file's own frames).
        batch_size: images per batch.
        video_batch_size: clips per batch (defaults to ``batch_size``).
        kinds: restrict to ``["image"]`` or ``["video"]`` (default: whatever the data holds).
        max_scale: random resize range ``[1, max_scale]`` before the random crop.
        flip: random left-right flips in training.
        clip_window: training clips start within the first ``clip_window * video_frames`` frames.
        max_pixels: images declaring more pixels are refused (decompression bombs).
        num_workers: DataLoader worker processes.
        seed: seeds each epoch's order and every sample's crop, flip and clip start.
    """

    def __init__(
        self,
        data: str,
        val: str | None = None,
        size: int = 256,
        video_frames: int = 17,
        video_fps: float | None = None,
        batch_size: int = 8,
        video_batch_size: int | None = None,
        kinds: list[Kind] | None = None,
        max_scale: float = 1.25,
        flip: bool = True,
        clip_window: int = 4,
        max_pixels: int = 64_000_000,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        unknown = set(default(kinds, KINDS)) - set(KINDS)
        if unknown:
            raise ValueError(f"VisualDataModule.kinds has unknown kinds {sorted(unknown)}; use 'image' and/or 'video'")
        self.datasets: dict[str, dict[Kind, VisualDataset]] = {}

    def _datasets(self, source: str, train: bool) -> dict[Kind, VisualDataset]:
        h = self.hparams
        items = list_media(source)
        wanted = default(h.kinds, KINDS)
        by_kind = {kind: [i for i in items if i.kind == kind] for kind in wanted}
        by_kind = {kind: found for kind, found in by_kind.items() if found}
        if not by_kind:
            raise ValueError(f"{source}: no {' or '.join(wanted)} files found (suffixes {sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES)})")
        options = dict(size=h.size, frames=h.video_frames, fps=h.video_fps, train=train, max_scale=h.max_scale,
                       flip=h.flip, clip_window=h.clip_window, max_pixels=h.max_pixels, seed=h.seed)
        return {kind: VisualDataset(found, **options) for kind, found in by_kind.items()}

    def setup(self, stage: str | None = None) -> None:
        if "train" not in self.datasets:
            self.datasets["train"] = self._datasets(self.hparams.data, train=True)
        if exists(self.hparams.val) and "val" not in self.datasets:
            self.datasets["val"] = self._datasets(self.hparams.val, train=False)

    def _batch_size(self, kind: Kind) -> int:
        h = self.hparams
        return h.batch_size if kind == "image" else default(h.video_batch_size, h.batch_size)

    def _loader(self, dataset: VisualDataset, kind: Kind, **order: Any) -> DataLoader:
        h = self.hparams
        return DataLoader(dataset, batch_size=self._batch_size(kind), **order, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0, collate_fn=_Collate(kind))

    def train_dataloader(self) -> CombinedLoader:
        """One loader per kind, each as many batches long as the longest (a shorter one cycles
        inside its sampler, not by Lightning re-iterating it while it reads ahead)."""
        datasets = self.datasets["train"]
        samplers = {kind: self.sampler(ds, self._batch_size(kind), True, kind, items=f"{kind}s")
                    for kind, ds in datasets.items()}
        longest = max(s.data_batches for s in samplers.values())
        for s in samplers.values():
            s.batches_per_epoch = longest
        loaders = {kind: self._loader(datasets[kind], kind, drop_last=True, sampler=s) for kind, s in samplers.items()}
        return CombinedLoader(loaders, mode="min_size")

    def val_dataloader(self) -> CombinedLoader | list:
        if "val" not in self.datasets:
            return []
        loaders = {kind: self._loader(ds, kind) for kind, ds in self.datasets["val"].items()}
        return CombinedLoader(loaders, mode="sequential")

    def layout(self) -> dict[str, Any]:
        h = self.hparams
        return {"data": h.data, "kinds": h.kinds, "seed": h.seed}
