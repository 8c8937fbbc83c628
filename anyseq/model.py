"""The unified decoder: a Llama-style transformer over one multimodal vocabulary.

RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases; options for Chameleon's QK-norm
and norm reordering, Emu3's dropout, tied embeddings. Attention goes through
``anyseq.kernels.attention`` with per-query key intervals, so packed documents never see
each other and the same call serves training, prefill and cached decoding. No training or
parallelism logic lives here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyseq.config import ModelConfig
from anyseq.kernels import attention, causal_intervals, rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class HeadNorm(nn.Module):
    """Chameleon's QK-norm: LayerNorm over head_dim with a separate affine per head."""

    def __init__(self, n_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, H, D)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotate (B, T, H, D) by (B, T) positions; half-split layout, as Hugging Face Llama."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class KVCache:
    """Keys and values of every layer for batched generation.

    Rows may be left-padded prompts: ``start[b]`` is the first real slot of row ``b``, and
    every query of that row attends to slots ``[start[b], its own slot]``.
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, start: Tensor, device, dtype):
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.start = start.to(device=device, dtype=torch.int32)
        self.length = 0
        self.max_len = max_len

    def slots(self, t: int) -> Tensor:
        if self.length + t > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {t} tokens > {self.max_len} slots")
        return torch.arange(self.length, self.length + t, device=self.k.device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        t = k.shape[2]
        self.k[layer, :, :, self.length : self.length + t] = k
        self.v[layer, :, :, self.length : self.length + t] = v
        end = self.length + t
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (e.g. to drop finished samples)."""
        self.k, self.v, self.start = self.k[:, index], self.v[:, index], self.start[index]


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.c, self.layer = c, layer
        self.wq = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        self.q_norm = HeadNorm(c.n_heads, c.head_dim, c.norm_eps) if c.qk_norm else nn.Identity()
        self.k_norm = HeadNorm(c.n_kv_heads, c.head_dim, c.norm_eps) if c.qk_norm else nn.Identity()

    def forward(self, x: Tensor, positions: Tensor, kv_start: Tensor, kv_end: Tensor, cache: KVCache | None) -> Tensor:
        b, t, _ = x.shape
        q = self.q_norm(self.wq(x).view(b, t, self.c.n_heads, self.c.head_dim))
        k = self.k_norm(self.wk(x).view(b, t, self.c.n_kv_heads, self.c.head_dim))
        v = self.wv(x).view(b, t, self.c.n_kv_heads, self.c.head_dim)
        q, k = rope(q, positions, self.c.rope_theta), rope(k, positions, self.c.rope_theta)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        out = attention(q, k, v, kv_start, kv_end)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(c.dim, c.ffn_dim, bias=False)  # gate
        self.w3 = nn.Linear(c.dim, c.ffn_dim, bias=False)  # up
        self.w2 = nn.Linear(c.ffn_dim, c.dim, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.reorder = c.norm_reorder
        self.attention = Attention(c, layer)
        self.feed_forward = FeedForward(c)
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, positions: Tensor, kv_start: Tensor, kv_end: Tensor, cache: KVCache | None) -> Tensor:
        if self.reorder:  # Chameleon-34B: normalise the branch output, not its input
            h = x + self.dropout(self.attention_norm(self.attention(x, positions, kv_start, kv_end, cache)))
            return h + self.dropout(self.ffn_norm(self.feed_forward(h)))
        h = x + self.dropout(self.attention(self.attention_norm(x), positions, kv_start, kv_end, cache))
        return h + self.dropout(self.feed_forward(self.ffn_norm(h)))


def document_positions(document_ids: Tensor) -> Tensor:
    """Position of each token inside its document (documents are contiguous runs of one id)."""
    b, t = document_ids.shape
    idx = torch.arange(t, device=document_ids.device).expand(b, t)
    new_doc = torch.ones_like(document_ids, dtype=torch.bool)
    new_doc[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    doc_start = torch.where(new_doc, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - doc_start


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def tie_weights(self) -> None:
        """With ``tie_embeddings``, share the output projection with the embedding (again after
        ``to_empty`` or an assigning ``load_state_dict``, which untie them)."""
        if self.config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def init_weights(self) -> None:
        """Initialise every parameter, in order, from the default generator.

        Separate from ``__init__`` so a model built on the meta device can be materialised
        with ``to_empty(device=...)`` and then initialised (``anyseq.parallelize``).
        """
        for name, p in self.named_parameters():
            self.init_parameter(name, p)

    @torch.no_grad()
    def init_parameter(self, name: str, p: Tensor) -> None:
        """Normal(0, std); residual output projections scaled by 1/sqrt(2L) (GPT-2); norms 1 / 0.

        ``p`` may be a whole tensor standing in for a sharded parameter called ``name``.
        """
        std = self.config.init_std
        if name.endswith(("norm.weight", "norm.bias")):
            p.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.endswith(("wo.weight", "w2.weight")):
            nn.init.normal_(p, std=std / (2 * self.config.n_layers) ** 0.5)
        else:
            nn.init.normal_(p, std=std)

    def forward(
        self,
        input_ids: Tensor,
        document_ids: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Final hidden states (B, T, dim); project with :meth:`logits` or a fused loss.

        Without a cache, ``document_ids`` (B, T) confine attention (and positions) to each
        packed document. With a cache, the new tokens go to the next slots of every row.
        """
        b, t = input_ids.shape
        if cache is not None:
            slots = cache.slots(t)
            kv_start = cache.start[:, None].expand(b, t).contiguous()
            kv_end = (slots + 1).to(torch.int32).expand(b, t).contiguous()
            positions = (slots[None, :] - cache.start[:, None]).clamp(min=0) if positions is None else positions
        else:
            if t > self.config.max_seq_len:
                raise ValueError(f"sequence of {t} tokens exceeds max_seq_len={self.config.max_seq_len}")
            if document_ids is None:
                document_ids = torch.zeros_like(input_ids, dtype=torch.int32)
            kv_start, kv_end = causal_intervals(document_ids)
            positions = document_positions(document_ids) if positions is None else positions
        h = self.dropout(self.tok_embeddings(input_ids))
        for layer in self.layers:
            h = layer(h, positions, kv_start, kv_end, cache)
        if cache is not None:
            cache.length += t
        return self.norm(h)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.output(hidden).float()

    def new_cache(self, batch: int, max_len: int, start: Tensor | None = None) -> KVCache:
        p = self.tok_embeddings.weight
        start = torch.zeros(batch, dtype=torch.int32) if start is None else start
        return KVCache(self.config, batch, max_len, start, p.device, p.dtype)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
