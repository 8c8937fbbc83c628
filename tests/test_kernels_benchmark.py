"""The kernel benchmark script: a clear exit without a GPU, and its targets check reads ratios right."""

import json
import subprocess
import sys

import pytest
import torch

from anyseq.kernels.benchmark import SECTIONS, earlier_sections, main, markdown, packed_documents, targets_check, write


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is present")
def test_without_cuda_the_benchmark_exits_with_a_clear_message(tmp_path):
    run = subprocess.run([sys.executable, "-m", "anyseq.kernels.benchmark", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd="/")
    assert run.returncode == 2
    assert "needs a CUDA GPU" in run.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("seq", [256, 4096])
def test_packed_documents_fill_each_row_with_documents_of_at_least_32_tokens(seq):
    for seed in range(8):
        ids = packed_documents(3, seq, seed=seed)
        assert ids.shape == (3, seq)
        for row in ids:
            _, counts = torch.unique_consecutive(row, return_counts=True)
            assert (counts[:-1] >= 32).all()  # only the last one may be cut short
            assert len(counts) > 1 or seq < 1024  # a long row holds several documents


def test_a_later_run_replaces_only_its_own_sections_on_the_same_setup(tmp_path):
    env = {"gpu": "H200", "torch": "2.11", "triton": "3.6", "hbm_tbps": 4.8}
    decode = [{"batch": 8, "impl": "anyseq-triton (flash-decoding)", "hbm_fraction": 0.8}]
    write(tmp_path, env, {"decode": decode})
    assert earlier_sections(tmp_path / "kernels.json", env) == {"decode": decode}
    assert earlier_sections(tmp_path / "kernels.json", {**env, "gpu": "H100"}) == {}
    assert "| decode fraction of HBM bandwidth | 0.70 | 0.80 |" in (tmp_path / "kernels.md").read_text()


def test_targets_check_compares_ours_with_each_baseline_per_configuration():
    def row(mask, seq, impl, tflops):
        return {"mask": mask, "seq": seq, "head_dim": 128, "batch": 1, "heads": 16, "impl": impl,
                "fwd_tflops": tflops, "fwd_bwd_tflops": tflops}

    attention = [row("causal", 1024, "anyseq-triton", 420), row("causal", 1024, "sdpa-flash (is_causal)", 400),
                 row("causal", 4096, "anyseq-triton", 500), row("causal", 4096, "sdpa-flash (is_causal)", 400),
                 row("documents", 1024, "anyseq-triton", 300), row("documents", 1024, "flex (block mask)", 200),
                 {**row("documents", 1024, "sdpa (dense mask)", 0), "error": "OutOfMemoryError"}]
    del attention[-1]["fwd_tflops"]
    loss = [{"vocab": 65536, "impl": "anyseq-fused", "peak_bytes": 1, "fwd_bwd_ms": 11.0},
            {"vocab": 65536, "impl": "materialised logits", "peak_bytes": 8, "fwd_bwd_ms": 10.0}]
    decode = [{"impl": "anyseq-triton (flash-decoding)", "hbm_fraction": 0.65}]
    checks = {c["target"]: c for c in targets_check({"attention": attention, "loss": loss, "decode": decode})}
    assert checks["causal forward vs SDPA-flash"]["worst"] == pytest.approx(1.05) and checks[
        "causal forward vs SDPA-flash"]["met"]
    assert checks["documents forward vs FlexAttention"]["worst"] == pytest.approx(1.5)
    assert "documents forward vs SDPA dense mask" not in checks  # the baseline failed: no ratio, no verdict
    assert checks["fused loss memory vs materialised (at most)"]["worst"] == pytest.approx(0.125)
    assert checks["fused loss time vs materialised (at most)"]["met"]
    assert not checks["decode fraction of HBM bandwidth"]["met"]
    report = markdown({"attention": attention, "loss": loss, "decode": decode, "targets": list(checks.values())},
                      {"gpu": "test", "torch": "2", "triton": "3", "hbm_tbps": 4.8})
    assert "OutOfMemoryError" in report and "| causal forward vs SDPA-flash | 1.05 |" in report


def test_a_smoke_run_on_the_cpu_runs_every_section_and_baseline_end_to_end(tmp_path):
    assert main(["--out", str(tmp_path), "--smoke"]) == 0
    results = json.loads((tmp_path / "kernels.json").read_text())
    for section in SECTIONS:
        failed = [r for r in results[section] if "error" in r and "does not support backward on CPU" not in r["error"]]
        assert results[section] and not failed, failed  # FlexAttention's backward is GPU-only, reported as a row
    impls = {r["impl"] for r in results["attention"]}
    assert impls == {"anyseq-triton", "flex (block mask)", "sdpa (dense mask)", "sdpa-flash (is_causal)"}
    assert {r["impl"] for r in results["loss"]} == {"anyseq-fused", "materialised logits", "materialised, torch.compile"}
    assert "## Targets" in (tmp_path / "kernels.md").read_text()


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this baseline has no backward")


def test_a_baseline_whose_backward_fails_keeps_its_forward_figure(monkeypatch):
    from anyseq.kernels import benchmark

    sdpa = benchmark.F.scaled_dot_product_attention
    monkeypatch.setattr(benchmark.F, "scaled_dot_product_attention", lambda *a, **k: _NoBackward.apply(sdpa(*a, **k)))
    rows = list(benchmark.bench_attention([48], [32], 48, 64, benchmark.Device("cpu", torch.float32)))
    dense = [r for r in rows if r["impl"] == "sdpa (dense mask)"]
    assert len(dense) == 2
    for r in dense:
        assert r["fwd_tflops"] > 0 and "fwd_bwd_tflops" not in r and "no backward" in r["error"]
