"""Compile every Triton kernel for a GPU that is not here, and report what each tile costs.

The interpreter checks what the kernels compute, not whether they compile for a real GPU or
whether a tile configuration fits its shared memory and registers. This runs the real
launchers on CPU tensors under a compile-only Triton driver: Triton lowers each kernel, and
each autotuning candidate, to a cubin with its bundled ptxas; the driver reads the cubin's
registers and spills with cuobjdump, rejects what exceeds the GPU's shared memory exactly as
the CUDA driver would, and launches nothing. No GPU and no CUDA driver are needed.

    python -m anyseq.kernels.compile_check --gpu h200 --out bench/

Run it in a process where ``TRITON_INTERPRET`` is unset: an interpreted kernel never compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    arch: int  # compute capability, e.g. 90 for sm_90
    multiprocessors: int
    max_shared_bytes: int  # opt-in shared memory per block
    registers_per_sm: int = 65536
    max_threads: int = 1024


GPUS = {
    "h200": Gpu("NVIDIA H200", 90, 132, 232448),
    "h100": Gpu("NVIDIA H100 SXM", 90, 132, 232448),
    "b200": Gpu("NVIDIA B200", 100, 148, 232448),
}


@dataclasses.dataclass
class Compiled:
    """One compiled kernel variant; ``fits`` is False where the GPU would refuse to load it."""

    kernel: str
    dtype: str
    constants: dict
    num_warps: int
    num_stages: int
    shared_bytes: int
    registers: int | None = None
    spilled_bytes: int | None = None  # local memory per thread; > 0 means register spills
    tensor_cores: str | None = None  # which MMA instructions the SASS uses, if any
    fits: bool = True
    workload: str = ""


# SASS opcodes of each tensor-core path: Hopper's warpgroup MMA, Blackwell's tcgen05, warp-level MMA
_TENSOR_CORES = (("HGMMA", "wgmma"), ("UTCHMMA", "tcgen05"), ("UTCQMMA", "tcgen05"), ("HMMA", "mma.sync"))


def resources(cubin: bytes) -> tuple[int, int, str]:
    """(registers per thread, local-memory bytes per thread, tensor-core path) of a one-kernel cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", "--dump-sass", f.name],
                                capture_output=True, text=True, check=True).stdout
    match = re.search(r"REG:(\d+).*?LOCAL:(\d+)", report)
    if match is None:
        raise RuntimeError(f"compile_check: cuobjdump printed no resource usage:\n{report[:2000]}")
    path = next((name for opcode, name in _TENSOR_CORES if re.search(rf"\b{opcode}\b", report)), "none")
    return int(match.group(1)), int(match.group(2)), path


