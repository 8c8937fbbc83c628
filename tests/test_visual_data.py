"""Visual tokenizer data: folders and manifests, crops, every image mode, bad files skipped and reported."""

import io
import json
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from anyseq import media
from anyseq.cli import main as anyseq
from anyseq.tokenizers.base import MediaTokenizer
from anyseq.tokenizers.visual_data import VisualDataModule, VisualDataset, fit_to_size, list_media
from anyseq.world import write_world

ROOT = Path(__file__).resolve().parents[1]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that declares a huge image (a decompression bomb) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def video_without_frames(path: Path) -> None:
    """An MP4 container whose video track never received a frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # writes the header; no frame ever follows


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


TRUNCATED = _png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))[:300]


BAD_FILES = {
    "images/empty.png": (("EmptyFileError",), lambda p: p.write_bytes(b"")),
    "images/truncated.png": (("CorruptMediaError",), lambda p: p.write_bytes(TRUNCATED)),
    "images/not_an_image.png": (("UnsupportedMediaError",), lambda p: p.write_text("this is text, not pixels")),
    "images/bomb.png": (("DecompressionBombError",), lambda p: p.write_bytes(png_declaring(100_000, 100_000))),
    "videos/zero_length.mp4": (("EmptyFileError",), lambda p: p.write_bytes(b"")),
    "videos/no_frames.mp4": (("EmptyFileError", "UnsupportedMediaError"), video_without_frames),
    "videos/unsupported.mkv": (("UnsupportedMediaError",), lambda p: p.write_bytes(bytes(range(256)) * 8)),
}


@pytest.fixture(scope="module")
def dirty_world(tmp_path_factory):
    """A synthetic world (6 images, 2 clips) plus one file of every kind of bad media."""
    root = tmp_path_factory.mktemp("dirty")
    write_world(root, n_images=6, n_videos=2, n_sounds=0, seed=0)
    for name, (_, make) in BAD_FILES.items():
        make(root / name)
    return root


def test_a_folder_and_a_manifest_list_the_same_media(tmp_path):
    manifest = write_world(tmp_path, n_images=3, n_videos=2, n_sounds=1, seed=0)
    from_manifest = list_media(manifest)
    from_folder = list_media(tmp_path)
    assert sorted((Path(i.path).resolve(), i.kind) for i in from_manifest) == sorted(
        (Path(i.path).resolve(), i.kind) for i in from_folder
    )
    assert [i.kind for i in from_manifest].count("image") == 3 and [i.kind for i in from_manifest].count("video") == 2
    (tmp_path / "broken.jsonl").write_text('{"image": "a.png"}\nnot json\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        list_media(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError, match="no such folder or manifest"):
        list_media(tmp_path / "missing")


def test_fit_to_size_resizes_the_short_side_and_crops():
    x = torch.rand(3, 40, 64) * 2 - 1
    assert fit_to_size(x, 32).shape == (3, 32, 32)
    assert fit_to_size(x, 32, scale=1.5, crop=torch.Generator().manual_seed(0), flip=True).shape == (3, 32, 32)
    clip = torch.rand(5, 3, 48, 48) * 2 - 1  # frames share one crop
    assert fit_to_size(clip, 32, crop=torch.Generator().manual_seed(0)).shape == (5, 3, 32, 32)
    same = torch.rand(3, 32, 32) * 2 - 1
    assert torch.equal(fit_to_size(same, 32), same)  # nothing to do: exact


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16"])
def test_every_pillow_mode_becomes_an_rgb_training_sample(tmp_path, mode):
    rgb = np.random.default_rng(1).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit grey
    else:
        image = image.convert(mode)
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    image.save(path)
    dataset = VisualDataset(list_media(tmp_path), size=16, train=False)
    sample = dataset[0]
    assert sample["error"] is None and sample["pixels"].shape == (3, 16, 16)
    assert -1 <= sample["pixels"].min() and sample["pixels"].max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((16, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(wide).save(tmp_path / "rotated.jpg", exif=exif)
    assert media.read_image(tmp_path / "rotated.jpg").shape == (32, 16, 3)


def test_clips_have_the_requested_frames_and_short_videos_repeat_their_last_frame(tmp_path):
    write_world(tmp_path, n_images=0, n_videos=1, n_sounds=0, video_frames=5)
    items = list_media(tmp_path)
    for frames in (5, 9):
        sample = VisualDataset(items, size=32, frames=frames, train=True)[0]
        assert sample["pixels"].shape == (3, frames, 32, 32)
    long = VisualDataset(items, size=32, frames=9, train=False)[0]["pixels"]
    assert torch.equal(long[:, 5:], long[:, 4:5].expand(-1, 4, -1, -1))


def test_a_training_sample_is_a_function_of_its_stream_index(tmp_path):
    """Index ``epoch * len(ds) + i``: the same pixels in a fresh dataset and in a worker process
    (what lets a resumed run read the unbroken run's samples); each epoch has its own order."""
    write_world(tmp_path, n_images=6, n_videos=0, n_sounds=0)
    ds = VisualDataset(list_media(tmp_path), size=24, seed=3)
    again = VisualDataset(list_media(tmp_path), size=24, seed=3)
    assert all(torch.equal(ds[k]["pixels"], again[k]["pixels"]) for k in range(12))
    assert {ds[k]["path"] for k in range(6)} == {ds[k]["path"] for k in range(6, 12)}  # every item once an epoch
    assert [ds[k]["path"] for k in range(6)] != [ds[k]["path"] for k in range(6, 12)]  # in a new order
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=range(12), num_workers=2,
                                         collate_fn=lambda batch: torch.stack([x["pixels"] for x in batch]))
    assert torch.equal(torch.cat(list(loader)), torch.stack([ds[k]["pixels"] for k in range(12)]))


