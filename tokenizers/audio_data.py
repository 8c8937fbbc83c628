"""Training data for the audio codec: fixed-length segments of audio files.

Sources are folders (every .wav/.flac/.ogg/... under them), JSONL manifests in the
project's record format (every ``audio`` part of every record) or single files. Only file
headers are read up front; each item then reads just its window (``anyseq.media.read_audio``
seeks), so hour-long files stream. Files are downmixed to mono and resampled to the codec's
rate by ``read_audio``. A file that cannot be used is skipped with a warning naming it and
the reason, and recorded in ``skipped``; it never stops training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from anyseq import media
from anyseq.data.manifest import EXTENSIONS, ManifestSource, RecordError
from anyseq.data.resumable import ResumableDataModule, index_generator

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = EXTENSIONS["audio"]


def list_audio_files(sources: Sequence[str | Path], skipped: dict[str, str] | None = None) -> list[Path]:
    """Audio paths from folders (recursive, sorted), ``.jsonl`` manifests and single files.

    Manifest lines that are not valid records go to ``skipped`` (``"manifest:line" -> reason``).
    """
    skipped = {} if skipped is None else skipped
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        elif source.suffix == ".jsonl":
            manifest = ManifestSource(source)
            for number, raw in manifest.items():
                try:
                    record = manifest.parse(number, raw)
                except RecordError as e:
                    skipped[f"{source}:{number}"] = f"RecordError: {e.reason}"
                    continue
                files += [part.path for part in (record.parts if record else []) if part.modality == "audio"]
        elif source.is_file():
            files.append(source)
        else:
            raise FileNotFoundError(f"{source}: audio source not found (expected a folder, a .jsonl manifest or an audio file)")
    return files


class AudioSegments(Dataset):
    """``segment_seconds`` of mono audio at ``sample_rate`` per item, as a (1, N) float tensor.

    ``random=True`` draws a file (weighted by duration) and an offset per item, ``length`` items
    per epoch, from a generator seeded by ``(seed, index)``, where index ``epoch * length + i``
    is item ``i`` of that epoch (``anyseq.data.resumable``): every epoch draws new segments,
    DDP ranks (which read other indices) never repeat each other's, and a resumed run reads
    the segments an unbroken one would, in any worker.
    ``random=False`` gives the first segment of every file, in order: a fixed validation set.
    Clips shorter than a segment are zero-padded at the end.
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        sample_rate: int,
        segment_seconds: float = 1.0,
        random: bool = True,
        length: int | None = None,
        seed: int = 0,
    ):
        self.sample_rate, self.segment_seconds, self.random, self.seed = sample_rate, segment_seconds, random, seed
        self.segment_samples = int(round(segment_seconds * sample_rate))
        self.skipped: dict[str, str] = {}
        self.files: list[Path] = []
        durations = []
        for path in list_audio_files(sources, self.skipped):
            try:
                frames, rate, _ = media.audio_info(path)
            except media.MediaError as e:
                self._skip(path, e)
                continue
            self.files.append(path)
            durations.append(frames / rate)
        if not self.files:
            reasons = "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:5])
            raise ValueError(f"no usable audio files in {list(map(str, sources))}" + (f" (skipped {reasons})" if reasons else ""))
        self.durations = torch.tensor(durations, dtype=torch.float64)
        self.length = length if length is not None else len(self.files)

    def _skip(self, path: Path, error: Exception) -> None:
        key = str(path)
        if key not in self.skipped:
            self.skipped[key] = f"{type(error).__name__}: {error}"
            log.warning("skipping audio file: %s", self.skipped[key])

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[int, float]:
        if not self.random:
            return index % len(self.files), 0.0
        g = index_generator(self.seed, index)
        i = int(torch.multinomial(self.durations, 1, generator=g))
        spare = max(0.0, float(self.durations[i]) - self.segment_seconds)
        return i, float(torch.rand((), generator=g, dtype=torch.float64)) * spare

    def _candidates(self, index: int) -> Iterator[tuple[int, float]]:
        yield self._draw(index)
        start = index % len(self.files)
        for k in range(1, len(self.files)):  # after a bad file: the next files in order
            yield (start + k) % len(self.files), 0.0

    def __getitem__(self, index: int) -> Tensor:
        for i, offset in self._candidates(index):
            path = self.files[i]
            if str(path) in self.skipped:
                continue
            try:
                samples, _ = media.read_audio(path, self.sample_rate, start_seconds=offset, seconds=self.segment_seconds)
            except media.MediaError as e:
                self._skip(path, e)
                continue
            x = torch.from_numpy(samples)[: self.segment_samples]
            return F.pad(x, (0, self.segment_samples - x.shape[0]))[None]
        raise RuntimeError(f"every audio file was unusable: {self.skipped}")


class AudioDataModule(ResumableDataModule):
    """Random segments of the ``train`` sources; the first segment of each ``val`` file.

    Args:
        train: folders, ``.jsonl`` manifests or audio files to train on.
        val: the same for validation (no validation loop when omitted).
        sample_rate: must equal the tokenizer's ``sample_rate`` (checked by the training module).
        segment_seconds: length of a training segment.
        val_segment_seconds: length of a validation clip (defaults to ``segment_seconds``).
        segments_per_epoch: training items per epoch (defaults to one per file).
        batch_size / num_workers: DataLoader settings.
        seed: seeds the segment draws (with each segment's index in the training stream).
    """

    def __init__(
        self,
        train: list[str],
        val: list[str] | None = None,
        sample_rate: int = 16000,
        segment_seconds: float = 1.0,
        val_segment_seconds: float | None = None,
        segments_per_epoch: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sample_rate = sample_rate
        self.train_set: AudioSegments | None = None
        self.val_set: AudioSegments | None = None

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = AudioSegments(
                h.train, h.sample_rate, h.segment_seconds, length=h.segments_per_epoch, seed=h.seed
            )
        if self.val_set is None and h.val:
            self.val_set = AudioSegments(h.val, h.sample_rate, h.val_segment_seconds or h.segment_seconds, random=False)

    def _loader(self, dataset: Dataset, **order: Any) -> DataLoader:
        h = self.hparams
        return DataLoader(dataset, batch_size=h.batch_size, **order, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        sampler = self.sampler(self.train_set, self.hparams.batch_size, True, "segments", items="segments per epoch (segments_per_epoch)")
        return self._loader(self.train_set, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set) if self.val_set is not None else []

    def layout(self) -> dict[str, Any]:
        h = self.hparams
        return {"train": list(h.train), "segments_per_epoch": h.segments_per_epoch, "seed": h.seed}
