"""Training the unified model on text: learns, memorises, resumes exactly, fine-tunes, runs under DDP, fails clearly."""

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from anyseq.cli import main as anyseq
from anyseq.tokenizers.text import TextTokenizer

ROOT = Path(__file__).resolve().parents[1]
def fit_args(root, steps, extra=()):
    return [
        "fit", "--config", str(ROOT / "configs/train/text_tiny.yaml"),
        f"--data.init_args.train=[{root / 'shards'}]", "--data.init_args.seq_len=64", "--data.init_args.batch_size=8",
        f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root / 'run'}", "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        *extra,
    ]


def unigram_entropy(tok, sentences):
    counts = Counter(t for s in sentences for t in tok.encode(s))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def test_tiny_model_memorises_text_and_generate_reproduces_it(text_data, sentences, tmp_path, capsys):
    root, tok = text_data
    ckpt_dir = tmp_path / "ckpt"
    assert anyseq(fit_args(root, 150, [
        "--model.init_args.warmup_steps=10",
        f"--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={ckpt_dir}", "--trainer.callbacks.save_last=true",
    ])) == 0
    ckpt = ckpt_dir / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert "anyseq" in state
    # the loss is far below the corpus' unigram entropy (what a model without context gets)
    from anyseq.checkpoint import load_bundle
    from anyseq.data.shards import ShardSet

    bundle = load_bundle(ckpt)
    shards = ShardSet(root / "shards")
    doc = torch.as_tensor(shards.document(0).ids.astype("int64"))[None]
    logits = bundle.model.logits(bundle.model(doc[:, :-1]))
    loss = torch.nn.functional.cross_entropy(logits[0], doc[0, 1:]).item()
    assert loss < 0.25 * unigram_entropy(tok, sentences)
    # greedy generation continues a memorised sentence
    out = tmp_path / "gen"
    rc = anyseq(["generate", "--checkpoint", str(ckpt), "--text", "the blue whale", "--temperature", "0",
                 "--max-text-tokens", "32", "--out", str(out), "--stdout"])
    assert rc == 0
    captured = capsys.readouterr()
    assert " swims over the deep reef." in captured.out
    assert "tokens/s" in captured.err
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert record["to"] == "text" and record["new_tokens"] > 0 and record["kv_cache"] is True
    assert record["dtype"] == "float32"
    # in bfloat16 (the CUDA default) the memorised continuation survives the rounding
    rc = anyseq(["generate", "--checkpoint", str(ckpt), "--text", "the blue whale", "--temperature", "0",
                 "--max-text-tokens", "32", "--out", str(out / "bf16"), "--stdout", "--dtype", "bfloat16"])
    assert rc == 0 and " swims over the deep reef." in capsys.readouterr().out
    assert bundle.model.tok_embeddings.weight.dtype == torch.float32


def final_loss(root, steps, resume_from=None, ckpt_dir=None, save_at=None, save_end=None, callbacks=(),
               trainer_args=None, data_args=None, **module_args):
    from anyseq.data.datamodule import ShardDataModule
    from anyseq.training import AnySeqModule

    L.seed_everything(0)
    callbacks = list(callbacks)
    if save_at:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=save_at, save_top_k=-1))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(**{"accelerator": "cpu", "max_steps": steps, "logger": False, "enable_progress_bar": False,
                           "enable_checkpointing": bool(save_at), "callbacks": [*callbacks, Record()],
                           "limit_val_batches": 0, "deterministic": True, "enable_model_summary": False,
                           **(trainer_args or {})})
    # the schedule's length is fixed, so a run stopped at step 4 follows the same learning rates
    module = AnySeqModule(**{"preset": "tiny", "lr": 1e-3, "warmup_steps": 2, "max_steps": 8,
                             "model_overrides": {"dropout": 0.1}, **module_args})
    data = ShardDataModule(**{"train": [str(root / "shards")], "seq_len": 32, "batch_size": 4, "num_workers": 0,
                              **(data_args or {})})
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    if save_end:
        trainer.save_checkpoint(save_end)
    return losses


