"""Shared test setup (tests/ only: the repository root has no conftest.py, by design)."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter; with one they compile, and
# the kernel tests run on it (``kernel_device``). Whether a kernel is interpreted is fixed
# when its module is first imported, so this must happen before any test module loads one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need Triton compiled for a CUDA device, not interpreted."""
    from anyseq.kernels.testing import kernel_device

    if kernel_device().type == "cuda":
        return
    reason = "needs a CUDA device" if not torch.cuda.is_available() else "Triton is interpreted (TRITON_INTERPRET=1)"
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def one_thread():
    """The test machine is shared: one intra-op thread is steadier than two that spin-wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
