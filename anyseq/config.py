"""ModelConfig: the transformer's shape, with named presets.

The published presets reproduce their papers' architectures exactly (untied embeddings):
Llama-2-7B (V 32000, d 4096, 32 layers, 32/32 heads, FFN 11008), Chameleon-7B (the same body,
V 65536, QK-norm), Emu3-8B (V 184622, 32/8 heads, FFN 14336, RoPE theta 1e6, dropout 0.1).
For training, ``vocab_size`` is set from the token space (``config.with_vocab(space.size)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Where two (nested) config dicts disagree: dotted field name -> (a's value, b's value)."""
    found: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found.update(config_differences(x, y, f"{prefix}{key}."))
        elif x != y:
            found[f"{prefix}{key}"] = (x, y)
    return found


@dataclass(frozen=True)
class ModelConfig:
    """Shape and options of the decoder-only transformer.

    Args:
        vocab_size: ids the embedding and output head cover (the token space's ``size``).
        dim: model width.
        n_layers: transformer blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads (GQA when fewer than ``n_heads``).
        ffn_dim: SwiGLU hidden width.
        max_seq_len: longest sequence the model is trained and sampled at.
        rope_theta: RoPE base frequency.
        norm_eps: RMSNorm epsilon.
        qk_norm: Chameleon's QK-norm: LayerNorm over each head's queries and keys, per-head affine.
        norm_reorder: Chameleon/Swin-v2 ordering ``h = x + norm(f(x))`` instead of pre-norm.
        dropout: residual dropout on attention and FFN outputs (Emu3 uses 0.1).
        tie_embeddings: share the input embedding with the output head.
        init_std: std of the normal initialisation.
    """

    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    ffn_dim: int = 11008
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    norm_reorder: bool = False
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"ModelConfig.dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"ModelConfig.n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head dim {self.dim // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name].with_overrides(overrides)

    @classmethod
    def check_fields(cls, overrides: dict[str, Any]) -> None:
        """``model_overrides`` may name only fields of ModelConfig (replace's TypeError names no setting)."""
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"model_overrides has unknown fields {unknown}; "
                             f"ModelConfig's fields are {[f.name for f in fields(cls)]}")

    def with_overrides(self, overrides: dict[str, Any]) -> "ModelConfig":
        self.check_fields(overrides)
        return replace(self, **overrides)

    def with_vocab(self, vocab_size: int) -> "ModelConfig":
        return replace(self, vocab_size=vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def architecture_differences(self, other: "ModelConfig") -> dict[str, tuple[Any, Any]]:
        """Fields that give the same weights another meaning, where ``other`` differs: all but
        the run options (vocabulary size, context length, dropout, init std)."""
        differ = config_differences(self.to_dict(), other.to_dict())
        return {f: values for f, values in differ.items() if f not in RUN_OPTIONS}

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count from the hyperparameters alone (no model built)."""
        d, hd = self.dim, self.head_dim
        attn = d * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        qk_norm = 2 * hd * (self.n_heads + self.n_kv_heads) if self.qk_norm else 0
        block = attn + qk_norm + 3 * d * self.ffn_dim + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * block + d + (emb if embeddings else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B convention.

        Every matmul weight counts: the blocks and the output projection (a matmul whether or not
        it shares its weight with the embedding, whose lookup costs nothing).
        """
        n = self.num_params(embeddings=False) + self.vocab_size * self.dim
        return 6 * n + 12 * self.n_layers * self.n_heads * self.head_dim * seq_len


RUN_OPTIONS = ("vocab_size", "max_seq_len", "dropout", "init_std")

PRESETS: dict[str, ModelConfig] = {
    # for tests: runs anywhere in milliseconds
    "tiny": ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192, max_seq_len=256),
    # the CPU demo: a few million parameters
    "small": ModelConfig(vocab_size=4096, dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_dim=704, max_seq_len=512),
    # ~100M: GPT-2-small-sized Llama with tied embeddings
    "100m": ModelConfig(
        vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048, max_seq_len=2048,
        tie_embeddings=True,
    ),
    "llama2-7b": ModelConfig(
        vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, max_seq_len=4096,
        norm_eps=1e-5,
    ),
    "chameleon-7b": ModelConfig(
        vocab_size=65536, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, max_seq_len=4096,
        qk_norm=True, norm_eps=1e-5,
    ),
    "emu3-8b": ModelConfig(
        vocab_size=184622, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, max_seq_len=9216,
        rope_theta=1_000_000.0, dropout=0.1, norm_eps=1e-5,
    ),
}
