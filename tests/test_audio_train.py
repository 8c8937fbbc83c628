"""Training the audio codec: the recipes run through ``anyseq fit``, and a short run learns.

Budgets are fixed in steps, never seconds (the machine is shared); thresholds were measured
at those budgets and carry a margin (see the comments).
"""

from pathlib import Path

import pytest
import torch
import yaml

from anyseq.cli import main as anyseq
from anyseq.tokenizers.audio import AudioTokenizer
from anyseq.tokenizers.audio_module import AudioTokenizerModule
from anyseq.tokenizers.audio_synth import write_corpus
from anyseq.tokenizers.base import MediaTokenizer, config_from_dict
from anyseq.tokenizers.audio import AudioTokenizerConfig
from anyseq.tokenizers.audio_losses import DiscriminatorConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tokenizer" / "audio_tiny.yaml"
GPU = ROOT / "configs" / "tokenizer" / "audio_24khz_gpu.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    write_corpus(root / "train", 24, 1.0, 16000, seed=0)
    write_corpus(root / "val", 4, 1.0, 16000, seed=1)
    return root


def test_anyseq_fit_trains_the_tiny_recipe_end_to_end_and_exports_the_tokenizer(corpus, tmp_path):
    """Two steps through the CLI, the second with the discriminators on (small ones)."""
    export = tmp_path / "tokenizer"
    args = [
        "fit",
        "--config", str(TINY),
        f"--data.init_args.train=[{corpus / 'train'}]",
        f"--data.init_args.val=[{corpus / 'val'}]",
        "--data.init_args.segment_seconds=0.25",
        "--data.init_args.batch_size=2",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--model.init_args.discriminator_start_step=1",
        "--model.init_args.discriminator.periods=[2,3]",
        "--model.init_args.discriminator.period_channels=[4,8]",
        "--model.init_args.discriminator.stft_ffts=[256]",
        "--model.init_args.discriminator.stft_channels=4",
        f"--model.init_args.export_dir={export}",
    ]
    assert anyseq(args) == 0
    tok = MediaTokenizer.load(export)
    assert isinstance(tok, AudioTokenizer) and tok.sample_rate == 16000 and tok.frame_rate == 50
    assert tok.encode(torch.zeros(1, 1, 16000)).shape == (1, 50, tok.num_quantizers)
    assert list((tmp_path / "run").rglob("*.ckpt"))  # the recipe checkpoints


def test_the_gpu_recipe_instantiates_and_runs_a_forward_pass_on_cpu(capsys):
    with pytest.raises(SystemExit) as done:  # --print_config prints and exits
        anyseq(["fit", "--config", str(GPU), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["precision"] == "bf16-mixed"
    assert printed["trainer"]["strategy"] == "ddp_find_unused_parameters_true"
    init = yaml.safe_load(GPU.read_text())["model"]["init_args"]
    module = AudioTokenizerModule(
        tokenizer=config_from_dict(AudioTokenizerConfig, init["tokenizer"]),
        discriminator=DiscriminatorConfig(**init["discriminator"]),
        **{k: v for k, v in init.items() if k not in ("tokenizer", "discriminator")},
    )
    module.configure_model()
    tok = module.tokenizer
    assert tok.sample_rate == 24000 and tok.hop_length == 320 and tok.frame_rate == 75
    assert tok.bitrate_kbps() == pytest.approx(75 * 8 * 9.9658 / 1000, rel=1e-4)
    wav = torch.randn(1, 1, 4800) * 0.1
    out = tok(wav)
    assert out.recon.shape == (1, 1, 4800) and out.codes.shape == (1, 15, 8)
    logits = module.discriminators(out.recon)
    assert len(logits) == 8


def test_the_tiny_recipe_matches_the_demo_sizing():
    """Few tokens per second for a CPU transformer, and small enough to tokenize clips quickly."""
    init = yaml.safe_load(TINY.read_text())["model"]["init_args"]
    tok = AudioTokenizer(config_from_dict(AudioTokenizerConfig, init["tokenizer"]))
    assert tok.frame_rate * tok.num_quantizers <= 200
    assert sum(p.numel() for p in tok.parameters()) < 1_000_000
