"""``linear_cross_entropy``: next-token loss from hidden states without the (N, V) logits.

The vocabulary is walked in chunks: each chunk's logits ``hidden @ weight[chunk].T`` come
from one matmul, are folded into a running log-sum-exp (forward) or turned into their
gradient in place (backward, which recomputes them), and are dropped. Only ``N x chunk``
logits live at a time, and each output-embedding row's gradient is written by one matmul.
Per-token loss and log-sum-exp are both outputs, so callers compose per-token weights and
z-loss themselves. The chunk kernels are Triton on the GPU and PyTorch in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anyseq.kernels.backend import resolve, triton_module

CHUNK_ELEMENTS = 1 << 27  # logits held at once by default (256 MiB in bf16)


class _TorchChunks:
    """Reference chunk operations (the Triton module provides the same two functions)."""

    @staticmethod
    def update(logits: Tensor, targets: Tensor, v0: int, lse: Tensor, target_logit: Tensor) -> None:
        x = logits.float()
        lse.copy_(torch.logaddexp(lse, torch.logsumexp(x, 1)))
        local = targets - v0
        inside = (local >= 0) & (local < x.shape[1])
        picked = x.gather(1, local.clamp(0, x.shape[1] - 1)[:, None]).squeeze(1)
        target_logit.copy_(torch.where(inside, picked, target_logit))

    @staticmethod
    def grad(logits: Tensor, targets: Tensor, v0: int, lse: Tensor, g_loss: Tensor, g_lse: Tensor) -> Tensor:
        d = (g_loss + g_lse)[:, None] * torch.exp(logits.float() - lse[:, None])
        local = targets - v0
        inside = (local >= 0) & (local < d.shape[1])
        d.scatter_add_(1, local.clamp(0, d.shape[1] - 1)[:, None], torch.where(inside, -g_loss, 0.0)[:, None])
        return d.to(logits.dtype)


def _chunks(impl: str, device: torch.device):
    return _TorchChunks if impl == "torch" else triton_module("cross_entropy_triton", device)


def _forward(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk: int, impl: str):
    ops = _chunks(impl, hidden.device)
    n = hidden.shape[0]
    lse = torch.full((n,), float("-inf"), device=hidden.device, dtype=torch.float32)
    target_logit = torch.zeros(n, device=hidden.device, dtype=torch.float32)
    for v0 in range(0, weight.shape[0], chunk):
        ops.update(hidden @ weight[v0 : v0 + chunk].T, targets, v0, lse, target_logit)
    loss = torch.where(targets == ignore_index, 0.0, lse - target_logit)
    return loss, lse


def _backward(hidden, weight, targets, lse, g_loss, g_lse, ignore_index: int, chunk: int, impl: str):
    ops = _chunks(impl, hidden.device)
    g_loss = torch.where(targets == ignore_index, 0.0, g_loss.float()).contiguous()
    g_lse = g_lse.float().contiguous()
    dhidden = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32)
    dweight = torch.empty_like(weight)
    for v0 in range(0, weight.shape[0], chunk):
        w = weight[v0 : v0 + chunk]
        dlogits = ops.grad(hidden @ w.T, targets, v0, lse, g_loss, g_lse)
        torch.mm(dlogits.T, hidden, out=dweight[v0 : v0 + chunk])
        dhidden += dlogits @ w
    return dhidden.to(hidden.dtype), dweight


@torch.library.custom_op("anyseq::linear_cross_entropy", mutates_args=())
def _lce_op(
    hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk: int, impl: str
) -> tuple[Tensor, Tensor]:
    return _forward(hidden, weight, targets, ignore_index, chunk, impl)


@_lce_op.register_fake
def _(hidden, weight, targets, ignore_index, chunk, impl):
    n = hidden.shape[0]
    return hidden.new_empty(n, dtype=torch.float32), hidden.new_empty(n, dtype=torch.float32)


@torch.library.custom_op("anyseq::linear_cross_entropy_backward", mutates_args=())
def _lce_backward_op(
    hidden: Tensor, weight: Tensor, targets: Tensor, lse: Tensor, g_loss: Tensor, g_lse: Tensor, ignore_index: int,
    chunk: int, impl: str,
) -> tuple[Tensor, Tensor]:
    return _backward(hidden, weight, targets, lse, g_loss, g_lse, ignore_index, chunk, impl)


@_lce_backward_op.register_fake
def _(hidden, weight, targets, lse, g_loss, g_lse, ignore_index, chunk, impl):
    return torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    hidden, weight, targets, ignore_index, chunk, impl = inputs
    ctx.save_for_backward(hidden, weight, targets, output[1])
    ctx.args = (ignore_index, chunk, impl)


def _backward_formula(ctx, g_loss, g_lse):
    hidden, weight, targets, lse = ctx.saved_tensors
    dh, dw = _lce_backward_op(hidden, weight, targets, lse, g_loss, g_lse, *ctx.args)
    return dh, dw, None, None, None, None


_lce_op.register_autograd(_backward_formula, setup_context=_setup_context)


def default_chunk(n: int, vocab: int) -> int:
    """Vocabulary columns per chunk: about CHUNK_ELEMENTS logits, a multiple of 256."""
    return min(vocab, max(256, CHUNK_ELEMENTS // max(n, 1) // 256 * 256))


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-token cross-entropy and log-sum-exp of ``hidden @ weight.T``, both float32 (N,).

    hidden (N, C); weight (V, C), the output embedding; targets int64 (N,). The loss is 0 where
    ``targets == ignore_index``. Both outputs are differentiable w.r.t. hidden and weight.
    ``chunk_size``: vocabulary columns per chunk (default: about 2^27 logits at a time).
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)} must be (N, C) and weight "
                         f"{tuple(weight.shape)} (V, C) with the same C")
    if targets.shape != hidden.shape[:1] or targets.dtype.is_floating_point:
        raise ValueError(f"linear_cross_entropy: targets must be integer (N={hidden.shape[0]},), "
                         f"got {tuple(targets.shape)} {targets.dtype}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"linear_cross_entropy: chunk_size must be positive, got {chunk_size}")
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # the output projection runs in the autocast dtype, as nn.Linear would
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"linear_cross_entropy: hidden is {hidden.dtype} but weight is {weight.dtype}")
    targets = targets.long().contiguous()
    vocab = weight.shape[0]
    if not torch.compiler.is_compiling():
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
        if bad.any():
            raise ValueError(f"linear_cross_entropy: target {int(targets[bad][0])} is outside the vocabulary "
                             f"[0, {vocab}) and is not ignore_index={ignore_index}")
    impl = "triton" if resolve(hidden.device) == "triton" else "torch"
    chunk = default_chunk(hidden.shape[0], vocab) if chunk_size is None else min(chunk_size, vocab)
    return torch.ops.anyseq.linear_cross_entropy(hidden.contiguous(), weight.contiguous(), targets, ignore_index,
                                                 chunk, impl)
