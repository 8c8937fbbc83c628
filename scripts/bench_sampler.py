"""The sampler's own cost per step at a large vocabulary (a benchmark, not a test).

    .venv/bin/python scripts/bench_sampler.py --out bench/sampler_cpu.json

What ``anyseq.sampling.sample`` adds to each decoding step besides the model: the allowed-id
masks of a batch of grammar constraints, and the draw of one id per row. Each is timed against
the way the sampler used to do it, in the same process: a fresh mask per row and step built on
the host and copied to the device, and ``torch.multinomial`` on the probabilities copied to the
host (``--device cuda`` measures what that copy costs on a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anyseq.sampling import AllowedMasks, draw
from anyseq.sequence import Serializer
from anyseq.vocab import TokenSpace


def per_step_ms(fn, steps: int, device: torch.device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text-vocab", type=int, default=32000)
    p.add_argument("--codebook", type=int, default=32768, help="visual codes (Emu3's count)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    space = TokenSpace(args.text_vocab, {"visual": [args.codebook], "audio": [1024] * 4}, max_height=64, max_width=64)
    vocab, device = space.size, torch.device(args.device)
    constraints = [Serializer(space).grammar("image").constraint(h=64, w=64) for _ in range(args.batch)]
    masks = AllowedMasks(vocab, device)

    def step(build):  # masks of the batch, then every row takes its first allowed id
        torch.stack([build(c.allowed()) for c in constraints])
        for c in constraints:
            c.advance(c.allowed()[0][0])

    probs = torch.softmax(torch.randn(args.batch, vocab, generator=torch.Generator().manual_seed(0)), -1).to(device)
    generator = torch.Generator().manual_seed(0)
    report = {
        "vocab": vocab, "batch": args.batch, "device": str(device), "threads": torch.get_num_threads(),
        "masks_fresh_ms": per_step_ms(lambda: step(lambda r: AllowedMasks.build(r, vocab).to(device)), args.steps,
                                      device),
        "masks_cached_ms": per_step_ms(lambda: step(masks), args.steps, device),
        "draw_multinomial_ms": per_step_ms(lambda: torch.multinomial(probs.cpu(), 1, generator=generator).to(device),
                                           args.steps, device),
        "draw_inverse_cdf_ms": per_step_ms(lambda: draw(probs, generator), args.steps, device),
    }  # fmt: skip
    print(f"{device}, vocab {vocab}, batch {args.batch}: masks {report['masks_fresh_ms']:.3f} ms fresh, "
          f"{report['masks_cached_ms']:.3f} ms cached; draw {report['draw_multinomial_ms']:.2f} ms multinomial, "
          f"{report['draw_inverse_cdf_ms']:.2f} ms inverse CDF (per step)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
