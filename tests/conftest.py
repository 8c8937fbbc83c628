"""Shared test setup (tests/ only: the repository root has no conftest.py, by design)."""

import os

import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. Whether a kernel is
# interpreted is fixed when its module is first imported, so this must happen before any
# test module (or anything it imports) loads a kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
