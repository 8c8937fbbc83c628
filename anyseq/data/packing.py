"""Packing documents into fixed-length training rows, deterministically and resumably.

Each epoch, the documents of every shard set are shuffled with ``(seed, epoch)`` and
concatenated into one token stream; row ``r`` is the stream's tokens ``[r*L, r*L + L + 1)``
(inputs are the first ``L``, targets the last ``L``). A document may continue into the next
row; its positions continue too. Rows carry document ids so attention never crosses
documents, and a target in another document than its input is ignored (-100).

Several shard sets mix by token share: with weights ``w``, set ``k`` contributes documents
(cycling through fresh permutations of its documents when it is small) until it reaches
``w_k / sum(w)`` of the epoch's tokens, where an epoch is as many tokens as all sets hold.
Without weights every document appears exactly once per epoch.

Everything is a pure function of ``(seed, epoch, row)``: map-style, so a sampler can resume
at any row and worker processes need no shared state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from anyseq.data.shards import Document, ShardSet, ShardSubset, check_same_space
from anyseq.vocab import MODALITIES

IGNORE = -100
TEXT = MODALITIES.index("text")


@dataclass
class Layout:
    """One epoch's document order: which set and document sit at each stream offset."""

    sets: np.ndarray  # int32 (D,)
    docs: np.ndarray  # int64 (D,)
    offsets: np.ndarray  # int64 (D+1,), stream offset of each document
    drop: np.ndarray  # bool (D,), condition dropout applies to this document


class PackedDataset(Dataset):
    """Rows of ``seq_len`` tokens packed from shard sets (see the module docstring).

    ``ds[i]`` for ``i < len(ds)`` is row ``i`` of epoch ``epoch``; larger indices continue into
    the following epochs (row ``i % len(ds)`` of epoch ``epoch + i // len(ds)``), so a sampler
    names any row of any epoch with one integer and worker copies need no epoch update.

    Args:
        shardsets: the document sources (``ShardSet`` or a ``ShardSubset`` of one).
        weights: token share of each source per epoch; None keeps their natural sizes.
        seq_len: tokens per row.
        seed: shuffling seed.
        condition_dropout: probability (per document and epoch) that a document ending in a
            media segment has its earlier segments replaced by ``<uncond>`` with loss weight 0,
            which teaches the unconditional branch of classifier-free guidance.
        epoch: the epoch of index 0.
    """

    def __init__(
        self,
        shardsets: Sequence[ShardSet | ShardSubset],
        weights: Sequence[float] | None = None,
        seq_len: int = 2048,
        seed: int = 0,
        condition_dropout: float = 0.0,
        epoch: int = 0,
    ):
        if not shardsets:
            raise ValueError("PackedDataset needs at least one shard set")
        if weights is not None and len(weights) != len(shardsets):
            raise ValueError(f"got {len(weights)} weights for {len(shardsets)} shard sets; give one weight per set")
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.space = check_same_space(shardsets)
        self.shardsets = list(shardsets)
        self.seq_len, self.seed, self.epoch = seq_len, seed, epoch
        self.condition_dropout = condition_dropout
        self.uncond = self.space.special("<uncond>")
        tokens = np.array([int(s.lengths.sum()) for s in self.shardsets], np.int64)
        for k, (source, n) in enumerate(zip(self.shardsets, tokens)):
            if n == 0 and (weights is None or weights[k] > 0):
                raise ValueError(f"shard set {', '.join(map(str, source.paths))} holds no documents")
        total = int(tokens.sum())
        share = tokens / total if weights is None else np.asarray(weights, np.float64) / sum(weights)
        self.budgets = [int(math.ceil(p * total)) if weights is not None else int(n) for p, n in zip(share, tokens)]
        self.rows = (total - 1) // seq_len
        if self.rows < 1:
            raise ValueError(f"the shards hold {total} tokens: too few for one row of seq_len={seq_len} (+1 target)")
        self._layouts: dict[int, Layout] = {}

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_layouts": {}}  # workers rebuild layouts rather than receive them

    # -- the epoch's document order -----------------------------------------------------------
    def layout(self, epoch: int) -> Layout:
        if epoch not in self._layouts:
            if len(self._layouts) >= 2:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[epoch] = self._make_layout(epoch)
        return self._layouts[epoch]

    def _make_layout(self, epoch: int) -> Layout:
        rng = np.random.default_rng([self.seed, epoch])
        sets, docs, lengths = [], [], []
        for k, (source, budget) in enumerate(zip(self.shardsets, self.budgets)):
            if budget == 0:
                continue
            cycles = max(1, -(-budget // int(source.lengths.sum())))
            order = np.concatenate([rng.permutation(len(source)) for _ in range(cycles)])
            count = int(np.searchsorted(np.cumsum(source.lengths[order]), budget)) + 1
            docs.append(order[:count])
            lengths.append(source.lengths[order[:count]])
            sets.append(np.full(count, k, np.int32))
        perm = rng.permutation(sum(len(d) for d in docs))
        sets_, docs_, lengths_ = (np.concatenate(x)[perm] for x in (sets, docs, lengths))
        offsets = np.concatenate([[0], np.cumsum(lengths_)]).astype(np.int64)
        drop = rng.random(len(docs_)) < self.condition_dropout
        return Layout(sets_, docs_, offsets, drop)

    # -- rows -----------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            raise IndexError(f"row index must be non-negative, got {index}")
        layout = self.layout(self.epoch + index // self.rows)
        L = self.seq_len
        lo = (index % self.rows) * L
        hi = lo + L + 1
        ids = np.zeros(L + 1, np.int64)
        modality = np.zeros(L + 1, np.int64)
        weight = np.zeros(L + 1, np.float32)
        position = np.zeros(L + 1, np.int64)
        document = np.zeros(L + 1, np.int32)
        first = int(np.searchsorted(layout.offsets, lo, side="right")) - 1
        k = first
        while k < len(layout.docs) and layout.offsets[k] < hi:
            start, stop = int(layout.offsets[k]), int(layout.offsets[k + 1])
            a, b = max(lo, start), min(hi, stop)
            source = self.shardsets[layout.sets[k]]
            doc = source.document(int(layout.docs[k]), a - start, b - start)
            if layout.drop[k]:
                self._drop_condition(doc, source.spans(int(layout.docs[k])))
            sl = slice(a - lo, b - lo)
            ids[sl], modality[sl], weight[sl] = doc.ids, doc.modality, doc.loss_weight
            position[sl] = np.arange(a - start, b - start)
            document[sl] = k - first
            k += 1
        valid = (document[:-1] == document[1:]) & (weight[1:] > 0)
        targets = np.where(valid, ids[1:], IGNORE)
        return {
            "input_ids": torch.from_numpy(ids[:-1].copy()),
            "targets": torch.from_numpy(targets),
            "document_ids": torch.from_numpy(document[:-1].copy()),
            "positions": torch.from_numpy(position[:-1].copy()),
            "modality": torch.from_numpy(modality[1:].copy()),
            "loss_weight": torch.from_numpy(np.where(valid, weight[1:], 0).astype(np.float32)),
        }

    def _drop_condition(self, doc: Document, spans: np.ndarray) -> None:
        """Earlier segments of a document ending in media become <uncond> with weight 0."""
        if len(spans) < 2 or spans[-1]["modality"] == TEXT:
            return
        cond = (doc.segment >= 0) & (doc.segment < len(spans) - 1)
        doc.ids[cond] = self.uncond
        doc.loss_weight[cond] = 0.0
