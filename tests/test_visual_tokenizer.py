"""The causal 3D visual tokenizer: contract, causality, quantizers, persistence, losses, recipes."""

import warnings
from pathlib import Path

import pytest
import torch

from anyseq.cli import main as anyseq
from anyseq.tokenizers.base import MediaTokenizer, load_tokenizer
from anyseq.tokenizers.quantizer import QuantizerConfig
from anyseq.tokenizers.visual import CausalConv3d, VisualTokenizer, VisualTokenizerConfig
from anyseq.tokenizers.visual_benchmark import tokenizer_from_recipe
from anyseq.tokenizers.visual_losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_weight,
    hinge_d_loss,
    load_feature_net,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def tiny(ft: int = 4, spatial: int = 8, quantizer: QuantizerConfig | None = None, **kw) -> VisualTokenizer:
    torch.manual_seed(0)
    mult = {4: [1, 2, 2], 8: [1, 2, 2, 2], 16: [1, 1, 2, 2, 2]}[spatial]
    config = VisualTokenizerConfig(
        spatial_compression=spatial, temporal_compression=ft, channels=8, channel_mult=mult, num_res_blocks=1,
        latent_dim=8, quantizer=quantizer or QuantizerConfig(kind="fsq", codebook_size=1000), **kw,
    )
    return VisualTokenizer(config)


