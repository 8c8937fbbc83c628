"""``rms_norm``: RMSNorm in fp32, optionally fused with the residual add before it.

``y = x / rms(x) * weight`` in the input dtype; with ``residual`` it returns ``(y, h)`` where
``h = x + residual`` is the new residual stream. The Triton path is a registered custom op.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from anyseq.kernels.backend import resolve, triton_module


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None):
    h = x if residual is None else x + residual
    hf = h.float()
    y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
    return y if residual is None else (y, h)


@torch.library.custom_op("anyseq::rms_norm", mutates_args=())
def _rms_norm_op(x: Tensor, weight: Tensor, residual: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return triton_module("rms_norm_triton", x.device).forward(x, weight, residual, eps)


@_rms_norm_op.register_fake
def _(x, weight, residual, eps):
    h = torch.empty_like(x) if residual is not None else x.new_empty(0)
    return torch.empty_like(x), h, x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("anyseq::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(
    dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor, dh: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    return triton_module("rms_norm_triton", x.device).backward(dy, x, weight, rstd, dh)


@_rms_norm_backward_op.register_fake
def _(dy, x, weight, rstd, dh):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, residual, eps = inputs
    _, h, rstd = output
    ctx.fused = residual is not None
    ctx.save_for_backward(h if ctx.fused else x, weight, rstd)


def _backward(ctx, dy, dh, drstd):
    x, weight, rstd = ctx.saved_tensors
    dh = dh.contiguous() if ctx.fused and dh is not None else None
    dx, dw = _rms_norm_backward_op(dy.contiguous(), x, weight, rstd, dh)
    return dx, dw, (dx if ctx.fused else None), None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5, residual: Tensor | None = None):
    """RMSNorm over the last axis; ``(y, x + residual)`` when a residual is given."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},) "
                         f"for x {tuple(x.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"rms_norm: residual {tuple(residual.shape)} {residual.dtype} must match x "
                         f"{tuple(x.shape)} {x.dtype}")
    if resolve(x.device) != "triton":
        return rms_norm_reference(x, weight, eps, residual)
    residual = None if residual is None else residual.contiguous()
    y, h, _ = torch.ops.anyseq.rms_norm(x.contiguous(), weight.contiguous(), residual, float(eps))
    return y if residual is None else (y, h)
