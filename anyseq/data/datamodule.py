"""LightningDataModule over token shards: packed rows, weighted mixing, exact resume."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from anyseq.data.packing import PackedDataset, ResumableSampler
from anyseq.data.shards import ShardSet, ShardSubset, check_same_space
from anyseq.vocab import TokenSpace


class ShardDataModule(L.LightningDataModule):
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
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"ShardDataModule.val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.train_sets: list[ShardSet | ShardSubset] | None = None
        self.val_sets: list[ShardSet | ShardSubset] = []
        self.space: TokenSpace | None = None
        self.tokenizers: dict[str, dict[str, str]] = {}
        self._sampler: ResumableSampler | None = None
        self._resume: dict[str, Any] | None = None

    # -- the token space, known before setup (the model is sized from it) ------------------------
    def token_space(self) -> TokenSpace:
        if self.space is None:
            hp = self.hparams
            sets = [ShardSet(p) for p in [*hp.train, *(hp.val or [])]]
            self.space = check_same_space(sets)
            self.tokenizers = sets[0].tokenizers
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
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(data, hp.batch_size, num_replicas=world, rank=rank)
        if len(sampler) < hp.batch_size:
            raise ValueError(
                f"{'train' if train else 'validation'} shards make {len(data)} rows of seq_len={hp.seq_len}: "
                f"fewer than batch_size={hp.batch_size} per device on {world} device(s)"
            )
        # its own generator: starting an epoch must not draw from the global RNG, whose state a
        # resumed run restores (dropout would shift by one draw against the unbroken run)
        return DataLoader(data, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
                          drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=hp.num_workers > 0,
                          generator=torch.Generator().manual_seed(hp.seed))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        loader = self._loader(self.train_sets, train=True)
        previous, self._sampler = self._sampler, loader.sampler
        if previous is not None:  # loaders made again (reload_dataloaders_every_n_epochs) go on in the data
            self._sampler.resume(*previous.position)
        elif self._resume is not None:
            self._apply_resume()
        return loader

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self._loader(self.val_sets, train=False) if self.val_sets else []

    # -- exact resume ------------------------------------------------------------------------------
    def _layout_key(self) -> dict[str, Any]:
        hp = self.hparams
        return {"train": list(hp.train), "weights": hp.weights, "seq_len": hp.seq_len, "seed": hp.seed,
                "val_fraction": hp.val_fraction if not hp.val else 0.0}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Counts the training rows as they are trained on (the loader reads ahead of them)."""
        if self.trainer is not None and self.trainer.training and self._sampler is not None:
            self._sampler.advance()
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the training is in the data: the data epoch and the rows of it trained on (all ranks)."""
        if self.trainer is None or self._sampler is None:
            return {}
        epoch, rows = self._sampler.position
        return {"epoch": epoch, "rows": rows, "layout": self._layout_key()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("layout") != self._layout_key():
            rank_zero_warn(
                f"ShardDataModule: the checkpoint's data settings {state.get('layout')} differ from the current "
                f"{self._layout_key()}; the epoch restarts from its first row instead of resuming exactly"
            )
            return
        self._resume = state
        # Lightning cannot see that this datamodule resumes mid-epoch exactly; its warning would mislead
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        if self._sampler is not None:
            self._apply_resume()

    def _apply_resume(self) -> None:
        self._sampler.resume(int(self._resume["epoch"]), int(self._resume["rows"]))