def test_resume_is_exact(text_data, tmp_path):
    root, _ = text_data
    straight = final_loss(root, 8)
    first = final_loss(root, 4, ckpt_dir=tmp_path, save_at=4)
    ckpt = next(tmp_path.glob("*.ckpt"))
    second = final_loss(root, 8, resume_from=str(ckpt))
    assert first == straight[:4]
    assert second == straight[4:]


def test_the_cli_resumes_with_ckpt_path_last(text_data, tmp_path, capsys):
    """The README's command: the same fit plus --ckpt_path last continues where it stopped, though
    the recipe's logger puts each run in a new version folder; a first run with it starts at step
    0. The resumed half runs under another seed: only a real resume can still end on the straight
    run's weights."""
    root, _ = text_data

    def weights(folder):
        last = max(folder.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        return torch.load(last, weights_only=False)["state_dict"]

    def fit(folder, steps, *extra):
        return anyseq(fit_args(root, steps, ["--model.init_args.max_steps=4", f"--trainer.default_root_dir={folder}",
                                             "--trainer.logger=true", *extra]))

    assert fit(tmp_path / "straight", 4) == fit(tmp_path / "resumed", 2, "--ckpt_path", "last") == 0
    assert fit(tmp_path / "resumed", 4, "--seed_everything=1", "--ckpt_path", "last") == 0
    assert sorted(p.parent.parent.name for p in (tmp_path / "resumed").rglob("last.ckpt")) == ["version_0", "version_1"]
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_ckpt_path_last_on_a_run_that_saves_nothing_says_so(text_data, tmp_path):
    root, _ = text_data
    with pytest.warns(UserWarning, match="saves no checkpoints, so it cannot resume later either; add"):
        assert anyseq(fit_args(root, 1, ["--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
                                         f"--trainer.default_root_dir={tmp_path}", "--ckpt_path", "last"])) == 0


def test_throughput_prints_one_metrics_line_per_interval(text_data, capsys):
    from anyseq.throughput import Throughput

    final_loss(text_data[0], 4, callbacks=[Throughput(log_every=2)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2", "4"]
    for line in lines:  # no MFU on a CPU: no peak to divide by
        assert "loss" in line and "tokens/s" in line and "TFLOP/s" in line and "MFU" not in line


def test_throughput_counts_optimizer_steps_and_leaves_validation_out(text_data, capsys, monkeypatch):
    """With two micro-batches per optimizer step, an interval of two steps is four micro-batches
    and one line; the validation between intervals is not training time. On a fake clock, each
    micro-batch takes 1 s and each validation batch 100 s: every line reads one micro-batch's
    4 x 32 tokens per second."""
    from anyseq import throughput

    clock = [0.0]
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Clock(L.Callback):
        def on_train_batch_end(self, *args):
            clock[0] += 1

        def on_validation_batch_end(self, *args):
            clock[0] += 100

    final_loss(text_data[0], 4, callbacks=[Clock(), throughput.Throughput(log_every=2)], data_args={
        "val": [str(text_data[0] / "shards")]}, trainer_args={
        "accumulate_grad_batches": 2, "val_check_interval": 4, "limit_val_batches": 1, "num_sanity_val_steps": 1})
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [(line[1], line[line.index("tokens/s") + 1]) for line in lines] == [("2", "128"), ("4", "128")]


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40", 181e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA GeForce RTX 3090", None),
])
def test_a_gpus_peak_flops_come_from_its_most_specific_entry(monkeypatch, name, peak):
    """An L40 is no L4 and an H100 NVL no H100 SXM; a card not in the table gets no MFU."""
    from anyseq.throughput import peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda")) == peak


