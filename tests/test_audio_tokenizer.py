"""The audio codec: the tokenizer contract (both decoders), chunked = whole encoding, save/load
(fingerprints survive new config fields), quantizer variants."""

import json
import math

import pytest
import torch

from anyseq.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig, default_strides
from anyseq.tokenizers.base import MediaTokenizer
from anyseq.tokenizers.quantizer import QuantizerConfig


def small(**overrides) -> AudioTokenizer:
    """A fast codec with the real structure: 16 kHz, hop 320, 3 FSQ levels of 64 codes."""
    q = overrides.pop("quantizer", QuantizerConfig(kind="fsq", levels=[4, 4, 4], num_quantizers=3, quantizer_dropout=True))
    args = dict(channels=4, max_channels=32, latent_dim=16, dilations=[1, 3], quantizer=q)
    torch.manual_seed(0)
    return AudioTokenizer(AudioTokenizerConfig(**{**args, **overrides}))


def noise(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed)).mul(0.2).clamp(-1, 1)


@pytest.mark.parametrize("decoder", ["conv", "istft"])
def test_contract_shapes_and_properties(decoder):
    tok = small(decoder=decoder)
    assert tok.sample_rate == 16000 and tok.hop_length == 320 and tok.frame_rate == 50
    assert tok.compression == {"time": 320}
    assert tok.codebook_sizes == [64, 64, 64]
    for n in (1, 319, 320, 321, 16000):  # frames = ceil(N / hop): the end is padded
        codes = tok.encode(noise(2, n))
        assert codes.shape == (2, math.ceil(n / 320), 3) and codes.dtype == torch.int64
        assert 0 <= codes.min() and codes.max() < 64
        assert tok.decode(codes).shape == (2, 1, codes.shape[1] * 320)


def test_encode_and_decode_run_in_eval_mode_without_grad_and_restore_the_mode():
    tok = small().train()
    codes = tok.encode(noise(1, 3200))
    wav = tok.decode(codes)
    assert tok.training and not wav.requires_grad and not codes.requires_grad
    assert wav.abs().max() <= 1.0
    tok.eval()
    tok.encode(noise(1, 3200))
    assert not tok.training


