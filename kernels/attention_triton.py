"""Flash attention over per-query key intervals, forward and backward, in Triton.

Each query row ``t`` attends to keys ``kv_start[t] <= j < kv_end[t]``. A query tile visits
only the key tiles its intervals touch; tiles inside every interval of the tile run without
masking, the rest with it. The backward is deterministic (no atomics): one kernel owns
dK/dV of a key tile (looping over the query heads of its GQA group), another owns dQ.
Plain pointer arithmetic only (no block pointers), so it runs on Triton 3.6 and newer and
in the CPU interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from anyseq.kernels.backend import interpreting

INTERPRETED = interpreting()


# -- tile helpers ------------------------------------------------------------------------------
@triton.jit
def _query_intervals(START, END, offs_m, T, S):
    """Intervals of a tile of query rows, clipped to [0, S); rows past T or empty are not live."""
    in_range = offs_m < T
    start = tl.maximum(tl.load(START + offs_m, mask=in_range, other=0), 0)
    end = tl.minimum(tl.load(END + offs_m, mask=in_range, other=0), S)
    live = in_range & (start < end)
    return start, end, live


@triton.jit
def _key_tiles(start, end, live, S, BLOCK_N: tl.constexpr):
    """Key range of a query tile: masked [lo, mid_lo), unmasked [mid_lo, mid_hi), masked [mid_hi, hi)."""
    lo = tl.min(tl.where(live, start, S), 0) // BLOCK_N * BLOCK_N
    hi = tl.max(tl.where(live, end, 0), 0)
    mid_lo = tl.cdiv(tl.max(tl.where(live, start, 0), 0), BLOCK_N) * BLOCK_N
    mid_hi = tl.min(tl.where(live, end, S), 0) // BLOCK_N * BLOCK_N
    has_mid = mid_lo < mid_hi
    return lo, tl.where(has_mid, mid_lo, hi), tl.where(has_mid, mid_hi, hi), hi


@triton.jit
def _query_tile():
    """This program's query tile, last tile first: under a causal mask the last tiles see the
    most keys, and launching them first leaves the short ones to fill the final wave."""
    return tl.num_programs(0) - 1 - tl.program_id(0)


@triton.jit
def _row_lse2(LSE, offs_m, live):
    """Row log-sum-exp in base 2; +inf for rows that see nothing, so their probabilities are 0."""
    lse = tl.load(LSE + offs_m, mask=live, other=0.0)
    return tl.where(live, lse * 1.4426950408889634, float("inf"))


# -- forward -------------------------------------------------------------------------------------
@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, k_base, v_base, start, end, offs_n0, offs_d, n_lo, n_hi, qk_scale, S,
    stride_kn, stride_vn,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + offs_n0
        kt_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < S, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < S, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        if MASKED:
            keep = (offs_n[None, :] >= start[:, None]) & (offs_n[None, :] < end[:, None])
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:  # rows that have seen no key yet keep m = -inf; exponentiate against 0
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_ref = m_new
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, START, END, sm_scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_ot,
    H, GROUP, T, S, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, pid_bh = _query_tile(), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    start, end, live = _query_intervals(START + b * T, END + b * T, offs_m, T, S)
    lo, mid_lo, mid_hi, hi = _key_tiles(start, end, live, S, BLOCK_N)

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=offs_m[:, None] < T, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, start, end, offs_n0, offs_d, lo, mid_lo,
                               qk_scale, S, stride_kn, stride_vn, HEAD_DIM, BLOCK_N, True, PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, start, end, offs_n0, offs_d, mid_lo, mid_hi,
                               qk_scale, S, stride_kn, stride_vn, HEAD_DIM, BLOCK_N, False, PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, start, end, offs_n0, offs_d, mid_hi, hi,
                               qk_scale, S, stride_kn, stride_vn, HEAD_DIM, BLOCK_N, True, PRECISION)

    l_safe = tl.where(live, l_i, 1.0)
    out = tl.where(live[:, None], acc / l_safe[:, None], 0.0)
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=offs_m[:, None] < T)
    lse = tl.where(live, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)


# -- backward ------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_db, stride_dh, stride_dt, H, T,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O), the softmax-backward correction of every query row."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m[:, None] < T
    o = tl.load(O + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=ok, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_db + h * stride_dh + offs_m[:, None] * stride_dt + offs_d[None, :],
                 mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _dq_tiles(
    dq, q, do, lse2, delta, k_base, v_base, start, end, offs_n0, offs_d, n_lo, n_hi, qk_scale, S,
    stride_kn, stride_vn,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + offs_n0
        kt_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]
        vt_ptrs = v_base + offs_n[None, :] * stride_vn + offs_d[:, None]
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < S, other=0.0)
            vt = tl.load(vt_ptrs, mask=offs_n[None, :] < S, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        p = tl.exp2(tl.dot(q, kt, input_precision=PRECISION) * qk_scale - lse2[:, None])
        if MASKED:
            keep = (offs_n[None, :] >= start[:, None]) & (offs_n[None, :] < end[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, START, END, sm_scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt,
    H, GROUP, T, S, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, pid_bh = _query_tile(), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    start, end, live = _query_intervals(START + b * T, END + b * T, offs_m, T, S)
    lo, mid_lo, mid_hi, hi = _key_tiles(start, end, live, S, BLOCK_N)

    rows_ok = offs_m[:, None] < T
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qt
                + offs_d[None, :], mask=rows_ok, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh + offs_m[:, None] * stride_dot
                 + offs_d[None, :], mask=rows_ok, other=0.0)
    lse2 = _row_lse2(LSE + pid_bh.to(tl.int64) * T, offs_m, live)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    qk_scale = sm_scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, start, end, offs_n0, offs_d, lo, mid_lo, qk_scale, S,
                   stride_kn, stride_vn, HEAD_DIM, BLOCK_N, True, PRECISION)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, start, end, offs_n0, offs_d, mid_lo, mid_hi, qk_scale,
                   S, stride_kn, stride_vn, HEAD_DIM, BLOCK_N, False, PRECISION)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, start, end, offs_n0, offs_d, mid_hi, hi, qk_scale, S,
                   stride_kn, stride_vn, HEAD_DIM, BLOCK_N, True, PRECISION)
    tl.store(DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + offs_m[:, None] * stride_dqt
             + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=rows_ok)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_base, end_base, offs_n, offs_m0, offs_d,
    m_lo, m_hi, qk_scale, T, S, stride_qt, stride_dot,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    for mb in range(m_lo, m_hi):
        offs_m = mb * BLOCK_M + offs_m0
        start, end, live = _query_intervals(start_base, end_base, offs_m, T, S)
        qt = tl.load(q_base + offs_m[None, :] * stride_qt + offs_d[:, None], mask=offs_m[None, :] < T, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=offs_m[:, None] < T, other=0.0)
        lse2 = _row_lse2(lse_base, offs_m, live)
        delta = tl.load(delta_base + offs_m, mask=offs_m < T, other=0.0)
        pt = tl.exp2(tl.dot(k, qt, input_precision=PRECISION) * qk_scale - lse2[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:
            keep = (offs_n[:, None] >= start[None, :]) & (offs_n[:, None] < end[None, :])
            pt = tl.where(keep, pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, START, END, QBLOCKS, sm_scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dot, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    H, HK, GROUP, T, S, NUM_KEY_TILES,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, hk = pid_bh // HK, pid_bh % HK
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows_ok = offs_n[:, None] < S
    k = tl.load(K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :], mask=rows_ok, other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vn
                + offs_d[None, :], mask=rows_ok, other=0.0)
    # query tiles touching this key tile: masked [m_lo, f_lo), unmasked [f_lo, f_hi), masked [f_hi, m_hi)
    ranges = QBLOCKS + (b * NUM_KEY_TILES + pid_n) * 4
    m_lo, f_lo, f_hi, m_hi = tl.load(ranges), tl.load(ranges + 1), tl.load(ranges + 2), tl.load(ranges + 3)
    qk_scale = sm_scale * 1.4426950408889634

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        row_base = (b * H + h).to(tl.int64) * T
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, START + b * T,
                             END + b * T, offs_n, offs_m0, offs_d, m_lo, f_lo, qk_scale, T, S, stride_qt, stride_dot,
                             HEAD_DIM, BLOCK_M, True, PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, START + b * T,
                             END + b * T, offs_n, offs_m0, offs_d, f_lo, f_hi, qk_scale, T, S, stride_qt, stride_dot,
                             HEAD_DIM, BLOCK_M, False, PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, START + b * T,
                             END + b * T, offs_n, offs_m0, offs_d, f_hi, m_hi, qk_scale, T, S, stride_qt, stride_dot,
                             HEAD_DIM, BLOCK_M, True, PRECISION)
    tl.store(DK + b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh + offs_n[:, None] * stride_dkn
             + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=rows_ok)
    tl.store(DV + b.to(tl.int64) * stride_dvb + hk.to(tl.int64) * stride_dvh + offs_n[:, None] * stride_dvn
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=rows_ok)


# -- launch configuration --------------------------------------------------------------------------
def _config(block_m: int, block_n: int, num_warps: int, num_stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


# Hopper candidates per head dim (<= 64, 128, 256), autotuned per (head dim, power-of-two
# query-length bucket, dtype). The dK/dV kernel takes its query-tile ranges from the host,
# so its tiles are fixed. The interpreter runs small unequal tiles, so that short test
# sequences still cross many tile edges and both tile sizes matter.
_FWD_CONFIGS = {
    64: [_config(128, 64, 4, 3), _config(128, 128, 8, 3), _config(64, 64, 4, 4)],
    128: [_config(128, 64, 8, 3), _config(128, 128, 8, 3), _config(64, 64, 4, 3)],
    256: [_config(64, 32, 4, 2), _config(64, 64, 8, 2)],
}
_DQ_CONFIGS = {
    64: [_config(128, 32, 4, 3), _config(128, 64, 8, 3), _config(64, 64, 4, 3)],
    128: [_config(128, 32, 8, 3), _config(64, 64, 4, 3), _config(128, 64, 8, 2)],
    256: [_config(64, 32, 4, 2)],
}
_DKDV_CONFIG = {64: (32, 128, 4, 3), 128: (32, 128, 8, 3), 256: (16, 64, 8, 2)}
_INTERPRETER_CONFIG = (32, 16, 1, 1)  # (BLOCK_M, BLOCK_N, warps, stages); dK/dV swaps the tiles


def _head_class(head_dim: int) -> int:
    return 64 if head_dim <= 64 else head_dim


def _configs(table: dict[int, list[triton.Config]]) -> list[triton.Config]:
    if INTERPRETED:
        return [_config(*_INTERPRETER_CONFIG)]
    return [c for configs in table.values() for c in configs]


def _prune(table: dict[int, list[triton.Config]]):
    def prune(configs, named_args, **kwargs):
        return table[_head_class(kwargs["HEAD_DIM"])]

    return prune


_fwd = triton.autotune(_configs(_FWD_CONFIGS), key=["HEAD_DIM", "T_BUCKET"],
                       prune_configs_by={"early_config_prune": _prune(_FWD_CONFIGS)})(_fwd_kernel)
_bwd_dq = triton.autotune(_configs(_DQ_CONFIGS), key=["HEAD_DIM", "T_BUCKET"],
                          prune_configs_by={"early_config_prune": _prune(_DQ_CONFIGS)})(_bwd_dq_kernel)


def _dkdv_config(head_dim: int) -> tuple[int, int, int, int]:
    if INTERPRETED:
        block_m, block_n, warps, stages = _INTERPRETER_CONFIG
        return block_n, block_m, warps, stages
    return _DKDV_CONFIG[_head_class(head_dim)]


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (no TF32); half types use tensor cores as usual."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _rows(x: Tensor, head_dim: int) -> Tensor:
    """Unit stride along the head dim, zero-padded to a power of two (padding changes no dot product)."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return x if x.shape[-1] == head_dim else torch.nn.functional.pad(x, (0, head_dim - x.shape[-1]))


