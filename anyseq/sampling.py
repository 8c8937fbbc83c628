"""Grammar-constrained sampling with a KV cache and classifier-free guidance.

``sample`` continues a batch of prompts (lists of ids, any lengths: they are left-padded)
one token at a time. Each row carries a :class:`~anyseq.sequence.Constraint`, so only ids
its grammar allows can be drawn and every sample decodes. With ``cfg_scale != 1`` every row
gets an unconditional twin in the same batch (one forward pass for both), and the logits
become ``uncond + scale * (cond - uncond)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anyseq.helpers import out_of_range
from anyseq.model import Transformer
from anyseq.sequence import Constraint, Ranges


@dataclass
class SamplingOptions:
    """How the next id is drawn. ``temperature=0`` is greedy.

    Args:
        temperature: softmax temperature (0: argmax).
        top_k: keep the k most likely ids (0: all).
        top_p: nucleus sampling mass (1.0: off).
        cfg_scale: classifier-free guidance scale (1.0: off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0

    def __post_init__(self) -> None:
        # out of range, each would sample something quietly (a negative temperature ran as greedy)
        if wrong := out_of_range(
            ("temperature", self.temperature, self.temperature >= 0, "at least 0 (0: greedy)"),
            ("top_k", self.top_k, self.top_k >= 0, "at least 0 (0: all ids)"),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1] (1: off)"),
            ("cfg_scale", self.cfg_scale, self.cfg_scale >= 0, "at least 0 (1: off, 0: unconditional)"),
        ):
            raise ValueError(f"sampling options: {wrong}")


def filter_logits(logits: Tensor, options: SamplingOptions) -> Tensor:
    """Temperature, top-k and top-p on (B, V) logits; disallowed ids stay at -inf."""
    logits = logits / max(options.temperature, 1e-5)
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > options.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def left_pad(prompts: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """(B, P) ids left-padded with ``pad`` and the pad count of each row."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
    return ids, torch.tensor([width - len(p) for p in prompts], dtype=torch.int32)


class AllowedMasks:
    """Allowed-id masks, built once per distinct set of ranges and kept on the device: a grammar
    repeats a handful of sets (text, a codebook, one marker), so a step copies nothing to it."""

    def __init__(self, vocab: int, device: torch.device):
        self.vocab, self.device, self.cache = vocab, device, {}

    @staticmethod
    def build(ranges: Ranges, vocab: int) -> Tensor:
        mask = torch.zeros(vocab, dtype=torch.bool)
        for lo, hi in ranges:
            mask[lo:hi] = True
        return mask

    def __call__(self, ranges: Ranges) -> Tensor:
        key = tuple(ranges)
        if key not in self.cache:
            self.cache[key] = self.build(ranges, self.vocab).to(self.device)
        return self.cache[key]


_CDF_DTYPE = {"mps": torch.float32}  # the cumulative sums are float64 elsewhere; Apple's GPUs have none


Generators = torch.Generator | list[torch.Generator] | None  # one for the batch, or one per row


def uniforms(n: int, generator: Generators) -> Tensor:
    """``n`` float64 uniforms in [0, 1): from one generator, or one from each row's own, so that a
    row's draws do not depend on the rows that share its batch."""
    if isinstance(generator, list):
        return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generator])
    return torch.rand(n, generator=generator, dtype=torch.float64)


def draw(probs: Tensor, generator: Generators = None) -> Tensor:
    """One id per row of (B, V) probabilities, by the inverse of the cumulative distribution.

    Only B uniforms come from the (CPU) generator(s), so no (B, V) tensor leaves the device and a
    seed gives the same draws on every run; ids of probability 0 are never drawn.
    """
    u = uniforms(probs.shape[0], generator)
    return inverse_cdf(probs, u.to(probs.device, _CDF_DTYPE.get(probs.device.type, torch.float64)))


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """For each row, the first id whose cumulative probability exceeds ``u`` (B,) in [0, 1) of the total."""
    cdf = probs.to(u.dtype).cumsum(-1)
    idx = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True)
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(-1, keepdim=True)  # when u * total rounds up
    return torch.minimum(idx, last).squeeze(-1)


