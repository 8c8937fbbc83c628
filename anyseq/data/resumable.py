"""Training data that resumes exactly: the transformer's token rows and the tokenizers' media.

Two halves make a resumed run read what the unbroken run would have read:

* the datasets are pure functions of one integer, the *stream index* ``epoch * len(ds) + i``
  (item ``i`` of data epoch ``epoch``, each epoch in its own order), and draw any randomness
  (crops, flips, clip starts, audio offsets) from a generator seeded by ``(seed, index)``
  (``index_generator``), never from a worker's or the process's RNG;
* a ``ResumableSampler`` reads the stream front to back from ``Position.items``, the items
  trained so far, which a ``ResumableDataModule`` advances as batches are trained and saves in
  every checkpoint. Counting items, not batches (Megatron's ``consumed_samples``), lets a run
  resume on another device count or batch size and still read on from the same item.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sized

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DistributedSampler

from anyseq.helpers import default


def index_generator(seed: int, index: int) -> torch.Generator:
    """A generator owned by one stream index: the same draws in any process, worker or rerun."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


@dataclass
class Position:
    """Where training stands in its data: batches trained (one batch of every rank together),
    and items trained of each named stream (the visual tokenizer reads an image and a video stream)."""

    batches: int = 0
    items: dict[str, int] = field(default_factory=dict)


class ResumableSampler(DistributedSampler):
    """The stream indices of the batches still to train in the current loader epoch.

    Training reads the stream (the dataset's items, epoch after epoch) front to back: a batch of
    every rank together is the next ``B * W`` items, of which rank ``r`` reads ``r, r + W, ...``;
    a batch may end one data epoch and begin the next. A loader epoch is ``batches_per_epoch``
    batches: as many as the dataset has whole batches by default, that of a longer stream when
    a short one reads on beside it (videos beside images).

    ``position`` moves as batches are trained, not as the loader reads ahead, so every new
    iteration goes on from where training stands whatever Lightning's epoch bookkeeping did
    (it numbers and iterates epochs differently depending on where a checkpoint was written).
    A sampler whose position never moves (validation's) reads the same first batches every time.
    """

    def __init__(self, dataset: Sized, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 position: Position | None = None, stream: str = "items", batches_per_epoch: int | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.items, self.batch_size, self.stream = len(dataset), batch_size, stream
        self.step_items = batch_size * num_replicas
        self.data_batches = self.items // self.step_items
        self.batches_per_epoch = default(batches_per_epoch, self.data_batches)
        self.position = default(position, Position())

    def __iter__(self) -> Iterator[int]:
        done, start = self.position.batches, self.position.items.get(self.stream, 0)
        end = (done // self.batches_per_epoch + 1) * self.batches_per_epoch
        first = start + self.rank
        yield from range(first, first + (end - done) * self.step_items, self.num_replicas)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size


class ResumableDataModule(L.LightningDataModule):
    """A datamodule whose training loaders resume exactly (see the module docstring).

    Subclasses build their training loaders on ``self.sampler(...)``, one stream name each, and
    say in ``layout()`` what fixes the order of the items: a checkpoint written under another
    layout restarts the data from its first item, with a warning, instead of reading the wrong
    ones. Batch size and device count are not part of it: a run resumed with others reads on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.position = Position()  # shared by every training loader, reloaded ones included
        self.step_items: dict[str, int] = {}  # items per trained batch, of each training stream
        self.saved_step_items: dict[str, int] = {}  # the same, as the checkpoint resumed from had them

    def layout(self) -> dict[str, Any]:
        """The settings that fix the order of the items (compared when resuming)."""
        raise NotImplementedError(f"{type(self).__name__} must say what fixes its data order (layout)")

    def world(self) -> tuple[int, int]:
        """(ranks, this rank) of the attached trainer; (1, 0) outside one."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def sampler(self, dataset: Sized, batch_size: int, train: bool, stream: str, items: str = "items") -> ResumableSampler:
        """``stream`` names the training stream (its place is saved under it); ``items`` what the
        dataset holds, for the error when it cannot fill one batch."""
        ranks, rank = self.world()
        if len(dataset) < batch_size * ranks:
            raise ValueError(f"{type(self).__name__}: {len(dataset)} {'training' if train else 'validation'} {items} are fewer than "
                             f"batch_size={batch_size} per device on {ranks} device(s); lower the batch size")
        if not train:
            return ResumableSampler(dataset, batch_size, ranks, rank)
        self.step_items[stream] = batch_size * ranks
        saved = self.saved_step_items.pop(stream, self.step_items[stream])  # said once, not at every reload
        if saved != self.step_items[stream]:
            rank_zero_info(f"{type(self).__name__}: the {stream} stream reads on from item {self.position.items.get(stream, 0)} "
                           f"in batches of {batch_size} x {ranks} device(s) (the checkpoint's batches were {saved} items)")
        return ResumableSampler(dataset, batch_size, ranks, rank, self.position, stream)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Counts the batches and items as they are trained on (the loader reads ahead of them)."""
        if self.trainer is not None and self.trainer.training:
            self.position.batches += 1
            for stream, step in self.step_items.items():
                self.position.items[stream] = self.position.items.get(stream, 0) + step
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.position.batches, "items": dict(self.position.items),
                "step_items": dict(self.step_items), "layout": self.layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        layout = self.layout()
        if state.get("layout") != layout or "items" not in state:  # (a checkpoint from before positions counted items)
            rank_zero_warn(
                f"{type(self).__name__}: the checkpoint's data layout {state.get('layout')} differs from the "
                f"current {layout}; the data restarts from its first item instead of resuming exactly"
            )
            return
        self.position.batches = int(state["batches"])
        self.position.items = {stream: int(n) for stream, n in state["items"].items()}
        self.saved_step_items = dict(state["step_items"])
        # Lightning cannot see that this datamodule resumes mid-epoch exactly; its warning would mislead
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
