"""Kernel benchmarks on one GPU, every baseline measured in the same run.

    python -m anyseq.kernels.benchmark --out bench/            # everything
    python -m anyseq.kernels.benchmark --out bench/ --quick    # a short subset
    python -m anyseq.kernels.benchmark --out bench/ --only attention,decode
    python -m anyseq.kernels.benchmark --out /tmp/smoke --smoke  # the script itself, on the CPU

Writes ``kernels.json`` (every measurement plus the environment) and ``kernels.md`` (tables
and the targets check) after each measurement, so a run cut short keeps what it measured; a
later run on the same GPU and versions replaces only the sections it measures (``--only``)
and keeps the others. Conventions:
- attention FLOPs count only unmasked (query, key) pairs: forward 4*D per pair (QK^T and PV),
  forward+backward 14*D per pair (2.5x the forward for the five backward matmuls);
- bandwidth is the bytes a kernel must move (inputs read once, outputs written once) over
  its time, compared with the HBM bandwidth given by --hbm-tbps (H200: 4.8 TB/s);
- peak memory is ``max_memory_allocated`` during one forward+backward minus what was
  allocated before it (inputs and weights excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from anyseq.kernels import attention, causal_intervals, linear_cross_entropy, rms_norm, use_backend
from anyseq.kernels.attention import attention_flex, interval_block_mask
from anyseq.kernels.intervals import dense_mask

TARGETS = {
    "causal forward vs SDPA-flash": 1.05,
    "documents forward vs FlexAttention": 1.2,
    "documents forward vs SDPA dense mask": 3.0,
    "fused loss memory vs materialised (at most)": 0.25,
    "fused loss time vs materialised (at most)": 1.2,
    "decode fraction of HBM bandwidth": 0.70,
}


# -- measurement ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """Where the benchmark runs: a CUDA GPU in bf16, or (``--smoke``) the CPU in fp32 at toy
    sizes with the Triton interpreter, which runs the script end to end and measures nothing
    worth reading (the interpreter has no bf16)."""

    name: str = "cuda"
    dtype: torch.dtype = torch.bfloat16

    def randn(self, *shape: int, grad: bool = False) -> torch.Tensor:
        return torch.randn(*shape, device=self.name, dtype=self.dtype, requires_grad=grad)

    def time_ms(self, fn: Callable[[], object], grads: list[torch.Tensor] | None = None) -> float:
        if self.name != "cuda":
            fn()  # compile outside the measurement
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grads))

    def peak_bytes(self, fn: Callable[[], object]) -> int | None:
        """Peak allocation of one call beyond what existed before it (None off CUDA)."""
        if self.name != "cuda":
            return None
        fn()  # compile / autotune outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base


def packed_documents(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """Document ids of rows packed with realistic lengths: log-normal around seq/6
    (short captions to whole image/video documents), at least 32 tokens, cut at the row end."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        ids, n, doc = [], 0, 0
        while n < seq:
            length = int(math.exp(math.log(seq / 6) + torch.randn((), generator=g).item()))
            length = min(max(32, length), seq - n)  # at least 32 tokens, except where the row ends
            ids += [doc] * length
            n, doc = n + length, doc + 1
        rows.append(ids)
    return torch.tensor(rows)