def test_resume_after_a_run_stopped_by_max_steps_is_exact(text_data, tmp_path):
    """Lightning counts the unfinished epoch of a run stopped by max_steps as done, and numbers
    the rest of it as the next epoch when resumed: the data still continue where they stopped."""
    root, _ = text_data
    straight = final_loss(root, 8)
    first = final_loss(root, 3, save_end=tmp_path / "stopped.ckpt")
    assert torch.load(tmp_path / "stopped.ckpt", weights_only=False)["epoch"] == 1  # the quirk this is about
    again = final_loss(root, 8, resume_from=str(tmp_path / "stopped.ckpt"))
    assert first + again == straight


def test_fine_tuning_starts_from_the_checkpoint(text_data, tmp_path):
    """init_from: the first loss is the checkpoint's, far below a fresh model's; the CLI recipe's
    preset agrees with the checkpoint, so the plain command line works."""
    root, _ = text_data
    trained = final_loss(root, 40, ckpt_dir=tmp_path / "a", save_at=40, lr=3e-3, max_steps=40)
    ckpt = str(next((tmp_path / "a").glob("*.ckpt")))
    tuned = final_loss(root, 2, init_from=ckpt, preset=None, lr=1e-4)
    fresh = final_loss(root, 2)
    assert tuned[0] < 0.5 * fresh[0] and abs(tuned[0] - trained[-1]) < 0.2 * trained[-1]  # 2.58, 2.46, 6.30
    assert anyseq(fit_args(root, 1, [f"--model.init_args.init_from={ckpt}"])) == 0
    with pytest.raises(ValueError, match="n_layers"):
        final_loss(root, 1, init_from=ckpt, preset="small")
    with pytest.raises(ValueError, match="architecture differs.*layers.2"):
        final_loss(root, 1, init_from=ckpt, preset=None, model_overrides={"n_layers": 3})
    with pytest.warns(UserWarning, match=r"change what the checkpoint's weights mean.*rope_theta"):
        final_loss(root, 1, init_from=ckpt, preset=None, model_overrides={"rope_theta": 5e5})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        final_loss(root, 1, init_from=str(tmp_path / "nope.ckpt"))


