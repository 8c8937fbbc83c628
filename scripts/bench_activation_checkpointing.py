"""What activation checkpointing saves and costs, per preset (a benchmark, not a test).

    .venv/bin/python scripts/bench_activation_checkpointing.py --presets 100m --seq 1024 --out bench/ac_cpu.json

For each setting (off, every other block, every block keeping its matmul and attention outputs,
every block): the bytes the forward leaves alive for the backward (parameters excluded; the same
count on any device), the peak memory on a GPU, and the training step's time as a ratio to "off",
all in the same process. The loss is the fused
linear cross-entropy, as in training, so no logits are kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anyseq.config import ModelConfig
from anyseq.kernels import linear_cross_entropy
from anyseq.parallelize import activation_bytes, build

SETTINGS = ((0, "full"), (2, "full"), (1, "save_matmuls"), (1, "full"))  # (every n-th block, policy)


def measure(config: ModelConfig, every: int, policy: str, batch: int, seq: int, steps: int, device: torch.device,
            dtype) -> dict:
    torch.manual_seed(0)
    model = build(config, activation_checkpointing=every, checkpoint_policy=policy).to(device)
    ids = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)

    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            hidden = model(ids[:, :-1])
            ce, _ = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.output.weight, ids[:, 1:].reshape(-1))
        return ce.mean()

    def step():
        forward().backward()
        model.zero_grad(set_to_none=True)

    saved, loss = activation_bytes(model, forward)  # also the warm-up step
    loss.backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row = {"activation_checkpointing": every, "policy": policy, "saved_bytes": saved, "step_s": (time.perf_counter() - start) / steps}
    if device.type == "cuda":
        row["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["100m"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    report = []
    for name in args.presets:
        config = ModelConfig.from_preset(name)
        rows = [measure(config, every, policy, args.batch, args.seq, args.steps, device, dtype)
                for every, policy in SETTINGS]
        for row in rows:
            row["saved_ratio"] = row["saved_bytes"] / rows[0]["saved_bytes"]
            row["time_ratio"] = row["step_s"] / rows[0]["step_s"]
            print(f"{name:>6} batch {args.batch} x {args.seq} activation_checkpointing={row['activation_checkpointing']} "
                  f"{row['policy']:>12}: "
                  f"keeps {row['saved_bytes'] / 2**20:,.1f} MiB ({row['saved_ratio']:.2f}x), "
                  f"step {row['step_s']:.2f} s ({row['time_ratio']:.2f}x)", flush=True)
        report.append({"preset": name, "params": config.num_params(), "device": str(device), "dtype": args.dtype,
                       "batch": args.batch, "seq_len": args.seq, "rows": rows})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
