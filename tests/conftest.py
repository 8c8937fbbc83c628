"""Shared test setup (tests/ only: the repository root has no conftest.py, by design)."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. Whether a kernel is
# interpreted is fixed when its module is first imported, so this must happen before any
# test module (or anything it imports) loads a kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_thread():
    """The test machine is shared: one intra-op thread is steadier than two that spin-wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
