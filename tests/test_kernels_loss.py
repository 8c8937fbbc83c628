"""Fused linear cross-entropy: loss, log-sum-exp and their gradients equal the materialised loss."""

import pytest
import torch
import torch.nn.functional as F

from anyseq.kernels import linear_cross_entropy, use_backend
from anyseq.kernels.testing import GRAD_FACTOR, OUTPUT_FACTOR, assert_within_rule, kernel_device

DEVICE = kernel_device()


def problem(N, C, V, dtype, device=DEVICE, ignored=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g).to(device, dtype)
    weight = (torch.randn(V, C, generator=g) / C**0.5).to(device, dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[list(ignored)] = -100
    upstream = torch.randn(2, N, generator=g).to(device)
    return hidden, weight, targets.to(device), upstream


def materialised(hidden, weight, targets):
    """What PyTorch users write: logits in the input dtype, loss in fp32."""
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, targets, reduction="none"), logits.logsumexp(-1)


def loss_and_grads(fn, hidden, weight, targets, upstream):
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss, lse = fn(hidden, weight, targets)
    ((loss * upstream[0]).sum() + (lse * upstream[1]).sum()).backward()
    return loss, lse, hidden.grad, weight.grad


CASES = [(1, 16, 97, None, ()), (37, 24, 300, 128, (3, 10)), (40, 32, 1000, 256, tuple(range(0, 40, 5)))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[f"N{c[0]}-V{c[2]}-chunk{c[3]}" for c in CASES])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_loss_matches_fp64_oracle(backend, case, dtype):
    N, C, V, chunk, ignored = case
    hidden, weight, targets, upstream = problem(N, C, V, dtype, ignored=ignored)
    want = loss_and_grads(materialised, hidden.double(), weight.double(), targets, upstream.double())
    same_dtype = loss_and_grads(materialised, hidden, weight, targets, upstream)
    with use_backend(backend):
        got = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_size=chunk),
                             hidden, weight, targets, upstream)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == dtype
    for name, g, t, w, factor in zip(("loss", "lse", "dhidden", "dweight"), got, same_dtype, want,
                                     (OUTPUT_FACTOR, OUTPUT_FACTOR, GRAD_FACTOR, GRAD_FACTOR)):
        assert_within_rule(name, g, t, w, factor)


def test_ignored_tokens_have_zero_loss_and_no_loss_gradient():
    hidden, weight, targets, _ = problem(9, 16, 50, torch.float32, ignored=(2, 5))
    hidden.requires_grad_()
    with use_backend("triton"):
        loss, lse = linear_cross_entropy(hidden, weight, targets)
    loss.sum().backward()
    assert loss[[2, 5]].tolist() == [0.0, 0.0] and torch.isfinite(lse).all()
    assert hidden.grad[[2, 5]].abs().max() == 0 and hidden.grad[0].abs().max() > 0


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_weighted_loss_with_z_loss_equals_the_materialised_formula(backend):
    """The training module's composition: per-token weights and z-loss on the returned lse."""
    hidden, weight, targets, _ = problem(20, 16, 70, torch.float32, ignored=(0, 7))
    w = torch.rand(20, device=DEVICE) * (targets != -100)
    z = 1e-2

    def total(loss, lse):
        return (w * loss).sum() / w.sum() + z * (w * lse**2).sum() / w.sum()

    def grads(fn):
        h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        value = total(*fn(h, W, targets))
        return (value, *torch.autograd.grad(value, (h, W)))

    with use_backend(backend):
        fused = grads(lambda h, W, t: linear_cross_entropy(h, W, t, chunk_size=32))
    reference = grads(materialised)
    for a, b in zip(fused, reference):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_chunk_size_does_not_change_the_result():
    hidden, weight, targets, upstream = problem(13, 8, 77, torch.float32)
    results = [loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_size=c), hidden, weight, targets,
                              upstream) for c in (1, 10, 77, None)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.allclose(a, b, atol=1e-5)


def test_bad_inputs_are_clear_errors():
    hidden, weight, targets, _ = problem(4, 8, 10, torch.float32)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 10, 2], device=DEVICE))
    with pytest.raises(ValueError, match="same C"):
        linear_cross_entropy(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(hidden, weight, targets[:3])


def test_custom_op_passes_opcheck():
    hidden, weight, targets, _ = problem(5, 8, 40, torch.float32)
    args = (hidden.requires_grad_(), weight.requires_grad_(), targets, -100, 16)
    torch.library.opcheck(torch.ops.anyseq.linear_cross_entropy, (*args, "triton"))
    torch.library.opcheck(torch.ops.anyseq.linear_cross_entropy, (*args, "torch"))


# -- GPU only ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [65536, 184622])
def test_gpu_bf16_matches_oracle(vocab):
    hidden, weight, targets, upstream = problem(1024, 1024, vocab, torch.bfloat16, "cuda", ignored=(1, 2, 3))
    want = loss_and_grads(materialised, hidden.double(), weight.double(), targets, upstream.double())
    same_dtype = loss_and_grads(materialised, hidden, weight, targets, upstream)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, upstream)
    for name, g, t, w, factor in zip(("loss", "lse", "dhidden", "dweight"), got, same_dtype, want,
                                     (OUTPUT_FACTOR, OUTPUT_FACTOR, GRAD_FACTOR, GRAD_FACTOR)):
        assert_within_rule(name, g, t, w, factor)


def _peak_bytes(fn, hidden, weight, targets, upstream):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss_and_grads(fn, hidden, weight, targets, upstream)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.gpu
def test_gpu_fused_loss_peak_memory_is_a_quarter_of_materialised_logits():
    hidden, weight, targets, upstream = problem(8192, 4096, 65536, torch.bfloat16, "cuda")
    fused = _peak_bytes(linear_cross_entropy, hidden, weight, targets, upstream)
    full = _peak_bytes(materialised, hidden, weight, targets, upstream)
    assert fused <= 0.25 * full, f"fused loss peak {fused / 2**30:.2f} GiB vs materialised {full / 2**30:.2f} GiB"
