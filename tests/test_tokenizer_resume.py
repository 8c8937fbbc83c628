"""Both tokenizer recipes resume an interrupted run with the same command plus --ckpt_path last:
weights, both optimizers, their schedules, the RNG and the place in the data, so the resumed run
ends on the unbroken run's weights."""

from pathlib import Path

import pytest
import lightning as L
import torch

from anyseq.cli import main as anyseq
from anyseq.resume import ResumesRandomState
from anyseq.tokenizers.audio_synth import write_corpus
from anyseq.tokenizers.base import MediaTokenizer
from anyseq.world import write_world

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"


def visual_args(data: Path) -> list[str]:
    write_world(data, n_images=12, n_videos=4, n_sounds=0, video_frames=5)
    return [f"--data.init_args.data={data}", "--data.init_args.batch_size=4", "--data.init_args.video_batch_size=2",
            "--model.init_args.disc_start=1"]


def audio_args(data: Path) -> list[str]:
    write_corpus(data, 8, 1.0, 16000, seed=0)
    return [f"--data.init_args.train=[{data}]", "--data.init_args.val=null", "--data.init_args.segment_seconds=0.25",
            "--data.init_args.batch_size=2"]


@pytest.mark.parametrize("recipe, data_args, schedules", [
    ("visual_tiny", visual_args, [4, 3]),  # generator and discriminator (the GAN from step 1)
    ("audio_tiny", audio_args, [4]),  # the recipe trains without discriminators
])
def test_an_interrupted_tokenizer_run_goes_on_from_its_last_checkpoint(tmp_path, one_thread, recipe, data_args,
                                                                      schedules):
    """The visual recipe saves without a logger, the audio recipe into a new logger version per
    run: either way a rerun with nothing left to train keeps the weights (even under another
    seed), and a longer one continues both schedules, mid-epoch, on the data the unbroken run
    reads (the visual data's 3 image batches beside 2 video batches per epoch: the videos cycle)."""
    args = data_args(tmp_path / "data")

    def fit(run, steps, *extra):
        return anyseq(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), "--trainer.callbacks.every_n_train_steps=1",
                       *args, f"--model.init_args.export_dir={tmp_path / run / 'tokenizer'}",
                       f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={tmp_path / run}",
                       "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--ckpt_path=last",
                       *extra])

    def exported(run):
        return MediaTokenizer.load(tmp_path / run / "tokenizer").fingerprint

    assert fit("resumed", 2) == 0
    first = exported("resumed")
    assert fit("resumed", 2, "--seed_everything=1") == 0 and exported("resumed") == first  # nothing left to train
    assert fit("resumed", 4) == 0 and exported("resumed") != first
    assert fit("unbroken", 4) == 0 and exported("unbroken") == exported("resumed")
    last = max((tmp_path / "resumed").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 4 and [s["last_epoch"] for s in state["lr_schedulers"]] == schedules


def test_the_rng_a_run_resumed_with_is_what_it_saves_until_it_trains():
    """A rerun that trains nothing (max_steps already reached) still writes a checkpoint: it must
    carry the RNG the run resumed with, not the one this process's seeding left."""
    module = RngModule()
    torch.manual_seed(0)
    resumed_with = {"torch": torch.get_rng_state(), "cuda": []}
    module.on_load_checkpoint({"rng": resumed_with})
    torch.manual_seed(1)  # the rerun's own seeding
    saved = {}
    module.on_save_checkpoint(saved)
    assert torch.equal(saved["rng"]["torch"], resumed_with["torch"])
    module.on_train_batch_start(None, 0)  # the first trained batch puts it back
    assert torch.equal(torch.get_rng_state(), resumed_with["torch"])
    torch.rand(1)  # training draws
    module.on_save_checkpoint(saved)  # from then on the live state is saved
    assert torch.equal(saved["rng"]["torch"], torch.get_rng_state())
    assert not torch.equal(saved["rng"]["torch"], resumed_with["torch"])


class RngModule(ResumesRandomState, L.LightningModule):
    pass