def _unpad(x: Tensor, like: Tensor) -> Tensor:
    return x if x.shape[-1] == like.shape[-1] else torch.empty_like(like).copy_(x[..., : like.shape[-1]])


def head_dim_tile(head_dim: int) -> int:
    if head_dim > 256:
        raise ValueError(f"attention: head dim {head_dim} is larger than the supported 256")
    return max(16, triton.next_power_of_2(head_dim))


def strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _t_bucket(t: int) -> int:
    """Autotuning key (the kernels ignore it): one tuning per power-of-two query length."""
    return triton.next_power_of_2(max(t, 16))


def query_tile_ranges(kv_start: Tensor, kv_end: Tensor, T: int, S: int, block_m: int, block_n: int) -> Tensor:
    """For each key tile, the query tiles that touch it: (B, key tiles, 4) int32 rows
    ``(lo, full_lo, full_hi, hi)``; tiles in [full_lo, full_hi) lie inside every interval."""
    B = kv_start.shape[0]
    nq, nk = triton.cdiv(T, block_m), triton.cdiv(S, block_n)
    pad = nq * block_m - T
    start = torch.nn.functional.pad(kv_start.clamp(min=0), (0, pad)).view(B, nq, block_m)
    end = torch.nn.functional.pad(kv_end.clamp(max=S), (0, pad)).view(B, nq, block_m)
    live = start < end
    min_start = torch.where(live, start, S).amin(-1)[:, None, :]  # (B, 1, nq)
    max_start = torch.where(live, start, 0).amax(-1)[:, None, :]
    min_end = torch.where(live, end, S).amin(-1)[:, None, :]
    max_end = torch.where(live, end, 0).amax(-1)[:, None, :]
    n0 = torch.arange(nk, device=kv_start.device)[None, :, None] * block_n  # (1, nk, 1)
    n1 = (n0 + block_n).clamp(max=S)
    touch = (min_start < n1) & (max_end > n0)  # (B, nk, nq)
    full = touch & (max_start <= n0) & (min_end >= n1)

    def first(x: Tensor) -> Tensor:
        return x.to(torch.uint8).argmax(-1)

    idx = torch.arange(nq, device=kv_start.device)
    any_touch = touch.any(-1)
    lo = torch.where(any_touch, first(touch), 0)
    hi = torch.where(any_touch, nq - first(touch.flip(-1)), 0)
    any_full = full.any(-1)
    full_lo = torch.where(any_full, first(full), hi)
    broken = ~full & (idx >= full_lo[..., None])  # the full run ends at the first non-full tile
    full_hi = torch.where(any_full, torch.where(broken.any(-1), first(broken), nq), hi)
    return torch.stack([lo, full_lo, full_hi, hi], -1).to(torch.int32).contiguous()


