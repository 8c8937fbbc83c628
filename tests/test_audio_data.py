"""Audio training data: bad files are skipped and reported (typed errors from anyseq.media),
other rates are resampled, channels downmixed, long files read window by window."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from anyseq import media
from anyseq.tokenizers.audio_data import AudioDataModule, AudioSegments, list_audio_files

SR = 16000


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    x = 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write(path, samples, rate, subtype="PCM_16"):
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def bad_files(folder) -> dict[str, type]:
    """One file per failure kind -> the anyseq.media error it must raise."""
    (folder / "empty.wav").write_bytes(b"")
    good = write(folder / "_source.wav", tone(440, 0.5, SR), SR)
    (folder / "truncated.wav").write_bytes(good.read_bytes()[:30])
    good.unlink()
    (folder / "text.wav").write_text("this is not audio, only text pretending to be a wav file\n" * 10)
    write(folder / "zero_length.wav", np.zeros((0,), np.float32), SR)
    nan = tone(440, 0.5, SR)
    nan[::1000] = np.nan  # in every window
    write(folder / "nan.wav", nan, SR, subtype="FLOAT")
    inf = tone(440, 0.5, SR)
    inf[::1000] = np.inf
    write(folder / "inf.wav", inf, SR, subtype="FLOAT")
    return {
        "empty.wav": media.EmptyFileError,
        "truncated.wav": media.MediaError,
        "text.wav": media.MediaError,
        "zero_length.wav": media.EmptyFileError,
        "nan.wav": media.InvalidSamplesError,
        "inf.wav": media.InvalidSamplesError,
    }


def test_media_raises_a_typed_error_naming_each_bad_file(tmp_path):
    for name, error in bad_files(tmp_path).items():
        with pytest.raises(error) as info:
            media.read_audio(tmp_path / name, SR)
        assert name in str(info.value)


def test_the_dataset_skips_and_reports_bad_files_and_never_raises(tmp_path, caplog):
    expected = bad_files(tmp_path)
    write(tmp_path / "good_a.wav", tone(440, 1.0, SR), SR)
    write(tmp_path / "good_b.wav", tone(660, 1.0, SR), SR)
    ds = AudioSegments([tmp_path], SR, segment_seconds=0.25, length=40)
    header_bad = {k for k, v in expected.items() if v is not media.InvalidSamplesError}
    assert {p.name for p in ds.files} == {"good_a.wav", "good_b.wav", "nan.wav", "inf.wav"}  # headers are fine
    items = [ds[i] for i in range(40)]  # NaN/Inf are found on reading: skipped, another file is used
    assert all(x.shape == (1, 4000) and torch.isfinite(x).all() for x in items)
    reported = {k.rsplit("/", 1)[-1]: v for k, v in ds.skipped.items()}
    assert set(reported) == header_bad | {"nan.wav", "inf.wav"}
    for name, error in expected.items():
        assert issubclass(getattr(media, reported[name].split(":")[0]), error)  # the typed error's name
        assert name in reported[name]  # ... and the file
    assert any("skipping audio file" in r.message for r in caplog.records)


def test_a_folder_of_only_bad_files_is_a_clear_error(tmp_path):
    bad_files(tmp_path)
    (tmp_path / "nan.wav").unlink()
    (tmp_path / "inf.wav").unlink()
    with pytest.raises(ValueError, match="no usable audio files"):
        AudioSegments([tmp_path], SR)
    with pytest.raises(FileNotFoundError, match="audio source not found"):
        AudioSegments([tmp_path / "missing"], SR)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_sample_rates_are_resampled_not_rejected(tmp_path, rate):
    write(tmp_path / "tone.wav", tone(440, 1.0, rate), rate)
    ds = AudioSegments([tmp_path], SR, segment_seconds=0.5, random=False)
    x = ds[0][0].numpy()
    assert x.shape == (8000,) and not ds.skipped
    peak = np.argmax(np.abs(np.fft.rfft(x))) * SR / len(x)
    assert peak == pytest.approx(440, abs=2)


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_any_channel_count_is_downmixed_to_mono(tmp_path, channels):
    x = tone(300, 0.5, SR, channels)
    x[:, 0] = 0.0  # channels differ: the mono signal is their mean
    write(tmp_path / "multi.wav", x, SR, subtype="FLOAT")
    item = AudioSegments([tmp_path], SR, 0.5, random=False)[0][0].numpy()
    assert np.allclose(item, x.mean(axis=1), atol=1e-6)


def test_long_files_are_read_one_window_at_a_time(tmp_path, monkeypatch):
    """A 40 s ramp: every item is a contiguous slice of the file, read alone (seek + read)."""
    n = 40 * SR
    ramp = np.linspace(-0.9, 0.9, n, dtype=np.float64).astype(np.float32)
    write(tmp_path / "long.wav", ramp, SR, subtype="FLOAT")
    calls = []
    real = media.read_audio
    monkeypatch.setattr(media, "read_audio", lambda *a, **k: calls.append(k) or real(*a, **k))
    ds = AudioSegments([tmp_path], SR, segment_seconds=0.5, length=8)
    starts = set()
    for i in range(8):
        x = ds[i][0].numpy()
        start = int(round((x[0] + 0.9) / 1.8 * (n - 1)))
        assert np.allclose(x, ramp[start : start + 8000], atol=1e-6)
        starts.add(start)
    assert len(starts) == 8  # random offsets
    assert all(k["seconds"] == 0.5 for k in calls)


def test_short_clips_are_zero_padded_and_validation_takes_each_file_once(tmp_path):
    write(tmp_path / "a.wav", tone(200, 0.3, SR), SR)
    write(tmp_path / "b.wav", tone(400, 2.0, SR), SR)
    ds = AudioSegments([tmp_path], SR, segment_seconds=1.0, random=False)
    assert len(ds) == 2
    a = ds[0][0]
    assert a.shape == (SR,) and a[int(0.3 * SR) :].abs().max() == 0 and a[:100].abs().max() > 0
    assert torch.equal(ds[1], ds[1])


def test_segment_draws_are_reproducible_per_seed(tmp_path):
    for i in range(3):
        write(tmp_path / f"{i}.wav", tone(200 + 100 * i, 3.0, SR), SR)
    draw = lambda seed: torch.stack([AudioSegments([tmp_path], SR, 0.25, length=6, seed=seed)[j] for j in range(6)])  # noqa: E731
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_manifests_contribute_their_audio_parts_and_report_bad_lines(tmp_path):
    write(tmp_path / "a.wav", tone(440, 0.5, SR), SR)
    write(tmp_path / "b.flac", tone(880, 0.5, SR), SR)
    lines = [
        {"text": "a beep", "audio": "a.wav"},
        {"segments": [{"text": "two"}, {"audio": "b.flac"}]},
        {"text": "only text"},
        {"audio": 5},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    skipped: dict[str, str] = {}
    files = list_audio_files([manifest], skipped)
    assert [f.name for f in files] == ["a.wav", "b.flac"]
    assert set(skipped) == {f"{manifest}:4", f"{manifest}:5"}
    assert all(v.startswith("RecordError") for v in skipped.values())


def test_datamodule_batches(tmp_path):
    for i in range(4):
        write(tmp_path / f"{i}.wav", tone(300 + 50 * i, 1.0, 24000), 24000)
    dm = AudioDataModule(train=[str(tmp_path)], val=[str(tmp_path)], sample_rate=SR, segment_seconds=0.25, segments_per_epoch=10, batch_size=4)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0].shape == (4, 1, 4000)  # drop_last
    (val,) = list(dm.val_dataloader())
    assert val.shape == (4, 1, 4000)