def test_fewer_training_items_than_one_batch_is_a_clear_error(tmp_path):
    write_world(tmp_path, n_images=3, n_videos=2, n_sounds=0, video_frames=5)
    dm = VisualDataModule(str(tmp_path), size=16, batch_size=2, video_batch_size=4)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"VisualDataModule: 2 training videos are fewer than batch_size=4 per device"):
        dm.train_dataloader()


def test_each_kind_reads_on_from_its_own_item_when_resumed_with_other_batch_sizes(tmp_path):
    """Images and videos are two streams, each saved with the items it has trained."""
    write_world(tmp_path, n_images=12, n_videos=6, n_sounds=0, video_frames=5)
    before = VisualDataModule(str(tmp_path), size=16, batch_size=4, video_batch_size=2)
    before.setup("fit")
    before.train_dataloader()
    before.position.batches, before.position.items = 2, {"image": 8, "video": 4}  # 2 batches trained
    after = VisualDataModule(str(tmp_path), size=16, batch_size=2, video_batch_size=1)
    after.load_state_dict(before.state_dict())
    after.setup("fit")
    samplers = {kind: loader.sampler for kind, loader in after.train_dataloader().iterables.items()}
    assert list(samplers["image"])[:3] == [8, 9, 10] and list(samplers["video"])[:3] == [4, 5, 6]


def test_every_kind_of_bad_media_is_a_typed_error_naming_the_file(dirty_world):
    items = {Path(i.path).name: i for i in list_media(dirty_world)}
    for name, (error, _) in BAD_FILES.items():
        item = items[Path(name).name]
        sample = VisualDataset([item], size=32, frames=5, train=False)[0]
        assert sample["pixels"] is None
        assert sample["error"].split(":")[0] in error and str(dirty_world / name) in sample["error"]


def test_the_tiny_recipe_trains_on_the_good_files_and_reports_the_bad_ones(dirty_world, tmp_path, one_thread):
    """`anyseq fit --config configs/tokenizer/visual_tiny.yaml`, 2 steps, end to end."""
    export = tmp_path / "tokenizer"
    rc = anyseq([
        "fit", "--config", str(ROOT / "configs/tokenizer/visual_tiny.yaml"),
        f"--data.init_args.data={dirty_world}", "--data.init_args.batch_size=10", "--data.init_args.video_batch_size=5",
        f"--model.init_args.export_dir={export}", "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])
    assert rc == 0
    skipped = json.loads((tmp_path / "skipped_files.json").read_text())
    assert {Path(p).relative_to(dirty_world).as_posix() for p in skipped} == set(BAD_FILES)
    for path, error in skipped.items():
        assert error.split(":")[0] in BAD_FILES[Path(path).relative_to(dirty_world).as_posix()][0]
    tok = MediaTokenizer.load(export)
    assert tok.encode(torch.zeros(1, 3, 5, 32, 32)).shape == (1, 2, 4, 4)


def test_a_source_without_media_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(ValueError, match="no image or video files found"):
        VisualDataModule(data=str(tmp_path)).setup("fit")
