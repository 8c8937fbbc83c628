"""Options applied from outside the model change memory and speed, never the numbers:
activation checkpointing and torch.compile give the eager loss and gradients, a meta-device
build draws the same weights every time, and FSDP2 on two CPU processes trains exactly as DDP
does, through a resume, into a checkpoint that generation reads."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from anyseq.cli import main as anyseq
from anyseq.config import ModelConfig
from anyseq.parallelize import activation_bytes, apply_activation_checkpointing, build

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 97


def tiny(**overrides) -> ModelConfig:
    return replace(ModelConfig.from_preset("tiny"), n_layers=4, **overrides).with_vocab(VOCAB)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 48), generator=g)
    docs = torch.cat([torch.zeros(2, 30), torch.ones(2, 18)], 1).int()  # two packed documents
    return ids, docs


def forward_loss(model, ids, docs):
    torch.manual_seed(1)  # the dropout masks
    logits = model.logits(model(ids[:, :-1], docs[:, :-1]))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def loss_and_grads(model, ids, docs):
    loss = forward_loss(model, ids, docs)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def kept_bytes(model, ids, docs) -> int:
    """What the forward leaves alive for the backward."""
    kept, loss = activation_bytes(model, lambda: forward_loss(model, ids, docs))
    loss.backward()
    return kept


def fresh(config, **options):
    torch.manual_seed(0)
    return build(config, **options)


def test_a_meta_device_build_draws_the_same_weights_every_time():
    a, b = fresh(tiny(tie_embeddings=True)), fresh(tiny(tie_embeddings=True))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.output.weight is a.tok_embeddings.weight  # materialising keeps the tie
    assert a.layers[1].attention.wo.weight.std() < a.layers[1].attention.wq.weight.std()  # GPT-2's residual scaling


def test_activation_checkpointing_gives_the_same_loss_and_gradients_and_keeps_less():
    config, (ids, docs) = tiny(dropout=0.1), batch()
    plain = fresh(config)
    expected = loss_and_grads(plain, ids, docs)
    kept = {}
    for every, policy in ((1, "full"), (2, "full"), (1, "save_matmuls")):
        model = fresh(config, activation_checkpointing=every, checkpoint_policy=policy)
        assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints stay interchangeable
        loss, grads = loss_and_grads(model, ids, docs)
        assert torch.equal(loss, expected[0])  # the dropout masks replay exactly
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[1][name], rtol=0, atol=1e-7, msg=name)
        kept[every, policy] = kept_bytes(model, ids, docs) / kept_bytes(fresh(config), ids, docs)
    assert kept[1, "full"] < 0.15  # 4 blocks: only their inputs and the logits stay
    assert 0.4 < kept[2, "full"] < 0.65  # every other block
    assert kept[1, "full"] < kept[1, "save_matmuls"] < 0.8  # the matmul and attention outputs stay
    with pytest.raises(ValueError, match="every n-th block"):
        apply_activation_checkpointing(plain, -1)
    with pytest.raises(ValueError, match="checkpoint_policy 'some'"):
        apply_activation_checkpointing(plain, 1, "some")


def test_compiled_checkpointed_blocks_give_the_eager_loss_and_gradients():
    """The GPU recipe's combination: each block compiled, its activations recomputed."""
    config, (ids, docs) = tiny(), batch()
    eager = loss_and_grads(fresh(config), ids, docs)
    model = fresh(config, activation_checkpointing=1, compile=True)
    loss, grads = loss_and_grads(model, ids, docs)
    torch.testing.assert_close(loss, eager[0], rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert kept_bytes(model, ids, docs) < 0.15 * kept_bytes(fresh(config), ids, docs)


def test_fsdp2_in_one_process_draws_the_unsharded_weights_and_computes_in_bf16(tmp_path):
    """bf16-mixed's policy: blocks gather and compute in bf16, the stored shards and their
    gradients stay fp32."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    config, (ids, docs) = tiny(), batch()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = fresh(config, mesh=init_device_mesh("cpu", (1,)), param_dtype=torch.bfloat16)
        whole = fresh(config)
        for (name, p), q in zip(model.named_parameters(), whole.parameters()):
            assert isinstance(p, DTensor) and torch.equal(p.full_tensor(), q), name
        seen = []
        model.layers[0].attention.wq.register_forward_hook(lambda m, i, o: seen.append((m.weight.dtype, o.dtype)))
        loss, grads = loss_and_grads(model, ids, docs)
        assert seen == [(torch.bfloat16, torch.bfloat16)] and torch.isfinite(loss)
        assert {p.dtype for p in model.parameters()} == {g.dtype for g in grads.values()} == {torch.float32}
    finally:
        dist.destroy_process_group()


# -- FSDP2 through anyseq fit, two CPU processes ---------------------------------------------------

def test_a_finished_run_closes_its_process_group(tmp_path):
    """Left open to interpreter exit, gloo's threads now and then abort a run that succeeded."""
    import torch.distributed as dist
    from anyseq.cli import close_process_group

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    close_process_group()
    assert not dist.is_initialized()
    close_process_group()  # a one-process run never opened one: nothing to do


def fit(data, out, strategy, steps, extra=(), ok=True):
    """``anyseq fit`` on two CPU processes; its stderr (which must report success if ``ok``)."""
    args = [
        "fit", "--config", str(ROOT / "configs/train/text_tiny.yaml"), f"--data.init_args.train=[{data}]",
        "--data.init_args.seq_len=32", "--data.init_args.batch_size=4", "--trainer.devices=2",
        f"--trainer.strategy={strategy}", f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
        "--trainer.logger=false", "--model.init_args.max_steps=6",  # one schedule, wherever a run stops
        "--model.init_args.model_overrides={tie_embeddings: true, dropout: 0.1}",
        "--trainer.gradient_clip_val=0.5",  # engaged: the gradient norm starts near 1.1
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "anyseq.cli", *args], cwd=out.parent, env=env,
                         capture_output=True, text=True, timeout=300)
    assert (run.returncode == 0) == ok, run.stderr[-3000:]
    return run.stderr


