"""The demo: every direction produces decodable outputs, the report is written, a rerun resumes."""

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from anyseq import demo as demo_module
from anyseq import media
from anyseq.cli import main as anyseq
from anyseq.demo import DIRECTIONS, PLANS, _held_out, evaluate


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert anyseq(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_every_direction_produces_decodable_outputs(demo):
    progress = json.loads((demo / "progress.json").read_text())
    directions = progress["evaluate"]["directions"]
    assert set(directions) == {f"{s}->{t}" for s, t in DIRECTIONS} | {"text->any"}
    for name, d in directions.items():
        source, target = name.split("->")
        if target != "any":  # (any: a file per segment written, none for an empty record)
            suffix = {"image": ".png", "video": ".gif", "audio": ".wav", "text": ".txt"}[target]
            files = sorted((demo / "samples").glob(f"{source}2{target}_*{suffix}"))
            assert len(files) >= d["n"], name  # one decoded file per prompt (and per CFG setting)
        assert 0.0 <= d["plain"]["accuracy"] <= 1.0 and 0 < d["chance"] < 1
    # text -> any: the model picked the medium; each caption kind is scored
    assert set(directions["text->any"]["plain"]["per_attribute"]) == {"medium", "image", "video", "audio"}


def test_report_shows_samples_accuracies_and_timings(demo):
    report = (demo / "report.html").read_text()
    for needle in ("Judged accuracy", "text → image", "audio → text", "Timings", "<audio controls", "data:image/png",
                   "tokenizer round trip"):
        assert needle in report


def test_the_judges_also_read_the_tokenizers_own_reconstructions(demo):
    """The reference for text -> media: how legible the tokenizers' decodings of held-out media are."""
    metrics = json.loads((demo / "progress.json").read_text())["tokenizer_metrics"]
    assert set(metrics["judged_round_trip"]) == {"image", "video", "audio"}
    assert all(0.0 <= v <= 1.0 for v in metrics["judged_round_trip"].values())
    assert set(metrics["audio_tones"]) == {"loudness_ratio", "pitch_error_semitones"}


def test_both_media_tokenizers_are_exported_and_timed(demo):
    progress = json.loads((demo / "progress.json").read_text())
    for kind in ("visual", "audio"):
        stage = progress[f"{kind}_tokenizer"]
        assert stage["seconds"] > 0 and (demo / "tokenizers" / kind / "config.json").exists()
        saved = next((demo / "runs" / kind).rglob("config.yaml")).read_text()  # the fit LightningCLI saved
        assert "anyseq.demo.FreedCores" in saved  # each takes the core its sibling frees


def test_a_side_by_side_stage_takes_the_cores_a_finished_sibling_frees(monkeypatch, one_thread):
    running = multiprocessing.get_context("spawn").Value("i", 2)
    monkeypatch.setattr(demo_module, "_SIBLINGS", (running, 2))  # as the pool's initializer sets it: 2 stages, 2 cores
    first = demo_module.timed_stage(lambda: {"threads": torch.get_num_threads()}, ())
    assert first["threads"] == 1 and first["seconds"] >= 0  # two stages on two cores: one thread each
    assert running.value == 1  # the finished stage no longer counts
    step = SimpleNamespace(global_step=7)
    demo_module.FreedCores().on_train_batch_start(step, torch.nn.Identity(), None, 0)  # the sibling's next step
    assert torch.get_num_threads() == 2


def test_a_stage_finished_side_by_side_is_recorded_even_when_its_sibling_fails(tmp_path):
    progress = demo_module.Progress(tmp_path, PLANS["quick"])
    # a summary two seconds late, built from builtins (a spawned worker cannot import this test module)
    late_summary = (dict, (zip(["slept"], map(time.sleep, [2.0])),))
    # fails at once (sleep returns None, not a summary) while its sibling still runs: the sibling is recorded all the same
    with pytest.raises(TypeError):
        progress.run_side_by_side({"failing": (time.sleep, (0.0,)), "finished": late_summary})
    assert "finished" in json.loads((tmp_path / "progress.json").read_text())


def test_a_side_by_side_stage_whose_process_dies_is_an_error_not_a_hang(tmp_path):
    progress = demo_module.Progress(tmp_path, PLANS["quick"])
    with pytest.raises(BrokenProcessPool):
        progress.run_side_by_side({"killed": (os._exit, (1,))})


def test_rerun_resumes_without_redoing_finished_stages(demo, capsys):
    assert anyseq(["demo", "--quick", "--out", str(demo)]) == 0
    out = capsys.readouterr().out
    for stage in ("world", "text_tokenizer", "visual_tokenizer", "audio_tokenizer", "tokenize", "model", "evaluate"):
        assert f"[demo] {stage}: already done" in out


def test_an_interrupted_model_stage_goes_on_from_its_checkpoint_to_the_same_weights_and_log(demo, tmp_path):
    """Cut after 4 of its 8 steps and run again, the transformer stage resumes (the schedule is the
    whole run's, as when a run is killed) and ends where an uninterrupted run ends; the loss log
    holds each step once."""
    plan, shards = demo_module.Plan.load(demo), str(demo / "shards")
    extra = ("--model.init_args.max_steps=8", "--trainer.log_every_n_steps=1")
    straight = demo_module.stage_model(tmp_path / "straight", shards, plan, extra)
    demo_module.stage_model(tmp_path / "cut", shards, replace(plan, model_steps=4), extra)
    resumed = demo_module.stage_model(tmp_path / "cut", shards, plan, extra)

    def weights(run):
        return torch.load(run["checkpoint"], weights_only=False)["state_dict"]

    def losses(run):
        return [(row["step"], row["train/loss"]) for row in demo_module.training_log(run["metrics"])
                if row.get("train/loss")]

    assert (tmp_path / "cut" / "runs" / "model" / "log" / "version_1").is_dir()  # the resumed run's log
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 8


def test_the_training_log_of_a_resumed_run_keeps_each_step_once(tmp_path):
    for version, steps in ((0, (9, 19, 29)), (1, (19, 29, 39))):  # resumed from step 19's checkpoint
        (tmp_path / f"version_{version}").mkdir()
        rows = ["step,train/loss"] + [f"{s},{version}.{s}" for s in steps]
        (tmp_path / f"version_{version}" / "metrics.csv").write_text("\n".join(rows) + "\n")
    log = demo_module.training_log(tmp_path)
    assert [(r["step"], r["train/loss"]) for r in log] == [("9", "0.9"), ("19", "1.19"), ("29", "1.29"), ("39", "1.39")]
    assert demo_module.training_log(tmp_path / "version_0" / "metrics.csv")[-1]["step"] == "29"


def test_a_folder_made_with_another_plan_is_refused_not_mixed_in(demo):
    with pytest.raises(SystemExit, match=r"another plan .*n_images.*--fresh"):
        anyseq(["demo", "--out", str(demo)])  # the default plan over the quick one's stages


@pytest.mark.parametrize(
    "prompt,to,extra,suffix",
    [
        (["--text", "a small red circle at the top left"], "image", ["--height", "4", "--width", "4", "--cfg", "2"], ".png"),
        (["--image", "held_out/images/000000.png"], "text", [], ".txt"),
        (["--text", "a blue square moving left"], "video", ["--height-px", "32", "--width-px", "32", "--frames", "5"], ".gif"),
        (["--text", "a red circle moving up"], "video", ["--height", "2", "--width", "2", "--video-format", "mp4"], ".mp4"),
        (["--audio", "held_out/audio/000000.wav", "--text", "and"], "text", [], ".txt"),
        (["--text", "a rising tone"], "audio", ["--seconds", "0.4"], ".wav"),
    ],
)
def test_generate_cli_any_to_any(demo, tmp_path, prompt, to, extra, suffix):
    prompt = [str(demo / p) if p.startswith("held_out/") else p for p in prompt]
    out = tmp_path / "out"
    rc = anyseq(["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), *prompt, "--to", to, *extra,
                 "--num-samples", "2", "--seed", "3", "--out", str(out)])
    assert rc == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["file"].endswith(suffix) for r in records)
    assert [p["kind"] for p in records[0]["prompt"]] == [prompt[i][2:] for i in range(0, len(prompt), 2)]