class _Runner:
    """Next-token logits for a growing batch, with or without the KV cache."""

    def __init__(self, model: Transformer, ids: Tensor, pads: Tensor, max_new: int, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.device = model.tok_embeddings.weight.device
        self.ids, self.pads = ids.to(self.device), pads.to(self.device)
        self.cache = model.new_cache(len(ids), ids.shape[1] + max_new, pads) if use_cache else None
        self.fresh = ids.shape[1]  # ids not yet seen by the cache

    def logits(self) -> Tensor:
        if self.use_cache:
            hidden = self.model(self.ids[:, -self.fresh :], cache=self.cache)
        else:  # whole sequence every step; padding is its own "document" so it is never attended
            slot = torch.arange(self.ids.shape[1], device=self.device)
            document_ids = (slot[None, :] >= self.pads[:, None]).to(torch.int32)
            hidden = self.model(self.ids, document_ids=document_ids)
        self.fresh = 1
        return self.model.logits(hidden[:, -1])

    def append(self, tokens: Tensor) -> None:
        self.ids = torch.cat([self.ids, tokens[:, None].to(self.device)], dim=1)


@torch.no_grad()
def sample(
    model: Transformer,
    prompts: list[list[int]],
    constraints: list[Constraint],
    options: SamplingOptions,
    pad_id: int,
    uncond_prompts: list[list[int]] | None = None,
    max_new_tokens: int = 1024,
    use_cache: bool = True,
    generator: Generators = None,
) -> list[list[int]]:
    """Sample until every row's constraint is complete (or ``max_new_tokens``); returns new ids.

    ``generator``: one for the whole batch, or a list with each row's own.
    """
    if len(prompts) != len(constraints):
        raise ValueError(f"{len(prompts)} prompts but {len(constraints)} constraints")
    if isinstance(generator, list) and len(generator) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(generator)} generators")
    guided = options.cfg_scale != 1.0
    if guided and (uncond_prompts is None or len(uncond_prompts) != len(prompts)):
        raise ValueError("classifier-free guidance needs one unconditional prompt per prompt")
    rows = prompts + (uncond_prompts if guided else [])
    longest = max(len(p) for p in rows) + max_new_tokens
    if longest > model.config.max_seq_len:
        raise ValueError(
            f"prompt + {max_new_tokens} new tokens = {longest} > the model's context of {model.config.max_seq_len}; "
            "shorten the prompt (prompt images and videos: anyseq generate --image-size resizes them) or ask for "
            "a smaller output"
        )
    model.eval()
    ids, pads = left_pad(rows, pad_id)
    runner = _Runner(model, ids, pads, max_new_tokens, use_cache)
    b, masks = len(prompts), AllowedMasks(model.config.vocab_size, runner.device)
    out: list[list[int]] = [[] for _ in range(b)]
    for _ in range(max_new_tokens):
        if all(c.done for c in constraints):
            break
        logits = runner.logits()
        if guided:
            cond, uncond = logits[:b], logits[b:]
            logits = uncond + options.cfg_scale * (cond - uncond)
        allowed = torch.stack([masks([(pad_id, pad_id + 1)] if c.done else c.allowed()) for c in constraints])
        logits = logits.masked_fill(~allowed, float("-inf"))
        if options.temperature == 0:
            tokens = logits.argmax(-1)
        else:
            tokens = draw(filter_logits(logits, options).softmax(-1), generator)
        tokens = tokens.cpu()
        for i, c in enumerate(constraints):
            if not c.done:
                c.advance(int(tokens[i]))
                out[i].append(int(tokens[i]))
        runner.append(torch.cat([tokens, tokens]) if guided else tokens)
    return out
