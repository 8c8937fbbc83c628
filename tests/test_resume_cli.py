"""`anyseq fit` from the command line: a resume runs the checkpoint's model settings however the
checkpoint is named; `--ckpt_path last` finds the newest readable checkpoint of an earlier run,
with or without a last.ckpt; bad options and settings end in one line; --help says what to type."""

from pathlib import Path

import pytest
import torch

from anyseq.cli import main as anyseq

RECIPES = Path(__file__).resolve().parents[1] / "configs/train"


def fit(text_data, run: Path, steps: int, *extra: str, recipe: str = "text_tiny") -> int:
    root, _ = text_data
    return anyseq(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), f"--data.init_args.train=[{root / 'shards'}]",
                   "--data.init_args.seq_len=32", "--data.init_args.batch_size=4", f"--trainer.max_steps={steps}",
                   f"--trainer.default_root_dir={run}", "--trainer.enable_progress_bar=false",
                   "--trainer.enable_model_summary=false", "--trainer.val_check_interval=null",
                   "--trainer.limit_val_batches=0", "--model.init_args.max_steps=8", *extra])


def newest(run: Path, pattern: str = "last.ckpt") -> Path:
    return max(run.rglob(pattern), key=lambda path: path.stat().st_mtime)


def test_a_resume_runs_the_checkpoints_model_settings_whether_named_by_last_or_by_file(text_data, tmp_path):
    """The optimizer state and schedule resumed were made with the checkpoint's lr, so that is the
    lr the run trains and saves with; the one given is named as not used."""
    run = tmp_path / "run"
    assert fit(text_data, run, 2, "--model.init_args.lr=1e-3") == 0
    ignored = r"not used: lr: given 0.005, checkpoint's 0.001\. To change them, fine-tune from it instead: " \
              r"--model.init_args.init_from="
    with pytest.warns(UserWarning, match=ignored):
        assert fit(text_data, run, 3, "--model.init_args.lr=5e-3", "--ckpt_path", "last") == 0
    resumed = newest(run)
    with pytest.warns(UserWarning, match=ignored):
        assert fit(text_data, run, 4, "--model.init_args.lr=5e-3", f"--ckpt_path={resumed}") == 0
    for version in ("version_1", "version_2"):
        state = torch.load(run / "lightning_logs" / version / "checkpoints" / "last.ckpt", weights_only=False)
        assert state["hyper_parameters"]["lr"] == state["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 1e-3


def test_ckpt_path_last_without_a_last_checkpoint_resumes_the_newest_one(text_data, tmp_path):
    """A recipe without a save_last ModelCheckpoint (configs/train/demo.yaml run by hand) has
    Lightning's default one save at each epoch's end: that is what `last` then resumes."""
    run = tmp_path / "run"
    demo = {"recipe": "demo"}
    epochs_of_2 = ("--model.init_args.preset=tiny", "--trainer.limit_train_batches=2")
    assert fit(text_data, run, 2, *epochs_of_2, "--ckpt_path", "last", **demo) == 0
    assert not list(run.rglob("last*.ckpt"))
    with pytest.warns(UserWarning, match=r"--ckpt_path \S*version_0/checkpoints/epoch=0-step=2\.ckpt: .*not used: lr"):
        assert fit(text_data, run, 4, *epochs_of_2, "--model.init_args.lr=5e-3", "--ckpt_path", "last", **demo) == 0


def test_ckpt_path_last_skips_a_checkpoint_cut_short_by_a_killed_run(text_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert fit(text_data, run, 2, "--trainer.callbacks.every_n_train_steps=1") == 0
    last, step = newest(run), newest(run, "epoch=*.ckpt")
    last.write_bytes(last.read_bytes()[:1000])  # killed while saving
    with pytest.warns(UserWarning, match=rf"skipping a damaged checkpoint .*{last}: not a checkpoint") as caught:
        assert fit(text_data, run, 3, "--model.init_args.lr=5e-3", "--ckpt_path", "last") == 0
    assert any(f"--ckpt_path {step}: a resumed run keeps" in str(w.message) for w in caught)  # the next newest
    for path in run.rglob("*.ckpt"):
        path.write_bytes(b"")
    with pytest.warns(UserWarning, match="skipping a damaged checkpoint"):
        assert fit(text_data, run, 4, "--ckpt_path", "last") == 2
    err = capsys.readouterr().err
    assert "anyseq fit: error: --ckpt_path last: every checkpoint an earlier run left is unreadable" in err
    assert "Traceback" not in err


def test_a_mistyped_option_is_one_line_and_a_pointer_to_help(text_data, tmp_path, capsys):
    assert fit(text_data, tmp_path, 1, "--trainer.max_stepz=3") == 2
    assert capsys.readouterr().err.splitlines() == [
        "anyseq fit: error: unrecognized arguments: --trainer.max_stepz=3", "see `anyseq fit --help`"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_accelerator_without_a_gpu_names_the_setting(text_data, tmp_path, capsys):
    assert fit(text_data, tmp_path, 1, "--trainer.accelerator=gpu") == 2
    err = capsys.readouterr().err
    assert "anyseq fit: error: --trainer.accelerator=gpu: this machine has no gpu device" in err
    assert "use --trainer.accelerator=cpu" in err


def test_fit_help_names_anyseqs_classes_and_its_ckpt_path_last(capsys):
    with pytest.raises(SystemExit) as exit_:
        anyseq(["fit", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for known in ("anyseq.training.AnySeqModule", "anyseq.tokenizers.visual_module.VisualTokenizerModule",
                  "anyseq.tokenizers.audio_module.AudioTokenizerModule", "anyseq.data.datamodule.ShardDataModule"):
        assert known in text.split("known subclasses:", 1)[1]
    assert "`anyseq fit --model.help anyseq.training.AnySeqModule`" in text
    assert "or `last`: the newest checkpoint any earlier run of this command saved" in text
    assert "from the previous ``trainer.fit`` call" not in text  # Lightning's own meaning of last
