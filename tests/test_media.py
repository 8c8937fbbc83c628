"""anyseq.media: every input becomes one canonical layout, every bad input a typed, named error."""

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anyseq import media as M

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def saved(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def pixels(rows):
    return np.array(rows, dtype=np.uint8)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    "mode, values, name, expected",
    [
        ("RGB", [[RED, GREEN, BLUE]], "rgb.png", [[RED, GREEN, BLUE]]),
        # half-transparent red over white -> pink; fully transparent -> white
        ("RGBA", [[(255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 255, 0)]], "rgba.png", [[RED, (255, 127, 127), WHITE]]),
        ("LA", [[(0, 255), (0, 0), (200, 255)]], "la.png", [[BLACK, WHITE, (200, 200, 200)]]),
        ("L", [[0, 128, 255]], "l.png", [[BLACK, (128, 128, 128), WHITE]]),
        ("CMYK", [[(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 255)]], "cmyk.tif", [[RED, GREEN, BLACK]]),
    ],
)
def test_every_colour_mode_becomes_rgb(tmp_path, mode, values, name, expected):
    array = np.array(values, dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(array, mode), name)
    out = M.read_image(path)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    np.testing.assert_allclose(out, pixels(expected), atol=1)


def test_palette_image_with_and_without_transparency(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([*RED, *GREEN, *BLUE] + [0] * (253 * 3))
    image.putdata([0, 1, 2])
    np.testing.assert_array_equal(M.read_image(saved(tmp_path, image, "p.png")), pixels([[RED, GREEN, BLUE]]))
    # palette index 1 transparent -> composited on white
    out = M.read_image(saved(tmp_path, image, "pt.png", transparency=1))
    np.testing.assert_array_equal(out, pixels([[RED, WHITE, BLUE]]))


def test_bilevel_image(tmp_path):
    image = Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8)).convert("1")
    np.testing.assert_array_equal(M.read_image(saved(tmp_path, image, "b.png")), pixels([[BLACK, WHITE, BLACK]]))


@pytest.mark.parametrize("dtype, name", [(np.uint16, "g16.png"), (np.int32, "i32.tif")])
def test_16_bit_images_are_scaled_by_the_mode_range_not_clipped(tmp_path, dtype, name):
    array = np.array([[0, 257 * 100, 65535]], dtype=dtype)  # I;16 PNG and I TIFF
    out = M.read_image(saved(tmp_path, Image.fromarray(array), name))
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[0, 0] = RED  # top-left marker
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = M.read_image(saved(tmp_path, image, "rot.png", exif=exif))
    np.testing.assert_array_equal(out, np.rot90(array, k=-1))


