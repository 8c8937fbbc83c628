"""Turning a record's parts into tokenizer-ready arrays (runs in the decoding workers).

Text becomes sentencepiece ids here; media are decoded and brought to the size the media
tokenizers expect: images centre-cropped to a square and resized to ``image_size``
(a multiple of the visual tokenizer's spatial factor), videos read at ``video_fps`` and cut
to the longest ``1 + k * temporal`` frames up to ``video_frames``, audio read at the codec's
rate, cut to ``audio_seconds`` and padded with zeros to whole codec frames (exactly what the
codec itself does, so the codes equal encoding the clip alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from anyseq import media
from anyseq.data.manifest import Record, RecordError
from anyseq.tokenizers.text import TextTokenizer


@dataclass(frozen=True)
class MediaSettings:
    image_size: int = 256
    video_frames: int = 17
    video_fps: float | None = None
    audio_seconds: float = 10.0
    max_pixels: int = 64_000_000
    spatial: int = 1  # the visual tokenizer's spatial factor
    temporal: int = 1  # its temporal factor
    sample_rate: int = 0  # the audio codec's rate (0: no audio tokenizer)
    hop: int = 1  # samples per codec frame
    visual: bool = False  # a visual tokenizer is loaded
    audio: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resize_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3): the centre square, resized to ``size``.

    The square is resampled straight from the source (Pillow's ``box``), never through a
    resized whole image: a 1 x 100000 strip would otherwise become ``size x 100000 size``.
    """
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    side = min(h, w)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=box))


class Preparer:
    """Record -> list of (modality, array, loss); raises RecordError naming what is wrong."""

    def __init__(self, settings: MediaSettings, text_tokenizer: str):
        self.settings = settings
        self.text = TextTokenizer.load(text_tokenizer)

    def __call__(self, record: Record) -> list[tuple[str, np.ndarray, float]]:
        return [(p.modality, self._part(p), p.loss) for p in record.parts]

    def _part(self, part) -> np.ndarray:
        s = self.settings
        if part.modality == "text":
            return np.asarray(self.text.encode(part.text), np.int64)
        needs = "visual" if part.modality in ("image", "video") else "audio"
        if not getattr(s, needs):
            raise RecordError(f"the record holds {part.modality} but no --{needs}-tokenizer was given", part.path)
        try:
            return getattr(self, f"_{part.modality}")(part.path)
        except media.MediaError as e:
            reason = e.reason if e.expected is None else f"{e.reason}; expected {e.expected}"
            raise RecordError(reason, e.path) from None
        except RecordError:
            raise
        except Exception as e:  # whatever a decoder throws, the record names its file
            raise RecordError(f"could not prepare the {part.modality}: {type(e).__name__}: {e}", part.path) from None

    def _image(self, path) -> np.ndarray:
        image = media.read_image(path, max_pixels=self.settings.max_pixels)
        return resize_crop(image, self.settings.image_size)

    def _video(self, path) -> np.ndarray:
        s = self.settings
        frames, _ = media.read_video(path, max_frames=s.video_frames, fps=s.video_fps)
        h, w = frames.shape[1:3]
        if h * w > s.max_pixels:
            raise RecordError(f"video frames are {w}x{h} = {h * w} pixels; expected at most {s.max_pixels}", path)
        t = 1 + (len(frames) - 1) // s.temporal * s.temporal
        return np.stack([resize_crop(f, s.image_size) for f in frames[:t]])

    def _audio(self, path) -> np.ndarray:
        s = self.settings
        wav, _ = media.read_audio(path, sample_rate=s.sample_rate, seconds=s.audio_seconds)
        return np.pad(wav, (0, -len(wav) % s.hop))
