"""Loading a trained model with everything needed to use it: token space and tokenizers.

A checkpoint written by :class:`~anyseq.training.AnySeqModule` holds the model config, the
token space and references (path + fingerprint) to the tokenizers its shards were built
with. :func:`load_bundle` rebuilds the model and loads those tokenizers lazily, checking
fingerprints so a retrained tokenizer is never silently paired with an older model.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """An AnySeqModule checkpoint as a dict (tensors memory-mapped), or a clear error.

    Either one file, or the folder of per-rank shards that ``fsdp2`` writes with
    ``save_distributed_checkpoint=true`` (only its weights are read, not the optimizer's state).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found (anyseq fit writes them under its log dir)")
    ckpt = read_sharded_checkpoint(path) if path.is_dir() else load_file(path)
    if not isinstance(ckpt, dict) or "anyseq" not in ckpt:
        raise ValueError(f"{path}: not an anyseq checkpoint (no 'anyseq' section); was it written by AnySeqModule?")
    return ckpt


def load_file(path: Path) -> Any:
    """``torch.load`` of one checkpoint file (tensors memory-mapped), or a ValueError naming it."""
    if not zipfile.is_zipfile(path):  # torch.load's own errors here talk about mmap and file modes
        raise ValueError(f"{path}: not a checkpoint: torch.save writes a zip archive and this file is none "
                         "(cut short by an interrupted copy or save, or another kind of file); "
                         "expected a .ckpt that anyseq fit wrote")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # our own Lightning checkpoint
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:  # a zip, but not torch's
        raise ValueError(f"{path}: torch cannot read it as a checkpoint ({str(err).splitlines()[0]}); "
                         "expected a .ckpt that anyseq fit wrote") from None


def read_metadata(path: Path) -> dict[str, Any]:
    """A checkpoint's everything but the weights of a distributed one (its ``meta.pt``); the
    whole of a single file. A folder whose save was cut short (no ``meta.pt`` or ``.metadata``:
    each is written after the shards) is a FileNotFoundError."""
    if not path.is_dir():
        return load_file(path)
    missing = [name for name in (".metadata", "meta.pt") if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: a folder, but not a distributed checkpoint (no {', '.join(missing)}); "
                                "give a .ckpt file or the folder fsdp2 writes with save_distributed_checkpoint=true")
    return load_file(path / "meta.pt")


def read_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """A distributed checkpoint folder (torch.distributed.checkpoint shards + Lightning's meta.pt)
    as the dict a single file holds, with the full weights assembled in this one process."""
    import torch.distributed.checkpoint as dcp

    ckpt = read_metadata(path)
    stored = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    prefix = "state_dict."
    weights = {key.removeprefix(prefix): torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in stored.items() if key.startswith(prefix)}
    state = {"state_dict": weights}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=True)  # this process reads every rank's shards, alone
    ckpt["state_dict"] = state["state_dict"]
    return ckpt


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def saved_architecture(ckpt: dict[str, Any], path: str | Path) -> tuple[ModelConfig, TokenSpace]:
    """The model config and token space a checkpoint was written with, or a ValueError naming it
    (a checkpoint of another anyseq version may hold fields this one does not know)."""
    meta = ckpt["anyseq"]
    try:
        config, space = ModelConfig(**meta["model_config"]), TokenSpace.from_dict(meta["token_space"])
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: its model config or token space does not fit this version of anyseq ({err}); "
                         "load it with the version that wrote it") from None
    if space.size != config.vocab_size:
        raise ValueError(f"{path}: its token space has {space.size} ids but its model {config.vocab_size} "
                         "vocabulary rows; the checkpoint is inconsistent")
    return config, space


def load_bundle(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer_paths: dict[str, str] | None = None,
) -> Bundle:
    ckpt = read_checkpoint(path)
    meta = ckpt["anyseq"]
    config, space = saved_architecture(ckpt, path)
    with torch.device("meta"):  # no random init of weights about to be replaced (minutes at 7B)
        model = Transformer(config)
    # copies on the target device: the model must not live in the memory-mapped file
    state = {k: v.to(device=device, dtype=dtype, copy=True) for k, v in model_state(ckpt).items()}
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as err:  # missing keys or shapes: the weights are not of the config saved beside them
        raise ValueError(f"{path}: its weights do not fit its model config ({next(iter(str(err).splitlines()[1:]), str(err)).strip()})") from None
    model.tie_weights()  # assigning gave the two names separate parameters
    model.eval()
    overrides = {k: v for k, v in (tokenizer_paths or {}).items() if v}
    return Bundle(model, space, dict(meta.get("tokenizers") or {}), overrides)


VOCAB_PARAMETERS = ("tok_embeddings.weight", "output.weight")  # one row per token id


@torch.no_grad()
def init_from_checkpoint(model: Transformer, space: TokenSpace, ckpt: dict[str, Any], name: str) -> dict[str, list]:
    """Copy a checkpoint's weights into ``model`` (built for ``space``) to fine-tune it.

    Every parameter but the vocabulary rows must have the checkpoint's shape. Vocabulary rows
    are copied range by range where the ids mean the same (``TokenSpace.shared_rows``), so a
    model can be fine-tuned on data with a new modality or larger shape limits: rows of new
    ranges keep their fresh initialisation; the padding rows come from the checkpoint's padding
    rows. Returns ``{"carried": [...], "fresh": [...]}`` ranges.
    """
    state = model_state(ckpt)
    own = model.state_dict(keep_vars=True)  # tied embeddings appear under both names
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = [f"{k} {tuple(state[k].shape)} in the checkpoint, {tuple(p.shape)} here"
             for k, p in own.items() if k in state and k not in VOCAB_PARAMETERS and state[k].shape != p.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"init_from {name}: the checkpoint's architecture differs from the model's "
            f"(missing {missing or 'none'}; unexpected {unexpected or 'none'}; shapes: {wrong or 'same'}). "
            "The architecture comes from the checkpoint: model_overrides may change only shape-free options "
            "such as dropout."
        )
    if any(p.is_meta for p in own.values()):
        raise ValueError(f"init_from {name}: the model was built on the meta device; build it on a real one")
    older = TokenSpace.from_dict(ckpt["anyseq"]["token_space"])
    shared = space.shared_rows(older)
    # Padding ids are never targets, yet their logits count in the loss's normaliser: trained rows
    # keep them low, fresh ones would raise the loss before the first step. Any trained padding
    # row serves (they all learned the same), so a space with more of them repeats them.
    spare = older.size - older.num_valid
    for key, p in own.items():
        if key not in VOCAB_PARAMETERS:
            p.copy_(state[key])
            continue
        for old, new, rows in shared.values():
            p[new : new + rows].copy_(state[key][old : old + rows])
        if spare:
            p[space.num_valid :].copy_(state[key][older.num_valid + torch.arange(space.size - space.num_valid) % spare])
    return {"carried": sorted(shared), "fresh": sorted(space.ranges.keys() - shared.keys())}