# -- attention ----------------------------------------------------------------------------------------
def bench_attention(seqs: list[int], head_dims: list[int], tokens: int, width: int, at: Device) -> Iterator[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # FlexAttention compiles once per shape; past dynamo's recompile limit (8 by default) it
    # would silently run eagerly, and the sweep has more shapes than that.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(seqs) * len(head_dims))
    for D in head_dims:
        H = width // D
        for seq in seqs:
            B = max(1, tokens // seq)
            for kind in ("causal", "documents"):
                doc = torch.zeros(B, seq, dtype=torch.long) if kind == "causal" else packed_documents(B, seq)
                start, end = (x.to(at.name) for x in causal_intervals(doc))
                pairs = int((end - start).clamp(min=0).sum()) * H
                q, k, v = (at.randn(B, H, seq, D, grad=True) for _ in range(3))
                grad = torch.randn_like(q)
                mask = dense_mask(start, end, seq)[:, None]
                block_mask = interval_block_mask(start, end, seq)
                scale = D**-0.5

                def ours():
                    with use_backend("triton"):
                        return attention(q, k, v, start, end)

                impls = {"anyseq-triton": ours,
                         "flex (block mask)": lambda: attention_flex(q, k, v, start, end, scale, block_mask),
                         "sdpa (dense mask)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)}
                if kind == "causal":
                    def flash():
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

                    impls["sdpa-flash (is_causal)"] = flash
                for name, fn in impls.items():
                    row = {"mask": kind, "seq": seq, "batch": B, "heads": H, "head_dim": D, "impl": name,
                           "unmasked_pairs": pairs}
                    try:  # the forward is kept where only the backward fails
                        with torch.no_grad():
                            fwd = at.time_ms(fn)
                        row.update(fwd_ms=fwd, fwd_tflops=4 * D * pairs / fwd / 1e9)
                        both = at.time_ms(lambda: fn().backward(grad), [q, k, v])
                        row.update(fwd_bwd_ms=both, fwd_bwd_tflops=14 * D * pairs / both / 1e9)
                    except Exception as e:  # a baseline that cannot run this shape is reported, not fatal
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    yield row
                del q, k, v, grad, mask, block_mask
                torch.cuda.empty_cache()


# -- fused loss -------------------------------------------------------------------------------------
def bench_loss(vocabs: list[int], tokens: int, width: int, at: Device) -> Iterator[dict]:
    def materialised(h, w, t):
        return F.cross_entropy((h @ w.T).float(), t)

    compiled = torch.compile(materialised)
    for V in vocabs:
        h = at.randn(tokens, width, grad=True)
        w = (at.randn(V, width) * 0.02).requires_grad_()
        t = torch.randint(0, V, (tokens,), device=at.name)
        impls = {"anyseq-fused": lambda: linear_cross_entropy(h, w, t)[0].mean(),
                 "materialised logits": lambda: materialised(h, w, t),
                 "materialised, torch.compile": lambda: compiled(h, w, t)}
        for name, fn in impls.items():
            row = {"vocab": V, "tokens": tokens, "hidden": width, "impl": name}
            try:
                peak = at.peak_bytes(lambda: fn().backward())
                if peak is not None:
                    row["peak_bytes"] = peak
                row["fwd_bwd_ms"] = at.time_ms(lambda: fn().backward(), [h, w])
            except torch.OutOfMemoryError as e:
                row["error"] = f"OutOfMemoryError: {str(e).splitlines()[0][:160]}"
            yield row
            torch.cuda.empty_cache()
        del h, w, t


# -- memory-bound kernels --------------------------------------------------------------------------
def bench_rms_norm(rows_: int, width: int, hbm: float, at: Device) -> Iterator[dict]:
    from anyseq.kernels.rms_norm import rms_norm_reference

    compiled = torch.compile(rms_norm_reference)
    for fused in (False, True):
        x, r = (at.randn(rows_, width, grad=True) for _ in range(2))
        w = torch.ones(width, device=at.name, dtype=at.dtype, requires_grad=True)
        res = r if fused else None
        size = x.numel() * x.element_size()
        fwd_bytes = size * (4 if fused else 2)  # read x (and r), write y (and h)
        bwd_bytes = size * (4 if fused else 3)  # read dy, x|h (and dh), write dx

        def ours():
            with use_backend("triton"):
                return rms_norm(x, w, residual=res)

        impls = {"anyseq-triton": ours, "torch eager": lambda: rms_norm_reference(x, w, 1e-5, res),
                 "torch.compile": lambda: compiled(x, w, 1e-5, res)}
        grads = [torch.ones_like(x)] * (2 if fused else 1)
        for name, fn in impls.items():
            def backward():
                y = fn()
                torch.autograd.backward(y if isinstance(y, tuple) else (y,), grads)

            with torch.no_grad():
                fwd = at.time_ms(fn)
            both = at.time_ms(backward, [x, r, w])
            row = {"rows": rows_, "hidden": width, "fused_residual": fused, "impl": name, "fwd_ms": fwd,
                   "fwd_bwd_ms": both, "fwd_gbps": fwd_bytes / fwd / 1e6,
                   "fwd_bwd_gbps": (fwd_bytes + bwd_bytes) / both / 1e6}
            row["fwd_hbm_fraction"] = row["fwd_gbps"] / (hbm * 1e3)
            yield row


def bench_decode(lengths: list[int], hbm: float, at: Device, shape: tuple[int, int, int, int]) -> Iterator[dict]:
    B, H, HK, D = shape  # batch, query heads, KV heads, head dim
    for S in lengths:
        q = at.randn(B, H, 1, D)
        k, v = (at.randn(B, HK, S, D) for _ in range(2))
        start = torch.zeros(B, 1, device=at.name, dtype=torch.int32)
        end = torch.full((B, 1), S, device=at.name, dtype=torch.int32)
        moved = 2 * k.numel() * k.element_size() + 2 * q.numel() * q.element_size()

        def ours():
            with use_backend("triton"):
                return attention(q, k, v, start, end)

        impls = {"anyseq-triton (flash-decoding)": ours,
                 "sdpa (enable_gqa)": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)}
        for name, fn in impls.items():
            with torch.no_grad():
                ms = at.time_ms(fn)
            row = {"batch": B, "heads": H, "kv_heads": HK, "head_dim": D, "cache_len": S, "impl": name, "ms": ms,
                   "gbps": moved / ms / 1e6}
            row["hbm_fraction"] = row["gbps"] / (hbm * 1e3)
            yield row


# -- report ---------------------------------------------------------------------------------------
def _table(rows: list[dict], keys: list[str], fmt: dict[str, str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for key in keys:
            value = r["error"] if "error" in r and key == keys[-1] else r.get(key, "")
            cells.append(format(value, fmt[key]) if key in fmt and isinstance(value, (int, float)) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(rows: list[dict], mask: str, ours: str, theirs: str) -> list[float]:
    """Forward TFLOP/s of ours over theirs for every configuration of ``mask`` where both ran."""
    ratios = []
    groups: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["mask"] == mask and "fwd_tflops" in r:
            groups.setdefault((r["seq"], r["head_dim"]), {})[r["impl"]] = r["fwd_tflops"]
    for group in groups.values():
        if ours in group and theirs in group:
            ratios.append(group[ours] / group[theirs])
    return ratios


def targets_check(results: dict) -> list[dict]:
    att, loss, dec = results.get("attention", []), results.get("loss", []), results.get("decode", [])
    checks = []

    def add(name, values, at_most=False):
        if values:
            worst = max(values) if at_most else min(values)
            ok = worst <= TARGETS[name] if at_most else worst >= TARGETS[name]
            checks.append({"target": name, "goal": TARGETS[name], "worst": worst, "best": min(values) if at_most
                           else max(values), "met": ok})

    add("causal forward vs SDPA-flash", _ratio(att, "causal", "anyseq-triton", "sdpa-flash (is_causal)"))
    add("documents forward vs FlexAttention", _ratio(att, "documents", "anyseq-triton", "flex (block mask)"))
    add("documents forward vs SDPA dense mask", _ratio(att, "documents", "anyseq-triton", "sdpa (dense mask)"))
    by_vocab = {}
    for r in loss:
        by_vocab.setdefault(r["vocab"], {})[r["impl"]] = r
    memory, duration = [], []
    for group in by_vocab.values():
        ours, full = group.get("anyseq-fused", {}), group.get("materialised logits", {})
        if "peak_bytes" in ours and "peak_bytes" in full:
            memory.append(ours["peak_bytes"] / full["peak_bytes"])
            duration.append(ours["fwd_bwd_ms"] / full["fwd_bwd_ms"])
    add("fused loss memory vs materialised (at most)", memory, at_most=True)
    add("fused loss time vs materialised (at most)", duration, at_most=True)
    add("decode fraction of HBM bandwidth", [r["hbm_fraction"] for r in dec if r["impl"].startswith("anyseq")])
    return checks


def markdown(results: dict, env: dict) -> str:
    parts = [f"# anyseq kernel benchmarks\n\n{env['gpu']}, torch {env['torch']}, triton {env['triton']}, "
             f"{env.get('dtype', 'bfloat16')}. HBM reference {env['hbm_tbps']} TB/s.",
             "Attention FLOPs count unmasked pairs only (fwd 4·D, fwd+bwd 14·D per pair). Documents are packed "
             "with log-normal lengths around seq/6 (min 32). Peak memory excludes inputs and weights."]
    if results.get("attention"):
        parts.append("## Attention (TFLOP/s)\n\n" + _table(
            results["attention"], ["mask", "seq", "head_dim", "batch", "heads", "impl", "fwd_tflops", "fwd_bwd_tflops"],
            {"fwd_tflops": ".1f", "fwd_bwd_tflops": ".1f"}))
    if results.get("loss"):
        rows = [{**r, "peak_gib": r["peak_bytes"] / 2**30} if "peak_bytes" in r else r for r in results["loss"]]
        parts.append("## Linear cross-entropy, forward+backward\n\n" + _table(
            rows, ["vocab", "tokens", "hidden", "impl", "fwd_bwd_ms", "peak_gib"],
            {"fwd_bwd_ms": ".2f", "peak_gib": ".2f"}))
    if results.get("rms_norm"):
        parts.append("## RMSNorm (GB/s)\n\n" + _table(
            results["rms_norm"],
            ["rows", "hidden", "fused_residual", "impl", "fwd_gbps", "fwd_bwd_gbps", "fwd_hbm_fraction"],
            {"fwd_gbps": ".0f", "fwd_bwd_gbps": ".0f", "fwd_hbm_fraction": ".2f"}))
    if results.get("decode"):
        parts.append("## Decode attention (GB/s)\n\n" + _table(
            results["decode"],
            ["batch", "heads", "kv_heads", "head_dim", "cache_len", "impl", "ms", "gbps", "hbm_fraction"],
            {"ms": ".3f", "gbps": ".0f", "hbm_fraction": ".2f"}))
    if results.get("targets"):
        parts.append("## Targets\n\n" + _table(results["targets"], ["target", "goal", "worst", "best", "met"],
                                                {"goal": ".2f", "worst": ".2f", "best": ".2f"}))
    return "\n\n".join(parts) + "\n"


SECTIONS = ("attention", "loss", "rms_norm", "decode")
SAME_SETUP = ("gpu", "torch", "triton")


def earlier_sections(path: Path, env: dict) -> dict:
    """Sections an earlier run wrote to ``path`` on the same GPU and versions (else none)."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if any(earlier.get("environment", {}).get(k) != env[k] for k in SAME_SETUP):
        return {}
    return {k: earlier[k] for k in SECTIONS if k in earlier}


def write(out: Path, env: dict, results: dict) -> None:
    results = {k: results[k] for k in SECTIONS if k in results}
    results["targets"] = targets_check(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps({"environment": env, **results}, indent=1))
    (out / "kernels.md").write_text(markdown(results, env))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels.json and kernels.md")
    parser.add_argument("--quick", action="store_true", help="a short subset: seq 1k/4k/16k, head dim 128")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--hbm-tbps", type=float, default=4.8, help="HBM bandwidth to compare with (H200: 4.8)")
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes on the CPU in fp32, Triton interpreted: checks the script, measures nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the first Triton kernel is imported (they load lazily)
        return _run(args, Device("cpu", torch.float32), "cpu (smoke run)", dict(
            attention=([48], [32], 48, 64), loss=([300], 64, 32), rms_norm=(16, 64), decode=([40], (1, 4, 2, 32))))
    if not torch.cuda.is_available():
        print("anyseq.kernels.benchmark needs a CUDA GPU, and torch.cuda.is_available() is False here; "
              "nothing was measured.", file=sys.stderr)
        return 2
    seqs = [1024, 4096, 16384] if args.quick else [1024, 2048, 4096, 8192, 16384]
    return _run(args, Device(), torch.cuda.get_device_name(), dict(
        attention=(seqs, [128] if args.quick else [64, 128], 16384, 2048),  # seqs, head dims, tokens, width
        loss=([65536, 184622], 8192, 4096),  # vocabularies, tokens, width
        rms_norm=(16384, 4096),  # rows, width
        decode=([4096, 16384] if args.quick else [4096, 16384, 65536], (8, 32, 8, 128)),  # cache lengths, shape
    ))


def _run(args: argparse.Namespace, at: Device, gpu: str, sizes: dict) -> int:
    import triton

    sections = set(args.only.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; expected some of {list(SECTIONS)}")
    env = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, "dtype": str(at.dtype).removeprefix("torch."),
           "python": platform.python_version(), "hbm_tbps": args.hbm_tbps, "quick": args.quick}
    runs = {
        "attention": lambda: bench_attention(*sizes["attention"], at),
        "loss": lambda: bench_loss(*sizes["loss"], at),
        "rms_norm": lambda: bench_rms_norm(*sizes["rms_norm"], args.hbm_tbps, at),
        "decode": lambda: bench_decode(sizes["decode"][0], args.hbm_tbps, at, sizes["decode"][1]),
    }
    results = earlier_sections(args.out / "kernels.json", env)
    for name, run in runs.items():
        if name in sections:
            results[name] = []
            for row in run():  # written row by row: a run cut short keeps what it measured
                print(json.dumps(row), flush=True)
                results[name].append(row)
                write(args.out, env, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
