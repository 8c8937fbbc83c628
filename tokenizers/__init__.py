"""Modality tokenizers (text, image+video, audio), imported as ``anyseq.tokenizers``."""

if __name__ != "anyseq.tokenizers":  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"anyseq's tokenizers/ folder was imported as the top-level module {__name__!r}. "
        "It must only be imported as 'anyseq.tokenizers' (the name 'tokenizers' belongs to "
        "Hugging Face). Install the package (`pip install -e .`) and run Python from "
        "outside the repository root, or use the `anyseq` console script."
    )
