"""``anyseq eval-tokenizer``: reconstruction metrics of a trained media tokenizer.

Reads the tokenizer folder's ``config.json`` to learn its modality and hands the arguments
to that modality's evaluator (``visual_eval`` or ``audio_eval``), whose ``--help`` lists
the options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from anyseq.tokenizers.base import TokenizerFileError, read_tokenizer_meta

EVALUATORS = {"visual": "anyseq.tokenizers.visual_eval", "audio": "anyseq.tokenizers.audio_eval"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    peek = argparse.ArgumentParser(prog="anyseq eval-tokenizer", add_help=False)
    peek.add_argument("--tokenizer", help="folder written by a tokenizer's training (config.json + model.safetensors)")
    known, _ = peek.parse_known_args(argv)
    if known.tokenizer is None:
        print(
            "usage: anyseq eval-tokenizer --tokenizer DIR --data PATH --out DIR [options]\n"
            "The options depend on the tokenizer's modality: "
            + ", ".join(f"`python -m {m} --help`" for m in EVALUATORS.values()),
            file=sys.stderr,
        )
        return 0 if {"-h", "--help"} & set(argv) else 2
    try:
        modality = read_tokenizer_meta(known.tokenizer)["modality"]
    except TokenizerFileError as err:
        print(f"anyseq eval-tokenizer: error: {err}", file=sys.stderr)
        return 2
    if modality not in EVALUATORS:
        print(f"anyseq eval-tokenizer: error: no evaluator for {modality!r} tokenizers", file=sys.stderr)
        return 2
    return int(importlib.import_module(EVALUATORS[modality]).main(argv) or 0)
