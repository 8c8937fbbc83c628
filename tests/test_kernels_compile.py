"""Every Triton kernel compiles for an H200 (sm_90) on this GPU-less machine, and every variant
the launchers or the autotuner can pick would load there: within shared memory, no register
spills, and the attention matmuls on Hopper's warpgroup tensor cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from triton import knobs

from anyseq.kernels.attention_triton import _DQ_CONFIGS, _FWD_CONFIGS

KERNELS = {
    "attention_triton._fwd_kernel", "attention_triton._bwd_delta_kernel", "attention_triton._bwd_dq_kernel",
    "attention_triton._bwd_dkdv_kernel", "decode_triton._split_kernel", "decode_triton._merge_kernel",
    "cross_entropy_triton._update_kernel", "cross_entropy_triton._grad_kernel",
    "rms_norm_triton._fwd_kernel", "rms_norm_triton._bwd_kernel",
}


def _has_nvidia_tools() -> bool:
    try:
        return all(Path(tool.path).exists() for tool in (knobs.nvidia.ptxas, knobs.nvidia.cuobjdump))
    except RuntimeError:
        return False


pytestmark = pytest.mark.skipif(not _has_nvidia_tools(),
                                reason="triton's bundled ptxas/cuobjdump are missing (a non-Linux triton wheel)")


def _compiling(args: list[str]) -> subprocess.CompletedProcess:
    """Python in a process where Triton compiles (the suite's interpreter switch removed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd="/", timeout=600)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("compile")
    run = _compiling(["-m", "anyseq.kernels.compile_check", "--gpu", "h200", "--out", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "compile_h200.md").read_text().count("| yes |") > 0
    return json.loads((out / "compile_h200.json").read_text())["kernels"]


def test_every_kernel_compiles_for_hopper(compiled):
    assert {c["kernel"] for c in compiled} == KERNELS


def test_every_variant_loads_without_spilling(compiled):
    refused = [c for c in compiled if not c["fits"] or c["spilled_bytes"] != 0]
    assert not refused, refused


def test_every_autotuning_candidate_is_compiled_per_head_dim(compiled):
    for kernel, table in (("_fwd_kernel", _FWD_CONFIGS), ("_bwd_dq_kernel", _DQ_CONFIGS)):
        for head_dim in (64, 128):
            variants = {(c["constants"]["BLOCK_M"], c["constants"]["BLOCK_N"], c["num_warps"], c["num_stages"])
                        for c in compiled if c["kernel"] == f"attention_triton.{kernel}"
                        and c["constants"]["HEAD_DIM"] == head_dim}
            expected = {(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)
                        for cfg in table[head_dim]}
            assert variants == expected, (kernel, head_dim)


def test_attention_matmuls_use_warpgroup_tensor_cores(compiled):
    for c in compiled:
        if c["kernel"] in ("attention_triton._fwd_kernel", "attention_triton._bwd_dq_kernel",
                           "attention_triton._bwd_dkdv_kernel"):
            assert c["tensor_cores"] == "wgmma", c


def test_the_compile_only_driver_leaves_nothing_a_real_gpu_would_launch():
    code = "\n".join([
        "import torch",
        "from anyseq.kernels import compile_check as cc, rms_norm_triton as r",
        "with cc.compiling_for(cc.GPUS['h200']) as fake:",
        "    cc._rms_norm(fake, torch.bfloat16)",
        "    assert r._fwd_kernel.device_caches, 'nothing was compiled'",
        "assert not r._fwd_kernel.device_caches and len(fake.log) == 8, fake.log",
    ])
    run = _compiling(["-c", code])
    assert run.returncode == 0, run.stderr[-3000:]


def test_compiling_under_the_interpreter_is_a_clear_error():
    from anyseq.kernels.backend import interpreting
    from anyseq.kernels.compile_check import GPUS, compiling_for

    if not interpreting():
        pytest.skip("this process compiles kernels; the error is about the interpreter")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        with compiling_for(GPUS["h200"]):
            pass