def test_bad_inputs_are_clear_errors():
    tok = small()
    with pytest.raises(ValueError, match=r"\(B, 1, N\)"):
        tok.encode(torch.zeros(2, 16000))
    with pytest.raises(ValueError, match="0 samples"):
        tok.encode(torch.zeros(1, 1, 0))
    with pytest.raises(ValueError, match=r"codes \(B, frames, 1..3\)"):
        tok.decode(torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.decode(torch.full((1, 5, 3), 64))
    with pytest.raises(ValueError, match="sample_rate / frame_rate"):
        AudioTokenizerConfig(strides=[4, 4, 4]).resolved_strides()
    with pytest.raises(ValueError, match="whole number"):
        AudioTokenizerConfig(sample_rate=16000, frame_rate=48).hop_length


def test_default_strides_split_the_hop_into_balanced_stages():
    assert default_strides(320) == [4, 4, 4, 5]
    assert default_strides(480) == [4, 4, 5, 6]
    assert default_strides(640) == [4, 4, 5, 8]
    for hop in (160, 240, 320, 480, 600, 960):
        assert math.prod(default_strides(hop)) == hop


def test_fewer_leading_levels_decode():
    tok = small()
    codes = tok.encode(noise(1, 8000))
    for levels in (1, 2, 3):
        assert tok.decode(codes[..., :levels]).shape == (1, 1, 8000)


@pytest.mark.parametrize("causal", [True, False])
def test_a_frame_depends_only_on_samples_within_its_context(causal):
    """Perturbing one sample changes latents only within ``context_frames`` of its frame (only
    after it when causal): the bound that makes chunked encoding exact."""
    tok = small(causal=causal).eval()
    wav = noise(1, 320 * 80)
    p = 320 * 40 + 17
    bumped = wav.clone()
    bumped[..., p] += 0.5
    with torch.no_grad():
        changed = (tok.latent(wav) != tok.latent(bumped)).any(-1)[0].nonzero().flatten()
    frame, ctx = p // 320, tok.context_frames
    assert frame in changed.tolist()
    assert changed.max() <= frame + ctx
    assert changed.min() >= (frame if causal else frame - ctx)


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_encoding_of_a_long_signal_equals_encoding_it_whole(causal):
    """Must-show 1: 61.3 s in chunks of 7.3 s (not a multiple of anything) -> identical codes.

    The stated bound is zero differing codes: every chunk carries ``context_frames`` of real
    signal on the side(s) the receptive field reaches, so each kept frame sees exactly the
    samples it sees in the whole signal."""
    tok = small(causal=causal)
    t = torch.arange(int(61.3 * 16000)) / 16000
    wav = (0.4 * torch.sin(2 * torch.pi * (200 + 150 * t) * t) + 0.05 * noise(1, t.numel())[0, 0])[None, None]
    whole = tok.encode(wav)
    chunked = tok.encode_chunked(wav, chunk_seconds=7.3)
    assert chunked.shape == whole.shape == (1, math.ceil(t.numel() / 320), 3)
    assert torch.equal(chunked, whole)


@pytest.mark.parametrize("window_hops", [2, 4])
def test_the_istft_decoder_synthesises_any_pitch_its_spectrum_names(window_hops):
    """The head's output is an STFT: frames whose spectrum is one bin, with the phase advancing
    one hop per frame, sound that bin's pitch (the conv decoder must learn each pitch instead)."""
    head = small(decoder="istft", window_hops=window_hops).decoder
    assert head.n_fft == window_hops * head.hop
    bins, frames = head.n_fft // 2 + 1, 50
    k = 37 * window_hops // 4  # 462.5 Hz: bin 37 of a 1280-point FFT at 16 kHz, bin 18.5 -> 18 of 640 (450 Hz)
    hz = k * 16000 / head.n_fft
    log_magnitude = torch.full((1, bins, frames), -30.0)
    log_magnitude[:, k] = 2.0
    phase = (torch.arange(frames) * 2 * math.pi * k * head.hop / head.n_fft).expand(1, bins, frames)
    wav = head.synthesize(log_magnitude, phase)
    assert wav.shape == (1, 1, frames * head.hop)
    steady = wav[0, 0, 2 * head.hop : -2 * head.hop]
    spectrum = torch.fft.rfft(steady * torch.hann_window(len(steady))).abs()
    assert abs(spectrum.argmax().item() * 16000 / len(steady) - hz) < 2
    assert steady.abs().max() > 0.01


def test_the_istft_decoder_refuses_a_causal_codec_or_windows_that_leave_gaps():
    with pytest.raises(ValueError, match="not causal"):
        small(decoder="istft", causal=True)
    with pytest.raises(ValueError, match="window_hops must be at least 2"):
        small(decoder="istft", window_hops=1)
    with pytest.raises(ValueError, match="'conv' or 'istft'"):
        small(decoder="wavenet")


@pytest.mark.parametrize("decoder", ["conv", "istft"])
def test_save_load_round_trip_keeps_codes_and_fingerprint(tmp_path, decoder):
    tok = small(decoder=decoder)
    wav = noise(1, 16000)
    tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["modality"] == "audio" and meta["codebook_sizes"] == [64, 64, 64]
    loaded = MediaTokenizer.load(tmp_path / "tok")
    assert isinstance(loaded, AudioTokenizer) and loaded.fingerprint == tok.fingerprint
    assert loaded.config == tok.config
    assert torch.equal(loaded.encode(wav), tok.encode(wav))
    assert torch.equal(loaded.decode(tok.encode(wav)), tok.decode(tok.encode(wav)))


def test_a_tokenizer_saved_before_a_config_field_existed_keeps_its_fingerprint(tmp_path):
    """Shards and checkpoints name tokenizers by fingerprint: a newer anyseq that adds a config
    field (at the default that keeps the old behaviour) must not orphan them."""
    tok = small()
    tok.save(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    meta = json.loads(path.read_text())
    del meta["config"]["decoder"], meta["config"]["decoder_depth"]  # as written before the iSTFT decoder
    tok.recorded_config = meta["config"]
    meta["fingerprint"] = tok.fingerprint
    path.write_text(json.dumps(meta))
    loaded = MediaTokenizer.load(tmp_path / "old")
    assert loaded.fingerprint == meta["fingerprint"] and loaded.config.decoder == "conv"
    loaded.save(tmp_path / "again")  # re-saving keeps the record, so the fingerprint still checks
    assert MediaTokenizer.load(tmp_path / "again").fingerprint == meta["fingerprint"]


def test_load_refuses_weights_that_do_not_match_the_fingerprint(tmp_path):
    tok = small()
    tok.save(tmp_path / "a")
    with torch.no_grad():
        next(tok.decoder.parameters()).add_(1.0)
    tok.save(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    with pytest.raises(ValueError, match="fingerprint"):
        MediaTokenizer.load(tmp_path / "b")


@pytest.mark.parametrize(
    "quantizer, sizes, kbps",
    [
        (QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5], num_quantizers=4, quantizer_dropout=True), [1000] * 4, 50 * 4 * math.log2(1000) / 1000),
        (QuantizerConfig(kind="vq", codebook_size=256, num_quantizers=2, quantizer_dropout=True), [256] * 2, 50 * 2 * 8 / 1000),
        (QuantizerConfig(kind="vq", codebook_size=4096, num_quantizers=1), [4096], 50 * 12 / 1000),
    ],
    ids=["residual-fsq", "residual-vq", "one-big-codebook"],
)
def test_every_quantizer_family_encodes_decodes_and_reports_its_bitrate(quantizer, sizes, kbps):
    tok = small(quantizer=quantizer)
    assert tok.codebook_sizes == sizes
    assert tok.bitrate_kbps() == pytest.approx(kbps)
    codes = tok.encode(noise(2, 4000))
    assert codes.shape == (2, 13, len(sizes))
    assert tok.decode(codes).shape == (2, 1, 13 * 320)
    out = tok.train()(noise(2, 4000))  # training path: straight-through reconstruction + quantizer loss
    out.recon.sum().backward()
    assert out.aux_loss.ndim == 0


def test_bitrate_of_fewer_levels():
    tok = small()
    assert tok.bitrate_kbps(1) == pytest.approx(50 * 6 / 1000)
    assert tok.bitrate_kbps() == pytest.approx(3 * tok.bitrate_kbps(1))


def test_quantizer_dropout_keeps_a_random_prefix_of_levels_in_training_only():
    from anyseq.tokenizers.audio import ResidualQuantizer

    q = QuantizerConfig(kind="fsq", levels=[4, 4, 4], num_quantizers=4, quantizer_dropout=True)
    rq = ResidualQuantizer(8, q, dropout_probability=1.0).train()
    torch.manual_seed(0)
    codes = rq(torch.randn(64, 5, 8)).codes
    kept = (codes >= 0).sum(-1)  # levels kept per (item, frame)
    assert set(kept[:, 0].tolist()) == {1, 2, 3, 4}  # every prefix length occurs
    assert ((codes >= 0) == (torch.arange(4) < kept[..., None])).all()  # always a prefix
    rq.eval()
    assert (rq(torch.randn(4, 5, 8)).codes >= 0).all()  # no dropout at inference


def test_decoding_a_prefix_sums_the_kept_levels():
    tok = small()
    codes = tok.encode(noise(1, 3200))
    latent = tok.quantizer.decode(codes)
    parts = [tok.quantizer.levels[k].decode(codes[..., k : k + 1]) for k in range(3)]
    assert torch.allclose(latent, sum(parts), atol=1e-6)
    assert torch.allclose(tok.quantizer.decode(codes[..., :2]), parts[0] + parts[1], atol=1e-6)


def test_the_istft_decoder_can_render_a_sweep_at_full_loudness_from_one_tangent_sinusoid_per_frame():
    """What a codec must predict for an exponential sweep (the demo's rising tone): each frame the
    spectrum of the sinusoid tangent to it at the frame's centre. Overlap-added, those frames keep
    the sweep's loudness at every pitch, so a codec that fades part of a sweep has not learned it."""
    from anyseq.judges import loudness_by_frame

    head = small(decoder="istft", frame_rate=100).decoder  # the demo's codec: hop 160, window 640
    sr, n_fft, hop = 16000, head.n_fft, head.hop
    t = torch.arange(sr, dtype=torch.float64) / sr
    hz = 300 * 4**t
    phase = 2 * math.pi * torch.cumsum(hz, 0) / sr
    sweep = 0.5 * torch.sin(phase)
    offsets = torch.arange(n_fft, dtype=torch.float64) - n_fft // 2  # frame f covers f * hop + offsets
    centres = torch.arange(0, sr, hop)
    tangents = 0.5 * torch.sin(phase[centres, None] + 2 * math.pi * hz[centres, None] * offsets / sr)
    spectra = torch.fft.rfft(tangents * head.window.double(), dim=-1).T[None] / math.sqrt(n_fft)
    wav = head.synthesize(spectra.abs().clamp(min=1e-12).log().float(), spectra.angle().float())[0, 0]
    pitch, loudness = loudness_by_frame(sweep.numpy(), wav.double().numpy()[:sr], sr)
    assert pitch.min() < 320 and pitch.max() > 1100 and loudness.min() > 0.95
