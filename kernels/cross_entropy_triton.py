"""Row kernels over one vocabulary chunk of logits for the fused linear cross-entropy.

``update`` folds a chunk into the running log-sum-exp (online, in fp32) and picks the target
logit when it falls in the chunk; ``grad`` overwrites the chunk with its logit gradient
``(g_loss + g_lse) * softmax - g_loss * onehot``. The matmuls around them stay in cuBLAS.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from anyseq.kernels.backend import interpreting

INTERPRETED = interpreting()


@triton.jit
def _update_kernel(LOGITS, TARGETS, LSE, TARGET_LOGIT, stride_row, COLS, v0, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    for c0 in range(0, COLS, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < COLS, other=float("-inf")).to(tl.float32) * 1.4426950408889634
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp2(m - m_new) + tl.sum(tl.exp2(x - m_new), 0)
        m = m_new
    chunk = (m + tl.log2(s)) * 0.6931471805599453
    old = tl.load(LSE + row)
    top = tl.maximum(old, chunk)
    tl.store(LSE + row, top + tl.log(tl.exp(old - top) + tl.exp(chunk - top)))
    t = tl.load(TARGETS + row) - v0
    inside = (t >= 0) & (t < COLS)
    picked = tl.load(base + t, mask=inside, other=0.0).to(tl.float32)
    tl.store(TARGET_LOGIT + row, tl.where(inside, picked, tl.load(TARGET_LOGIT + row)))


@triton.jit
def _grad_kernel(LOGITS, TARGETS, LSE, G_LOSS, G_LSE, stride_row, COLS, v0, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    lse = tl.load(LSE + row)
    g_loss = tl.load(G_LOSS + row)
    g_total = g_loss + tl.load(G_LSE + row)
    t = tl.load(TARGETS + row) - v0
    for c0 in range(0, COLS, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        ok = cols < COLS
        p = tl.exp(tl.load(base + cols, mask=ok, other=0.0).to(tl.float32) - lse)
        d = g_total * p - tl.where(cols == t, g_loss, 0.0)
        tl.store(base + cols, d.to(LOGITS.dtype.element_ty), mask=ok)


def _block(cols: int) -> tuple[int, int]:
    if INTERPRETED:
        return 64, 1
    return min(4096, triton.next_power_of_2(cols)), 8


def update(logits: Tensor, targets: Tensor, v0: int, lse: Tensor, target_logit: Tensor) -> None:
    block, warps = _block(logits.shape[1])
    _update_kernel[(logits.shape[0],)](logits, targets, lse, target_logit, logits.stride(0), logits.shape[1], v0,
                                       BLOCK_V=block, num_warps=warps)


def grad(logits: Tensor, targets: Tensor, v0: int, lse: Tensor, g_loss: Tensor, g_lse: Tensor) -> Tensor:
    """The chunk's logit gradient, written over ``logits`` (the chunk is not needed afterwards)."""
    block, warps = _block(logits.shape[1])
    _grad_kernel[(logits.shape[0],)](logits, targets, lse, g_loss, g_lse, logits.stride(0), logits.shape[1], v0,
                                     BLOCK_V=block, num_warps=warps)
    return logits
