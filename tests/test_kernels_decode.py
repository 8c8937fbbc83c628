"""Flash-decoding: a few new queries against a long KV cache equal the reference attention."""

import pytest
import torch

from anyseq.kernels import attention, dense_mask, use_backend
from anyseq.kernels.attention import attention_reference
from anyseq.kernels.testing import OUTPUT_FACTOR, assert_within_rule, kernel_device, oracle_attention

DEVICE = kernel_device()


def cache(B, H, HK, T, S, D, dtype, device=DEVICE, seed=0):
    """T new queries at slots S - T .. S - 1 of a cache whose rows are left-padded."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g).to(device, dtype) for shape in
               ((B, H, T, D), (B, HK, S, D), (B, HK, S, D)))
    pad = torch.randint(0, max(1, S - T), (B,), generator=g)
    start = pad[:, None].expand(B, T).to(device, torch.int32).contiguous()
    end = torch.arange(S - T + 1, S + 1, dtype=torch.int32, device=device).expand(B, T).contiguous()
    return q, k, v, start, end


def decode(q, k, v, start, end, num_splits=None):
    from anyseq.kernels.backend import triton_module

    return triton_module("decode_triton", q.device).forward(q, k, v, start, end, q.shape[-1] ** -0.5, num_splits)


CASES = [  # (B, Hq, Hkv, T, S, D)
    (1, 2, 2, 1, 1, 32),
    (2, 4, 2, 1, 17, 64),
    (2, 8, 2, 4, 130, 32),
    (1, 4, 1, 16, 97, 32),
    (3, 2, 1, 2, 61, 24),
]


@pytest.mark.parametrize("num_splits", [1, 3, None], ids=["one-split", "three-splits", "default-splits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[f"T{c[3]}-S{c[4]}-gqa{c[1] // c[2]}-d{c[5]}" for c in CASES])
def test_decode_matches_fp64_oracle(case, dtype, num_splits):
    B, H, HK, T, S, D = case
    q, k, v, start, end = cache(B, H, HK, T, S, D, dtype)
    want = oracle_attention(q, k, v, dense_mask(start, end, S), D**-0.5)
    same_dtype = attention_reference(q, k, v, start, end, D**-0.5)
    got = decode(q, k, v, start, end, num_splits)
    assert got.dtype == dtype
    assert_within_rule("decode", got, same_dtype, want, OUTPUT_FACTOR)


def test_dispatch_uses_decode_for_few_queries_without_grad_and_flash_with_grad(monkeypatch):
    from anyseq.kernels.attention import DECODE_MAX_QUERIES

    calls = []
    for name in ("attention", "attention_decode"):
        op = getattr(torch.ops.anyseq, name)
        monkeypatch.setattr(torch.ops.anyseq, name, lambda *a, _op=op, _n=name: calls.append(_n) or _op(*a))
    q, k, v, start, end = cache(1, 4, 2, 3, 40, 32, torch.float32)
    with use_backend("triton"):
        with torch.no_grad():
            attention(q, k, v, start, end)
        attention(q.requires_grad_(), k, v, start, end)
        with torch.no_grad():
            q17, k, v, start, end = cache(1, 4, 2, 17, 40, 32, torch.float32)
            attention(q17, k, v, start, end)
    assert calls == ["attention_decode", "attention", "attention"]
    assert DECODE_MAX_QUERIES == 16


def test_empty_intervals_give_zeros():
    q, k, v, start, end = cache(2, 2, 1, 2, 20, 16, torch.float32)
    end[0] = start[0]
    out = decode(q, k, v, start, end, 2)
    assert out[0].abs().max() == 0 and torch.isfinite(out).all()


@pytest.mark.gpu
def test_gpu_bf16_long_cache_matches_oracle():
    q, k, v, start, end = cache(4, 32, 8, 1, 32768, 128, torch.bfloat16, "cuda")
    want = oracle_attention(q, k, v, dense_mask(start, end, k.shape[2]), 128**-0.5)
    same_dtype = attention_reference(q, k, v, start, end, 128**-0.5)
    with torch.no_grad(), use_backend("triton"):
        got = attention(q, k, v, start, end)
    assert_within_rule("decode", got, same_dtype, want, OUTPUT_FACTOR)
