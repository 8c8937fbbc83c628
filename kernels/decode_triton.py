"""Flash-decoding: a few new queries against a long KV cache, split along the keys.

Generation runs one (or a few) query tokens per step, too few to fill the GPU when tiled
over queries. Instead every (batch, kv head, key split) gets its own program, which handles
all query heads of the GQA group and all new tokens at once (each K/V tile is read once),
and writes a partial output with its log-sum-exp; a second kernel merges the splits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from anyseq.kernels.attention_triton import _precision, _rows, _unpad, head_dim_tile, strides
from anyseq.kernels.backend import interpreting, multiprocessors

INTERPRETED = interpreting()


@triton.jit
def _split_kernel(
    Q, K, V, OP, LSEP, START, END, sm_scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    H, HK, GROUP, T, S, SPLIT_LEN, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_s, pid_bh = tl.program_id(0), tl.program_id(1)
    b, hk = pid_bh // HK, pid_bh % HK
    r = tl.arange(0, BLOCK_R)  # row r is query token r % T of head hk * GROUP + r // T
    row_ok = r < GROUP * T
    h = hk * GROUP + r // T
    t = r % T
    offs_d = tl.arange(0, HEAD_DIM)
    start = tl.maximum(tl.load(START + b * T + t, mask=row_ok, other=0), 0)
    end = tl.minimum(tl.load(END + b * T + t, mask=row_ok, other=0), S)
    live = row_ok & (start < end)

    split_lo = pid_s * SPLIT_LEN
    lo = tl.maximum(split_lo, tl.min(tl.where(live, start, S), 0) // BLOCK_N * BLOCK_N)
    hi = tl.minimum(split_lo + SPLIT_LEN, tl.max(tl.where(live, end, 0), 0))

    q_ptrs = Q + b.to(tl.int64) * stride_qb + h[:, None].to(tl.int64) * stride_qh + t[:, None] * stride_qt
    q = tl.load(q_ptrs + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    qk_scale = sm_scale * 1.4426950408889634

    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kt = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                     mask=offs_n[None, :] < S, other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        keep = (offs_n[None, :] >= start[:, None]) & (offs_n[None, :] < end[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=offs_n[:, None] < S, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    row = ((b * H + h) * T + t).to(tl.int64) * NUM_SPLITS + pid_s  # partials are (B, H, T, splits, D)
    tl.store(OP + row[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None], mask=row_ok[:, None])
    tl.store(LSEP + row, tl.where(seen, m_i + tl.log2(l_safe), float("-inf")), mask=row_ok)


@triton.jit
def _merge_kernel(OP, LSEP, O, stride_ob, stride_oh, stride_ot, H, T, NUM_SPLITS,
                  HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    row = tl.program_id(0)
    b, h, t = row // (H * T), (row // T) % H, row % T
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_s < NUM_SPLITS
    lse = tl.load(LSEP + row.to(tl.int64) * NUM_SPLITS + offs_s, mask=ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))
    o = tl.load(OP + (row.to(tl.int64) * NUM_SPLITS + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                mask=ok[:, None], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(total > 0, total, 1.0)
    tl.store(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + t.to(tl.int64) * stride_ot + offs_d,
             out.to(O.dtype.element_ty))


def forward(
    q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor, scale: float, num_splits: int | None = None
) -> Tensor:
    """Attention output (B, H, T, D) for a few queries; ``num_splits`` defaults to filling the GPU twice.

    The query heads of one KV head times T must fit one program (``attention.DECODE_MAX_ROWS``).
    """
    B, H, T, D = q.shape
    HK, S = k.shape[1], k.shape[2]
    group = H // HK
    dt = head_dim_tile(D)
    qp, kp, vp = _rows(q, dt), _rows(k, dt), _rows(v, dt)
    block_n = 16 if INTERPRETED else 64
    key_tiles = triton.cdiv(S, block_n)
    if num_splits is None:
        num_splits = triton.cdiv(2 * multiprocessors(q.device), B * HK)
    num_splits = max(1, min(num_splits, key_tiles))
    split_len = triton.cdiv(key_tiles, num_splits) * block_n
    num_splits = triton.cdiv(S, split_len)

    partial = torch.empty((B, H, T, num_splits, dt), device=q.device, dtype=torch.float32)
    partial_lse = torch.empty((B, H, T, num_splits), device=q.device, dtype=torch.float32)
    _split_kernel[(num_splits, B * HK)](
        qp, kp, vp, partial, partial_lse, kv_start, kv_end, scale,
        *strides(qp), *strides(kp), *strides(vp),
        H, HK, group, T, S, split_len, num_splits,
        HEAD_DIM=dt, BLOCK_R=max(16, triton.next_power_of_2(group * T)), BLOCK_N=block_n,
        PRECISION=_precision(q.dtype), num_warps=4, num_stages=3,
    )
    out = torch.empty_like(qp)
    _merge_kernel[(B * H * T,)](
        partial, partial_lse, out, *strides(out), H, T, num_splits,
        HEAD_DIM=dt, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), num_warps=4 if dt >= 128 else 2,
    )
    return _unpad(out, q)
