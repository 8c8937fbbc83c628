"""``attention``: one call for every mask the model needs, over per-query key intervals.

CUDA tensors run the Triton kernels (flash-decoding for a few queries at inference); CPU
tensors run the reference, SDPA with a dense boolean mask. ``sdpa`` and ``flex`` force the
baselines. The Triton paths are registered custom ops (forward, backward, decode) with fake
implementations and an autograd formula, so ``torch.compile`` sees opaque nodes, not graph breaks.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from anyseq.kernels.backend import resolve, triton_module
from anyseq.kernels.intervals import dense_mask

DECODE_MAX_QUERIES = 16  # at most this many new queries, without autograd, go to flash-decoding
DECODE_MAX_ROWS = 128  # ... provided query heads per KV head x new queries fit one decode program


# -- references and baselines ------------------------------------------------------------------
def _repeat_kv(x: Tensor, group: int) -> Tensor:
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor, scale: float) -> Tensor:
    """SDPA with the dense mask of the intervals. A row that sees no key would be NaN in
    SDPA, so it attends everywhere and is zeroed afterwards (zero output, zero gradient)."""
    mask = dense_mask(kv_start, kv_end, k.shape[2])  # (B, T, S)
    empty = ~mask.any(-1)
    mask = mask | empty[..., None]
    group = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, _repeat_kv(k, group), _repeat_kv(v, group), attn_mask=mask[:, None],
                                         scale=scale)
    return out.masked_fill(empty[:, None, :, None], 0.0)


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def interval_block_mask(kv_start: Tensor, kv_end: Tensor, S: int):
    """FlexAttention block mask equivalent to the intervals."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= kv_start[b, q_idx]) & (kv_idx < kv_end[b, q_idx])

    B, T = kv_start.shape
    return create_block_mask(mask_mod, B, None, T, S, device=kv_start.device)


def attention_flex(q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor, scale: float,
                   block_mask=None) -> Tensor:
    """FlexAttention with the intervals as a mask_mod (compiled on CUDA, eager elsewhere)."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = interval_block_mask(kv_start, kv_end, k.shape[2]) if block_mask is None else block_mask
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


# -- Triton custom ops ---------------------------------------------------------------------------
def _triton(q: Tensor, name: str = "attention_triton"):
    return triton_module(name, q.device)


@torch.library.custom_op("anyseq::attention", mutates_args=())
def _attention_op(
    q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    return _triton(q).forward(q, k, v, kv_start, kv_end, scale)


@_attention_op.register_fake
def _(q, k, v, kv_start, kv_end, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("anyseq::attention_backward", mutates_args=())
def _attention_backward_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, kv_start: Tensor, kv_end: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _triton(q).backward(do, q, k, v, out, lse, kv_start, kv_end, scale)


@_attention_backward_op.register_fake
def _(do, q, k, v, out, lse, kv_start, kv_end, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, kv_start, kv_end, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_start, kv_end)
    ctx.scale = scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, kv_start, kv_end = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(dout.contiguous(), q, k, v, out, lse, kv_start, kv_end, ctx.scale)
    return dq, dk, dv, None, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("anyseq::attention_decode", mutates_args=())
def _decode_op(q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor, scale: float) -> Tensor:
    return _triton(q, "decode_triton").forward(q, k, v, kv_start, kv_end, scale)


@_decode_op.register_fake
def _(q, k, v, kv_start, kv_end, scale):
    return torch.empty_like(q)


# -- the public call -----------------------------------------------------------------------------
def _check(q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects q, k, v of shape (B, H, T, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    (B, H, T, D), (Bk, HK, S, Dk) = q.shape, k.shape
    if k.shape != v.shape or Bk != B or Dk != D:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must both be (B={B}, Hkv, S, D={D})")
    if H % HK:
        raise ValueError(f"attention: {H} query heads is not a multiple of {HK} key/value heads")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    for name, x in (("kv_start", kv_start), ("kv_end", kv_end)):
        if x.shape != (B, T) or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"attention: {name} must be an integer tensor of shape (B={B}, T={T}), "
                             f"got {tuple(x.shape)} {x.dtype}")


def _autocast(*xs: Tensor) -> tuple[Tensor, ...]:
    """Under autocast, attention runs in the autocast dtype, as SDPA does."""
    device = xs[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return tuple(x.to(dtype) for x in xs)
    return xs


def attention(
    q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor, scale: float | None = None
) -> Tensor:
    """Query t of row b attends to keys ``kv_start[b, t] <= j < kv_end[b, t]``.

    q: (B, Hq, T, D); k, v: (B, Hkv, S, D) with Hq a multiple of Hkv (GQA); intervals are
    clipped to [0, S) and an empty one gives a zero output row. Returns (B, Hq, T, D).
    """
    _check(q, k, v, kv_start, kv_end)
    q, k, v = _autocast(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    kv_start, kv_end = kv_start.to(torch.int32).contiguous(), kv_end.to(torch.int32).contiguous()
    backend = resolve(q.device)
    if backend == "triton":
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        rows = (q.shape[1] // k.shape[1]) * q.shape[2]
        if q.shape[2] <= DECODE_MAX_QUERIES and rows <= DECODE_MAX_ROWS and not needs_grad:
            return torch.ops.anyseq.attention_decode(q, k, v, kv_start, kv_end, scale)
        return torch.ops.anyseq.attention(q, k, v, kv_start, kv_end, scale)[0]
    if backend == "flex":
        return attention_flex(q, k, v, kv_start, kv_end, scale)
    return attention_reference(q, k, v, kv_start, kv_end, scale)
