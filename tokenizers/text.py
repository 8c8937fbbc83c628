"""Text tokenizer: a sentencepiece model trained on the user's own text.

Settings chosen for exact round trips of arbitrary Unicode: identity normalisation, no
dummy prefix, whitespace kept as is, and byte fallback for anything outside the learned
pieces. sentencepiece's own bos/eos/pad are disabled: the token space owns those. The
token space's special names (``<boi>`` ...) are user-defined pieces, so a literal
``"<boi>"`` in text is one atomic text piece, never split and never confused with the
special id.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from anyseq.vocab import SPECIALS


class TextTokenizer:
    def __init__(self, model_proto: bytes, path: str | Path | None = None):
        self.proto = model_proto
        self.path = Path(path) if path is not None else None
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    # -- training ------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str] | None = None,
        files: Sequence[str | Path] = (),
        vocab_size: int = 1000,
        model_type: str = "bpe",
        output: str | Path | None = None,
        character_coverage: float = 1.0,
        max_sentences: int = 2_000_000,
    ) -> "TextTokenizer":
        """Train on in-memory ``texts`` and/or text ``files`` (one sentence per line).

        ``vocab_size`` counts 256 byte pieces and the special names; small corpora cannot fill
        a large vocabulary, and sentencepiece then says how large it can be.
        """
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        lines: list[str] = [t for t in (texts or []) if t]
        for f in files:
            path = Path(f)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: text file for tokenizer training not found")
            lines.extend(line for line in path.read_text(encoding="utf-8").splitlines() if line)
        if not lines:
            raise ValueError("no text to train the tokenizer on (empty texts and files)")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                byte_fallback=True,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                user_defined_symbols=list(SPECIALS),
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=False,  # deterministic: the first max_sentences lines
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as err:
            if "Vocabulary size too high" in str(err):
                hint = str(err).split("Please set it to a value")[-1].strip(" .")
                raise ValueError(
                    f"vocab_size={vocab_size} is more than this corpus supports ({len(lines)} lines); "
                    f"use a value {hint} or give more text"
                ) from None
            if "smaller than required_chars" in str(err):
                need = str(err).split(" vs ")[-1].split(".")[0]
                raise ValueError(
                    f"vocab_size={vocab_size} is too small: bytes, special names and this corpus' characters "
                    f"already need {need} pieces"
                ) from None
            raise
        tok = cls(model.getvalue())
        if output is not None:
            tok.save(output)
        return tok

    # -- use ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.proto).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"TextTokenizer.encode expects str, got {type(text).__name__}")
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token: int) -> str:
        return self.sp.id_to_piece(int(token))

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.proto)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: text tokenizer model not found; train one with "
                "`anyseq train-text-tokenizer --input corpus.txt --output tok.model`"
            )
        proto = path.read_bytes()
        try:
            return cls(proto, path)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a sentencepiece model ({err})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="anyseq train-text-tokenizer",
        description="Train a sentencepiece text tokenizer (byte fallback, exact Unicode round trip).",
    )
    parser.add_argument("--input", nargs="+", required=True, help="text files, one sentence per line")
    parser.add_argument("--output", required=True, help="where to write the .model file")
    parser.add_argument("--vocab-size", type=int, default=8000, help="pieces, including 256 byte pieces")
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    args = parser.parse_args(argv)
    tok = TextTokenizer.train(files=args.input, vocab_size=args.vocab_size, model_type=args.model_type,
                              output=args.output)
    print(f"wrote {args.output}: {tok.vocab_size} pieces, fingerprint {tok.fingerprint}", file=sys.stderr)
    return 0
