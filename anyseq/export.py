"""Export to the Hugging Face Llama format (``config.json`` + ``model.safetensors``).

Our parameter layout is Llama's, with RoPE in the same half-split convention, so the export
is a renaming. Configs Llama cannot express (QK-norm, norm reordering) are refused with the
reason, before anything is written. The token space is written beside the weights so the ids
keep their meaning, and its <bos>/<eos>/<pad> ids go into the config (transformers' defaults,
1 and 2, are text ids here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from anyseq.config import ModelConfig
from anyseq.model import Transformer
from anyseq.vocab import TokenSpace

NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def llama_config(c: ModelConfig, dtype: torch.dtype, token_space: TokenSpace | None = None) -> dict:
    """The config.json; without a token space the special ids are left unset (null)."""
    unsupported = [name for name in ("qk_norm", "norm_reorder") if getattr(c, name)]
    if unsupported:
        raise ValueError(f"the Hugging Face Llama format cannot express {unsupported}; this model cannot be exported")
    special = {f"{name}_token_id": token_space.special(f"<{name}>") if token_space else None
               for name in ("bos", "eos", "pad")}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_seq_len,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **special,
    }


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in model.state_dict().items():
        if name in NAMES:
            key = NAMES[name]
        else:
            _, i, rest = name.split(".", 2)  # layers.{i}.{rest}
            key = f"model.layers.{i}.{LAYER_NAMES[rest]}"
        out[key] = tensor.detach().cpu().contiguous()
    if model.config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def export_hf(model: Transformer, directory: str | Path, token_space: TokenSpace | None = None) -> Path:
    config = llama_config(model.config, model.tok_embeddings.weight.dtype, token_space)  # refused before any write
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(hf_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    if token_space is not None:
        token_space.save(directory / "token_space.json")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anyseq export-hf", description="Export a checkpoint to the Hugging Face Llama format.")
    parser.add_argument("--checkpoint", required=True, help="a .ckpt written by `anyseq fit`")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    from anyseq.checkpoint import load_bundle

    try:
        bundle = load_bundle(args.checkpoint)
        export_hf(bundle.model, args.out, bundle.space)
    except (FileNotFoundError, ValueError) as err:
        print(f"anyseq export-hf: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (load with transformers.LlamaForCausalLM.from_pretrained)", file=sys.stderr)
    return 0
