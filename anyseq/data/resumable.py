"""Training data that resumes exactly: the transformer's token rows and the tokenizers' media.

Two halves make a resumed run read what the unbroken run would have read:

* the datasets are pure functions of one integer, the *stream index* ``epoch * len(ds) + i``
  (item ``i`` of data epoch ``epoch``, each epoch in its own order), and draw any randomness
  (crops, flips, clip starts, audio offsets) from a generator seeded by ``(seed, index)``
  (``index_generator``), never from a worker's or the process's RNG;
* a ``ResumableSampler`` names the stream indices of the batches still to train, counted
  from ``Position.batches``, the batches trained so far, which a ``ResumableDataModule``
  advances as batches are trained and saves in every checkpoint.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sized

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler

from anyseq.helpers import default


def index_generator(seed: int, index: int) -> torch.Generator:
    """A generator owned by one stream index: the same draws in any process, worker or rerun."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


@dataclass
class Position:
    """Where training stands in its data: batches trained (one batch of every rank together)."""

    batches: int = 0


class ResumableSampler(DistributedSampler):
    """The stream indices of the batches still to train in the current loader epoch.

    A batch of every rank together reads ``B * W`` items; rank ``r`` reads items ``r, r + W, ...``
    of them. A data epoch is its whole batches (the rest of its items wait for the next epoch's
    order), so batch ``n`` reads items ``(n mod data_batches) * B * W ...`` of data epoch
    ``n // data_batches``. A loader epoch is ``batches_per_epoch`` batches: one data epoch by
    default, more when a short stream cycles beside a longer one (images beside videos).

    ``position`` moves as batches are trained, not as the loader reads ahead, so every new
    iteration goes on from where training stands whatever Lightning's epoch bookkeeping did
    (it numbers and iterates epochs differently depending on where a checkpoint was written).
    A sampler whose position never moves (validation's) reads the same first epoch every time.
    """

    def __init__(self, dataset: Sized, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 position: Position | None = None, batches_per_epoch: int | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.items, self.batch_size = len(dataset), batch_size
        self.step_items = batch_size * num_replicas
        self.data_batches = self.items // self.step_items
        self.batches_per_epoch = default(batches_per_epoch, self.data_batches)
        self.position = default(position, Position())

    def __iter__(self) -> Iterator[int]:
        done = self.position.batches
        end = (done // self.batches_per_epoch + 1) * self.batches_per_epoch
        for batch in range(done, end):
            epoch, k = divmod(batch, self.data_batches)
            first = epoch * self.items + k * self.step_items + self.rank
            yield from range(first, first + self.step_items, self.num_replicas)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size


class ResumableDataModule(L.LightningDataModule):
    """A datamodule whose training loaders resume exactly (see the module docstring).

    Subclasses build their training loaders on ``self.sampler(...)`` and say in ``layout()``
    what fixes the order of the data: a checkpoint written under another layout restarts the
    data from its first batch, with a warning, instead of reading the wrong items.
    """

    def __init__(self) -> None:
        super().__init__()
        self.position = Position()  # shared by every training loader, reloaded ones included

    def layout(self) -> dict[str, Any]:
        """The settings that fix which items each batch reads (compared when resuming)."""
        raise NotImplementedError(f"{type(self).__name__} must say what fixes its data order (layout)")

    def world(self) -> tuple[int, int]:
        """(ranks, this rank) of the attached trainer; (1, 0) outside one."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def sampler(self, dataset: Sized, batch_size: int, train: bool, items: str = "items") -> ResumableSampler:
        """``items`` names what the dataset holds, for the error when it cannot fill one batch."""
        ranks, rank = self.world()
        if len(dataset) < batch_size * ranks:
            raise ValueError(f"{type(self).__name__}: {len(dataset)} {'training' if train else 'validation'} {items} are fewer than "
                             f"batch_size={batch_size} per device on {ranks} device(s); lower the batch size")
        return ResumableSampler(dataset, batch_size, ranks, rank, self.position if train else None)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Counts the batches as they are trained on (the loader reads ahead of them)."""
        if self.trainer is not None and self.trainer.training:
            self.position.batches += 1
        return batch

    def _layout_and_ranks(self) -> dict[str, Any]:
        return {**self.layout(), "ranks": self.world()[0]}  # a batch is B items of every rank

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.position.batches, "layout": self._layout_and_ranks()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        layout = self._layout_and_ranks()
        if state.get("layout") != layout:  # (a checkpoint from before positions counted batches has no "ranks")
            rank_zero_warn(
                f"{type(self).__name__}: the checkpoint's data layout {state.get('layout')} differs from the "
                f"current {layout}; the data restarts from its first batch instead of resuming exactly"
            )
            return
        self.position.batches = int(state["batches"])
        # Lightning cannot see that this datamodule resumes mid-epoch exactly; its warning would mislead
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