class _Utils:
    def __init__(self, gpu: Gpu, log: list[Compiled]):
        self.gpu, self.log = gpu, log

    def get_device_properties(self, device: int) -> dict:
        return {"max_shared_mem": self.gpu.max_shared_bytes, "multiprocessor_count": self.gpu.multiprocessors,
                "max_num_regs": self.gpu.registers_per_sm, "warpSize": 32}

    def load_binary(self, name, cubin, shared, device):
        registers, local, tensor_cores = resources(cubin)
        entry = self.log[-1]
        entry.registers, entry.spilled_bytes, entry.tensor_cores = registers, local, tensor_cores
        per_warp = -(-registers // 8) * 8 * 32  # registers are allocated per warp in units of 8 per thread
        max_threads = min(self.gpu.max_threads, self.gpu.registers_per_sm // per_warp * 32)
        if entry.num_warps * 32 > max_threads:
            entry.fits = False
        return None, None, registers, local // 4, max_threads


class CompileOnlyDriver(DriverBase):
    """A Triton driver for a GPU that is not present: compiles for it, never launches."""

    def __init__(self, gpu: Gpu):
        self.gpu = gpu
        self.log: list[Compiled] = []
        self.workload, self.dtype = "", ""
        self.utils = _Utils(gpu, self.log)

    @classmethod
    def is_active(cls) -> bool:
        return False

    def map_python_to_cpp_type(self, ty: str) -> str:
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.gpu.arch, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_benchmarker(self):
        def compile_only(kernel_call, quantiles=None, **kwargs):
            kernel_call()  # compiles and "launches" (a no-op); every candidate ties
            return [1.0] * len(quantiles) if quantiles else 1.0

        return compile_only

    def launcher_cls(self, src, metadata):
        tiles = {p.num: p.name for p in src.fn.params if p.is_constexpr}
        constants = {tiles[path[0]]: value for path, value in src.constants.items() if path[0] in tiles}
        kernel = f"{src.fn.module.rsplit('.', 1)[-1]}.{metadata.name}"
        self.log.append(Compiled(kernel, self.dtype, constants, metadata.num_warps, metadata.num_stages,
                                 metadata.shared, fits=metadata.shared <= self.gpu.max_shared_bytes,
                                 workload=self.workload))
        return lambda *args, **kwargs: None


@contextmanager
def compiling_for(gpu: Gpu) -> Iterator[CompileOnlyDriver]:
    """Make Triton compile for ``gpu`` (launching nothing) inside the block."""
    if knobs.runtime.interpret:
        raise RuntimeError("compile_check: TRITON_INTERPRET is set, so no kernel would compile; unset it")
    fake = CompileOnlyDriver(gpu)
    previous = driver._active
    driver.set_active(fake)
    try:
        yield fake
    finally:
        driver._active = previous
        _forget_compiled()


def _forget_compiled() -> None:
    """Drop what the kernels cached under the fake driver (its no-op launchers, tied autotuning
    choices), so a real GPU in this process compiles and tunes afresh."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    kernel_modules = [m for name, m in list(sys.modules.items()) if name.startswith("anyseq.kernels.")]
    for module in kernel_modules:
        for obj in vars(module).values():
            if isinstance(obj, Autotuner):
                obj.cache.clear()
                obj = obj.fn
            if isinstance(obj, JITFunction):
                obj.device_caches.clear()


def _attention(fake: CompileOnlyDriver, dtype: torch.dtype) -> None:
    from anyseq.kernels import attention_triton, decode_triton
    from anyseq.kernels.intervals import causal_intervals

    for head_dim in (64, 128):
        fake.workload = f"attention fwd+bwd, head dim {head_dim}"
        B, H, HK, T = 1, 4, 2, 1024
        q, do = (torch.randn(B, H, T, head_dim, dtype=dtype) for _ in range(2))
        k, v = (torch.randn(B, HK, T, head_dim, dtype=dtype) for _ in range(2))
        start, end = causal_intervals(torch.zeros(B, T, dtype=torch.int64))
        out, lse = attention_triton.forward(q, k, v, start, end, head_dim ** -0.5)
        attention_triton.backward(do, q, k, v, out, lse, start, end, head_dim ** -0.5)

        fake.workload = f"decode, head dim {head_dim}"
        S = 8192
        k, v = (torch.randn(B, HK, S, head_dim, dtype=dtype) for _ in range(2))
        start, end = torch.zeros(B, 1, dtype=torch.int32), torch.full((B, 1), S, dtype=torch.int32)
        decode_triton.forward(q[:, :, :1], k, v, start, end, head_dim ** -0.5)


def _cross_entropy(fake: CompileOnlyDriver, dtype: torch.dtype) -> None:
    from anyseq.kernels import cross_entropy_triton

    for vocab in (65536, 184622):
        fake.workload = f"cross-entropy chunk, vocab {vocab}"
        logits = torch.randn(64, vocab, dtype=dtype)
        targets = torch.randint(0, vocab, (64,))
        lse, target_logit = torch.zeros(64), torch.zeros(64)
        cross_entropy_triton.update(logits, targets, 0, lse, target_logit)
        cross_entropy_triton.grad(logits, targets, 0, lse, torch.ones(64), torch.zeros(64))


def _rms_norm(fake: CompileOnlyDriver, dtype: torch.dtype) -> None:
    from anyseq.kernels import rms_norm_triton

    for width in (4096, 8192):
        for residual in (False, True):
            fake.workload = f"rms norm, width {width}" + (", residual" if residual else "")
            x = torch.randn(64, width, dtype=dtype)
            weight = torch.ones(width, dtype=dtype)
            y, h, rstd = rms_norm_triton.forward(x, weight, x.clone() if residual else None, 1e-5)
            rms_norm_triton.backward(y, h if residual else x, weight, rstd, y if residual else None)


def check(gpu: Gpu, dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)) -> list[Compiled]:
    """Compile every kernel the model launches, at realistic widths, for ``gpu``."""
    with compiling_for(gpu) as fake:
        for dtype in dtypes:
            fake.dtype = str(dtype).removeprefix("torch.")
            for workload in (_attention, _cross_entropy, _rms_norm):
                workload(fake, dtype)
    return fake.log


def unique(log: list[Compiled]) -> list[Compiled]:
    """Each compiled variant once (a variant launched by several workloads keeps the first)."""
    seen, rows = set(), []
    for c in log:
        key = (c.kernel, c.dtype, tuple(sorted(c.constants.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            rows.append(c)
    return rows


def markdown(rows: list[Compiled], gpu: Gpu) -> str:
    lines = [f"Compiled for {gpu.name} (sm_{gpu.arch}, {gpu.max_shared_bytes // 1024} KiB shared memory per block) "
             f"by `python -m anyseq.kernels.compile_check`; triton {triton.__version__}.", "",
             "| kernel | dtype | constants | warps | stages | shared KiB | registers | spilled B/thread | tensor cores | loads |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        tiles = " ".join(f"{k}={v}" for k, v in sorted(c.constants.items()))
        lines.append(f"| {c.kernel} | {c.dtype} | {tiles} | {c.num_warps} | {c.num_stages} | {c.shared_bytes / 1024:.0f} | "
                     f"{_dash(c.registers)} | {_dash(c.spilled_bytes)} | {_dash(c.tensor_cores)} | "
                     f"{'yes' if c.fits else '**no**'} |")
    return "\n".join(lines) + "\n"


def _dash(x) -> str:
    return "–" if x is None else str(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h200", help="the GPU to compile for")
    parser.add_argument("--fp16", action="store_true", help="also compile the fp16 variants (bf16 always)")
    parser.add_argument("--out", type=Path, help="folder for compile_<gpu>.json and compile_<gpu>.md")
    args = parser.parse_args(argv)
    gpu = GPUS[args.gpu]
    rows = unique(check(gpu, (torch.bfloat16, torch.float16) if args.fp16 else (torch.bfloat16,)))
    table = markdown(rows, gpu)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"compile_{args.gpu}.json").write_text(
            json.dumps({"gpu": dataclasses.asdict(gpu), "kernels": [dataclasses.asdict(c) for c in rows]}, indent=1))
        (args.out / f"compile_{args.gpu}.md").write_text(table)
    refused = [c for c in rows if not c.fits]
    if refused:
        print(f"{len(refused)} variants would not load on the {gpu.name} (the autotuner skips them)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
