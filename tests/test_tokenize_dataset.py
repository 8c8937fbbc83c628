"""`anyseq tokenize-dataset`: the right records land with exactly the tokenizers' codes, bad
records are reported with reasons, output is deterministic, and a kill -9 resumes byte-exact."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anyseq import media
from anyseq.data.manifest import RecordError, apply_template, parse_record
from anyseq.data.prepare import resize_crop
from anyseq.data.shards import ShardSet, committed_shards
from anyseq.data.tokenize import main as tokenize
from anyseq.sequence import Serializer
from anyseq.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from anyseq.tokenizers.base import load_tokenizer
from anyseq.tokenizers.quantizer import QuantizerConfig
from anyseq.tokenizers.text import TextTokenizer
from anyseq.tokenizers.visual import VisualTokenizer, VisualTokenizerConfig
from anyseq.world import write_world

SAMPLE_RATE = 8000
N_IMAGES, N_VIDEOS, N_SOUNDS = 40, 8, 8
GOOD = N_IMAGES + N_VIDEOS + N_SOUNDS + 5  # + the good extra records
BAD = {  # name -> (record, words the reason must contain)
    "missing": ({"text": "a red circle", "image": "nowhere.png"}, "no such file"),
    "empty": ({"text": "a red circle", "image": "bad/empty.png"}, "file is empty"),
    "truncated": ({"text": "a red circle", "image": "bad/truncated.png"}, "truncated or corrupt"),
    "corrupt": ({"text": "a red circle", "image": "bad/garbage.png"}, "not an image format"),
    "bomb": ({"text": "a red circle", "image": "bad/bomb.png"}, "pixels"),
    "video": ({"text": "a blue square moving left", "video": "bad/broken.mp4"}, "truncated or corrupt"),
    "nan": ({"text": "a rising tone", "audio": "bad/nan.wav"}, "NaN"),
    "empty text": ({"text": "   ", "image": "images/000000.png"}, "'text' is empty"),
    "unknown key": ({"text": "a red circle", "imgae": "images/000000.png"}, "unknown keys ['imgae']"),
    "bad segment": ({"segments": [{"text": "a", "image": "images/000000.png"}]}, "segments[0] must be an object"),
}
RAW_BAD = {  # lines that are not even JSON objects
    "non-utf8": (b'{"text": "caf\xe9 au lait"}', "not valid UTF-8"),
    "malformed": (b'{"text": "unterminated}', "malformed JSON"),
}
ARGS = ["--image-size", "32", "--video-frames", "5", "--audio-seconds", "0.2", "--records-per-shard", "8",
        "--batch-size", "4", "--seed", "3", "--prompt-loss-weight", "0.5"]


def png_bomb(path):
    """A PNG whose header declares 100000 x 100000 pixels (its data is never needed)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def write_bad_files(root):
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    good = (root / "images" / "000001.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    (bad / "garbage.png").write_bytes(b"this is not an image" * 10)
    png_bomb(bad / "bomb.png")
    (bad / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    wav = np.sin(np.arange(1600) / 5).astype(np.float32)
    wav[100] = np.nan
    sf.write(bad / "nan.wav", wav, SAMPLE_RATE, subtype="FLOAT")
    odd = media.write_image(root / "odd.png", np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    return odd


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize")
    world = root / "world"
    manifest = write_world(world, n_images=N_IMAGES, n_videos=N_VIDEOS, n_sounds=N_SOUNDS, image_size=32, video_frames=5,
                           sample_rate=SAMPLE_RATE, seconds=0.25)
    odd = write_bad_files(world)
    lines = manifest.read_bytes().splitlines()
    good = [json.loads(l) for l in lines]
    extra = [
        json.dumps({"id": "mix-0", "segments": [{"text": good[0]["text"]}, {"image": good[0]["image"]},
                                               {"audio": good[-1]["audio"]}]}).encode(),
        json.dumps({"id": "mix-1", "segments": [{"video": good[N_IMAGES]["video"]}, {"text": "then"},
                                               {"image": str(odd)}]}).encode(),
        json.dumps({"id": "plain", "text": "just some text, no media"}).encode(),
        json.dumps({"id": "media-only", "image": "images/000002.png"}).encode(),
        json.dumps({"id": 7, "text": "an odd sized image", "image": "odd.png"}).encode(),
        b"   ",  # blank lines are skipped, not errors
    ]
    bad = [json.dumps({"id": f"bad-{name}", **rec}).encode() for name, (rec, _) in BAD.items()]
    bad += [raw for raw, _ in RAW_BAD.values()]
    # interleave: bad records spread through the manifest
    mixed = lines[:20] + bad[:5] + extra + lines[20:45] + bad[5:] + lines[45:]
    (world / "all.jsonl").write_bytes(b"\n".join(mixed) + b"\n")

    captions = [r["text"] for r in good] + ["then", "just some text, no media", "an odd sized image"]
    TextTokenizer.train(captions * 4, vocab_size=320, output=root / "text.model")
    torch.manual_seed(0)
    VisualTokenizer(VisualTokenizerConfig(spatial_compression=8, temporal_compression=4, channels=4,
                                          channel_mult=[1, 1, 1, 1], num_res_blocks=1, latent_dim=3,
                                          quantizer=QuantizerConfig(kind="fsq", codebook_size=64))).save(root / "visual")
    AudioTokenizer(AudioTokenizerConfig(sample_rate=SAMPLE_RATE, frame_rate=50, channels=4, max_channels=8,
                                        latent_dim=4, dilations=[1], activation="elu",
                                        quantizer=QuantizerConfig(kind="fsq", codebook_size=64, num_quantizers=2))
                   ).save(root / "audio")
    tok_args = ["--text-tokenizer", str(root / "text.model"), "--visual-tokenizer", str(root / "visual"),
                "--audio-tokenizer", str(root / "audio")]
    rc = tokenize(["--manifest", str(world / "all.jsonl"), "--out", str(root / "shards"), "--workers", "2",
                   *tok_args, *ARGS])
    return {"root": root, "manifest": world / "all.jsonl", "tok": tok_args, "rc": rc, "lines": mixed}


def shard_bytes(out):
    return {f"{d.name}/{f.name}": f.read_bytes() for d in committed_shards(out) for f in sorted(d.iterdir())}


def expected_segments(record, text, visual, audio):
    """What the tokenizers themselves say a record is (one record at a time, no pipeline)."""
    out = []
    for part in record.parts:
        if part.modality == "text":
            value = np.array(text.encode(part.text))
        elif part.modality == "image":
            x = media.image_to_tensor(resize_crop(media.read_image(part.path), 32))
            value = visual.encode(x[None])[0].numpy()
        elif part.modality == "video":
            frames, _ = media.read_video(part.path, max_frames=5)
            value = visual.encode(media.video_to_tensor(frames)[None])[0].numpy()
        else:
            wav, _ = media.read_audio(part.path, SAMPLE_RATE, seconds=0.2)
            value = audio.encode(torch.from_numpy(wav)[None, None])[0].numpy()
        out.append((part.modality, value, part.loss))
    return out


def test_good_records_land_with_exactly_the_tokenizers_codes(data):
    root = data["root"]
    assert data["rc"] == 1  # some records failed
    shards = ShardSet(root / "shards")
    text = TextTokenizer.load(root / "text.model")
    visual, audio = load_tokenizer(root / "visual"), load_tokenizer(root / "audio")
    serializer = Serializer(shards.space)
    by_line = {shards.line(i): i for i in range(len(shards))}
    assert len(by_line) == len(shards)  # every record at most once
    base = data["manifest"].parent
    good, orders = 0, set()
    for number, raw in enumerate(data["lines"], 1):
        try:
            record = parse_record(raw, number, base)
        except ValueError:
            record = None
        if record is None or not all(p.path is None or p.path.exists() and "bad" not in p.path.parts
                                     for p in record.parts):
            assert number not in by_line
            continue
        got = serializer.parse(shards.document(by_line.pop(number)).ids)
        if record.kind in ("image", "video", "audio") and len(record.parts) == 2:  # --task both, seed 3
            caption_first = np.random.default_rng([3, number]).random() < 0.5
            assert (got[0].modality == "text") == caption_first
            orders.add(caption_first)
        record = apply_template(record, "both", 0.5, 3, 0.5)
        want = expected_segments(record, text, visual, audio)
        assert [s.modality for s in got] == [m for m, _, _ in want], number
        for seg, (m, value, loss) in zip(got, want):
            assert np.array_equal(np.asarray(seg.value), value), (number, m)
        good += 1
    assert not by_line  # no document without a good record
    assert good == GOOD and orders == {True, False}
    stats = json.loads((root / "shards" / "stats.json").read_text())
    assert stats["records"]["ok"] == good and stats["records"]["failed"] == len(BAD) + len(RAW_BAD)
    kinds = {"audio": N_SOUNDS, "image": N_IMAGES + 2, "interleaved": 2, "text": 1, "video": N_VIDEOS}
    assert stats["records"]["ok_per_kind"] == kinds
    assert stats["tokens"] == shards.num_tokens and stats["records_per_second"] > 0


def test_prompt_weight_applies_to_the_first_segment_of_pairs(data):
    shards = ShardSet(data["root"] / "shards")
    for i in range(len(shards)):
        spans = shards.spans(i)
        if len(spans) == 2:
            assert spans["weight"].tolist() == [0.5, 1.0]


def test_bad_records_are_reported_with_reasons(data):
    errors = [json.loads(l) for l in (data["root"] / "shards" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == len(BAD) + len(RAW_BAD)
    assert [e["line"] for e in errors] == sorted(e["line"] for e in errors)
    by_id = {e["id"]: e for e in errors}
    for name, (rec, reason) in BAD.items():
        e = by_id[f"bad-{name}"]
        assert reason in e["reason"], (name, e)
        assert data["lines"][e["line"] - 1] == json.dumps({"id": f"bad-{name}", **rec}).encode()
        if "image" in rec and name not in ("empty text", "unknown key"):
            assert e["path"].endswith(rec["image"])
    raw_errors = [e for e in errors if e["id"] is None]
    for (raw, reason), e in zip(RAW_BAD.values(), raw_errors):
        assert reason in e["reason"] and data["lines"][e["line"] - 1] == raw


def test_kill_9_then_rerun_equals_an_uninterrupted_run(data, tmp_path):
    """Killed with 2 decoding workers, finished with none: the shards equal the uninterrupted run's
    byte for byte (which also shows the worker count never changes a byte)."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "anyseq.cli", "tokenize-dataset", "--manifest", str(data["manifest"]),
           "--out", str(out), "--workers", "2", *data["tok"], *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not committed_shards(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its decoding workers, mid-run
    proc.wait()
    done = len(committed_shards(out))
    total = len(committed_shards(data["root"] / "shards"))
    assert 1 <= done < total, "the kill must land mid-run"
    assert tokenize(["--manifest", str(data["manifest"]), "--out", str(out), "--workers", "0", *data["tok"], *ARGS]) == 1
    assert shard_bytes(out) == shard_bytes(data["root"] / "shards")
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards_this_run"] == total - done
    assert (out / "errors.jsonl").read_bytes() == (data["root"] / "shards" / "errors.jsonl").read_bytes()


def test_two_ddp_processes_write_the_same_shards(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "anyseq.cli", "tokenize-dataset", "--manifest", str(data["manifest"]),
           "--out", str(out), "--workers", "0", "--devices", "2", *data["tok"], *ARGS]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 1, run.stderr[-3000:]
    assert shard_bytes(out) == shard_bytes(data["root"] / "shards")
    assert json.loads((out / "stats.json").read_text())["records"]["ok"] == GOOD


def text_job(tmp_path, lines, *extra):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(l + "\n" for l in lines))
    if not (tmp_path / "t.model").exists():
        TextTokenizer.train([f"sentence number {i}" for i in range(40)], vocab_size=300, output=tmp_path / "t.model")
    return ["--manifest", str(manifest), "--text-tokenizer", str(tmp_path / "t.model"), "--workers", "0", *extra]


def test_a_manifest_whose_every_record_fails_is_an_error(tmp_path, capsys):
    args = text_job(tmp_path, ['{"text": ""}', "not json", '{"image": "x.png"}'])
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "every record failed" in err and "errors.jsonl" in err
    assert len((tmp_path / "o" / "errors.jsonl").read_text().splitlines()) == 3
    assert "no --visual-tokenizer" in (tmp_path / "o" / "errors.jsonl").read_text()


def test_fail_on_error_stops_at_the_first_bad_record(tmp_path, capsys):
    args = text_job(tmp_path, ['{"text": "sentence number 1"}', "{bad", '{"text": "sentence number 2"}'])
    assert tokenize([*args, "--out", str(tmp_path / "o"), "--fail-on-error"]) == 2
    assert "line 2" in capsys.readouterr().err and not committed_shards(tmp_path / "o")
    assert tokenize([*args, "--out", str(tmp_path / "ok")]) == 1  # without the flag the run goes on


def test_out_from_other_settings_or_tokenizers_is_refused(tmp_path, capsys):
    args = text_job(tmp_path, ['{"text": "sentence number 1"}', '{"text": "sentence number 2"}'])
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 0
    assert tokenize([*args, "--out", str(tmp_path / "o"), "--seed", "1"]) == 2
    assert "other settings (setting: (theirs, yours)) {'seed': (0, 1)}" in capsys.readouterr().err
    assert tokenize([*args, "--out", str(tmp_path / "o"), "--image-size", "64"]) == 2
    assert "{'media.image_size': (256, 64)}" in capsys.readouterr().err
    TextTokenizer.train([f"other words {i}" for i in range(40)], vocab_size=290, output=tmp_path / "t2.model")
    other = [a if a != str(tmp_path / "t.model") else str(tmp_path / "t2.model") for a in args]
    assert tokenize([*other, "--out", str(tmp_path / "o")]) == 2
    assert "another token space" in capsys.readouterr().err
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 0  # same arguments: nothing left to do
    with open(tmp_path / "m.jsonl", "a") as f:  # the manifest grew: its last shard is no longer whole
        f.write('{"text": "sentence number 3"}\n')
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 2
    assert "changed since the shards were written" in capsys.readouterr().err


def test_a_manifest_edited_since_its_shards_were_written_is_refused(tmp_path, capsys):
    args = text_job(tmp_path, ['{"text": "sentence number 1"}', '{"text": "sentence number 2"}'])
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 0
    text_job(tmp_path, ['{"text": "sentence number 1"}', '{"text": "sentence number 9"}'])  # same length
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 2
    assert "which have changed since (their SHA-256 differs)" in capsys.readouterr().err


def test_an_unusable_out_is_refused_before_any_work(tmp_path, capsys):
    args = text_job(tmp_path, ['{"text": "sentence number 1"}'])
    (tmp_path / "a-file").write_text("x")
    for out, says in ((tmp_path / "a-file", "is a file; expected a folder"),
                      (tmp_path / "a-file" / "sub", "cannot create the folder")):
        assert tokenize([*args, "--out", str(out)]) == 2
        assert says in capsys.readouterr().err


def test_a_job_stopped_by_an_error_keeps_its_shards_and_says_rerun(tmp_path, capsys, monkeypatch):
    """Exit 2, not 1 (which means some records failed), and the rerun finishes the set."""
    from anyseq.data import shards

    args = text_job(tmp_path, [f'{{"text": "sentence number {i}"}}' for i in range(3)], "--records-per-shard", "1")
    commit = shards.ShardWriter.commit

    def disk_full_after_one(self, *a, **k):
        if self.index > 0:
            raise OSError(28, "No space left on device")
        return commit(self, *a, **k)

    monkeypatch.setattr(shards.ShardWriter, "commit", disk_full_after_one)
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "stopped by OSError" in err and "the 1 committed shards are kept: rerun the same command" in err
    assert "Traceback" not in err
    monkeypatch.setattr(shards.ShardWriter, "commit", commit)
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 0 and len(ShardSet(tmp_path / "o")) == 3


def test_a_manifest_of_blank_lines_says_so(tmp_path, capsys):
    args = text_job(tmp_path, ["", "   ", ""])
    assert tokenize([*args, "--out", str(tmp_path / "o")]) == 2
    assert "holds only blank lines, no records" in capsys.readouterr().err


def test_manifests_from_windows_editors_parse():
    """A byte-order mark on the first line and CRLF line ends are not errors; a cut-off line's
    error points at the column where it ends, not at the line end's newline."""
    assert parse_record(b'\xef\xbb\xbf{"text": "hi"}\r\n', 1, Path(".")).parts[0].text == "hi"
    with pytest.raises(RecordError, match="column 24"):
        parse_record(b'{"id": "m", "text": "x"\r\n', 2, Path("."))


def test_an_image_is_cropped_to_its_centre_square_before_it_is_resized(monkeypatch):
    """A thin strip must never become a huge intermediate image (1 x 100000 at 256 would be 77 GB)."""
    strip = np.zeros((1, 3000, 3), np.uint8)
    strip[:, 1400:1600] = 200
    sizes, resize = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or resize(self, size, *a, **k))
    out = resize_crop(strip, 32)
    assert out.shape == (32, 32, 3) and (out == 200).all() and sizes == [(32, 32)]
    wide = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    assert np.array_equal(resize_crop(wide, 40), wide[:, 8:48])  # a square of the output size is just cut out


def test_folder_mode_pairs_media_with_their_captions(data, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    world = data["manifest"].parent
    for name, src, caption in [("a.png", "images/000000.png", "a caption"), ("sub/b.wav", "audio/000000.wav", b"a tone\r\n"),
                               ("c.gif", "videos/000000.gif", "a moving thing"), ("d.png", "images/000001.png", None),
                               ("e.png", "images/000002.png", b"caf\xe9")]:
        (folder / name).write_bytes((world / src).read_bytes())
        if caption is not None:
            (folder / name).with_suffix(".txt").write_bytes(caption if isinstance(caption, bytes) else caption.encode())
    rc = tokenize(["--folder", str(folder), "--out", str(tmp_path / "o"), "--workers", "0", "--task",
                   "caption-to-media", *data["tok"], *ARGS])
    assert rc == 1
    shards = ShardSet(tmp_path / "o")
    text = TextTokenizer.load(data["root"] / "text.model")
    serializer = Serializer(shards.space)
    docs = [serializer.parse(shards.document(i).ids) for i in range(len(shards))]
    assert [[s.modality for s in d] for d in docs] == [["text", "image"], ["text", "video"], ["text", "audio"]]
    assert [text.decode(d[0].value) for d in docs] == ["a caption", "a moving thing", "a tone"]
    errors = [json.loads(l) for l in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["path"].split("/")[-1]) for e in errors] == [("d.png", "d.txt"), ("e.png", "e.txt")]
    assert "no caption file" in errors[0]["reason"] and "not valid UTF-8" in errors[1]["reason"]


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        tokenize(["--help"])
    out = capsys.readouterr().out
    for flag in ("--manifest", "--folder", "--out", "--text-tokenizer", "--visual-tokenizer", "--audio-tokenizer",
                 "--task", "--p-caption-first", "--seed", "--workers", "--batch-size", "--device", "--devices",
                 "--image-size", "--video-frames", "--video-fps", "--audio-seconds", "--records-per-shard",
                 "--fail-on-error", "--max-height", "--max-width", "--max-frames", "Exit status"):
        assert flag in out


def test_media_size_must_suit_the_visual_tokenizer(data, tmp_path, capsys):
    args = ["--manifest", str(data["manifest"]), "--out", str(tmp_path / "o"), *data["tok"]]
    assert tokenize([*args, "--image-size", "36"]) == 2
    assert "multiple of the visual tokenizer's spatial factor 8" in capsys.readouterr().err
    assert tokenize([*args, "--image-size", "32", "--video-frames", "6"]) == 2
    assert "1 + k*4" in capsys.readouterr().err
    assert tokenize([*args, "--image-size", "32", "--video-frames", "5", "--max-height", "2"]) == 2
    assert "--max-height" in capsys.readouterr().err


def test_a_record_that_breaks_its_tokenizer_batch_fails_alone(data, tmp_path, monkeypatch):
    world = data["manifest"].parent
    media.write_image(tmp_path / "black.png", np.zeros((32, 32, 3), np.uint8))
    lines = [{"text": "a caption", "image": str(world / f"images/00000{i}.png")} for i in range(3)]
    lines.insert(1, {"id": "black", "text": "a caption", "image": str(tmp_path / "black.png")})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    encode = VisualTokenizer.encode

    def fussy(self, x):  # a tokenizer that chokes on black frames
        if (x.flatten(1) == -1).all(1).any():
            raise ValueError("black frame")
        return encode(self, x)

    monkeypatch.setattr(VisualTokenizer, "encode", fussy)
    rc = tokenize(["--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"), "--workers", "0",
                   *data["tok"], *ARGS])
    assert rc == 1
    (error,) = [json.loads(l) for l in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert error["id"] == "black" and error["reason"] == "image tokenizer failed: ValueError: black frame"
    assert sorted(ShardSet(tmp_path / "o").line(i) for i in range(3)) == [1, 3, 4]
