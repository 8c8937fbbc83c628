"""GPU kernels with PyTorch references, imported as ``anyseq.kernels``."""

if __name__ != "anyseq.kernels":  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"anyseq's kernels/ folder was imported as the top-level module {__name__!r}. "
        "It must only be imported as 'anyseq.kernels' (the name 'kernels' belongs to "
        "Hugging Face). Install the package (`pip install -e .`) and run Python from "
        "outside the repository root, or use the `anyseq` console script."
    )

from anyseq.kernels.attention import attention  # noqa: E402
from anyseq.kernels.backend import get_backend, set_backend, use_backend  # noqa: E402
from anyseq.kernels.cross_entropy import linear_cross_entropy  # noqa: E402
from anyseq.kernels.intervals import causal_intervals, dense_mask, intervals_from_spans  # noqa: E402
from anyseq.kernels.rms_norm import rms_norm  # noqa: E402

__all__ = [
    "attention",
    "causal_intervals",
    "dense_mask",
    "get_backend",
    "intervals_from_spans",
    "linear_cross_entropy",
    "rms_norm",
    "set_backend",
    "use_backend",
]
