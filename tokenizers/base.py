"""The protocol every media tokenizer follows, and its on-disk format.

A media tokenizer is an ``nn.Module`` built from a config dataclass. It turns media
tensors into integer codes and back. On disk it is a folder with ``config.json`` (class
path, config, codebook sizes, fingerprint) and ``model.safetensors``. The fingerprint
hashes config and weights, so a token space (and every shard or checkpoint built with it)
can tell when it is paired with a different tokenizer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from anyseq.config import config_differences
from anyseq.helpers import read_json_object

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class TokenizerFileError(FileNotFoundError):
    """A tokenizer folder is missing or incomplete."""


def _class_path(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _import_class(path: str) -> type | None:
    """The class a config.json names; None when there is none by that name (the callers say so)."""
    try:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):  # no such module / class, not a dotted name
        return None


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (possibly nested) config dataclass; unknown keys are a clear error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}; expected some of {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        default = names[key].default_factory() if names[key].default_factory is not dataclasses.MISSING else names[key].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value)
        kwargs[key] = value
    return cls(**kwargs)


def inference(fn: Callable) -> Callable:
    """Run a tokenizer method in eval mode without gradients, then restore the previous mode."""

    @functools.wraps(fn)
    def wrapper(self: nn.Module, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return fn(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


class MediaTokenizer(nn.Module):
    """Base class: subclasses set ``modality`` and ``config_class`` and implement encode/decode.

    ``encode`` and ``decode`` always run in eval mode without gradients (codes differ between
    train and eval mode for some quantizers); use ``forward`` for training.
    """

    modality: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.recorded_config: dict[str, Any] | None = None  # config.json's "config", once loaded

    # -- the protocol -------------------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per codebook level (one entry for visual tokenizers, K for an RVQ codec)."""
        raise NotImplementedError

    @property
    def compression(self) -> dict[str, float]:
        """Downsampling factors, e.g. ``{"time": 4, "height": 8, "width": 8}``."""
        raise NotImplementedError

    def encode(self, media: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    # -- persistence ------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The config as saved and hashed: as its config.json wrote it, for a loaded tokenizer.

        A config field added by a later anyseq version (at the default that keeps the old
        behaviour) thus leaves every saved tokenizer's fingerprint, and the shards and
        checkpoints that name it, valid.
        """
        return self.recorded_config if self.recorded_config is not None else dataclasses.asdict(self.config)

    @property
    def fingerprint(self) -> str:
        """Hash of class, config and weights: equal fingerprints decode codes identically."""
        h = hashlib.sha256()
        h.update(_class_path(type(self)).encode())
        h.update(json.dumps(self.config_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        meta = {
            "class": _class_path(type(self)),
            "modality": self.modality,
            "config": self.config_dict(),
            "codebook_sizes": self.codebook_sizes,
            "fingerprint": self.fingerprint,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "MediaTokenizer":
        """The tokenizer saved in ``directory``; a damaged folder is an error naming the file at fault."""
        directory = Path(directory)
        meta = read_tokenizer_meta(directory)
        klass = _import_class(meta["class"])
        if not (isinstance(klass, type) and issubclass(klass, cls)):
            raise ValueError(f"{directory / CONFIG_FILE}: its class {meta['class']!r} is no {cls.__name__}; "
                             "expected the folder of a saved tokenizer")
        try:
            model = klass(config_from_dict(klass.config_class, meta["config"]))
        except (TypeError, ValueError) as err:
            reason = f"its config does not build a {klass.__name__} ({err})"
            raise ValueError(f"{directory / CONFIG_FILE}: {reason}") from None
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise TokenizerFileError(f"{weights}: tokenizer weights are missing (expected next to {CONFIG_FILE})")
        try:
            model.load_state_dict(load_file(str(weights), device=str(map_location)))
        except (SafetensorError, RuntimeError) as err:  # a cut-short copy; another tokenizer's weights
            reason = " ".join(str(err).split())[:300]  # load_state_dict's list of keys, on one line
            raise ValueError(f"{weights}: not the weights of the tokenizer {CONFIG_FILE} describes ({reason}); "
                             "copy the tokenizer folder again") from None
        model.eval()
        model.recorded_config = meta["config"]
        if model.fingerprint != meta["fingerprint"]:
            raise ValueError(
                f"{directory}: weights do not match the fingerprint in {CONFIG_FILE} "
                f"({model.fingerprint} != {meta['fingerprint']}); the folder was modified or mixed up"
            )
        return model


META_KEYS = ("class", "config", "fingerprint")  # what load needs of config.json


def read_tokenizer_meta(directory: str | Path) -> dict[str, Any]:
    """A tokenizer folder's config.json, or an error naming it and what a saved one holds."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise TokenizerFileError(
            f"{path}: no tokenizer here (expected a folder written by MediaTokenizer.save, "
            f"with {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    expected = f"the JSON object MediaTokenizer.save writes, with {', '.join(META_KEYS)}"
    meta = read_json_object(path, expected)
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}; expected {expected}")
    return meta


def load_tokenizer(directory: str | Path, map_location: str | torch.device = "cpu") -> MediaTokenizer:
    """Load any saved media tokenizer; the class is read from its ``config.json``."""
    return MediaTokenizer.load(directory, map_location)


def fine_tuning_config(directory: str | Path, cls: type[MediaTokenizer], given: Any | None) -> Any:
    """The architecture of the saved tokenizer a run fine-tunes (``init_from``).

    It is read from the folder, so a recipe need not repeat it; a ``given`` config (a recipe's
    ``tokenizer:``) must agree with it field by field, since weights only fit their own shapes.
    """
    meta = read_tokenizer_meta(directory)
    klass = _import_class(meta["class"])
    if not (isinstance(klass, type) and issubclass(klass, cls)):
        raise TypeError(f"init_from={directory}: holds a {meta['class']}; this module fine-tunes a {cls.__name__}")
    saved = config_from_dict(klass.config_class, meta["config"])
    if isinstance(given, dict):
        given = config_from_dict(klass.config_class, given)
    if given is not None and given != saved:
        differ = config_differences(dataclasses.asdict(given), dataclasses.asdict(saved))
        raise ValueError(
            f"init_from={directory}: the tokenizer config given is not the saved tokenizer's (field: "
            f"(given, saved) {differ}); the architecture comes from the saved tokenizer, so pass "
            "--model.init_args.tokenizer=null (or make those fields match)"
        )
    return saved


def load_for_fine_tuning(directory: str | Path, config: Any) -> MediaTokenizer:
    """The saved tokenizer, checked against its fingerprint, in training mode. Fine-tuning makes
    a new tokenizer: its config is recorded in full and it gets a fingerprint of its own."""
    tokenizer = MediaTokenizer.load(directory)
    if tokenizer.config != config:
        raise ValueError(f"init_from={directory}: the folder changed since the run started; restart it")
    tokenizer.recorded_config = None
    return tokenizer.train()
