"""Training and generation throughput of model presets (a benchmark, not a test).

    .venv/bin/python scripts/bench_model.py --presets tiny 100m --device cpu --out bench/model_cpu.json

Training: forward + backward + AdamW step on random tokens (tokens/s, TFLOP/s by the PaLM
convention). Generation: greedy decoding of new tokens after a prompt, with the KV cache
and without it (recomputing the whole sequence each step), in the same process, so the
ratio is what to read on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anyseq.config import ModelConfig
from anyseq.kernels import linear_cross_entropy
from anyseq.model import Transformer
from anyseq.sampling import SamplingOptions, sample
from anyseq.sequence import TextGrammar
from anyseq.vocab import TokenSpace


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(model: Transformer, batch: int, seq: int, steps: int, device: torch.device, dtype) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            hidden = model(ids[:, :-1])
            ce, _ = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.output.weight, ids[:, 1:].reshape(-1))
        ce.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = batch * seq / seconds
    return {"batch": batch, "seq_len": seq, "step_s": seconds, "tokens_per_s": tokens_per_s,
            "tflops": model.config.flops_per_token(seq) * tokens_per_s / 1e12}


def bench_generation(model: Transformer, prompt_len: int, new: int, batch: int, use_cache: bool) -> dict:
    space = TokenSpace(model.config.vocab_size - 64, pad_to_multiple=1)
    prompts = [[int(t) for t in torch.randint(0, space.text_vocab_size, (prompt_len,))] for _ in range(batch)]
    constraints = [TextGrammar(space).constraint(max_tokens=new - 1) for _ in prompts]
    start = time.perf_counter()
    sample(model, prompts, constraints, SamplingOptions(temperature=0), space.special("<pad>"),
           max_new_tokens=new, use_cache=use_cache)
    sync(model.tok_embeddings.weight.device)
    seconds = time.perf_counter() - start
    return {"batch": batch, "prompt": prompt_len, "new_tokens": new, "seconds": seconds,
            "tokens_per_s": batch * new / seconds, "kv_cache": use_cache}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "100m"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    for name in args.presets:
        torch.manual_seed(0)
        config = ModelConfig.from_preset(name)
        model = Transformer(config).to(device)
        small = config.num_params() < 20e6
        train = bench_training(model, batch=8 if small else 4, seq=256 if small else 512, steps=args.steps,
                               device=device, dtype=dtype)
        model.eval()
        bench_generation(model, 8, 4, batch=1, use_cache=True)  # warm-up: first calls allocate
        gen = {c: bench_generation(model, args.prompt, args.new, batch=4, use_cache=c) for c in (True, False)}
        row = {"preset": name, "params": config.num_params(), "device": str(device), "dtype": args.dtype,
               "train": train, "generate_cache": gen[True], "generate_no_cache": gen[False],
               "cache_speedup": gen[True]["tokens_per_s"] / gen[False]["tokens_per_s"]}
        rows.append(row)
        print(f"{name:>6} ({config.num_params() / 1e6:.1f}M) train {train['tokens_per_s']:,.0f} tok/s "
              f"({train['tflops']:.3f} TFLOP/s) | generate {gen[True]['tokens_per_s']:.1f} tok/s with cache, "
              f"{gen[False]['tokens_per_s']:.1f} without ({row['cache_speedup']:.1f}x)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
