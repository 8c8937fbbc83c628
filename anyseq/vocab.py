"""TokenSpace: one vocabulary for every modality.

Ids are allocated in a fixed, declarative order::

    [ text (sentencepiece ids) | specials | <h=1..H> | <w=1..W> | <t=1..T> | visual/0 | audio/0 | audio/1 | ... ]

Each range is named; each codebook level of each media tokenizer gets its own range, so a
code's level is known from its id alone. The space is saved as JSON next to every shard set
and checkpoint. Its fingerprint covers the layout and the fingerprints of the tokenizers it
was built for, and pairing data or weights with a different space is an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = (
    "<bos>", "<eos>", "<pad>",
    "<boi>", "<eoi>", "<bov>", "<eov>", "<boa>", "<eoa>",
    "<eol>", "<eof>", "<uncond>",
)  # fmt: skip
SHAPE_AXES = ("h", "w", "t")
MODALITIES = ("text", "image", "video", "audio")  # per-token modality ids are indices here


class TokenSpaceMismatch(ValueError):
    """Data, weights or a tokenizer were built for a different token space."""


@dataclass(frozen=True)
class Range:
    name: str
    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def __contains__(self, token: int) -> bool:
        return self.start <= token < self.stop


class TokenSpace:
    """Allocates id ranges for text, specials, shape tokens and every media codebook.

    Args:
        text_vocab_size: size of the sentencepiece vocabulary (ids ``[0, text_vocab_size)``).
        codebooks: codebook sizes per media tokenizer, e.g. ``{"visual": [32768], "audio": [1024] * 4}``.
        max_height / max_width / max_frames: largest latent grid the shape tokens can state.
        tokenizers: fingerprints of the tokenizers the codebooks come from (``{"visual": "ab12..."}``).
        pad_to_multiple: the model's vocabulary is rounded up to this (padding ids are never valid).
    """

    def __init__(
        self,
        text_vocab_size: int,
        codebooks: dict[str, list[int]] | None = None,
        max_height: int = 64,
        max_width: int = 64,
        max_frames: int = 32,
        tokenizers: dict[str, str] | None = None,
        pad_to_multiple: int = 64,
    ):
        if text_vocab_size < 1:
            raise ValueError(f"TokenSpace.text_vocab_size must be positive, got {text_vocab_size}")
        self.text_vocab_size = text_vocab_size
        self.codebooks = {name: [int(k) for k in sizes] for name, sizes in (codebooks or {}).items()}
        self.max_shape = {"h": max_height, "w": max_width, "t": max_frames}
        self.tokenizers = dict(tokenizers or {})
        self.pad_to_multiple = pad_to_multiple

        ranges: list[Range] = []

        def add(name: str, size: int) -> None:
            ranges.append(Range(name, ranges[-1].stop if ranges else 0, size))

        add("text", text_vocab_size)
        add("special", len(SPECIALS))
        for axis in SHAPE_AXES:
            add(f"shape/{axis}", self.max_shape[axis])
        for name, sizes in self.codebooks.items():
            for level, size in enumerate(sizes):
                add(f"{name}/{level}", size)
        self.ranges = {r.name: r for r in ranges}
        self.num_valid = ranges[-1].stop
        self.size = -(-self.num_valid // pad_to_multiple) * pad_to_multiple
        self._special = {name: self.ranges["special"].start + i for i, name in enumerate(SPECIALS)}

    @classmethod
    def for_tokenizers(cls, text: Any, visual: Any = None, audio: Any = None, **limits: int) -> "TokenSpace":
        """The space for a text tokenizer plus optional visual and audio media tokenizers.

        Each tokenizer needs ``fingerprint``; text needs ``vocab_size``, media ``codebook_sizes``.
        """
        media = {name: tok for name, tok in (("visual", visual), ("audio", audio)) if tok is not None}
        return cls(
            text.vocab_size,
            codebooks={name: list(tok.codebook_sizes) for name, tok in media.items()},
            tokenizers={"text": text.fingerprint, **{name: tok.fingerprint for name, tok in media.items()}},
            **limits,
        )

    # -- lookups ----------------------------------------------------------------------------
    def special(self, name: str) -> int:
        try:
            return self._special[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; the token space has {list(SPECIALS)}") from None

    def special_name(self, token: int) -> str | None:
        r = self.ranges["special"]
        return SPECIALS[token - r.start] if token in r else None

    def shape_token(self, axis: str, value: int) -> int:
        r = self.ranges[f"shape/{axis}"]
        if not 1 <= value <= r.size:
            raise ValueError(
                f"shape <{axis}={value}> is outside the token space (1..{r.size}); "
                f"build the TokenSpace with a larger max_{dict(h='height', w='width', t='frames')[axis]}"
            )
        return r.start + value - 1

    def shape_value(self, axis: str, token: int) -> int | None:
        r = self.ranges[f"shape/{axis}"]
        return token - r.start + 1 if token in r else None

    def codebook(self, name: str, level: int = 0) -> Range:
        key = f"{name}/{level}"
        if key not in self.ranges:
            have = sorted(self.codebooks)
            raise KeyError(f"the token space has no codebook {key!r} (codebooks: {have or 'none'})")
        return self.ranges[key]

    def num_levels(self, name: str) -> int:
        return len(self.codebooks.get(name, ()))

    def codes_to_ids(self, name: str, codes: np.ndarray, level: int | np.ndarray = 0) -> np.ndarray:
        """Map integer codes of a codebook level (scalar or broadcastable array) to token ids."""
        codes = np.asarray(codes, dtype=np.int64)
        starts = np.array([self.codebook(name, lv).start for lv in range(self.num_levels(name))])
        sizes = np.array(self.codebooks[name])
        lv = np.broadcast_to(np.asarray(level), codes.shape)
        if codes.size and ((codes < 0) | (codes >= sizes[lv])).any():
            raise ValueError(f"codes for {name!r} out of range: expected 0 <= code < {self.codebooks[name]}")
        return starts[lv] + codes

    def ids_to_codes(self, name: str, ids: np.ndarray, level: int | np.ndarray = 0) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        starts = np.array([self.codebook(name, lv).start for lv in range(self.num_levels(name))])
        sizes = np.array(self.codebooks[name])
        lv = np.broadcast_to(np.asarray(level), ids.shape)
        codes = ids - starts[lv]
        if codes.size and ((codes < 0) | (codes >= sizes[lv])).any():
            raise ValueError(f"ids are not codes of {name!r} at the expected levels")
        return codes

    def is_text(self, token: int) -> bool:
        return token in self.ranges["text"]

    def shared_rows(self, older: "TokenSpace") -> dict[str, tuple[int, int, int]]:
        """Ranges whose ids mean the same in ``older`` and here, for carrying embedding rows
        over when fine-tuning: name -> (start in older, start here, rows).

        Text and codebook ranges need the same tokenizer (fingerprint and size); specials
        always agree; shape tokens agree value by value up to the smaller maximum.
        """
        shared = {}
        for name, mine in self.ranges.items():
            theirs = older.ranges.get(name)
            if theirs is None:
                continue
            tokenizer = name.split("/")[0]
            if name.startswith("shape/"):
                rows = min(mine.size, theirs.size)
            elif name == "special" or (
                mine.size == theirs.size and self.tokenizers.get(tokenizer) == older.tokenizers.get(tokenizer)
            ):
                rows = mine.size
            else:
                continue
            shared[name] = (theirs.start, mine.start, rows)
        return shared

    # -- persistence and identity -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "text_vocab_size": self.text_vocab_size,
            "codebooks": self.codebooks,
            "max_height": self.max_shape["h"],
            "max_width": self.max_shape["w"],
            "max_frames": self.max_shape["t"],
            "tokenizers": self.tokenizers,
            "pad_to_multiple": self.pad_to_multiple,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokenSpace":
        data = {k: v for k, v in data.items() if k not in ("fingerprint", "size", "specials")}
        return cls(**data)

    @property
    def fingerprint(self) -> str:
        ranges = [(r.name, r.start, r.size) for r in self.ranges.values()]  # codebook order matters
        layout = {"specials": SPECIALS, "ranges": ranges, **self.to_dict()}
        return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {**self.to_dict(), "specials": list(SPECIALS), "size": self.size, "fingerprint": self.fingerprint}
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TokenSpace":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: token space file not found")
        data = json.loads(path.read_text())
        space = cls.from_dict(data)
        if "fingerprint" in data and data["fingerprint"] != space.fingerprint:
            raise TokenSpaceMismatch(f"{path}: stored fingerprint {data['fingerprint']} does not match its contents")
        return space

    def check_compatible(self, other: "TokenSpace", what: str) -> None:
        """Raise a clear error when ``other`` (belonging to ``what``) is not this space."""
        if other.fingerprint == self.fingerprint:
            return
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = [f"{k}: expected {mine[k]!r}, found {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
        raise TokenSpaceMismatch(
            f"{what} was built for a different token space (fingerprint {other.fingerprint}, "
            f"expected {self.fingerprint}): " + "; ".join(diffs)
            + ". Re-tokenize the data with the same tokenizers, or train with the matching shards."
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenSpace) and other.fingerprint == self.fingerprint

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.name}[{r.start}:{r.stop}]" for r in self.ranges.values())
        return f"TokenSpace(size={self.size}, {parts})"
