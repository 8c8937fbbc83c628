"""Interval attention: the masks mean what they say, and the Triton kernel equals the reference.

Without a GPU, Triton runs in its CPU interpreter (tests/conftest.py); with one, the same
cases run compiled on it (``kernel_device``), and the bf16 checks at realistic sizes run too.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from anyseq.kernels import (
    attention,
    causal_intervals,
    dense_mask,
    get_backend,
    intervals_from_spans,
    set_backend,
    use_backend,
)
from anyseq.kernels.attention import attention_flex, attention_reference
from anyseq.kernels.testing import (
    GRAD_FACTOR,
    OUTPUT_FACTOR,
    assert_within_rule,
    documents,
    kernel_device,
    mask_from_ids,
    oracle_attention,
    spans,
)

DEVICE = kernel_device()


# -- mask layouts -------------------------------------------------------------------------------
def layout(kind: str, B: int, T: int, S: int, device=DEVICE) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_start, kv_end) for T queries over S keys."""
    return tuple(x.to(device) for x in _intervals(kind, B, T, S))


def _intervals(kind: str, B: int, T: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "causal":
        return causal_intervals(torch.zeros(B, T, dtype=torch.long))
    if kind == "documents":  # one-token documents among longer ones
        cuts = [1, T // 3, 1, 1]
        row = [*cuts, T - sum(cuts)] if T > sum(cuts) else [T]
        return causal_intervals(documents([row] * B))
    if kind == "images":  # bidirectional runs that straddle 16- and 32-token tile edges
        doc = documents([[T // 2, T - T // 2]] * B)
        img = spans(doc, [(0, 10, 40), (0, T // 2 + 3, T // 2 + 20), (B - 1, 30, 33)])
        return intervals_from_spans(doc, img)
    if kind == "prefix":  # prefix-LM: the first third of each document is bidirectional
        doc = documents([[T // 2, T - T // 2]] * B)
        docs = ((0, T // 2), (T // 2, T - T // 2))
        prefix = spans(doc, [(b, s, s + max(1, n // 3)) for b in range(B) for s, n in docs])
        return intervals_from_spans(doc, prefix)
    if kind == "cache":  # T new queries after S - T cached keys, left-padded rows, one empty row
        pad = torch.tensor([0, 5, 37][:B])
        t = torch.arange(S - T, S)
        start = pad[:, None].expand(B, T).to(torch.int32).contiguous()
        end = (t + 1).expand(B, T).to(torch.int32).contiguous()
        end[-1, 0] = start[-1, 0]  # empty interval: must give zeros, not NaN
        return start, end
    raise ValueError(kind)


CASES = [  # (B, Hq, Hkv, T, S, D, layout)
    (1, 2, 1, 1, 1, 32, "causal"),
    (1, 4, 4, 17, 17, 64, "causal"),
    (2, 4, 2, 97, 97, 32, "documents"),
    (1, 4, 1, 130, 130, 32, "images"),
    (1, 2, 1, 61, 61, 64, "prefix"),
    (2, 4, 1, 23, 70, 32, "cache"),
    (1, 2, 2, 33, 33, 24, "documents"),  # head dim padded to 32 inside the kernel
    (1, 2, 1, 40, 40, 128, "images"),
]


def inputs(B, H, HK, T, S, D, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device, dtype).requires_grad_() for shape in
            ((B, H, T, D), (B, HK, S, D), (B, HK, S, D))]


# -- mask semantics, checked against independent oracles --------------------------------------------
def test_causal_intervals_restart_at_each_document():
    start, end = causal_intervals(torch.tensor([[4, 4, 4, 9, 9, 2]]))
    assert start.tolist() == [[0, 0, 0, 3, 3, 5]] and end.tolist() == [[1, 2, 3, 4, 5, 6]]
    assert start.dtype == end.dtype == torch.int32


def test_span_tokens_see_their_whole_span_but_never_past_the_document():
    doc = documents([[6, 3]])
    img = spans(doc, [(0, 2, 5), (0, 4 + 2, 9)])  # second span starts in doc 1 and ends with it
    start, end = intervals_from_spans(doc, img)
    assert start.tolist() == [[0, 0, 0, 0, 0, 0, 6, 6, 6]]
    assert end.tolist() == [[1, 2, 5, 5, 5, 6, 9, 9, 9]]


@pytest.mark.parametrize("kind", ["documents", "images", "prefix"])
def test_dense_mask_of_intervals_equals_the_token_by_token_mask(kind):
    B, T = 2, 45
    doc = documents([[T // 2, T - T // 2]] * B) if kind != "documents" else documents([[1, 15, 1, 1, 27]] * B)
    runs = {"documents": [], "images": [(0, 10, 20), (1, 25, 40)], "prefix": [(0, 0, 7), (1, 22, 30)]}[kind]
    ids = spans(doc, runs)
    assert torch.equal(dense_mask(*intervals_from_spans(doc, ids), T), mask_from_ids(doc, ids))


@pytest.mark.parametrize("kind", ["documents", "images", "cache"])
def test_reference_equals_fp64_oracle_and_flex_attention(kind):
    B, H, HK, T, S, D = 2, 4, 2, 29, 29 if kind != "cache" else 44, 16
    q, k, v = (x.detach() for x in inputs(B, H, HK, T, S, D, torch.float32))
    start, end = layout(kind, B, T, S)
    oracle = oracle_attention(q, k, v, dense_mask(start, end, S), D**-0.5)
    ref = attention_reference(q, k, v, start, end, D**-0.5)
    flex = attention_flex(q, k, v, start, end, D**-0.5)
    assert torch.allclose(ref.double(), oracle, atol=1e-5)
    assert torch.allclose(flex.double(), oracle, atol=1e-5)


def test_empty_interval_gives_zero_output_and_zero_gradient_in_the_reference():
    q, k, v = inputs(1, 2, 1, 5, 5, 16, torch.float32)
    start, end = causal_intervals(torch.zeros(1, 5, dtype=torch.long))
    end[0, 2] = 0
    out = attention_reference(q, k, v, start, end, 0.25)
    out.sum().backward()
    assert out[0, :, 2].abs().max() == 0 and q.grad[0, :, 2].abs().max() == 0
    assert torch.isfinite(k.grad).all()


# -- the Triton kernel against the fp64 oracle, by the tolerance rule ----------------------------------
def run(backend, q, k, v, start, end, grad_out):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    with use_backend(backend):
        out = attention(q, k, v, start, end)
    out.backward(grad_out.to(out.dtype))
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[6]}-T{c[3]}-S{c[4]}-gqa{c[1] // c[2]}-d{c[5]}" for c in CASES])
def test_triton_forward_and_gradients_match_oracle(case, dtype):
    B, H, HK, T, S, D, kind = case
    q, k, v = inputs(B, H, HK, T, S, D, dtype)
    start, end = layout(kind, B, T, S)
    grad_out = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    oracle = oracle_attention(q64, k64, v64, dense_mask(start, end, S), D**-0.5)
    oracle.backward(grad_out.double())
    want = (oracle, q64.grad, k64.grad, v64.grad)

    got = run("triton", q, k, v, start, end, grad_out)
    same_dtype = run("torch", q, k, v, start, end, grad_out)
    for name, g, t, w, factor in zip(("out", "dq", "dk", "dv"), got, same_dtype, want,
                                     (OUTPUT_FACTOR, GRAD_FACTOR, GRAD_FACTOR, GRAD_FACTOR)):
        assert g.dtype == dtype
        assert_within_rule(f"{kind} {name}", g, t, w, factor)


def test_triton_never_reads_key_tiles_outside_every_interval():
    """Left padding of two whole tiles holds NaN; a visited tile would spread it (0 * NaN)."""
    B, H, T, pad, D = 1, 2, 24, 32, 32
    q, k, v = (x.detach() for x in inputs(B, H, 1, T, pad + T, D, torch.float32))
    k[:, :, :pad], v[:, :, :pad] = float("nan"), float("nan")
    start = torch.full((B, T), pad, dtype=torch.int32, device=DEVICE)
    end = torch.arange(pad + 1, pad + T + 1, dtype=torch.int32, device=DEVICE)[None]
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    with use_backend("triton"):
        out = attention(q, k, v, start, end)
    out.sum().backward()
    clean = attention_reference(q, k[:, :, pad:], v[:, :, pad:], start - pad, end - pad, D**-0.5)
    assert torch.allclose(out, clean, atol=1e-5)
    assert torch.isfinite(q.grad).all() and (k.grad[:, :, :pad] == 0).all() and (v.grad[:, :, :pad] == 0).all()


def test_query_tile_ranges_cover_exactly_the_touching_tiles():
    from anyseq.kernels.attention_triton import query_tile_ranges

    start, end = layout("images", 2, 130, 130)
    end[1, 40:50] = 0  # some empty rows too
    bm, bn = 16, 32
    ranges = query_tile_ranges(start, end, 130, 130, bm, bn)
    mask = dense_mask(start, end, 130)
    for b in range(2):
        for n in range(ranges.shape[1]):
            tiles = mask[b, :, n * bn : (n + 1) * bn]
            touching = [m for m in range(9) if tiles[m * bm : (m + 1) * bm].any()]
            lo, full_lo, full_hi, hi = ranges[b, n].tolist()
            assert (lo, hi) == ((touching[0], touching[-1] + 1) if touching else (0, 0))
            live = mask[b].any(-1)
            for m in range(full_lo, full_hi):  # full tiles: every live row sees every key of the tile
                rows = slice(m * bm, (m + 1) * bm)
                assert tiles[rows][live[rows]].all()


def test_custom_ops_pass_opcheck():
    q, k, v = inputs(1, 2, 1, 17, 17, 32, torch.float32)
    start, end = layout("documents", 1, 17, 17)
    torch.library.opcheck(torch.ops.anyseq.attention, (q, k, v, start, end, 0.2))
    with torch.no_grad():
        torch.library.opcheck(torch.ops.anyseq.attention_decode, (q[:, :, :2], k, v, start[:, :2], end[:, :2], 0.2))


# -- dispatch ---------------------------------------------------------------------------------------
def test_backend_switch_is_scoped_and_validated():
    before = get_backend()
    with use_backend("torch"):
        assert get_backend() == "torch"
    assert get_backend() == before
    with pytest.raises(ValueError, match="unknown kernel backend"):
        set_backend("cuda")


def test_environment_variable_picks_the_backend():
    import subprocess
    import sys

    code = "from anyseq.kernels import get_backend; print(get_backend())"
    env = {**os.environ, "ANYSEQ_KERNELS": "flex"}
    run_ = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert run_.stdout.strip() == "flex", run_.stderr


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = inputs(1, 1, 1, 3, 3, 16, torch.float32, device="cpu")
    start, end = layout("causal", 1, 3, 3, device="cpu")
    with use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, k, v, start, end)


def test_bad_shapes_are_clear_errors():
    q, k, v = inputs(1, 3, 2, 4, 4, 16, torch.float32)
    start, end = layout("causal", 1, 4, 4)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, v, start, end)
    q, k, v = inputs(1, 2, 1, 4, 4, 16, torch.float32)
    with pytest.raises(ValueError, match="kv_start"):
        attention(q, k, v, start[:, :3], end)


def test_sdpa_and_flex_backends_match_the_reference():
    q, k, v = (x.detach() for x in inputs(1, 4, 2, 21, 21, 16, torch.float32))
    start, end = layout("images", 1, 21, 21)
    ref = attention_reference(q, k, v, start, end, 0.25)
    for backend in ("sdpa", "flex"):
        with use_backend(backend):
            assert torch.allclose(attention(q, k, v, start, end), ref, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiled_function_equals_eager(backend):
    """torch.compile sees no graph break (fullgraph=True): the reference paths trace, and the
    Triton paths are registered custom ops with fake implementations and autograd formulas."""
    from anyseq.kernels import linear_cross_entropy, rms_norm

    def step(x, w, wq, emb, targets, start, end):
        h = rms_norm(x, w)
        q = (h @ wq).view(2, 9, 2, 8).transpose(1, 2)
        o = attention(q, q, q, start, end).transpose(1, 2).reshape(18, 16)
        loss, lse = linear_cross_entropy(o, emb, targets)
        return loss.mean() + 1e-3 * (lse**2).mean()

    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).to(DEVICE).requires_grad_() for s in ((18, 16), (16,), (16, 16), (50, 16))]
    targets = torch.randint(0, 50, (18,), generator=g).to(DEVICE)
    start, end = (x.to(DEVICE) for x in causal_intervals(documents([[4, 5]] * 2)))
    with use_backend(backend):
        eager = step(*params, targets, start, end)
        eager_grads = torch.autograd.grad(eager, params)
        compiled = torch.compile(step, fullgraph=True)(*params, targets, start, end)
        compiled_grads = torch.autograd.grad(compiled, params)
    assert torch.allclose(compiled, eager, rtol=1e-4)
    for a, b in zip(compiled_grads, eager_grads):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)


# -- GPU only ----------------------------------------------------------------------------------------
GPU_CASES = [(2, 16, 4, 1024, 64, "documents"), (1, 8, 8, 2047, 128, "images"), (2, 32, 8, 513, 128, "causal")]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=[f"{c[5]}-T{c[3]}-d{c[4]}" for c in GPU_CASES])
def test_gpu_bf16_matches_oracle(case):
    B, H, HK, T, D, kind = case
    start, end = layout(kind, B, T, T)
    q, k, v = (x.detach().requires_grad_() for x in inputs(B, H, HK, T, T, D, torch.bfloat16))
    grad_out = torch.randn(B, H, T, D, device="cuda")
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    oracle = oracle_attention(q64, k64, v64, dense_mask(start, end, T), D**-0.5)
    oracle.backward(grad_out.double())
    got = run("triton", q, k, v, start, end, grad_out)
    same_dtype = run("sdpa", q, k, v, start, end, grad_out)
    for name, g, t, w, factor in zip(("out", "dq", "dk", "dv"), got, same_dtype, (oracle, q64.grad, k64.grad, v64.grad),
                                     (OUTPUT_FACTOR, GRAD_FACTOR, GRAD_FACTOR, GRAD_FACTOR)):
        assert_within_rule(f"{kind} {name}", g, t, w, factor)


@pytest.mark.gpu
def test_gpu_backward_is_deterministic():
    B, H, HK, T, D = 2, 16, 4, 2048, 128
    start, end = layout("documents", B, T, T)
    q, k, v = (x.detach() for x in inputs(B, H, HK, T, T, D, torch.bfloat16))
    grad_out = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
    first = run("triton", q, k, v, start, end, grad_out)
    for _ in range(3):
        again = run("triton", q, k, v, start, end, grad_out)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.gpu
def test_gpu_causal_matches_sdpa_flash():
    B, H, T, D = 2, 8, 4096, 128
    q, k, v = (x.detach() for x in inputs(B, H, H, T, T, D, torch.bfloat16))
    start, end = layout("causal", B, T, T)
    with use_backend("triton"):
        out = attention(q, k, v, start, end)
    flash = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (out.float() - flash.float()).abs().max() < 2e-2