# -- entry points ----------------------------------------------------------------------------------
def forward(q: Tensor, k: Tensor, v: Tensor, kv_start: Tensor, kv_end: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Attention output (B, H, T, D) in q's dtype and its log-sum-exp (B, H, T) float32."""
    B, H, T, D = q.shape
    HK, S = k.shape[1], k.shape[2]
    dt = head_dim_tile(D)
    qp, kp, vp = _rows(q, dt), _rows(k, dt), _rows(v, dt)
    out = torch.empty_like(qp)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
    _fwd[grid](
        qp, kp, vp, out, lse, kv_start, kv_end, scale,
        *strides(qp), *strides(kp), *strides(vp), *strides(out),
        H, H // HK, T, S, _t_bucket(T),
        HEAD_DIM=dt, PRECISION=_precision(q.dtype),
    )
    return _unpad(out, q), lse


def backward(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, kv_start: Tensor, kv_end: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v; deterministic (every output element has one writer)."""
    B, H, T, D = q.shape
    HK, S = k.shape[1], k.shape[2]
    dt, precision = head_dim_tile(D), _precision(q.dtype)
    dop, qp, kp, vp, outp = (_rows(x, dt) for x in (do, q, k, v, out))

    delta = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    block = _INTERPRETER_CONFIG[0] if INTERPRETED else 64
    _bwd_delta_kernel[(triton.cdiv(T, block), B * H)](
        outp, dop, delta, *strides(outp), *strides(dop), H, T, HEAD_DIM=dt, BLOCK_M=block
    )

    dq = torch.empty_like(qp)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
    _bwd_dq[grid](
        qp, kp, vp, dop, dq, lse, delta, kv_start, kv_end, scale,
        *strides(qp), *strides(kp), *strides(vp), *strides(dop), *strides(dq),
        H, H // HK, T, S, _t_bucket(T),
        HEAD_DIM=dt, PRECISION=precision,
    )

    block_m, block_n, warps, stages = _dkdv_config(dt)
    ranges = query_tile_ranges(kv_start, kv_end, T, S, block_m, block_n)
    dk, dv = torch.empty_like(kp), torch.empty_like(vp)
    _bwd_dkdv_kernel[(triton.cdiv(S, block_n), B * HK)](
        qp, kp, vp, dop, dk, dv, lse, delta, kv_start, kv_end, ranges, scale,
        *strides(qp), *strides(kp), *strides(vp), *strides(dop), *strides(dk), *strides(dv),
        H, HK, H // HK, T, S, triton.cdiv(S, block_n),
        HEAD_DIM=dt, BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=precision,
        num_warps=warps, num_stages=stages,
    )
    return _unpad(dq, q), _unpad(dk, k), _unpad(dv, v)