def test_to_any_writes_the_rest_of_the_record_in_whichever_media_the_model_opens(demo, tmp_path):
    out = tmp_path / "out"
    assert anyseq(["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--text", "a blue square moving left",
                   "--to", "any", "--height", "2", "--width", "2", "--seconds", "0.4", "--max-text-tokens", "6",
                   "--num-samples", "6", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all("file" not in r for r in records)
    readers = {".txt": Path.read_text, ".png": media.read_image, ".gif": media.read_video, ".wav": media.read_audio}
    for r in records:
        for j, f in enumerate(r["files"]):
            assert Path(f).name.startswith(Path(r["stem"]).name + f"_{j}.")
            readers[Path(f).suffix](Path(f))  # every segment decoded to a readable file


def test_generate_errors_name_the_fix(demo, tmp_path, capsys):
    ckpt = str(demo / "model" / "last.ckpt")
    assert anyseq(["generate", "--checkpoint", ckpt, "--to", "image", "--out", str(tmp_path)]) == 2
    assert "--height" in capsys.readouterr().err
    assert anyseq(["generate", "--checkpoint", ckpt, "--text", "x", "--to", "image", "--height", "4", "--width", "4",
                   "--visual-tokenizer", str(tmp_path / "moved"), "--out", str(tmp_path)]) == 2
    assert "--visual-tokenizer" in capsys.readouterr().err
    assert anyseq(["generate", "--checkpoint", ckpt, "--text", "x", "--to", "image", "--height", "40", "--width", "40",
                   "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "context" in err or "max_height" in err


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature must be at least 0"),  # ran as greedy before
    (["--top-p", "2"], "top_p must be in (0, 1]"),
    (["--top-k", "-5"], "top_k must be at least 0"),
    (["--cfg", "-2"], "cfg_scale must be at least 0"),
    (["--to", "image", "--height", "0", "--width", "2"], "--height must be at least 1 token, got 0"),  # was 'free'
    (["--to", "image", "--height-px", "3", "--width", "2"], "--height-px 3 is less than one token"),
    (["--to", "video", "--height", "2", "--width", "2", "--frames", "0"], "--frames must be at least 1"),
    (["--to", "audio", "--seconds", "-1"], "--seconds must be above 0"),  # sampled one frame before
    (["--max-text-tokens", "0"], "--max-text-tokens must be at least 1"),
    (["--num-samples", "0", "--batch-size", "0"], "--num-samples must be at least 1, got 0; --batch-size must be"),
    (["--image-size", "0", "--video-frames", "-1"], "--image-size must be at least 1 pixel, got 0; --video-frames"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--to", "image", "--height", "65", "--width", "2"], "--height must be <= 64 for this checkpoint, got 65"),
    (["--device", "nodevice"], "--device 'nodevice' is not a torch device"),
    (["--prompt", "x"], "unrecognized arguments: --prompt"),  # not an abbreviation of --prompts FILE
])  # fmt: skip
def test_generate_refuses_out_of_range_options_naming_them(demo, tmp_path, capsys, args, message):
    base = ["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--text", "x", "--out", str(tmp_path / "o")]
    try:
        code = anyseq([*base, *args])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is not there")
def test_generate_on_a_missing_gpu_says_so(demo, tmp_path, capsys):
    assert anyseq(["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--device", "cuda",
                   "--out", str(tmp_path)]) == 2
    assert "torch sees no CUDA device on this machine; use --device cpu" in capsys.readouterr().err


def test_a_file_that_is_no_checkpoint_is_refused_naming_it(demo, tmp_path, capsys):
    whole = (demo / "model" / "last.ckpt").read_bytes()
    cut, text = tmp_path / "cut.ckpt", tmp_path / "notes.ckpt"
    cut.write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    text.write_text("not a checkpoint")
    for path in (cut, text):
        assert anyseq(["generate", "--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
        assert f"{path}: not a checkpoint: torch.save writes a zip archive" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda a: a["model_config"].update(dim_of_the_future=1), "does not fit this version of anyseq"),
    (lambda a: a["token_space"].update(max_height=a["token_space"]["max_height"] + 1000), "vocabulary rows; the checkpoint is inconsistent"),
    (lambda a: a["model_config"].update(n_layers=a["model_config"]["n_layers"] + 1), "its weights do not fit its model config"),
])
def test_a_checkpoint_that_contradicts_itself_is_refused_naming_it(demo, tmp_path, capsys, edit, message):
    ckpt = torch.load(demo / "model" / "last.ckpt", weights_only=False)
    edit(ckpt["anyseq"])
    torch.save(ckpt, tmp_path / "edited.ckpt")
    assert anyseq(["generate", "--checkpoint", str(tmp_path / "edited.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'edited.ckpt'}: " in (err := capsys.readouterr().err) and message in err


def test_a_prompts_file_is_sampled_in_fixed_batches_and_a_rerun_resumes_them(demo, tmp_path, capsys):
    """Many prompts in one call, each prompt's first sample before any second; after an
    interruption the rerun samples only what is missing, identically."""
    prompts = tmp_path / "prompts.jsonl"
    held_out = demo / "held_out"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"id": "red", "text": "a small red"},
        {"image": str(held_out / "images" / "000000.png")},  # no id: named by its line
        {"id": "interleaved", "segments": [{"audio": str(held_out / "audio" / "000000.wav")}, {"text": "and"}]},
    ]) + "\n\n")  # fmt: skip
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--prompts", str(prompts), "--to", "text",
            "--num-samples", "2", "--batch-size", "4", "--max-text-tokens", "8", "--out", str(out)]
    assert anyseq(args) == 0
    assert "[generate] batch 2/2" in capsys.readouterr().err
    log = out / "samples.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [Path(r["file"]).name for r in records] == [
        f"text_0_{name}_{i:03d}.txt" for i in range(2) for name in ("red", "line2", "interleaved")]
    assert [p["kind"] for p in records[2]["prompt"]] == ["audio", "text"]
    texts = {r["file"]: Path(r["file"]).read_text() for r in records}

    # killed while writing the third sample's line: the first batch half written, the second not begun
    lines = log.read_text().splitlines()
    log.write_text("".join(line + "\n" for line in lines[:2]) + lines[2][:40])
    for r in records[2:]:
        Path(r["file"]).unlink()
    assert anyseq(args) == 0
    again = [json.loads(line) for line in log.read_text().splitlines() if line != lines[2][:40]]  # the partial line stays
    assert sorted(r["file"] for r in again) == sorted(texts)  # each sample recorded once
    assert {r["file"]: Path(r["file"]).read_text() for r in again} == texts
    capsys.readouterr()
    assert anyseq(args) == 0  # all done: nothing is sampled
    err = capsys.readouterr().err
    assert "generated 0 x text" in err and "6 already in" in err
    # another seed names other files: they join the folder
    assert anyseq([*args, "--seed", "1"]) == 0
    assert len(log.read_text().splitlines()) == 1 + 12  # the killed run's partial line, then 2 x 6 samples


