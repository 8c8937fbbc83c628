"""Reading and writing media: images (Pillow), video (PyAV), audio (soundfile).

All three libraries ship their own codecs in their wheels, so nothing here needs a system
FFmpeg (torchaudio.load does since 2.9, which is why it is never used).

Every reader returns one canonical layout -- images uint8 (H, W, 3) RGB, video uint8
(T, H, W, 3) RGB, audio float32 mono (N,) in [-1, 1] -- and every failure is a typed
MediaError whose message names the file, what was wrong and what was expected, so a bad
record in a million-line manifest can be reported and skipped rather than crash a job.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError

from anyseq.helpers import default, exists

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- errors


class MediaError(ValueError):
    """A media file (or array to be written) that cannot be used; names the file."""

    def __init__(self, path: PathLike, reason: str, expected: str | None = None):
        self.path, self.reason, self.expected = str(path), reason, expected
        message = f"{self.path}: {reason}"
        super().__init__(message if expected is None else f"{message}; expected {expected}")


class MissingFileError(MediaError):
    """The path does not exist or is not a regular file."""


class EmptyFileError(MediaError):
    """Zero bytes, or a valid container holding no frames / samples."""


class CorruptMediaError(MediaError):
    """The format is recognised but the data is truncated or broken."""


class UnsupportedMediaError(MediaError):
    """Not a format (or pixel mode, or extension) this reader/writer handles."""


class DecompressionBombError(MediaError):
    """Declared image size exceeds the pixel budget; refused before decoding."""


class InvalidSamplesError(MediaError):
    """Audio samples that are NaN or infinite."""


# ----------------------------------------------------------------------------- helpers


def _check_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "no such file", "an existing media file")
    if path.stat().st_size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)", "a non-empty media file")
    return path


def _check_array(path: PathLike, array: np.ndarray, ndim: int, layout: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != ndim or array.shape[-1] != 3 or 0 in array.shape:
        got = f"cannot write array of dtype {array.dtype} and shape {array.shape}"
        raise MediaError(path, got, f"uint8 {layout}")
    return np.ascontiguousarray(array)


# ----------------------------------------------------------------------------- images

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255, 255)


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """16/32-bit integer and float modes -> uint8 by the mode's range (scaled, never clipped)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 65535.0
    elif image.mode == "I" and values.min() >= 0 and values.max() <= 65535:
        scaled = values / 65535.0  # 16-bit PNG/TIFF data that Pillow widened to int32
    elif image.mode == "F" and values.min() >= 0 and values.max() <= 1:
        scaled = values
    else:  # genuine 32-bit data: stretch what is there
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    gray = np.round(scaled * 255.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _to_rgb(path: Path, image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _high_depth_to_uint8(image)
    try:
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    except ValueError as e:
        raise UnsupportedMediaError(path, f"cannot convert Pillow mode {image.mode!r} to RGB ({e})") from e


def read_image(path: PathLike, max_pixels: int = 64_000_000) -> np.ndarray:
    """Any Pillow-readable image -> uint8 (H, W, 3) RGB, EXIF orientation applied.

    Transparency is composited on white; 16-bit data is scaled, not clipped. The size
    declared in the header is checked against `max_pixels` before any pixel is decoded.
    """
    path = _check_file(path)
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    declared = f"declares {width}x{height} = {width * height} pixels"
                    raise DecompressionBombError(path, declared, f"at most max_pixels={max_pixels}")
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(path, image)
    except Image.DecompressionBombError as e:
        raise DecompressionBombError(path, str(e), f"at most max_pixels={max_pixels}") from e
    except UnidentifiedImageError as e:
        expected = "PNG, JPEG, GIF, WebP, TIFF, BMP, ..."
        raise UnsupportedMediaError(path, "not an image format Pillow recognises", expected) from e
    except MediaError:
        raise
    except (OSError, SyntaxError, EOFError, ValueError, IndexError) as e:
        raise CorruptMediaError(path, f"image data is truncated or corrupt ({e})", "a complete image file") from e


def write_image(path: PathLike, image: np.ndarray) -> Path:
    """uint8 (H, W, 3) -> image file; the format follows the extension (PNG is lossless)."""
    image = _check_array(path, image, 3, "(H, W, 3)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(image, "RGB").save(path)
    except ValueError as e:  # unknown extension
        reason = f"cannot write an image with this extension ({e})"
        raise UnsupportedMediaError(path, reason, ".png, .jpg, .webp, ...") from e
    return path


# ----------------------------------------------------------------------------- video

# Leading bytes of containers we know: a file that starts like one but does not open is
# corrupt, anything else is simply not a video.
_CONTAINER_MAGIC = {4: (b"ftyp",), 0: (b"GIF87a", b"GIF89a", b"RIFF", b"\x1a\x45\xdf\xa3", b"OggS", b"FLV")}


def _looks_like_video(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(12)
    return any(head[offset:].startswith(m) for offset, magics in _CONTAINER_MAGIC.items() for m in magics)


def _frame_rate(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if exists(rate) and rate > 0:
            return float(rate)
    return None


def _decoded(path: Path, container) -> Iterator[tuple[np.ndarray, float | None]]:
    # A converter of our own, one-threaded: PyAV's default one is kept per thread with a pool of
    # scaler threads, and a DataLoader worker forked after the parent used it hangs for ever
    # freeing a pool whose threads it does not have (seen in tests/test_tokenize_dataset.py).
    rgb = VideoReformatter()
    try:
        for frame in container.decode(video=0):
            yield rgb.reformat(frame, format="rgb24", threads=1).to_ndarray(), frame.time
    except av.FFmpegError as e:
        raise CorruptMediaError(path, f"video data is corrupt ({e})", "a decodable video stream") from e


def _resampled(
    frames: Iterator[tuple[np.ndarray, float | None]], source_fps: float, fps: float
) -> Iterator[np.ndarray]:
    """Constant-rate frames at `fps`: each output time t = k / fps shows the frame on screen at t.

    Frames cover [time, next time); the last covers one source frame period. Works for
    variable-rate inputs (e.g. GIFs whose identical frames were merged) and repeats frames
    when upsampling.
    """
    k, previous, start = 0, None, None
    for index, (frame, time) in enumerate(frames):
        time = time if exists(time) else index / source_fps
        start = default(start, time)
        if exists(previous):
            while start + k / fps < time - 1e-9:
                yield previous
                k += 1
        previous, last_time = frame, time
    if exists(previous):
        while start + k / fps < last_time + 1 / source_fps - 1e-9:
            yield previous
            k += 1


def read_video(path: PathLike, max_frames: int | None = None, fps: float | None = None) -> tuple[np.ndarray, float]:
    """Video file -> (uint8 (T, H, W, 3) RGB frames, fps).

    With `fps`, frames are picked at that rate (dropped or repeated by timestamp) and that
    rate is returned. Decoding stops after `max_frames` output frames, so long files are
    not decoded whole.
    """
    path = _check_file(path)
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        if _looks_like_video(path):
            raise CorruptMediaError(path, f"container is truncated or corrupt ({e})", "a complete video file") from e
        raise UnsupportedMediaError(path, "not a container PyAV recognises", "MP4, WebM, MKV, AVI, GIF, ...") from e
    with container:
        if not container.streams.video:
            raise UnsupportedMediaError(path, "container has no video stream", "a file with a video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        source_fps = _frame_rate(stream)
        frames = _decoded(path, container)
        if exists(fps):
            if not fps > 0:
                raise MediaError(path, f"requested fps={fps}", "a positive frame rate")
            if not exists(source_fps):
                reason = "stream declares no frame rate to resample from"
                raise UnsupportedMediaError(path, reason, "a stream with a frame rate")
            out = _resampled(frames, source_fps, fps)
        else:
            out = (frame for frame, _ in frames)
        picked = []
        for frame in out:
            if exists(max_frames) and len(picked) >= max_frames:
                break
            picked.append(frame)
    if not picked:
        raise EmptyFileError(path, "video stream has no frames", "at least one frame")
    rate = default(fps, source_fps)
    if not exists(rate):
        raise UnsupportedMediaError(path, "stream declares no frame rate", "a stream with a frame rate")
    return np.stack(picked), float(rate)


def _pick_mp4_codec() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except av.codec.codec.UnknownCodecError:
            continue
    raise RuntimeError("this PyAV build has neither libx264 nor mpeg4 encoders")


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    # GIF stores delays in 1/100 s; Pillow merges identical consecutive frames into one
    # longer frame (read back with fps= to get a constant-rate sequence again).
    images = [Image.fromarray(frame, "RGB") for frame in frames]
    duration = max(10, round(100 / fps) * 10)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False)


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    # yuv420p needs even sizes: pad the last row/column by replicating the edge
    _, height, width, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = _pick_mp4_codec()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "medium"}
        else:
            stream.bit_rate = 8_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


_VIDEO_WRITERS = {".gif": _write_gif, ".mp4": _write_mp4}


def write_video(path: PathLike, frames: np.ndarray, fps: float) -> Path:
    """uint8 (T, H, W, 3) -> .gif (Pillow, palette per frame) or .mp4 (H.264/MPEG-4, yuv420p)."""
    frames = _check_array(path, frames, 4, "(T, H, W, 3)")
    path = Path(path)
    writer = _VIDEO_WRITERS.get(path.suffix.lower())
    if not exists(writer):
        reason = f"cannot write video with extension {path.suffix!r}"
        raise UnsupportedMediaError(path, reason, " or ".join(_VIDEO_WRITERS))
    if not fps > 0:
        raise MediaError(path, f"fps={fps}", "a positive frame rate")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(path, frames, fps)
    return path


# ----------------------------------------------------------------------------- audio

_SF_UNSUPPORTED = {1, 4}  # libsndfile: unrecognised format, unsupported encoding


def _open_sound(path: PathLike) -> tuple[Path, sf.SoundFile]:
    path = _check_file(path)
    try:
        sound = sf.SoundFile(str(path))
    except sf.LibsndfileError as e:
        kind = UnsupportedMediaError if e.code in _SF_UNSUPPORTED else CorruptMediaError
        raise kind(path, f"cannot open as audio ({e.error_string.strip()})", "WAV, FLAC, OGG, MP3, AIFF, ...") from e
    if sound.frames == 0:
        sound.close()
        raise EmptyFileError(path, "audio has no samples", "at least one sample")
    declared, frame_bytes = _wav_data_bytes(path) if sound.format == "WAV" else None, _bytes_per_frame(sound)
    if exists(declared) and sound.frames * frame_bytes < declared:
        sound.close()
        raise CorruptMediaError(path, f"truncated: the header declares {declared // frame_bytes} frames, the file "
                                f"holds {sound.frames}", "a complete WAV file")
    return path, sound


def _bytes_per_frame(sound: sf.SoundFile) -> int:
    bits = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64}
    return bits.get(sound.subtype, 8) // 8 * sound.channels


def _wav_data_bytes(path: Path) -> int | None:
    """The size of a RIFF/WAVE file's data chunk as its header declares it (libsndfile reads
    a truncated file as a shorter one without a word); None where the header leaves it open."""
    with path.open("rb") as f:
        if f.read(4) != b"RIFF" or f.read(8)[4:] != b"WAVE":
            return None
        while len(chunk := f.read(8)) == 8:
            name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                return None if size in (0, 0xFFFFFFFF) else size  # streamed files leave it unset
            f.seek(size + size % 2, os.SEEK_CUR)
    return None


def audio_info(path: PathLike) -> tuple[int, int, int]:
    """(num_frames, sample_rate, channels) from the header only; for sampling segments."""
    _, sound = _open_sound(path)
    with sound:
        return sound.frames, sound.samplerate, sound.channels


def read_audio(
    path: PathLike, sample_rate: int | None = None, start_seconds: float = 0.0, seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Audio file -> (float32 mono (N,) in [-1, 1], sample rate).

    Only the window [start_seconds, start_seconds + seconds) is read (seek, then read), so
    long files stream; a window running past the end is cut short. Channels are averaged;
    a different `sample_rate` is reached with torchaudio's resampler.
    """
    path, sound = _open_sound(path)
    with sound:
        rate, total = sound.samplerate, sound.frames
        start = round(start_seconds * rate)
        if not 0 <= start < total:
            reason = f"start_seconds={start_seconds} is outside the audio"
            raise MediaError(path, reason, f"0 <= start < {total / rate:.3f} s")
        count = -1 if seconds is None else round(seconds * rate)
        if count == 0 or (exists(seconds) and seconds < 0):
            raise MediaError(path, f"seconds={seconds} selects no samples", "a positive duration")
        try:
            sound.seek(start)
            samples = sound.read(count, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise CorruptMediaError(path, f"audio data is corrupt ({e})", "a decodable audio stream") from e
    if samples.shape[0] == 0:
        raise EmptyFileError(path, "no samples could be decoded", "at least one sample")
    if not np.isfinite(samples).all():
        raise InvalidSamplesError(path, "audio contains NaN or infinite samples", "finite samples")
    mono = np.clip(samples.mean(axis=1), -1.0, 1.0)
    if exists(sample_rate) and sample_rate != rate:
        if not sample_rate > 0:
            raise MediaError(path, f"requested sample_rate={sample_rate}", "a positive integer rate")
        mono = AF.resample(torch.from_numpy(mono), rate, int(sample_rate)).clamp_(-1.0, 1.0).numpy()
        rate = int(sample_rate)
    return mono.astype(np.float32, copy=False), rate


def write_audio(path: PathLike, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """float (N,) in [-1, 1] -> WAV (PCM_16 by default, FLOAT on request); values are clipped."""
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.size == 0 or not np.issubdtype(samples.dtype, np.floating):
        got = f"cannot write array of dtype {samples.dtype} and shape {samples.shape}"
        raise MediaError(path, got, "float (N,) mono samples")
    if not np.isfinite(samples).all():
        raise InvalidSamplesError(path, "samples contain NaN or infinity", "finite samples")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples.astype(np.float32) if subtype == "FLOAT" else np.clip(samples, -1.0, 1.0).astype(np.float32)
    try:
        sf.write(str(path), data, int(sample_rate), subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as e:
        raise UnsupportedMediaError(path, f"cannot write audio ({e})", "a .wav path, subtype PCM_16 or FLOAT") from e
    return path


# ----------------------------------------------------------------------------- tensors

# channels-last uint8 media <-> channels-first float in [-1, 1]; the same map for an image
# (H, W, 3) <-> (3, H, W) and a video (T, H, W, 3) <-> (3, T, H, W)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array, dtype=np.float32)).div_(127.5).sub_(1.0)
    return tensor.movedim(-1, 0).contiguous()


def _to_array(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    tensor = torch.as_tensor(tensor).detach().float().cpu().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return tensor.to(torch.uint8).movedim(0, -1).contiguous().numpy()


def _checked(layout: str, ndim: int, x, channel_dim: int, dtype=None):
    if x.ndim != ndim or x.shape[channel_dim] != 3 or (exists(dtype) and x.dtype != dtype):
        raise ValueError(f"expected {layout}, got {x.dtype} of shape {tuple(x.shape)}")
    return x


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return _to_tensor(_checked("uint8 (H, W, 3)", 3, np.asarray(image), -1, np.uint8))


def tensor_to_image(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """float (3, H, W) in [-1, 1] (tensor or array) -> uint8 (H, W, 3); out-of-range values are clamped."""
    return _to_array(_checked("float (3, H, W)", 3, tensor, 0))


def video_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1]."""
    return _to_tensor(_checked("uint8 (T, H, W, 3)", 4, np.asarray(frames), -1, np.uint8))


def tensor_to_video(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    return _to_array(_checked("float (3, T, H, W)", 4, tensor, 0))
