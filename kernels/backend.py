"""Which implementation runs: Triton kernels, PyTorch references, or attention baselines.

``auto`` picks Triton for CUDA tensors and the PyTorch reference for CPU tensors. The choice
is process-wide (``set_backend``, the ``ANYSEQ_KERNELS`` environment variable) or scoped
(``use_backend``). Triton kernel modules are imported lazily, on first use: whether Triton
interprets them on the CPU (``TRITON_INTERPRET=1``) is fixed when they are decorated, so a
test can set the variable after ``anyseq.kernels`` itself was imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "torch", "sdpa", "flex")
ENV_VAR = "ANYSEQ_KERNELS"


def _checked(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown kernel backend {name!r}; expected one of {list(BACKENDS)}")
    return name


_backend = _checked(os.environ.get(ENV_VAR, "auto"), f"environment variable {ENV_VAR}")


def set_backend(name: str) -> None:
    """Choose the implementation for every later call (see module docstring)."""
    global _backend
    _backend = _checked(name, "set_backend")


def get_backend() -> str:
    return _backend


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block with another backend, restoring the previous one afterwards."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def resolve(device: torch.device) -> str:
    """The backend that runs for tensors on ``device``: triton, torch, sdpa or flex."""
    if _backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return _backend


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    from triton import knobs

    return bool(knobs.runtime.interpret)


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of the GPU Triton launches on, which sizes split-K style grids.

    Asks Triton's active driver, so a compile-only driver (``compile_check``) answers for the
    GPU it compiles for; the interpreter is taken as a two-SM GPU, so tests still see splits.
    """
    if interpreting():
        return 2
    from triton.runtime import driver

    index = device.index if device.type == "cuda" and device.index is not None else driver.active.get_current_device()
    return driver.active.utils.get_device_properties(index)["multiprocessor_count"]


def triton_module(name: str, device: torch.device) -> ModuleType:
    """Import ``anyseq.kernels.<name>`` (a Triton module) for tensors on ``device``.

    Raises a clear error where Triton cannot run those tensors: CPU tensors need the
    interpreter, and kernels imported for the GPU cannot be re-decorated for it.
    """
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"kernel backend 'triton' supports CUDA (or CPU in the interpreter), not {device.type!r}")
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton ships with Linux torch wheels
        raise RuntimeError("kernel backend 'triton' needs the triton package (pip install triton)") from e
    if device.type == "cpu" and not interpreting():
        raise RuntimeError(
            "kernel backend 'triton' got CPU tensors: Triton runs on the CPU only in its interpreter. "
            "Set TRITON_INTERPRET=1 before the first Triton kernel is used, or use the 'torch' backend."
        )
    if interpreting():
        from anyseq.kernels import _interpreter

        _interpreter.patch_scalar_index()
    module = importlib.import_module(f"anyseq.kernels.{name}")
    if device.type == "cpu" and not module.INTERPRETED:
        raise RuntimeError(
            f"anyseq.kernels.{name} was imported for the GPU (TRITON_INTERPRET was unset at that time); "
            "set TRITON_INTERPRET=1 before the first Triton call to run it on CPU tensors"
        )
    return module