def test_keep_turns_a_held_out_manifest_into_caption_prompts(demo, tmp_path, capsys):
    out = tmp_path / "out"
    assert anyseq(["generate", "--checkpoint", str(demo / "model" / "last.ckpt"),
                   "--prompts", str(demo / "held_out" / "manifest.jsonl"), "--keep", "text", "--to", "image",
                   "--height", "2", "--width", "2", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (demo / "held_out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == [[{"kind": "text", "value": h["text"]}] for h in held_out]
    assert Path(records[0]["file"]).name == f"image_0_{held_out[0]['id']}_000.png"
    ckpt = str(demo / "model" / "last.ckpt")
    assert anyseq(["generate", "--checkpoint", ckpt, "--prompts", str(demo / "held_out" / "manifest.jsonl"),
                   "--keep", "video", "--out", str(tmp_path / "o")]) == 2
    assert "manifest.jsonl:1: no video segment to keep" in capsys.readouterr().err
    assert anyseq(["generate", "--checkpoint", ckpt, "--text", "x", "--keep", "text"]) == 2
    assert "there is no --prompts" in capsys.readouterr().err


@pytest.mark.parametrize("line,message", [
    ('{"text": "a", "imag": "x.png"}', "prompts.jsonl:2: unknown keys ['imag']"),
    ('{"image": "missing.png"}', "prompts.jsonl:2: image file"),
    ('{"id": "a", "text": "b"}', """id 'a' names its files 'a', as line 1 does; give each record an "id" of its own"""),
])  # fmt: skip
def test_a_bad_prompts_file_is_refused_before_sampling_naming_the_line(demo, tmp_path, capsys, line, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "text": "a red"}\n' + line + "\n")
    ckpt = str(demo / "model" / "last.ckpt")
    assert anyseq(["generate", "--checkpoint", ckpt, "--prompts", str(prompts), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert anyseq(["generate", "--checkpoint", ckpt, "--prompts", str(prompts), "--text", "x"]) == 2
    assert "not both" in capsys.readouterr().err


def _records(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _files(out):
    return {f.name: f.read_bytes() for f in out.iterdir() if f.name != "samples.jsonl"}


def test_a_sample_is_the_same_whatever_batch_and_run_it_is_drawn_in(demo, tmp_path, capsys):
    """Each sample draws from (seed, prompt, sample index): two samples and then four into one
    folder, or four at once in other batches, write the same files."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "red", "text": "a small red"}\n{"text": "a blue square moving"}\n'
                       '{"id": "tone", "text": "a rising tone"}\n')
    base = ["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--prompts", str(prompts),
            "--to", "image", "--height", "2", "--width", "2", "--cfg", "2"]
    assert anyseq([*base, "--num-samples", "2", "--batch-size", "4", "--out", str(tmp_path / "grown")]) == 0
    capsys.readouterr()
    assert anyseq([*base, "--num-samples", "4", "--batch-size", "3", "--out", str(tmp_path / "grown")]) == 0
    assert "generated 6 x image" in (err := capsys.readouterr().err) and "6 already in" in err
    assert anyseq([*base, "--num-samples", "4", "--batch-size", "5", "--out", str(tmp_path / "fresh")]) == 0
    grown = _files(tmp_path / "grown")
    assert len(grown) == 12 and grown == _files(tmp_path / "fresh")
    assert len({r["stem"] for r in _records(tmp_path / "grown")}) == len(_records(tmp_path / "grown")) == 12
    assert len(set(grown.values())) > 1  # not one image twelve times


@pytest.mark.parametrize("changed", [
    ["--max-text-tokens", "7"],  # under --to any: the budget beside the media
    ["--video-format", "mp4"],
    ["--image-size", "16"],
    ["--temperature", "0.5"],
])  # fmt: skip
def test_a_rerun_with_other_settings_is_refused_not_written_over_the_files_it_made(demo, tmp_path, capsys, changed):
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--text", "a blue square moving left",
            "--to", "any", "--height", "2", "--width", "2", "--seconds", "0.4", "--max-text-tokens", "6",
            "--num-samples", "2", "--out", str(out)]
    assert anyseq(args) == 0
    before, log = _files(out), (out / "samples.jsonl").read_text()
    capsys.readouterr()
    assert anyseq([*args, *changed]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: samples.jsonl:1 made any_0_000 with other settings (" in err
    assert "give a new --out for these settings" in err and len(err.splitlines()) == 1
    assert _files(out) == before and (out / "samples.jsonl").read_text() == log


def test_a_prompt_sampled_again_leaves_no_file_of_an_earlier_try(demo, tmp_path, capsys):
    """A killed run's files that no record lists, and the rest of a record whose file is gone, are
    replaced, not left beside the new sample looking like part of it."""
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--text", "a blue square moving left",
            "--to", "any", "--height", "2", "--width", "2", "--seconds", "0.4", "--max-text-tokens", "6",
            "--num-samples", "3", "--out", str(out)]
    assert anyseq(args) == 0
    first = _records(out)
    files = _files(out)
    log = out / "samples.jsonl"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[1:]))  # killed before recording 0
    (out / "any_0_000_7.txt").write_text("an earlier try's segment")
    Path(first[1]["files"][0]).unlink()  # the rest of sample 1 stays
    capsys.readouterr()
    assert anyseq(args) == 0
    assert "generated 2 x any" in (err := capsys.readouterr().err) and "1 already in" in err
    assert _files(out) == files  # the same samples again, and no file besides
    last = {r["stem"]: r for r in _records(out)}
    assert sorted(f for r in last.values() for f in r["files"]) == sorted(str(out / name) for name in files)


def test_text_files_are_read_and_written_as_utf8_whatever_the_locale(demo, tmp_path, capsys, monkeypatch):
    import locale

    from anyseq.tokenizers.text import TextTokenizer

    monkeypatch.setattr(TextTokenizer, "decode", lambda self, ids: "naïve café ☕")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("a crème brûlée", encoding="utf-8")
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # open()'s default is ASCII here
    try:
        rc = anyseq(["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--text-file", str(prompt),
                     "--max-text-tokens", "4", "--stdout", "--out", str(tmp_path / "out")])
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert rc == 0
    record = _records(tmp_path / "out")[0]
    assert record["prompt"] == [{"kind": "text", "value": "a crème brûlée"}]
    assert Path(record["file"]).read_text(encoding="utf-8") == "naïve café ☕"
    assert "naïve café ☕" in capsys.readouterr().out


def test_a_prompt_image_is_cut_to_its_centre_square_as_the_training_images_were(demo):
    """``tokenize-dataset`` crops to the centre square before resizing; a prompt squashed to a
    square instead would show the model shapes it never saw."""
    import numpy as np

    from anyseq.checkpoint import load_bundle
    from anyseq.generate import encode_prompt

    square = media.read_image(demo / "held_out" / "images" / "000000.png")  # 32 x 32
    side = np.random.default_rng(0).integers(0, 256, (32, 16, 3), dtype=np.uint8)
    wide = np.concatenate([side, square, side], axis=1)  # the same square, between two noisy strips
    bundle = load_bundle(demo / "model" / "last.ckpt")
    codes = [encode_prompt(bundle, "image", image, image_size=32).value for image in (wide, square)]
    assert codes[0].shape == codes[1].shape and (codes[0] == codes[1]).all()


def test_generate_names_the_flag_or_file_of_each_bad_input(demo, tmp_path, capsys):
    ckpt, held_out = str(demo / "model" / "last.ckpt"), demo / "held_out"
    afile, latin, tiny = tmp_path / "afile", tmp_path / "latin.txt", tmp_path / "tiny.png"
    afile.write_text("x")
    latin.write_bytes("café".encode("latin-1"))
    media.write_image(tiny, media.read_image(held_out / "images" / "000000.png")[:5, :5])
    visual = {}
    for name, config, weights in [("cut", None, 100), ("foreign", "anyseq.model.Transformer", None),
                                  ("empty", "{}", None), ("notjson", "not json", None)]:
        folder = visual[name] = tmp_path / name
        shutil.copytree(demo / "tokenizers" / "visual", folder)
        if weights:
            (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:weights])
        if config and "." in config:
            meta = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**meta, "class": config}))
        elif config:
            (folder / "config.json").write_text(config)
    bad_image = tmp_path / "bad.jsonl"
    bad_image.write_text('{"text": "a red"}\n' * 9 + '{"image": "afile"}\n')  # its batch would come last
    clash = tmp_path / "clash.jsonl"
    clash.write_text('{"id": "line2", "text": "a red"}\n{"text": "a blue"}\n')
    in_folder = tmp_path / "in_folder.jsonl"
    in_folder.write_text('{"image": "."}\n')
    image = ["--image", str(held_out / "images" / "000000.png")]
    cases = [
        (["--text", "x", "--out", str(afile)], f"--out {afile}: a file, not a folder"),
        (["--text", "x", "--out", str(afile / "sub")], f"--out {afile / 'sub'}: cannot write there (not a directory)"),
        (["--text-file", str(tmp_path)], f"--text-file {tmp_path}: is a directory; expected a UTF-8 text file"),
        (["--text-file", str(latin)], f"--text-file {latin}: not UTF-8 (byte 0xe9 at offset 3)"),
        (["--prompts", str(tmp_path)], f"--prompts {tmp_path}: is a directory; expected a JSONL file"),
        (["--prompts", str(in_folder)], f"{in_folder}:1: image file {tmp_path}: is a directory"),
        (["--prompts", str(bad_image), "--batch-size", "1"], f"{bad_image}:10: image {afile}: not an image format"),
        (["--prompts", str(clash)], f"{clash}:2: a record without an id names its files 'line2', as line 1 does; "
                                    'give each record an "id" of its own'),
        (["--image", str(tiny)], f"--image {tiny}: 5x5 pixels is smaller than the tokenizer's spatial compression "
                                 "8; expected at least 8x8 pixels"),
        ([*image, "--visual-tokenizer", str(visual["cut"])], f"{visual['cut'] / 'model.safetensors'}: not the "
                                                              "weights of the tokenizer config.json describes"),
        ([*image, "--visual-tokenizer", str(visual["foreign"])],
         f"{visual['foreign'] / 'config.json'}: its class 'anyseq.model.Transformer' is no MediaTokenizer"),
        ([*image, "--visual-tokenizer", str(visual["empty"])], f"{visual['empty'] / 'config.json'}: no class, config"),
        ([*image, "--visual-tokenizer", str(visual["notjson"])], f"{visual['notjson'] / 'config.json'}: not valid JSON"),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
        assert anyseq(["generate", "--checkpoint", ckpt, *args, *out]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, (message, err)
    assert not (tmp_path / "o").exists()  # each found before anything was sampled


def test_generate_says_how_many_video_frames_it_makes(demo, tmp_path, capsys):
    assert anyseq(["generate", "--checkpoint", str(demo / "model" / "last.ckpt"), "--text", "a red circle moving up",
                   "--to", "video", "--height", "2", "--width", "2", "--frames", "4", "--out", str(tmp_path)]) == 0
    assert "--frames 4 floored to 1: the visual tokenizer makes videos of 1 + k * 4 frames" in capsys.readouterr().err
    assert len(media.read_video(tmp_path / "video_0_000.gif")[0]) == 1


def test_generation_benchmark_times_the_same_batch_with_and_without_the_cache(demo, tmp_path, script):
    bench = script("bench_generate")
    out = tmp_path / "bench.json"
    assert bench.main(["--checkpoint", str(demo / "model" / "last.ckpt"), "--to", "image", "text", "--batch", "2",
                       "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["to"] for r in rows] == ["image", "text"]
    assert all(r["new_tokens"] > 0 and r["tokens_per_s_cache"] > 0 and r["tokens_per_s_no_cache"] > 0 for r in rows)


def test_the_tokenizer_comparison_trains_each_variant_with_its_arguments_and_judges_it(demo, tmp_path, script):
    compare = script("compare_demo_tokenizers")
    manifest = demo / "world" / "manifest.jsonl"
    conv = f"conv=--model.init_args.tokenizer.decoder=conv --data.init_args.train=[{manifest},{manifest}]"
    assert compare.main(["--kind", "audio", "--world", str(demo), "--out", str(tmp_path), "--steps", "2",
                         "--variant", "istft=", "--variant", conv]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    held_out = len(_held_out(demo / "held_out" / "manifest.jsonl", "audio", 1000))
    for name, decoder in (("conv", "conv"), ("istft", "istft")):
        row = results[name]["audio"]
        assert row["n"] == held_out == sum(row["heard"]["pattern"].values())
        assert row["judged_legible"] == row["per_attribute"]["pattern"]
        assert row["tones"]["loudness_ratio"] >= 0 and row["tones"]["pitch_error_semitones"] >= 0
        config = json.loads((tmp_path / name / "tokenizers" / "audio" / "config.json").read_text())["config"]
        assert config["decoder"] == decoder and config["frame_rate"] == 100  # the demo's recipe, then the variant's


def test_the_codec_loudness_table_reports_the_held_out_sweeps_loudness_per_pitch_band(demo, script, capsys):
    table_script = script("codec_loudness_by_pitch")
    assert table_script.main([str(demo / "tokenizers" / "audio"), "--world", str(demo), "--bands", "4"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert 1 <= len(table) <= 4 and all(row["frames"] > 0 and row["loudness"] >= 0 for row in table.values())
    with pytest.raises(SystemExit):
        table_script.main([str(demo / "tokenizers" / "audio"), "--world", str(demo), "--patterns", "a whistle"])
    assert "unknown ['a whistle']" in capsys.readouterr().err


def test_the_codec_loudness_table_probes_with_a_steady_tone_per_band(demo, script, capsys):
    table_script = script("codec_loudness_by_pitch")
    assert table_script.main([str(demo / "tokenizers" / "audio"), "--steady", "--bands", "3"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert list(table) == ["357 Hz", "598 Hz", "1002 Hz"]  # geometric band centres over 276-1296 Hz
    assert all(row["loudness"] >= 0 and row["pitch_error_semitones"] >= 0 for row in table.values())
    with pytest.raises(SystemExit):
        table_script.main([str(demo / "tokenizers" / "audio")])
    assert "--world <demo folder>" in capsys.readouterr().err


def test_the_visual_comparison_judges_images_and_videos_attribute_by_attribute(demo, tmp_path, script):
    compare = script("compare_demo_tokenizers")
    assert compare.main(["--kind", "visual", "--world", str(demo), "--out", str(tmp_path), "--steps", "2",
                         "--variant", "narrow=--model.init_args.tokenizer.latent_dim=4"]) == 0
    row = json.loads((tmp_path / "results.json").read_text())["narrow"]
    for kind, names in (("image", {"colour", "shape", "size", "position"}), ("video", {"colour", "shape", "direction"})):
        judged = row[kind]
        assert set(judged["per_attribute"]) == set(judged["heard"]) == names
        assert all(sum(counts.values()) == judged["n"] for counts in judged["heard"].values())
        assert judged["judged_legible"] <= min(judged["per_attribute"].values())
    config = json.loads((tmp_path / "narrow" / "tokenizers" / "visual" / "config.json").read_text())["config"]
    assert config["quantizer"]["codebook_size"] == 1000 and config["latent_dim"] == 4  # the demo's, then the variant's


def test_the_transformer_comparison_trains_variants_and_seeds_and_judges_them_as_the_demo_does(demo, tmp_path,
                                                                                                  script):
    compare = script("compare_demo_transformers")
    argv = ["--demo", str(demo), "--out", str(tmp_path), "--seeds", "1", "2", "--jobs", "2",
            "--variant", "base=", "--variant", "lr=--model.init_args.lr=4e-3"]
    assert compare.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"demo", "base", "lr"} and set(results["demo"]["seeds"]) == {"0"}  # the demo's own run
    assert set(results["base"]["seeds"]) == set(results["lr"]["seeds"]) == {"1", "2"}
    own = results["demo"]["seeds"]["0"]
    for run in (*results["base"]["seeds"].values(), *results["lr"]["seeds"].values()):
        assert set(run["directions"]) == set(own["directions"]) and run["train_seconds"] > 0
    config = (tmp_path / "lr" / "seed_2" / "runs" / "model" / "log" / "version_0" / "config.yaml").read_text()
    assert "seed_everything: 2" in config and "lr: 0.004" in config
    checkpoint = tmp_path / "base" / "seed_1" / "model" / "last.ckpt"
    trained_at = checkpoint.stat().st_mtime_ns
    assert compare.main(argv[:-4]) == 0  # base (the default variant) seeds 1 and 2 again
    assert checkpoint.stat().st_mtime_ns == trained_at  # a run in the results is not trained again
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_a_broken_variant_is_reported_and_does_not_hang_the_comparison(demo, tmp_path, script, capsys):
    """A bad ``anyseq fit`` argument exits its worker process: the comparison must still end."""
    argv = ["--demo", str(demo), "--out", str(tmp_path), "--seeds", "1", "2", "--jobs", "2",
            "--variant", "typo=--model.init_args.learning_rate=1e-3"]
    assert script("compare_demo_transformers").main(argv) == 1
    out = capsys.readouterr().out
    assert "[compare] typo seed 1 failed" in out and "[compare] failed: typo seed 1, typo seed 2" in out
    assert set(json.loads((tmp_path / "results.json").read_text())) == {"demo"}  # a rerun retries them


def test_the_transformer_comparison_reads_the_final_losses_of_a_run(tmp_path, script):
    metrics = tmp_path / "metrics.csv"
    rows = ["step,train/loss,train/loss_image,perf/tokens_per_s"] + [f"{10 * i + 9},{i},{2 * i}," for i in range(8)]
    metrics.write_text("\n".join(rows[:4] + ["39,,,3800.0"] + rows[4:]) + "\n")  # a throughput-only row between
    assert script("compare_demo_transformers").final_losses(str(metrics)) == {"loss": 5.0, "loss_image": 10.0}


def test_the_transformer_comparison_refuses_a_folder_that_is_not_a_finished_demo(tmp_path, script, capsys):
    with pytest.raises(SystemExit):
        script("compare_demo_transformers").main(["--demo", str(tmp_path), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert f"{tmp_path / 'progress.json'}: not a finished demo" in error and "anyseq demo --out" in error


def test_the_sampling_sweep_at_the_demos_settings_reproduces_the_demos_judgement(demo, tmp_path, script):
    sweep = script("sweep_demo_sampling")
    argv = ["--demo", str(demo), "--out", str(tmp_path), "--direction", "text->image", "--cfg", "1", "3",
            "--temperature", "1.0", "0.4", "--seeds", "0", "1"]
    assert sweep.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 2 * 2 * 2 and len(results["settings"]) == 4
    assert all(s["seeds"] == 2 for s in results["settings"].values())
    own = json.loads((demo / "progress.json").read_text())["evaluate"]["directions"]["text->image"]["plain"]
    assert PLANS["quick"].media_temperature == 0.4
    same = results["runs"]["text->image cfg=1 temperature=0.4 top_k=2048 top_p=1 seed=0"]
    assert same["per_attribute"] == own["per_attribute"] and same["accuracy"] == own["accuracy"]
    assert same["distinct"] == own["distinct"] == 1.0  # one sample a prompt in the quick plan
    # the demo samples media at the plan's temperature: its images are the sweep's at 0.4, not at 1.0
    mine = sorted((tmp_path / "samples").glob(f"{same['samples']}_*.png"))
    hot = results["runs"]["text->image cfg=1 temperature=1 top_k=2048 top_p=1 seed=0"]["samples"]
    demos = sorted((demo / "samples").glob("text2image_plain_*.png"))
    assert len(mine) == len(demos) == same["n"]
    assert [p.read_bytes() for p in mine] == [p.read_bytes() for p in demos]
    hot_images = [p.read_bytes() for p in sorted((tmp_path / "samples").glob(f"{hot}_*.png"))]
    assert hot_images != [p.read_bytes() for p in demos]
    sampled_at = mine[0].stat().st_mtime_ns
    assert sweep.main(argv) == 0  # every run is in the results: nothing is sampled again
    assert mine[0].stat().st_mtime_ns == sampled_at
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_the_sampling_sweep_refuses_a_folder_that_is_not_a_demo(tmp_path, script, capsys):
    with pytest.raises(SystemExit):
        script("sweep_demo_sampling").main(["--demo", str(tmp_path), "--out", str(tmp_path / "out")])
    assert f"{tmp_path}: not a demo output folder" in capsys.readouterr().err


def test_several_samples_per_prompt_are_all_judged_and_the_report_shows_distinct_prompts(demo, tmp_path):
    """CFG's effect is a few points: the default judges 4 samples of every held-out prompt."""
    plan = replace(PLANS["quick"], samples_per_prompt=3)
    progress = json.loads((demo / "progress.json").read_text())
    result = evaluate(tmp_path, progress["model"]["checkpoint"], Path(progress["world"]["held_out"]), plan, "cpu")
    directions = result["directions"]
    any_ = directions.pop("text->any")  # captions of each medium: n // 3 prompts apiece
    assert any_["n"] == 3 * 3 * max(1, plan.eval_per_direction // 3)
    assert len({s["prompt"] for s in any_["samples"]}) == len(any_["samples"]) == 3
    for name, d in directions.items():
        assert d["n"] == 3 * plan.eval_per_direction, name
        assert len(list((tmp_path / "samples").glob(f"{name.replace('->', '2')}_plain_*"))) == d["n"]
        source, target = name.split("->")
        kind = target if source == "text" else source
        held_out = _held_out(Path(progress["world"]["held_out"]), kind, plan.eval_per_direction)
        assert [s["prompt"] for s in d["samples"]] == [r["text" if source == "text" else kind] for r in held_out], name


def test_distinct_counts_how_many_of_a_prompts_samples_differ(demo, tmp_path):
    from anyseq.checkpoint import load_bundle
    from anyseq.demo import direction_prompts, judge_direction
    from anyseq.sampling import SamplingOptions

    plan = replace(PLANS["quick"], samples_per_prompt=3)
    bundle = load_bundle(json.loads((demo / "progress.json").read_text())["model"]["checkpoint"])
    rows, ids = direction_prompts(bundle, "text", "image", demo / "held_out" / "manifest.jsonl", plan)
    greedy = judge_direction(bundle, "text", "image", rows, ids, SamplingOptions(temperature=0.0), plan, tmp_path / "g")
    sampled = judge_direction(bundle, "text", "image", rows, ids, SamplingOptions(), plan, tmp_path / "s")
    assert greedy["distinct"] == 1 / 3 and sampled["distinct"] == 1.0  # 16 codes of 1000: no two draws alike


def test_the_fine_tuning_benchmark_starts_a_media_model_from_a_text_only_one(demo, tmp_path, script):
    bench = script("bench_finetune")
    out = tmp_path / "finetune.json"
    assert bench.main(["--demo", str(demo), "--work", str(tmp_path / "work"), "--steps", "3", "--seq-len", "64",
                       "--batch-size", "4", "--val-batches", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["text_only_on_captions"]) == {"loss", "loss_text"}
    assert {"loss_text", "loss_image", "loss_video", "loss_audio"} <= set(report["fine_tune_start"])
    assert report["rows"] == {"carried": ["shape/h", "shape/t", "shape/w", "special", "text"],
                              "fresh": ["audio/0", "visual/0"]}  # the demo codec codes one level