def test_image_write_read_round_trip_is_exact(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(M.read_image(M.write_image(tmp_path / "sub" / "x.png", array)), array)


def png_bytes(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return M.write_image(tmp_path / "ok.png", image).read_bytes()


@pytest.mark.parametrize(
    "name, content, error",
    [
        ("missing.png", None, M.MissingFileError),
        ("empty.png", b"", M.EmptyFileError),
        ("text.png", b"this is plain text, not pixels\n" * 4, M.UnsupportedMediaError),
        ("truncated.png", "half", M.CorruptMediaError),
    ],
)
def test_bad_images_raise_typed_errors_naming_the_file(tmp_path, name, content, error):
    path = tmp_path / name
    if content == "half":
        data = png_bytes(tmp_path)
        content = data[: len(data) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=name) as info:
        M.read_image(path)
    assert isinstance(info.value, M.MediaError) and info.value.path == str(path)


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    path = M.write_image(tmp_path / "big.png", np.zeros((40, 40, 3), dtype=np.uint8))
    with pytest.raises(M.DecompressionBombError, match="big.png.*1600 pixels"):
        M.read_image(path, max_pixels=1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own hard limit is 2x this
    with pytest.raises(M.DecompressionBombError, match="big.png"):
        M.read_image(path)


def test_tensor_helpers_map_uint8_to_unit_range_and_back():
    image = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    tensor = M.image_to_tensor(image)
    assert tensor.shape == (3, 4, 6) and tensor.min() >= -1 and tensor.max() <= 1
    assert M.image_to_tensor(pixels([[BLACK, WHITE]]))[:, 0].tolist() == [[-1.0, 1.0]] * 3
    np.testing.assert_array_equal(M.tensor_to_image(tensor), image)
    np.testing.assert_array_equal(M.tensor_to_image(tensor.numpy()), image)  # arrays are accepted too
    video = np.random.default_rng(1).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    assert M.video_to_tensor(video).shape == (3, 5, 4, 6)
    np.testing.assert_array_equal(M.tensor_to_video(M.video_to_tensor(video)), video)
    assert M.tensor_to_image(torch.full((3, 1, 1), 7.0)).tolist() == [[[255, 255, 255]]]  # clamped
    with pytest.raises(ValueError, match="uint8"):
        M.image_to_tensor(image.astype(np.float32))


# ----------------------------------------------------------------------------- video


def moving_square(frames=9, height=17, width=23):
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    video[:, 10:] = BLUE
    for t in range(frames):
        video[t, 2:8, 2 * t : 2 * t + 5] = RED
    return video


def test_gif_round_trip_is_exact_for_few_colours(tmp_path):
    video = moving_square()
    frames, fps = M.read_video(M.write_video(tmp_path / "v.gif", video, fps=10))
    assert fps == 10.0
    np.testing.assert_array_equal(frames, video)


def test_mp4_round_trip_is_close_and_odd_sizes_are_padded(tmp_path):
    video = moving_square()
    frames, fps = M.read_video(M.write_video(tmp_path / "v.mp4", video, fps=12))
    assert fps == 12.0 and frames.shape == (9, 18, 24, 3)  # padded to even sizes
    error = np.abs(frames[:, :17, :23].astype(int) - video)
    assert error.mean() < 8  # lossy yuv420p: chroma edges blur, flat areas survive
    np.testing.assert_allclose(frames[:, 14, 12], [BLUE] * 9, atol=12)


def test_frame_rate_resampling_picks_frames_by_time(tmp_path):
    video = moving_square()
    path = M.write_video(tmp_path / "v.gif", video, fps=10)
    half, fps = M.read_video(path, fps=5)
    assert fps == 5.0
    np.testing.assert_array_equal(half, video[::2])
    double, _ = M.read_video(path, fps=20, max_frames=6)
    np.testing.assert_array_equal(double, video[[0, 0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(M.read_video(path, max_frames=3)[0], video[:3])


def test_identical_gif_frames_merged_by_pillow_come_back_at_a_fixed_rate(tmp_path):
    still = np.repeat(moving_square()[:1], 4, axis=0)
    frames, _ = M.read_video(M.write_video(tmp_path / "still.gif", still, fps=10), fps=10)
    np.testing.assert_array_equal(frames, still)


def test_bad_videos_raise_typed_errors_naming_the_file(tmp_path):
    with pytest.raises(M.MissingFileError, match="nope.mp4"):
        M.read_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(M.EmptyFileError, match="empty.mp4"):
        M.read_video(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 10)
    with pytest.raises(M.UnsupportedMediaError, match="text.mp4"):
        M.read_video(tmp_path / "text.mp4")
    data = M.write_video(tmp_path / "ok.mp4", moving_square(), fps=10).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # index (moov) is at the end
    with pytest.raises(M.CorruptMediaError, match="cut.mp4"):
        M.read_video(tmp_path / "cut.mp4")
    sound = M.write_audio(tmp_path / "sound.wav", np.zeros(800, dtype=np.float32), 8000)
    with pytest.raises(M.UnsupportedMediaError, match="sound.wav.*no video stream"):
        M.read_video(sound)
    with pytest.raises(M.UnsupportedMediaError, match="clip.avi"):
        M.write_video(tmp_path / "clip.avi", moving_square(), fps=10)
    with pytest.raises(M.MediaError, match="x.gif.*uint8"):
        M.write_video(tmp_path / "x.gif", moving_square().astype(np.float32), fps=10)


# ----------------------------------------------------------------------------- audio


def chirp(seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (300 + 400 * t) * t)).astype(np.float32)


def test_audio_round_trip_within_pcm16_precision(tmp_path):
    samples = chirp()
    out, rate = M.read_audio(M.write_audio(tmp_path / "a.wav", samples, 16000))
    assert rate == 16000 and out.dtype == np.float32 and out.shape == samples.shape
    assert np.abs(out - samples).max() <= 1 / 32768 + 1e-7
    exact, _ = M.read_audio(M.write_audio(tmp_path / "f.wav", samples, 16000, subtype="FLOAT"))
    np.testing.assert_array_equal(exact, samples)
    assert M.audio_info(tmp_path / "a.wav") == (8000, 16000, 1)


def test_multichannel_audio_is_downmixed_by_mean(tmp_path):
    left, right = chirp(), -0.25 * np.ones(8000, dtype=np.float32)
    quad = np.stack([left, right, left, right], axis=1)
    sf.write(tmp_path / "quad.wav", quad, 16000, subtype="FLOAT")
    out, _ = M.read_audio(tmp_path / "quad.wav")
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)
    assert M.audio_info(tmp_path / "quad.wav") == (8000, 16000, 4)


@pytest.mark.parametrize("target", [8000, 22050, 44100])
def test_resampling_changes_the_length_by_the_rate_ratio(tmp_path, target):
    path = M.write_audio(tmp_path / "a.wav", chirp(), 16000)
    out, rate = M.read_audio(path, sample_rate=target)
    assert rate == target and abs(len(out) - 0.5 * target) <= 1
    # the pitch survives: dominant frequency in the first 0.1 s stays near 300-340 Hz
    head = out[: target // 10]
    peak = np.argmax(np.abs(np.fft.rfft(head))) * target / len(head)
    assert 280 <= peak <= 360


def test_windowed_read_equals_slicing_the_whole_read(tmp_path):
    path = M.write_audio(tmp_path / "a.wav", chirp(seconds=1.0), 16000)
    whole, _ = M.read_audio(path)
    window, _ = M.read_audio(path, start_seconds=0.25, seconds=0.5)
    np.testing.assert_array_equal(window, whole[4000:12000])
    tail, _ = M.read_audio(path, start_seconds=0.9, seconds=0.5)  # runs past the end: cut short
    np.testing.assert_array_equal(tail, whole[14400:])
    with pytest.raises(M.MediaError, match="a.wav.*start_seconds"):
        M.read_audio(path, start_seconds=2.0)


def test_bad_audio_raises_typed_errors_naming_the_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(M.EmptyFileError, match="empty.wav"):
        M.read_audio(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("definitely not a RIFF file\n" * 10)
    with pytest.raises(M.UnsupportedMediaError, match="text.wav"):
        M.read_audio(tmp_path / "text.wav")
    header = M.write_audio(tmp_path / "ok.wav", chirp(), 16000).read_bytes()[:20]
    (tmp_path / "cut.wav").write_bytes(header)
    with pytest.raises(M.CorruptMediaError, match="cut.wav"):
        M.read_audio(tmp_path / "cut.wav")
    whole = (tmp_path / "ok.wav").read_bytes()  # libsndfile alone reads a cut-off WAV as a shorter one
    (tmp_path / "short.wav").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(M.CorruptMediaError, match="short.wav: truncated: the header declares 8000 frames"):
        M.audio_info(tmp_path / "short.wav")
    sf.write(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(M.EmptyFileError, match="silent.wav"):
        M.audio_info(tmp_path / "silent.wav")
    bad = chirp()
    bad[100] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(M.InvalidSamplesError, match="nan.wav"):
        M.read_audio(tmp_path / "nan.wav")
    with pytest.raises(M.InvalidSamplesError, match="out.wav"):
        M.write_audio(tmp_path / "out.wav", bad, 16000)
