"""Loading a trained model with everything needed to use it: token space and tokenizers.

A checkpoint written by :class:`~anyseq.training.AnySeqModule` holds the model config, the
token space and references (path + fingerprint) to the tokenizers its shards were built
with. :func:`load_bundle` rebuilds the model and loads those tokenizers lazily, checking
fingerprints so a retrained tokenizer is never silently paired with an older model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anyseq.config import ModelConfig
from anyseq.model import Transformer
from anyseq.sequence import Serializer
from anyseq.vocab import TokenSpace, TokenSpaceMismatch

TOKENIZER_FLAGS = {"text": "--text-tokenizer", "visual": "--visual-tokenizer", "audio": "--audio-tokenizer"}


@dataclass
class Bundle:
    model: Transformer
    space: TokenSpace
    refs: dict[str, dict[str, str]]  # tokenizer name -> {"path", "fingerprint"}
    overrides: dict[str, str] = field(default_factory=dict)  # name -> path given by the user
    _loaded: dict[str, Any] = field(default_factory=dict)

    @property
    def serializer(self) -> Serializer:
        return Serializer(self.space)

    def has(self, name: str) -> bool:
        return name in self.refs or name in self.overrides

    def tokenizer(self, name: str) -> Any:
        """The text / visual / audio tokenizer, loaded on first use and checked against the space."""
        if name in self._loaded:
            return self._loaded[name]
        if not self.has(name):
            raise KeyError(
                f"this checkpoint has no {name} tokenizer (it was trained with: {sorted(self.refs) or 'none'}); "
                f"it cannot read or write {name} media"
            )
        path = Path(self.overrides.get(name) or self.refs[name]["path"])
        if not path.exists():
            raise FileNotFoundError(
                f"{name} tokenizer not found at {path} (recorded in the checkpoint); "
                f"pass its new location with {TOKENIZER_FLAGS[name]} PATH"
            )
        if name == "text":
            from anyseq.tokenizers.text import TextTokenizer

            tok = TextTokenizer.load(path)
        else:
            from anyseq.tokenizers.base import load_tokenizer

            tok = load_tokenizer(path, map_location=self.model.tok_embeddings.weight.device)
        expected = self.space.tokenizers.get(name)
        if expected is not None and tok.fingerprint != expected:
            raise TokenSpaceMismatch(
                f"{name} tokenizer at {path} has fingerprint {tok.fingerprint}, but the model was "
                f"trained with {expected}: codes would be garbage. Use the tokenizer the shards were built with."
            )
        self._loaded[name] = tok
        return tok


def load_bundle(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer_paths: dict[str, str] | None = None,
) -> Bundle:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (anyseq fit writes them under its log dir)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own Lightning checkpoint
    meta = ckpt.get("anyseq")
    if meta is None:
        raise ValueError(f"{path}: not an anyseq checkpoint (no 'anyseq' section); was it written by AnySeqModule?")
    config = ModelConfig(**meta["model_config"])
    space = TokenSpace.from_dict(meta["token_space"])
    model = Transformer(config)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.to(device=device, dtype=dtype).eval()
    overrides = {k: v for k, v in (tokenizer_paths or {}).items() if v}
    return Bundle(model, space, dict(meta.get("tokenizers") or {}), overrides)
