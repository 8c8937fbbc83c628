"""The transformer: cache equals no cache, documents never see each other, export equals transformers."""

import json

import pytest
import torch

from anyseq.config import ModelConfig
from anyseq.model import Transformer, document_positions
from anyseq.sampling import SamplingOptions, draw, filter_logits, inverse_cdf, sample
from anyseq.sequence import Serializer
from anyseq.vocab import TokenSpace


def tiny(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("tiny", **kw)).eval()


@pytest.mark.parametrize("options", [{}, {"qk_norm": True}, {"norm_reorder": True}, {"tie_embeddings": True}])
def test_greedy_with_cache_equals_without_for_ragged_batch(options):
    model = tiny(**options)
    space = TokenSpace(400)
    bos = space.special("<bos>")
    prompts = [[bos, 5, 6, 7], [bos, 9], [bos, 1, 2, 3, 4, 5, 6, 7, 8]]
    runs = {}
    for cache in (True, False):
        constraints = [Serializer(space).grammar("text").constraint(max_tokens=24) for _ in prompts]
        runs[cache] = sample(model, prompts, constraints, SamplingOptions(temperature=0), space.special("<pad>"),
                             max_new_tokens=25, use_cache=cache)
    assert runs[True] == runs[False]
    assert all(len(r) == 25 for r in runs[True])


def test_batched_prompt_equals_the_same_prompt_alone():
    model = tiny()
    space = TokenSpace(400)
    bos, pad = space.special("<bos>"), space.special("<pad>")
    short, long = [bos, 11, 12], [bos, 1, 2, 3, 4, 5, 6]
    greedy = SamplingOptions(temperature=0)
    make = lambda: Serializer(space).grammar("text").constraint(max_tokens=10)  # noqa: E731
    alone = sample(model, [short], [make()], greedy, pad, max_new_tokens=11)
    batched = sample(model, [long, short], [make(), make()], greedy, pad, max_new_tokens=11)
    assert batched[1] == alone[0]


def test_packed_documents_do_not_see_each_other():
    model = tiny()
    a, b = torch.randint(0, 512, (1, 7)), torch.randint(0, 512, (1, 5))
    packed = model(torch.cat([a, b], 1), document_ids=torch.tensor([[0] * 7 + [1] * 5]))
    assert torch.allclose(packed[:, :7], model(a), atol=1e-5)
    assert torch.allclose(packed[:, 7:], model(b), atol=1e-5)


def test_document_positions_restart_per_document():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
    assert document_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]


def test_meta_device_init_then_materialise():
    config = ModelConfig.from_preset("tiny")
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    model.init_weights()
    out = model(torch.randint(0, 512, (2, 9)))
    assert torch.isfinite(out).all() and out.shape == (2, 9, 64)


def test_context_limit_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 257, dtype=torch.long))
    space = TokenSpace(400)
    with pytest.raises(ValueError, match="context"):
        sample(model, [[1] * 250], [Serializer(space).grammar("text").constraint()], SamplingOptions(), 0, max_new_tokens=10)


def test_top_k_and_top_p_keep_the_right_ids():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, SamplingOptions(top_k=2))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, SamplingOptions(top_p=0.7))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, SamplingOptions(top_p=0.85))).tolist() == [[True, True, True, False]]


def test_draws_follow_the_probabilities_and_never_pick_a_disallowed_id():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(40000, 1)
    ids = draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=5) / len(ids)
    assert torch.allclose(freq, probs[0], atol=0.01) and freq[1] == freq[4] == 0
    assert torch.equal(ids[:100], draw(probs[:100], torch.Generator().manual_seed(0))[:100])  # a seed fixes them
    # u at the edges: 0 takes the first allowed id, a product that rounds up to the total the last
    edges = inverse_cdf(torch.tensor([[0.0, 0.6, 0.4, 0.0], [0.0, 0.6, 0.4, 0.0]]), torch.tensor([0.0, 1.0]))
    assert edges.tolist() == [1, 2]


def test_classifier_free_guidance_changes_the_distribution():
    model = tiny()
    space = TokenSpace(400)
    bos, unc, pad = space.special("<bos>"), space.special("<uncond>"), space.special("<pad>")
    prompt, uncond = [bos, 3, 4, 5], [bos, unc, unc, unc]
    make = lambda: [Serializer(space).grammar("text").constraint(max_tokens=8)]  # noqa: E731
    plain = sample(model, [prompt], make(), SamplingOptions(temperature=0), pad, max_new_tokens=9)
    same = sample(model, [prompt], make(), SamplingOptions(temperature=0, cfg_scale=1.0), pad, uncond_prompts=[uncond], max_new_tokens=9)
    guided = sample(model, [prompt], make(), SamplingOptions(temperature=0, cfg_scale=5.0), pad, uncond_prompts=[uncond], max_new_tokens=9)
    assert plain == same and guided != plain


def test_export_matches_transformers_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    from anyseq.export import export_hf

    model = tiny(rope_theta=5e5)
    export_hf(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 512, (2, 33))
    with torch.no_grad():
        assert torch.allclose(model.logits(model(ids)), hf(ids).logits, atol=1e-5)


def test_export_refuses_what_llama_cannot_express_before_writing_anything(tmp_path):
    from anyseq.export import export_hf

    with pytest.raises(ValueError, match="qk_norm"):
        export_hf(tiny(qk_norm=True), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_gives_transformers_the_token_spaces_special_ids_and_the_weights_dtype(tmp_path):
    """transformers' defaults (bos 1, eos 2) are text ids in anyseq's token space."""
    transformers = pytest.importorskip("transformers")
    from anyseq.export import export_hf

    space = TokenSpace(400)
    export_hf(tiny(vocab_size=space.size).to(torch.bfloat16), tmp_path, space)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        space.special("<bos>"), space.special("<eos>"), space.special("<pad>"))
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_export_hf_names_a_missing_or_unreadable_checkpoint(tmp_path, capsys):
    import zipfile

    from anyseq.cli import main as anyseq

    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with zipfile.ZipFile(tmp_path / "archive.ckpt", "w") as archive:
        archive.writestr("a.txt", "a zip, but not one torch.save wrote")
    torch.save([1, 2], tmp_path / "list.ckpt")
    for name, message in (("nope.ckpt", "checkpoint not found"), ("notes.ckpt", "not a checkpoint: torch.save writes"),
                          ("archive.ckpt", "torch cannot read it as a checkpoint"),
                          ("list.ckpt", "not an anyseq checkpoint")):
        assert anyseq(["export-hf", "--checkpoint", str(tmp_path / name), "--out", str(tmp_path / "hf")]) == 2
        assert message in capsys.readouterr().err


def test_the_sampler_benchmark_times_both_ways_of_masking_and_drawing(tmp_path, script):
    bench = script("bench_sampler")
    out = tmp_path / "sampler.json"
    assert bench.main(["--text-vocab", "100", "--codebook", "64", "--batch", "2", "--steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert all(report[k] > 0 for k in ("masks_fresh_ms", "masks_cached_ms", "draw_multinomial_ms", "draw_inverse_cdf_ms"))
