"""RMSNorm forward and backward in Triton, optionally fused with the residual add.

One program normalises one row in fp32. The backward writes dX row by row and the weight
gradient as per-program partial sums that are reduced afterwards, so it is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from anyseq.kernels.backend import interpreting, multiprocessors

INTERPRETED = interpreting()
MAX_FEATURES = 65536


@triton.jit
def _fwd_kernel(X, R, W, Y, H, RSTD, C, eps, HAS_RESIDUAL: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < C
    x = tl.load(X + row * C + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:  # h = x + r, rounded to the stream dtype exactly as the unfused add would be
        h = (x + tl.load(R + row * C + cols, mask=ok, other=0.0).to(tl.float32)).to(H.dtype.element_ty)
        tl.store(H + row * C + cols, h, mask=ok)
        x = h.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / C + eps)
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * C + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=ok)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd_kernel(DY, X, W, RSTD, DH, DX, DW_PARTIAL, N, C, HAS_DH: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < C
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    for row in range(pid, N, tl.num_programs(0)):
        offs = tl.cast(row, tl.int64) * C + cols
        xhat = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32) * tl.load(RSTD + row)
        dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
        wdy = w * dy
        dx = (wdy - xhat * (tl.sum(xhat * wdy, 0) / C)) * tl.load(RSTD + row)
        if HAS_DH:
            dx += tl.load(DH + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=ok)
        dw += dy * xhat
    tl.store(DW_PARTIAL + pid * C + cols, dw, mask=ok)


def _launch(C: int) -> tuple[int, int]:
    block = triton.next_power_of_2(C)
    if block > MAX_FEATURES:
        raise ValueError(f"rms_norm: the Triton kernel handles up to {MAX_FEATURES} features, got {C}")
    return block, min(16, max(1, block // 512))


def forward(x: Tensor, weight: Tensor, residual: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, h, rstd); h = x + residual (an empty tensor without a residual), rstd per row in fp32."""
    C = x.shape[-1]
    N = x.numel() // C
    block, warps = _launch(C)
    y = torch.empty_like(x)
    h = torch.empty_like(x) if residual is not None else x.new_empty(0)
    rstd = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    _fwd_kernel[(N,)](x, x if residual is None else residual, weight, y, y if residual is None else h, rstd, C, eps,
                      HAS_RESIDUAL=residual is not None, BLOCK_C=block, num_warps=warps)
    return y, h, rstd


def backward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor, dh: Tensor | None) -> tuple[Tensor, Tensor]:
    """(dx, dweight) given the normalised input ``x`` (h when a residual was fused)."""
    C = x.shape[-1]
    N = x.numel() // C
    block, warps = _launch(C)
    programs = max(1, min(N, 4 * multiprocessors(x.device)))  # each program sums the weight gradient of its rows
    dx = torch.empty_like(x)
    partial = torch.empty((programs, C), device=x.device, dtype=torch.float32)
    _bwd_kernel[(programs,)](dy, x, weight, rstd, dy if dh is None else dh, dx, partial, N, C,
                             HAS_DH=dh is not None, BLOCK_C=block, num_warps=warps)
    return dx, partial.sum(0).to(weight.dtype)