def test_fine_tuning_onto_a_larger_token_space_carries_the_rows_that_mean_the_same():
    """Adding audio and taller images to a text+image model: every shared range's rows (moved
    to their new ids), the padding rows and every body weight come from the checkpoint, the new
    rows start fresh."""
    from anyseq.checkpoint import init_from_checkpoint
    from anyseq.config import ModelConfig
    from anyseq.model import Transformer
    from anyseq.vocab import TokenSpace

    prints = {"text": "t1", "visual": "v1"}
    old = TokenSpace(300, {"visual": [40]}, max_height=8, tokenizers=prints)
    new = TokenSpace(300, {"visual": [40], "audio": [16, 16]}, max_height=12, tokenizers={**prints, "audio": "a1"})
    config = ModelConfig.from_preset("tiny")
    torch.manual_seed(0)
    source = Transformer(config.with_vocab(old.size))
    ckpt = {"anyseq": {"model_config": source.config.to_dict(), "token_space": old.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}
    target = Transformer(config.with_vocab(new.size))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ranges = init_from_checkpoint(target, new, ckpt, "test")
    assert ranges == {"carried": ["shape/h", "shape/t", "shape/w", "special", "text", "visual/0"],
                      "fresh": ["audio/0", "audio/1"]}
    for key in ("tok_embeddings.weight", "output.weight"):
        got, had, fresh = target.state_dict()[key], source.state_dict()[key], before[key]
        for name in ("text", "special", "shape/w", "visual/0"):
            a, b = old.ranges[name], new.ranges[name]
            assert torch.equal(got[b.start : b.stop], had[a.start : a.stop]), name
        h_old, h_new = old.ranges["shape/h"], new.ranges["shape/h"]
        assert torch.equal(got[h_new.start : h_new.start + 8], had[h_old.start : h_old.stop])
        assert torch.equal(got[h_new.start + 8 : h_new.stop], fresh[h_new.start + 8 : h_new.stop])
        audio = slice(new.ranges["audio/0"].start, new.ranges["audio/1"].stop)
        assert torch.equal(got[audio], fresh[audio])
        assert new.size - new.num_valid == 20 and torch.equal(got[new.num_valid :], had[old.num_valid : old.num_valid + 20])
    assert torch.equal(target.layers[1].attention.wq.weight, source.layers[1].attention.wq.weight)
    with torch.device("meta"):
        unmade = Transformer(config.with_vocab(new.size))
    with pytest.raises(ValueError, match="meta device"):
        init_from_checkpoint(unmade, new, ckpt, "test")


def test_fine_tuning_starts_from_the_checkpoints_exact_probabilities():
    """Padding ids are never targets, but their logits count in the softmax: carried with the
    rest, the fine-tuned model's log-probabilities are the checkpoint's before any step. A space
    with more padding rows than the checkpoint's repeats its rows."""
    from anyseq.checkpoint import init_from_checkpoint
    from anyseq.config import ModelConfig
    from anyseq.model import Transformer
    from anyseq.vocab import TokenSpace

    space, wider = TokenSpace(300), TokenSpace(300, pad_to_multiple=1024)
    config = ModelConfig.from_preset("tiny")
    torch.manual_seed(0)
    source = Transformer(config.with_vocab(space.size)).eval()
    ckpt = {"anyseq": {"model_config": source.config.to_dict(), "token_space": space.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}
    torch.manual_seed(1)
    tuned, widened = Transformer(config.with_vocab(space.size)).eval(), Transformer(config.with_vocab(wider.size))
    init_from_checkpoint(tuned, space, ckpt, "test")
    ids = torch.randint(0, space.num_valid, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(tuned.logits(tuned(ids)).log_softmax(-1), source.logits(source(ids)).log_softmax(-1))
    init_from_checkpoint(widened, wider, ckpt, "test")
    trained, rows = source.output.weight[space.num_valid :], widened.output.weight[wider.num_valid :]
    assert (len(trained), len(rows)) == (40, 552) and torch.equal(rows, trained.repeat(14, 1)[:552])


def test_two_process_ddp_on_cpu(text_data, tmp_path):
    root, _ = text_data
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = fit_args(root, 3, ["--trainer.devices=2", "--trainer.strategy=ddp", f"--trainer.default_root_dir={tmp_path}"])
    run = subprocess.run([sys.executable, "-m", "anyseq.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs/train").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_training_recipe_parses(recipe, capsys):
    """The GPU recipes cannot run here; their every key must still be a real option."""
    with pytest.raises(SystemExit) as exit_:
        anyseq(["fit", "--config", str(recipe), "--print_config"])
    assert exit_.value.code == 0
    assert "anyseq.training.AnySeqModule" in capsys.readouterr().out


def test_print_config_shows_the_recipe(text_data, capsys):
    root, _ = text_data
    with pytest.raises(SystemExit) as exit_:
        anyseq(fit_args(root, 1, ["--print_config"]))
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "anyseq.training.AnySeqModule" in out and "preset: tiny" in out


def test_fit_from_python_with_a_command_line_present_does_not_warn(text_data, monkeypatch):
    """The demo runs fit in-process while its own argv is set: LightningCLI's warning is noise."""
    import warnings

    root, _ = text_data
    monkeypatch.setattr(sys, "argv", ["anyseq", "demo", "--quick"])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        anyseq(fit_args(root, 1, ["--print_config"]))
    assert not [w for w in caught if "args parameter" in str(w.message)]


def test_unknown_config_key_is_named(text_data, capsys):
    root, _ = text_data
    assert anyseq(fit_args(root, 1, ["--model.init_args.learning_rate=0.1"])) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and err.endswith("see `anyseq fit --help`\n") and "usage:" not in err


@pytest.mark.parametrize("setting, says", [
    ("--data.init_args.train=[{nope}]", "{nope}: shard folder does not exist; create it with `anyseq tokenize-dataset"),
    ("--model.init_args.preset=smal", "unknown model preset 'smal'; choose one of ['100m'"),
    ("--data.init_args.seq_len=4096", "data seq_len=4096 is longer than the model's max_seq_len=256: lower"),
    ("--ckpt_path={nope}", "Checkpoint file not found"),
    ("--model.init_args.lr=-1", "AnySeqModule: lr must be > 0, got -1.0"),
    ("--model.init_args.model_overrides={{n_layer: 3}}", "model_overrides has unknown fields ['n_layer']; ModelConfig's"),
], ids=["shards", "preset", "seq_len", "ckpt_path", "lr", "model_overrides"])
def test_a_bad_setting_ends_fit_in_one_line_that_names_it(text_data, tmp_path, capsys, setting, says):
    root, _ = text_data
    assert anyseq(fit_args(root, 1, [setting.format(nope=tmp_path / "nope")])) == 2
    err = capsys.readouterr().err
    assert f"anyseq fit: error: {says.format(nope=tmp_path / 'nope')}" in err and "Traceback" not in err


@pytest.mark.parametrize("setting, says", [
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
    ({"betas": (0.9, 1.0)}, "betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    ({"betas": (-0.1, 0.95)}, "betas must be two numbers in [0, 1), got (-0.1, 0.95)"),
    ({"lr": -1, "warmup_steps": -5}, "lr must be > 0, got -1; warmup_steps must be >= 0, got -5"),
    ({"max_steps": 0}, "max_steps must be > 0, or null for trainer.max_steps, got 0"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio must be in [0, 1], got 1.5"),
    ({"z_loss": -1e-4}, "z_loss must be >= 0, got -0.0001"),
    ({"model_overrides": {"n_layer": 3}}, "model_overrides has unknown fields ['n_layer']; ModelConfig's fields are"),
])
def test_a_bad_module_setting_is_refused_at_construction_by_name(setting, says):
    from anyseq.training import AnySeqModule

    with pytest.raises(ValueError, match=re.escape(says)):
        AnySeqModule(**setting)


def test_weight_decay_skips_every_norm_and_bias_qk_norm_included():
    """Only the weights of linear maps and embeddings decay; QK-norm's per-head weight is 2-D,
    and a norm all the same."""
    from anyseq.config import ModelConfig
    from anyseq.model import Transformer
    from anyseq.training import AnySeqModule

    module = AnySeqModule(max_steps=10, model_overrides={"qk_norm": True})
    module.model = Transformer(ModelConfig.from_preset("tiny", qk_norm=True).with_vocab(64))
    names = {id(p): name for name, p in module.model.named_parameters()}
    decay, plain = module.configure_optimizers()["optimizer"].param_groups
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in plain["params"]} == {name for name in names.values() if "norm" in name}
    assert {"layers.0.attention.q_norm.weight", "layers.0.attention.k_norm.bias"} <= {names[id(p)] for p in plain["params"]}
    assert all(names[id(p)].endswith(("embeddings.weight", ".w1.weight", ".w2.weight", ".w3.weight", "wq.weight",
                                      "wk.weight", "wv.weight", "wo.weight", "output.weight")) for p in decay["params"])


def test_a_training_step_waits_for_the_device_once(text_data, monkeypatch):
    """Which modalities have targets (their losses are logged where they have some) is one read
    of the device per step; nothing else AnySeqModule does in a step makes the host wait for it.
    (The loss kernel's check of its targets is the kernel's own.)"""
    from anyseq.training import AnySeqModule

    reads, stepping = [], []

    def counted(name):
        read = getattr(torch.Tensor, name)

        def counting(self, *args):
            if stepping and sys._getframe(1).f_globals.get("__name__") == "anyseq.training":
                reads.append(name)
            return read(self, *args)
        return counting

    for name in ("__bool__", "__int__", "__float__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    training_step = AnySeqModule.training_step

    def step(self, batch, batch_idx):
        stepping.append(batch_idx)
        try:
            return training_step(self, batch, batch_idx)
        finally:
            stepping.clear()

    monkeypatch.setattr(AnySeqModule, "training_step", step)
    final_loss(text_data[0], 2)
    assert reads == ["tolist", "tolist"]


def test_a_bug_in_training_keeps_its_traceback(text_data, monkeypatch):
    """Only errors raised on purpose become one line; a ValueError from a mistake propagates."""
    root, _ = text_data
    monkeypatch.setattr("anyseq.training.linear_cross_entropy", lambda *args: (1, 2, 3))
    with pytest.raises(ValueError, match="too many values to unpack"):
        anyseq(fit_args(root, 1))


def test_missing_shard_folder_says_what_to_run(tmp_path):
    from anyseq.data.datamodule import ShardDataModule

    with pytest.raises(FileNotFoundError, match="tokenize-dataset"):
        ShardDataModule(train=[str(tmp_path / "nope")], seq_len=32, batch_size=2).token_space()


def test_checkpoint_from_another_token_space_is_refused(text_data, sentences, tmp_path):
    root, _ = text_data
    first = final_loss(root, 2, ckpt_dir=tmp_path / "a", save_at=2)
    assert first
    ckpt = next((tmp_path / "a").glob("*.ckpt"))
    other = tmp_path / "other"
    tok = TextTokenizer.train(sentences * 10, vocab_size=299, output=other / "text.model")
    manifest = other / "m.jsonl"
    manifest.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    assert anyseq(["tokenize-dataset", "--manifest", str(manifest), "--out", str(other / "shards"),
                   "--text-tokenizer", str(other / "text.model")]) == 0
    from anyseq.vocab import TokenSpaceMismatch

    with pytest.raises(TokenSpaceMismatch):
        final_loss(other, 4, resume_from=str(ckpt))
    assert tok.vocab_size == 299


def test_prompt_longer_than_the_context_is_a_clear_error(text_data, tmp_path, capsys):
    root, _ = text_data
    final_loss(root, 1, ckpt_dir=tmp_path, save_at=1)
    ckpt = next(tmp_path.glob("*.ckpt"))
    rc = anyseq(["generate", "--checkpoint", str(ckpt), "--text", "the fox " * 200, "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "context" in capsys.readouterr().err


def test_the_loss_weights_each_target_modality_and_logs_each():
    """modality_loss_weights scale each target modality's tokens; loss_<modality> is the plain
    mean over that modality's targets, whatever its weight."""
    from anyseq.config import ModelConfig
    from anyseq.model import Transformer
    from anyseq.training import AnySeqModule

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny").with_vocab(97))
    ids = torch.randint(0, 97, (1, 17))
    modality = torch.tensor([[0] * 10 + [1] * 6])  # 10 text targets, then 6 image targets
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "document_ids": torch.zeros(1, 16, dtype=torch.int32),
             "positions": torch.arange(16)[None], "modality": modality, "loss_weight": torch.ones(1, 16)}
    losses = {}
    for name, weights in (("plain", None), ("text only", {"image": 0.0}), ("image x3", {"image": 3.0})):
        module = AnySeqModule(modality_loss_weights=weights)
        module.model = model
        losses[name] = module.loss(batch)
    loss, logs = losses["plain"]
    assert set(logs) == {"loss", "loss_text", "loss_image", "tokens"} and int(logs["tokens"]) == 16
    torch.testing.assert_close(loss, (10 * logs["loss_text"] + 6 * logs["loss_image"]) / 16)
    torch.testing.assert_close(losses["text only"][0], logs["loss_text"])
    torch.testing.assert_close(losses["image x3"][0], (10 * logs["loss_text"] + 18 * logs["loss_image"]) / 28)
    assert all(torch.equal(losses[n][1]["loss_image"], logs["loss_image"]) for n in losses)
    with pytest.raises(ValueError, match="unknown modalities.*speech"):
        AnySeqModule(modality_loss_weights={"speech": 1.0})
