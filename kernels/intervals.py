"""Attention masks as one key interval per query: ``kv_start[b, t] <= j < kv_end[b, t]``.

Causal, document (packed sequences), prefix-LM and bidirectional-inside-an-image masks all
give each query one contiguous run of keys, so two int32 per token describe them and the
kernels can skip every tile that lies wholly outside the intervals of its queries.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _changes(ids: Tensor) -> Tensor:
    """True where a new run of equal ids begins (always at position 0)."""
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return starts


def _run_bounds(starts: Tensor) -> tuple[Tensor, Tensor]:
    """First index and one-past-last index of the run each token belongs to."""
    b, t = starts.shape
    idx = torch.arange(t, device=starts.device).expand(b, t)
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    last = torch.where(ends, idx, torch.full_like(idx, t - 1)).flip(1).cummin(dim=1).values.flip(1)
    return first, last + 1


def _check_ids(name: str, ids: Tensor) -> None:
    if ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape (batch, seq), got {tuple(ids.shape)} {ids.dtype}")


def causal_intervals(document_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Causal attention inside each document; documents are contiguous runs of one id.

    Returns int32 ``(kv_start, kv_end)`` of shape (B, T): the document's first token and t + 1.
    """
    _check_ids("document_ids", document_ids)
    doc_start, _ = _run_bounds(_changes(document_ids))
    t = document_ids.shape[1]
    end = torch.arange(1, t + 1, device=document_ids.device).expand_as(doc_start)
    return doc_start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def intervals_from_spans(document_ids: Tensor, bidirectional_span_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Causal inside each document, except that a run of tokens sharing a nonzero span id
    (one image, or a prefix for prefix-LM) sees the whole run, never past its document."""
    _check_ids("document_ids", document_ids)
    _check_ids("bidirectional_span_ids", bidirectional_span_ids)
    if bidirectional_span_ids.shape != document_ids.shape:
        raise ValueError(
            f"bidirectional_span_ids has shape {tuple(bidirectional_span_ids.shape)}, "
            f"expected the shape of document_ids {tuple(document_ids.shape)}"
        )
    start, end = causal_intervals(document_ids)
    # a span run ends where its id changes or its document does
    _, span_end = _run_bounds(_changes(document_ids) | _changes(bidirectional_span_ids))
    end = torch.where(bidirectional_span_ids != 0, span_end.to(torch.int32), end)
    return start, end.contiguous()


def dense_mask(kv_start: Tensor, kv_end: Tensor, S: int) -> Tensor:
    """Boolean (B, T, S) mask: True where query t may attend to key j."""
    j = torch.arange(S, device=kv_start.device)
    return (j >= kv_start[..., None]) & (j < kv_end[..., None])
