"""LightningDataModule over token shards: packed rows, weighted mixing, exact resume."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from anyseq.data.packing import PackedDataset
from anyseq.data.resumable import ResumableDataModule
from anyseq.data.shards import ShardSet, ShardSubset, check_same_space
from anyseq.vocab import TokenSpace


class ShardDataModule(ResumableDataModule):
    """Packed rows from token shard folders written by ``anyseq tokenize-dataset``.

    Args:
        train: shard folders to train on (each a shard set: a folder of ``shard-*`` folders).
        val: shard folders to validate on; None holds out ``val_fraction`` of the train documents.
        weights: token share of each train folder per epoch (None: their natural sizes).
        seq_len: tokens per packed row.
        batch_size: rows per batch on each device.
        num_workers: DataLoader worker processes per device.
        seed: seed of the document order (a new order every epoch) and the validation split.
        condition_dropout: probability that a document ending in image/video/audio has its
            condition replaced by ``<uncond>`` tokens (classifier-free guidance training).
        val_fraction: fraction of each train folder's documents held out for validation when
            ``val`` is not given (0: no validation).
    """

    def __init__(
        self,
        train: list[str],
        val: list[str] | None = None,
        weights: list[float] | None = None,
        seq_len: int = 2048,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        condition_dropout: float = 0.0,
        val_fraction: float = 0.0,
    ):
        super().__init__()
        if not train:
            raise ValueError("ShardDataModule.train needs at least one shard folder")
        if weights is not None and len(weights) != len(train):
            raise ValueError(f"ShardDataModule.weights has {len(weights)} entries for {len(train)} train folders")
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"ShardDataModule.{name} must be at least 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"ShardDataModule.num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"ShardDataModule.val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.train_sets: list[ShardSet | ShardSubset] | None = None
        self.val_sets: list[ShardSet | ShardSubset] = []
        self.space: TokenSpace | None = None
        self.tokenizers: dict[str, dict[str, str]] = {}
        self.contents: list[list[int]] = []  # (documents, tokens) of each train folder

    # -- the token space, known before setup (the model is sized from it) ------------------------
    def token_space(self) -> TokenSpace:
        if self.space is None:
            hp = self.hparams
            sets = [ShardSet(p) for p in [*hp.train, *(hp.val or [])]]
            self.space = check_same_space(sets)
            self.tokenizers = sets[0].tokenizers
            self.contents = [[len(s), s.num_tokens] for s in sets[: len(hp.train)]]
        return self.space

    def setup(self, stage: str | None = None) -> None:
        if self.train_sets is not None:
            return
        hp = self.hparams
        space = self.token_space()
        train = [ShardSet(p, space) for p in hp.train]
        if hp.val:
            self.val_sets = [ShardSet(p, space) for p in hp.val]
        elif hp.val_fraction > 0:
            train, self.val_sets = map(list, zip(*(self._hold_out(s) for s in train)))
        self.train_sets = train

    def _hold_out(self, shards: ShardSet) -> tuple[ShardSubset, ShardSubset]:
        order = np.random.default_rng([self.hparams.seed, len(shards)]).permutation(len(shards))
        n_val = max(1, round(self.hparams.val_fraction * len(shards)))
        if n_val >= len(shards):
            raise ValueError(f"{shards.paths[0]}: {len(shards)} documents are too few to hold out {n_val} for validation")
        return shards.subset(np.sort(order[n_val:])), shards.subset(np.sort(order[:n_val]))

    # -- loaders ----------------------------------------------------------------------------------
    def _loader(self, sets: list, train: bool) -> DataLoader:
        hp = self.hparams
        data = PackedDataset(sets, hp.weights if train else None, hp.seq_len, hp.seed,
                             hp.condition_dropout if train else 0.0)
        sampler = self.sampler(data, hp.batch_size, train, "rows", items=f"rows of seq_len={hp.seq_len}")
        # its own generator: starting an epoch must not draw from the global RNG, whose state a
        # resumed run restores (dropout would shift by one draw against the unbroken run)
        return DataLoader(data, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
                          drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=hp.num_workers > 0,
                          generator=torch.Generator().manual_seed(hp.seed))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_sets, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self._loader(self.val_sets, train=False) if self.val_sets else []

    def layout(self) -> dict[str, Any]:
        """The folders' contents are part of it: shards added to a folder since (a tokenize job that
        was still running) put other documents at the saved position."""
        hp = self.hparams
        self.token_space()
        return {"train": list(hp.train), "contents": self.contents, "weights": hp.weights, "seq_len": hp.seq_len,
                "seed": hp.seed, "val_fraction": hp.val_fraction if not hp.val else 0.0}
