"""Shared test setup (tests/ only: the repository root has no conftest.py, by design)."""

import json
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
def script():
    """``script("bench_model")``: a module of scripts/ (benchmarks are scripts, not package code)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def one_thread():
    """The test machine is shared: one intra-op thread is steadier than two that spin-wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SENTENCES = [
    f"the {a} {b} {c} over the {d} {e}."
    for a, b, c, d, e in [
        ("quick", "fox", "jumps", "lazy", "dog"), ("small", "cat", "leaps", "sleepy", "owl"),
        ("red", "hen", "flies", "old", "barn"), ("blue", "whale", "swims", "deep", "reef"),
        ("green", "frog", "hops", "wet", "log"), ("tiny", "ant", "climbs", "tall", "tree"),
        ("brave", "knight", "rides", "misty", "hill"), ("wise", "owl", "glides", "dark", "wood"),
    ]
]


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    """A text tokenizer and token shards of SENTENCES: (folder, tokenizer)."""
    from anyseq.cli import main as anyseq
    from anyseq.tokenizers.text import TextTokenizer

    root = tmp_path_factory.mktemp("text")
    tok = TextTokenizer.train(SENTENCES * 10, vocab_size=300, output=root / "text.model")
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n" for i, s in enumerate(SENTENCES * 8)))
    rc = anyseq(["tokenize-dataset", "--manifest", str(manifest), "--out", str(root / "shards"),
                 "--text-tokenizer", str(root / "text.model")])
    assert rc == 0
    return root, tok