def clip(b: int, t: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, t, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- the contract --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ft", [1, 2, 4])
def test_codes_have_the_contracted_shapes_range_and_dtype(ft):
    tok = tiny(ft)
    assert tok.codebook_sizes == [1000] and tok.compression == {"time": ft, "height": 8, "width": 8}
    image_codes = tok.encode(clip(2, 1)[:, :, 0])
    assert image_codes.shape == (2, 2, 2) and image_codes.dtype == torch.int64
    for frames in (1, 5, 9, 10):
        codes = tok.encode(clip(2, frames))
        assert codes.shape == (2, 1 + (frames - 1) // ft, 2, 2)
        assert 0 <= codes.min() and codes.max() < 1000
        video = tok.decode(codes)
        assert video.shape == (2, 3, 1 + ft * (codes.shape[1] - 1), 16, 16)
        assert video.abs().max() <= 1
    assert tok.decode(image_codes).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("spatial", [4, 8, 16])
def test_an_image_has_one_code_per_spatial_factor_squared_of_pixels(spatial):
    tok = tiny(spatial=spatial)
    codes = tok.encode(clip(1, 1)[:, :, 0])
    assert codes.shape == (1, 16 // spatial, 16 // spatial) and tok.compression["height"] == spatial
    assert tok.decode(codes).shape == (1, 3, 16, 16)


def test_encode_and_decode_run_in_eval_mode_without_grad_and_restore_the_mode():
    tok = tiny().train()
    codes = tok.encode(clip(1, 5))
    assert tok.training and not codes.requires_grad and not tok.decode(codes).requires_grad
    assert not tok.eval().encode(clip(1, 1)[:, :, 0]).requires_grad and not tok.training


def test_sizes_that_are_not_a_multiple_of_the_spatial_factor_are_a_clear_error():
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny(spatial=16).encode(torch.zeros(1, 3, 24, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny().encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        tiny().decode(torch.full((1, 2, 2), 1000))


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="spatial_compression"):
        VisualTokenizerConfig(spatial_compression=32)
    with pytest.raises(ValueError, match="temporal_compression"):
        VisualTokenizerConfig(temporal_compression=3)
    with pytest.raises(ValueError, match="channel_mult"):
        VisualTokenizerConfig(channel_mult=[1, 2])


# -- Must-show 1: causality -----------------------------------------------------------------------------
def test_causal_conv_equals_a_conv3d_over_the_past_padded_with_the_first_frame():
    for kernel, stride in [(3, (1, 1, 1)), (3, (2, 2, 2)), (1, (1, 1, 1))]:
        conv = CausalConv3d(4, 5, kernel, stride)
        for frames in range(1, 7):
            x = torch.randn(2, 4, frames, 8, 8)
            padded = torch.cat([x[:, :, :1]] * (kernel - 1) + [x], dim=2)
            torch.testing.assert_close(conv(x), conv.conv(padded), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ft", [1, 2, 4])
def test_a_prefix_of_a_clip_encodes_to_the_prefix_of_its_codes(ft):
    """First 1 + ft j frames -> exactly the first 1 + j latent frames of the whole clip."""
    tok = tiny(ft)
    x = clip(2, 1 + 3 * ft)
    whole, latent = tok.encode(x), tok.latent(x)
    for j in range(4):
        prefix = x[:, :, : 1 + ft * j]
        assert torch.equal(tok.latent(prefix), latent[:, :, : 1 + j])
        assert torch.equal(tok.encode(prefix), whole[:, : 1 + j])
    # decoding is causal too: a prefix of the codes decodes to a prefix of the frames
    assert torch.equal(tok.decode(whole[:, :2]), tok.decode(whole)[:, :, : 1 + ft])


def test_an_image_encodes_exactly_like_the_same_image_as_a_one_frame_video():
    tok = tiny()
    x = clip(3, 9)
    image = x[:, :, 0]
    assert torch.equal(tok.encode(image), tok.encode(image[:, :, None])[:, 0])
    assert torch.equal(tok.encode(image), tok.encode(x)[:, 0])  # and like the first frame of a clip
    assert torch.equal(tok.decode(tok.encode(image)), tok.decode(tok.encode(image)[:, None])[:, :, 0])


# -- Must-show 3: every quantizer trains and round-trips ---------------------------------------------------
@pytest.mark.parametrize(
    "quantizer",
    [
        QuantizerConfig(kind="fsq", codebook_size=1000),
        QuantizerConfig(kind="vq", codebook_size=64, codebook_dim=4, dead_code_threshold=1.0),
        QuantizerConfig(kind="lfq", codebook_size=64),
    ],
    ids=["fsq", "vq", "lfq"],
)
def test_every_quantizer_trains_a_few_steps_and_round_trips_indices_exactly(quantizer):
    tok = tiny(quantizer=quantizer)
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    x = torch.cat([clip(4, 1, seed=1)[:, :, 0], clip(4, 1, seed=2)[:, :, 0]])
    losses = []
    for _ in range(6):
        out = tok(x)
        loss = (out.recon - x).abs().mean() + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((out.recon - x).abs().mean().item())
        assert all(p.grad is not None for p in tok.encoder.parameters())
    assert losses[-1] < losses[0]
    tok.eval()
    with torch.no_grad():
        z = tok.latent(x)
        quantized, codes, _ = tok._quantize(z)
        b, d, t, h, w = quantized.shape
        decoded = tok.quantizer.decode(codes.reshape(b, t * h * w, 1))
        assert torch.equal(decoded.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3), quantized)
    assert torch.equal(tok.encode(x), codes[:, 0])
    assert 0 <= codes.min() and codes.max() < tok.codebook_size


# -- persistence -------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip_with_the_fingerprint(tmp_path):
    tok = tiny(quantizer=QuantizerConfig(kind="vq", codebook_size=64, codebook_dim=4))
    tok(clip(2, 5))  # one training forward moves the EMA codebook: it must be saved too
    tok.save(tmp_path / "tok")
    loaded = MediaTokenizer.load(tmp_path / "tok")
    assert isinstance(loaded, VisualTokenizer) and loaded.fingerprint == tok.fingerprint
    assert loaded.config == tok.config
    x = clip(2, 5)
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(load_tokenizer(tmp_path / "tok").decode(tok.encode(x)), tok.decode(tok.encode(x)))
    with torch.no_grad():
        next(loaded.parameters()).add_(1)
    loaded.save(tmp_path / "other")
    assert MediaTokenizer.load(tmp_path / "other").fingerprint != tok.fingerprint


# -- losses --------------------------------------------------------------------------------------------------------
def test_patch_discriminators_judge_images_and_clips_of_any_length():
    assert PatchDiscriminator(2, 8, 2)(torch.zeros(2, 3, 32, 32)).shape[:2] == (2, 1)
    for frames in (1, 2, 5):
        logits = PatchDiscriminator(3, 8, 2)(torch.zeros(2, 3, frames, 32, 32))
        assert logits.shape[:3] == (2, 1, frames)
    with pytest.raises(ValueError, match="expects"):
        PatchDiscriminator(3, 8, 2)(torch.zeros(2, 3, 32, 32))


def test_hinge_loss_is_zero_when_the_discriminator_is_confident_and_right():
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1


def test_adaptive_weight_balances_the_gradients_at_the_last_layer():
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(8, 4)
    rec = (x @ w).pow(2).mean()
    gan = 10 * (x @ w).mean()
    weight = adaptive_weight(rec, gan, w)
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0].norm()
    g_gan = torch.autograd.grad(weight * gan, w)[0].norm()
    torch.testing.assert_close(g_gan, g_rec, rtol=1e-3, atol=1e-3)


class _Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.a(x))
        return [a, torch.relu(self.b(a))]


@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_perceptual_plugin_loads_a_feature_net_from_disk_and_switches_off_without_one(tmp_path, fmt):
    net, path = _Features().eval(), tmp_path / ("features.pt2" if fmt == "pt2" else "features.pt")
    if fmt == "pt2":
        batch = torch.export.Dim("batch")
        torch.export.save(torch.export.export(net, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: batch},)), path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still supported
            torch.jit.script(net).save(str(path))
    loss = PerceptualLoss(load_feature_net(path)).train()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    assert torch.equal(loss(x, x), torch.zeros(2))
    d = loss(x, torch.rand(2, 3, 16, 16))
    d.sum().backward()
    assert (d > 0).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    assert loss(clip(2, 5), clip(2, 5, seed=3)).shape == (10,)  # clips: one distance per frame
    with pytest.warns(UserWarning, match="switched off"):
        assert load_feature_net(tmp_path / "absent.pt") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_feature_net(None) is None


# -- GPU recipes: correct by construction, checked on CPU ----------------------------------------------------------
@pytest.mark.parametrize("recipe", ["visual_emu3", "visual_chameleon"])
def test_gpu_recipes_print_their_config_and_run_a_small_forward_on_cpu(recipe, capsys):
    path = ROOT / "configs" / "tokenizer" / f"{recipe}.yaml"
    with pytest.raises(SystemExit) as exit_:
        anyseq(["fit", "--config", str(path), "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "bf16-mixed" in printed and "ddp_find_unused_parameters_true" in printed and "kind: vq" in printed
    tok = tokenizer_from_recipe(path)
    expected = {"visual_emu3": (32768, 8, 4), "visual_chameleon": (8192, 16, 4)}[recipe]
    assert (tok.codebook_size, tok.compression["height"], tok.compression["time"]) == expected
    s = tok.compression["height"]
    codes = tok.encode(torch.zeros(1, 3, 5, s, 2 * s))
    assert codes.shape == (1, 2, 1, 2)
    assert tok.decode(codes).shape == (1, 3, 5, s, 2 * s)
