"""RMSNorm (optionally fused with the residual add): the Triton kernel equals the reference."""

import pytest
import torch

from anyseq.kernels import rms_norm, use_backend
from anyseq.kernels.testing import GRAD_FACTOR, OUTPUT_FACTOR, assert_within_rule, kernel_device

DEVICE = kernel_device()


def tensors(shape, dtype, residual, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device, dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(device, dtype)
    r = torch.randn(shape, generator=g).to(device, dtype) if residual else None
    grads = [torch.randn(shape, generator=g).to(device, dtype) for _ in range(2)]
    return x, w, r, grads


def run(backend, x, w, r, grads):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    r = None if r is None else r.detach().requires_grad_()
    with use_backend(backend):
        out = rms_norm(x, w, 1e-5, residual=r)
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, grads[: len(outs)])
    return (*outs, x.grad, w.grad) + (() if r is None else (r.grad,))


SHAPES = [(1, 1), (3, 5, 17), (2, 130), (7, 64)]


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "fused-residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_triton_matches_fp64_oracle(shape, dtype, residual):
    x, w, r, grads = tensors(shape, dtype, residual)
    want = run("torch", x.double(), w.double(), None if r is None else r.double(), [g.double() for g in grads])
    same_dtype = run("torch", x, w, r, grads)
    got = run("triton", x, w, r, grads)
    names = ["y", "h"][: 1 + residual] + ["dx", "dweight"] + ["dresidual"] * residual
    for name, g, t, o in zip(names, got, same_dtype, want):
        assert g.dtype == dtype, name
        assert_within_rule(name, g, t, o, OUTPUT_FACTOR if name in ("y", "h") else GRAD_FACTOR)


def test_fused_residual_stream_is_exactly_the_sum():
    x, w, r, _ = tensors((4, 33), torch.float16, True)
    with use_backend("triton"):
        _, h = rms_norm(x, w, residual=r)
    assert torch.equal(h, x + r)


def test_bad_weight_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 8), torch.ones(7))


def test_custom_op_passes_opcheck():
    x, w, r, _ = tensors((3, 20), torch.float32, True)
    torch.library.opcheck(torch.ops.anyseq.rms_norm, (x.requires_grad_(), w.requires_grad_(), r, 1e-5))
    torch.library.opcheck(torch.ops.anyseq.rms_norm, (x, w, None, 1e-5))


@pytest.mark.gpu
@pytest.mark.parametrize("residual", [False, True])
def test_gpu_bf16_matches_oracle(residual):
    x, w, r, grads = tensors((8192, 4096), torch.bfloat16, residual, "cuda")
    want = run("torch", x.double(), w.double(), None if r is None else r.double(), [g.double() for g in grads])
    same_dtype = run("torch", x, w, r, grads)
    got = run("triton", x, w, r, grads)
    names = ["y", "h"][: 1 + residual] + ["dx", "dweight"] + ["dresidual"] * residual
    for name, g, t, o in zip(names, got, same_dtype, want):
        assert_within_rule(name, g, t, o, OUTPUT_FACTOR if name in ("y", "h") else GRAD_FACTOR)
