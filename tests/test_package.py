"""The package: tokenizers/ and kernels/ never shadow Hugging Face's top-level names."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tokenizers", "kernels"])
def test_bare_import_from_the_repo_root_is_refused(name):
    run = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert f"anyseq.{name}" in run.stderr and "Hugging Face" in run.stderr


def test_namespaced_imports_work_from_the_repo_root():
    code = "import anyseq.tokenizers, anyseq.kernels; print(anyseq.tokenizers.__name__, anyseq.kernels.__name__)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["anyseq.tokenizers", "anyseq.kernels"]


def test_pyproject_lists_every_subpackage():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"anyseq": ROOT / "anyseq", **{k: ROOT / v for k, v in config["package-dir"].items()}}
    found = {
        ".".join((name, *init.parent.relative_to(base).parts))
        for name, base in roots.items()
        for init in base.rglob("__init__.py")
    }
    assert found <= set(config["packages"])


def test_cli_help_lists_every_command(capsys):
    from anyseq.cli import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", *COMMANDS):
        assert name in out
    assert main(["frobnicate"]) == 2
