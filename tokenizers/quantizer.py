"""One adapter over vector-quantize-pytorch for every modality tokenizer.

The visual and audio tokenizers never talk to vector-quantize-pytorch directly: they hand
channel-last features ``(B, N, dim)`` to :class:`Quantizer` and get back the quantized
features, integer codes ``(B, N, num_quantizers)`` and one auxiliary loss. That keeps the
pitfalls of the library (construction-time codebook sync, EMA defaults, train/eval code
differences) in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch.distributed as dist
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, LFQ, ResidualFSQ, ResidualLFQ, ResidualVQ, VectorQuantize

QuantizerKind = Literal["fsq", "vq", "lfq"]

# Level sets recommended by the FSQ paper (and Cosmos for 64000) for common codebook sizes.
FSQ_LEVELS: dict[int, list[int]] = {
    64: [4, 4, 4],
    125: [5, 5, 5],
    256: [8, 6, 5],
    1000: [8, 5, 5, 5],
    1024: [8, 5, 5, 5],  # 1000 codes: the closest FSQ grid to 2^10
    4096: [7, 5, 5, 5, 5],
    8192: [8, 8, 8, 4, 4],
    16384: [8, 8, 8, 6, 5],
    32768: [8, 8, 8, 8, 8],
    64000: [8, 8, 8, 5, 5, 5],
    65536: [8, 8, 8, 5, 5, 5],
}


@dataclass
class QuantizerConfig:
    """How features become codes. ``kind`` picks the family; ``num_quantizers > 1`` makes it residual.

    Args:
        kind: ``fsq`` (default; no codebook to collapse, exact decode), ``vq`` (LlamaGen recipe:
            low-dim l2-normalised codes, EMA, dead-code restart) or ``lfq`` (MAGVIT-v2 lookup-free).
        codebook_size: codes per quantizer. For FSQ it selects a level set from ``FSQ_LEVELS``
            unless ``levels`` is given; for LFQ it must be a power of two.
        levels: explicit FSQ levels (their product is the codebook size).
        num_quantizers: residual levels (audio codecs use several; images use one).
        quantizer_dropout: train with a random number of residual levels so fewer still decode.
        codebook_dim: VQ code dimension (LlamaGen uses 8); LFQ uses log2(codebook_size).
        ema_decay: VQ codebook EMA decay (LlamaGen: 0.99; the library default 0.8 is too fast).
        dead_code_threshold: VQ codes used fewer times than this per batch are restarted.
        commitment_weight: VQ commitment loss weight.
        entropy_weight: LFQ entropy loss weight.
    """

    kind: QuantizerKind = "fsq"
    codebook_size: int = 1000
    levels: list[int] | None = None
    num_quantizers: int = 1
    quantizer_dropout: bool = False
    codebook_dim: int = 8
    ema_decay: float = 0.99
    dead_code_threshold: float = 2.0
    commitment_weight: float = 0.25
    entropy_weight: float = 0.1
    extra: dict = field(default_factory=dict)

    def resolved_levels(self) -> list[int]:
        if self.levels is not None:
            return list(self.levels)
        if self.codebook_size not in FSQ_LEVELS:
            raise ValueError(
                f"QuantizerConfig.codebook_size={self.codebook_size} has no FSQ level set; "
                f"pass levels=[...] explicitly or pick one of {sorted(FSQ_LEVELS)}"
            )
        return FSQ_LEVELS[self.codebook_size]

    @property
    def size(self) -> int:
        """Actual number of codes per quantizer (FSQ grids need not equal ``codebook_size``)."""
        return math.prod(self.resolved_levels()) if self.kind == "fsq" else self.codebook_size


class QuantizerOutput(NamedTuple):
    quantized: Tensor  # (B, N, dim), straight-through in training
    codes: Tensor  # (B, N, num_quantizers) int64
    aux_loss: Tensor  # scalar: commitment / entropy losses (0 for FSQ)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Quantizer(nn.Module):
    """Channel-last quantizer: ``(B, N, dim) -> QuantizerOutput``.

    Build it after the process group exists (e.g. in ``LightningModule.configure_model``):
    VQ codebook syncing across ranks is decided here, at construction.
    """

    def __init__(self, dim: int, config: QuantizerConfig):
        super().__init__()
        self.config = config
        self.dim = dim
        c, q = config, config.num_quantizers
        if q < 1:
            raise ValueError(f"QuantizerConfig.num_quantizers must be >= 1, got {q}")
        residual = dict(num_quantizers=q, quantize_dropout=c.quantizer_dropout and q > 1)
        if c.kind == "fsq":
            levels = c.resolved_levels()
            kw = dict(levels=levels, dim=dim, **c.extra)
            if q > 1:  # ResidualFSQ sets preserve_symmetry on its levels itself
                self.impl = ResidualFSQ(**kw, **residual)
            else:
                self.impl = FSQ(**kw, preserve_symmetry=any(level == 2 for level in levels))
        elif c.kind == "vq":
            kw = dict(
                dim=dim,
                codebook_size=c.codebook_size,
                codebook_dim=c.codebook_dim,
                use_cosine_sim=True,  # l2-normalised codes (LlamaGen / ViT-VQGAN)
                decay=c.ema_decay,
                threshold_ema_dead_code=c.dead_code_threshold,
                commitment_weight=c.commitment_weight,
                sync_codebook=_distributed(),
                **c.extra,
            )
            self.impl = ResidualVQ(**kw, **residual) if q > 1 else VectorQuantize(**kw)
        elif c.kind == "lfq":
            if not math.log2(c.codebook_size).is_integer():
                raise ValueError(
                    f"LFQ needs a power-of-two codebook_size, got {c.codebook_size} "
                    f"(try {2 ** math.ceil(math.log2(c.codebook_size))})"
                )
            kw = dict(dim=dim, codebook_size=c.codebook_size, entropy_loss_weight=c.entropy_weight, **c.extra)
            self.impl = ResidualLFQ(**kw, **residual) if q > 1 else LFQ(**kw)
        else:
            raise ValueError(f"QuantizerConfig.kind must be one of 'fsq', 'vq', 'lfq'; got {c.kind!r}")

    @property
    def codebook_size(self) -> int:
        return self.config.size

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    def forward(self, x: Tensor) -> QuantizerOutput:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Quantizer expects (B, N, {self.dim}) features, got {tuple(x.shape)}")
        out = self.impl(x.float())
        quantized, codes = out[0], out[1]
        aux = out[2].sum() if len(out) > 2 else x.new_zeros(())
        if codes.ndim == 2:  # single quantizer: add the level axis
            codes = codes.unsqueeze(-1)
        return QuantizerOutput(quantized.to(x.dtype), codes.long(), aux.float())

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(B, N, num_quantizers)`` (or fewer leading levels, for residual dropout) -> features."""
        if codes.ndim != 3:
            raise ValueError(f"Quantizer.decode expects codes of shape (B, N, levels), got {tuple(codes.shape)}")
        if self.num_quantizers == 1:
            codes = codes[..., 0]
            if self.config.kind == "vq":
                return self.impl.get_output_from_indices(codes)
            return self.impl.indices_to_codes(codes)
        if codes.shape[-1] < self.num_quantizers and not self.config.quantizer_dropout:
            raise ValueError(
                f"decoding {codes.shape[-1]} of {self.num_quantizers} residual levels needs a quantizer "
                "trained with quantizer_dropout=True"
            )
        return self.impl.get_output_from_indices(codes)
