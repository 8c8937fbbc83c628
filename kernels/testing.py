"""Oracles, mask layouts and the tolerance rule shared by the kernel tests (CPU and GPU).

The rule (as our peers use it): a kernel's error against an fp64 oracle may be at most
``factor`` times the error of PyTorch computing the same thing in the kernel's dtype
(2 for outputs, 3 for gradients), plus a small epsilon.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anyseq.kernels.backend import interpreting

OUTPUT_FACTOR, GRAD_FACTOR = 2.0, 3.0
EPS = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def kernel_device() -> torch.device:
    """Where this process runs the Triton kernels: the CPU under the interpreter, else the GPU.

    The same small test cases then check the interpreted kernels in CPU CI and the compiled
    ones on a GPU machine."""
    return torch.device("cpu" if interpreting() or not torch.cuda.is_available() else "cuda")


def max_error(x: Tensor, oracle: Tensor) -> float:
    return (x.double() - oracle.double()).abs().max().item() if x.numel() else 0.0


def assert_within_rule(what: str, got: Tensor, torch_same_dtype: Tensor, oracle: Tensor, factor: float) -> None:
    """err(got) <= factor * err(PyTorch in got's dtype) + eps, both against the fp64 oracle."""
    assert got.shape == oracle.shape, f"{what}: shape {tuple(got.shape)} != {tuple(oracle.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    ours, theirs = max_error(got, oracle), max_error(torch_same_dtype, oracle)
    eps = EPS[got.dtype] * max(1.0, oracle.abs().max().item() if oracle.numel() else 0.0)
    assert ours <= factor * theirs + eps, (
        f"{what}: error {ours:.3g} exceeds {factor} x PyTorch's {theirs:.3g} + {eps:.1g}"
    )


def oracle_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Softmax attention in fp64 with an explicit (B, T, S) boolean mask; rows with no key give 0."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ k.transpose(-1, -2)) * scale
    mask = mask[:, None]
    p = torch.softmax(scores.masked_fill(~mask, float("-inf")).masked_fill(~mask.any(-1, keepdim=True), 0.0), -1)
    return (p * mask.any(-1, keepdim=True)) @ v


def documents(lengths: list[list[int]]) -> Tensor:
    """(B, T) document ids from per-row document lengths (rows must have equal totals)."""
    return torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])


def spans(document_ids: Tensor, runs: list[tuple[int, int, int]]) -> Tensor:
    """Bidirectional span ids: each run (row, start, end) gets its own nonzero id."""
    ids = torch.zeros_like(document_ids)
    for n, (row, start, end) in enumerate(runs, 1):
        ids[row, start:end] = n
    return ids


def mask_from_ids(document_ids: Tensor, span_ids: Tensor) -> Tensor:
    """The mask spelled out token by token: same document, and causal unless both tokens
    lie in the same bidirectional span. Independent of the interval code it checks."""
    B, T = document_ids.shape
    mask = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                same_doc = document_ids[b, i] == document_ids[b, j]
                same_span = span_ids[b, i] != 0 and span_ids[b, i] == span_ids[b, j]
                mask[b, i, j] = bool(same_doc and (j <= i or same_span))
    return mask