def last_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def assert_same_weights(got, expected, atol=1e-6):
    assert sorted(got) == sorted(expected)
    worst = max((got[name] - expected[name]).abs().max().item() for name in expected)
    assert worst <= atol, f"weights differ by up to {worst:.2e}"


def test_fsdp2_on_two_cpu_processes_trains_as_ddp_does_and_resumes_exactly(text_data, tmp_path):
    """Stopped at step 3 (one full checkpoint file), resumed from it to step 6 writing per-rank
    shards instead: the weights are DDP's, and every reader takes both kinds of checkpoint."""
    from anyseq.checkpoint import load_bundle, read_checkpoint

    text_shards = text_data[0] / "shards"
    ddp, fsdp, sharded = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "sharded"
    fit(text_shards, ddp, "ddp", 6)
    log = fit(text_shards, fsdp, "fsdp2", 3, ["--model.init_args.activation_checkpointing=1"])
    assert "model: FSDP2 over 2 processes, activation checkpointing (full) every 1 block(s)" in log
    stopped = fsdp / "checkpoints" / "last.ckpt"
    assert stopped.is_file()
    model = load_bundle(stopped).model
    assert model.output.weight is model.tok_embeddings.weight  # loading re-ties
    fit(text_shards, sharded, "anyseq.strategy.FSDP2Strategy", 6, [
        "--trainer.strategy.save_distributed_checkpoint=true", "--model.init_args.activation_checkpointing=1",
        f"--ckpt_path={stopped}"])
    folder = sharded / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2
    assert_same_weights(read_checkpoint(folder)["state_dict"], last_weights(ddp))  # the optimizer's state resumed too
    assert anyseq(["generate", "--checkpoint", str(folder), "--text", "the", "--to", "text",
                   "--max-text-tokens", "4", "--out", str(tmp_path / "samples")]) == 0
    assert (tmp_path / "samples" / "samples.jsonl").exists()
    assert anyseq(["export-hf", "--checkpoint", str(folder), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    # and an fsdp2 run resumes from the folder (every rank reading its own shards)
    fit(text_shards, sharded, "anyseq.strategy.FSDP2Strategy", 7, [
        "--trainer.strategy.save_distributed_checkpoint=true", f"--ckpt_path={folder}"])
    assert read_checkpoint(folder)["global_step"] == 7
    # and fine-tunes from it: each rank assembles the weights alone, then shards them
    log = fit(text_shards, tmp_path / "tuned", "fsdp2", 1, [f"--model.init_args.init_from={folder}"])
    assert f"init_from {folder}: carried the weights" in log
    with pytest.raises(FileNotFoundError, match="not a distributed checkpoint"):
        read_checkpoint(tmp_path)


def test_fsdp2_with_compiled_checkpointed_blocks_trains_as_eager_ddp_does(text_data, tmp_path):
    """The 7B recipe's combination at toy size: compile, activation checkpointing, FSDP2. Without
    dropout: compiled code draws its masks from its own generator."""
    no_dropout = "--model.init_args.model_overrides={tie_embeddings: true, dropout: 0.0}"
    fit(text_data[0] / "shards", tmp_path / "ddp", "ddp", 6, [no_dropout])
    log = fit(text_data[0] / "shards", tmp_path / "compiled", "fsdp2", 6, [
        no_dropout, "--model.init_args.compile=true", "--model.init_args.activation_checkpointing=1"])
    assert "activation checkpointing (full) every 1 block(s), torch.compile per block" in log
    # compiled kernels sum in another order: 6 Adam steps later they differ by up to 1.6e-6
    assert_same_weights(last_weights(tmp_path / "compiled"), last_weights(tmp_path / "ddp"), atol=1e-5)


def test_tensor_parallelism_is_refused_with_what_to_use(text_data, tmp_path):
    log = fit(text_data[0] / "shards", tmp_path / "tp", "lightning.pytorch.strategies.ModelParallelStrategy", 1,
              ["--trainer.strategy.tensor_parallel_size=2", "--trainer.strategy.data_parallel_size=1"], ok=False)
    assert "tensor_parallel_size=2: anyseq shards with FSDP2 only; use --trainer.strategy=fsdp2" in log


def test_fsdp1_is_refused_with_what_to_use():
    """Lightning refuses FSDP1 on a CPU before the model sees it; on a GPU the module does."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from anyseq.training import AnySeqModule

    module = AnySeqModule()
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match=r"'fsdp' \(FSDP1, one flat unit\) is not supported: use --trainer.strategy=fsdp2"):
        module._sharding()


def test_the_activation_checkpointing_benchmark_runs_and_reports_ratios(tmp_path, monkeypatch, script):
    import json

    bench = script("bench_activation_checkpointing")
    out = tmp_path / "ac.json"
    monkeypatch.setattr(sys, "argv", ["bench", "--presets", "tiny", "--seq", "64", "--steps", "1", "--out", str(out)])
    bench.main()
    rows = json.loads(out.read_text())[0]["rows"]
    assert [(r["activation_checkpointing"], r["policy"]) for r in rows] == list(bench.SETTINGS)
    assert rows[0]["saved_ratio"] == 1.0 > rows[1]["saved_ratio"] > rows[3]["saved_ratio"]
    assert rows[3]["saved_ratio"] < rows[2]["saved_ratio"] < 1.0
