"""Presets reproduce the published architectures: counts computed from the papers' hyperparameters."""

import pytest
import torch

from anyseq.config import PRESETS, ModelConfig
from anyseq.model import Transformer


def published_count(V, d, L, heads, kv_heads, ffn, qk_norm=False):
    """Llama-family count, written out independently of ModelConfig.num_params."""
    hd = d // heads
    attn = d * (heads * hd) + 2 * d * (kv_heads * hd) + (heads * hd) * d
    mlp = 3 * d * ffn
    norms = 2 * d
    qk = (2 * heads * hd + 2 * kv_heads * hd) if qk_norm else 0  # Chameleon: LayerNorm weight+bias per head
    return V * d + L * (attn + mlp + norms + qk) + d + V * d  # embeddings, blocks, final norm, untied head


@pytest.mark.parametrize(
    "name,expected",
    [
        ("llama2-7b", published_count(32000, 4096, 32, 32, 32, 11008)),
        ("chameleon-7b", published_count(65536, 4096, 32, 32, 32, 11008, qk_norm=True)),
        ("emu3-8b", published_count(184622, 4096, 32, 32, 8, 14336)),
    ],
)
def test_published_presets_have_the_published_parameter_count(name, expected):
    config = ModelConfig.from_preset(name)
    with torch.device("meta"):
        model = Transformer(config)
    assert model.num_params() == expected == config.num_params()


def test_llama2_7b_is_the_well_known_6_74b():
    assert ModelConfig.from_preset("llama2-7b").num_params() == 6_738_415_616


@pytest.mark.parametrize("name", ["llama2-7b", "chameleon-7b", "emu3-8b"])
def test_published_presets_match_their_papers(name):
    c = ModelConfig.from_preset(name)
    expected = {
        "llama2-7b": (32000, 4096, 32, 32, 32, 11008, False, 10000.0),
        "chameleon-7b": (65536, 4096, 32, 32, 32, 11008, True, 10000.0),
        "emu3-8b": (184622, 4096, 32, 32, 8, 14336, False, 1e6),
    }[name]
    assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.qk_norm, c.rope_theta) == expected
    assert not c.tie_embeddings


def test_100m_preset_is_about_100m():
    assert 90e6 < ModelConfig.from_preset("100m").num_params() < 130e6


def test_unknown_preset_lists_the_choices():
    with pytest.raises(KeyError, match="choose one of"):
        ModelConfig.from_preset("gpt5")


def test_an_override_of_no_field_is_named_with_the_fields():
    with pytest.raises(ValueError, match=r"model_overrides has unknown fields \['n_layer'\]; ModelConfig's fields are "
                                         r"\['vocab_size', 'dim', 'n_layers'"):
        ModelConfig.from_preset("tiny", n_layer=3)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig(dim=64, n_heads=4, n_kv_heads=3)


def test_every_preset_builds_on_meta():
    for name, config in PRESETS.items():
        with torch.device("meta"):
            assert Transformer(config).num_params() == config.num_params(), name


def test_training_flops_count_every_matmul_the_head_too_tied_or_not():
    """PaLM's 6N + 12 L d T: N is every parameter a matmul uses (all but the embedding lookup)."""
    untied = ModelConfig.from_preset("llama2-7b")
    n_matmul = untied.num_params() - untied.vocab_size * untied.dim
    assert untied.flops_per_token(4096) == 6 * n_matmul + 12 * 32 * 4096 * 4096
    tied = ModelConfig.from_preset("100m")
    assert tied.tie_embeddings and tied.flops_per_token(1024) == ModelConfig(
        **{**tied.to_dict(), "tie_embeddings": False}).flops_per_token(1024)
