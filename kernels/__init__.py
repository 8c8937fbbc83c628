"""GPU kernels with PyTorch references, imported as ``anyseq.kernels``."""

if __name__ != "anyseq.kernels":  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"anyseq's kernels/ folder was imported as the top-level module {__name__!r}. "
        "It must only be imported as 'anyseq.kernels' (the name 'kernels' belongs to "
        "Hugging Face). Install the package (`pip install -e .`) and run Python from "
        "outside the repository root, or use the `anyseq` console script."
    )
