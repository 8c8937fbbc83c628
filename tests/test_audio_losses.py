"""Each loss piece of the audio codec on inputs whose answer is known."""

import math

import pytest
import torch

from anyseq.tokenizers.audio_losses import (
    DiscriminatorConfig,
    DiscriminatorOutput,
    Discriminators,
    MultiPeriodDiscriminator,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    MultiScaleSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    si_sdr,
    waveform_l1,
)

SR = 16000


def signal(batch: int = 2, samples: int = 8000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    return (tone + 0.1 * torch.randn(batch, 1, samples, generator=g)).clamp(-1, 1)


def test_waveform_l1_is_the_mean_absolute_difference():
    x = signal()
    assert waveform_l1(x, x) == 0
    assert waveform_l1(x + 0.25, x).item() == pytest.approx(0.25)


def test_si_sdr_ignores_gain_and_measures_the_noise_ratio():
    x = signal(batch=3, samples=16000)
    assert (si_sdr(2.5 * x, x) > 60).all()  # a scaled copy is perfect
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    centred = x - x.mean(-1, keepdim=True)
    noise = noise - noise.mean(-1, keepdim=True)
    # make the noise orthogonal to the signal, at exactly 10 dB below it
    noise = noise - (noise * centred).sum(-1, keepdim=True) / centred.pow(2).sum(-1, keepdim=True) * centred
    noise = noise * (centred.pow(2).sum(-1, keepdim=True) / noise.pow(2).sum(-1, keepdim=True) / 10).sqrt()
    assert si_sdr(x + noise, x) == pytest.approx(torch.full((3,), 10.0), abs=1e-3)
    assert si_sdr(x, x).shape == (3,)


def test_mel_loss_is_zero_on_equal_inputs_and_log10_of_a_gain():
    """Mel magnitudes are linear in amplitude, so halving the signal moves every log10 bin by log10(2)."""
    loss = MultiScaleMelLoss(SR)
    x = signal()
    assert loss(x, x).item() == 0
    assert loss(0.5 * x, x).item() == pytest.approx(math.log10(2), abs=1e-3)
    assert loss(x, torch.zeros_like(x)) > 2  # silence sits at the 1e-5 floor: far away


def test_stft_loss_is_spectral_convergence_plus_log_magnitude():
    loss = MultiScaleSTFTLoss()
    x = signal()
    assert loss(x, x).item() == 0
    # target 0.5 x: |R - E| / |R| = 1 and |log E - log R| = ln 2 in every bin
    assert loss(x, 0.5 * x).item() == pytest.approx(1 + math.log(2), abs=1e-3)
    assert loss(0.5 * x, x).item() == pytest.approx(0.5 + math.log(2), abs=1e-3)


def test_spectral_losses_have_no_checkpoint_state_and_give_gradients():
    mel, stft = MultiScaleMelLoss(SR), MultiScaleSTFTLoss()
    assert mel.state_dict() == {} and stft.state_dict() == {}
    x = signal().requires_grad_()
    (mel(x, signal(seed=5)) + stft(x, signal(seed=5))).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_discriminators_output_one_map_per_sub_discriminator():
    config = DiscriminatorConfig(periods=[2, 3], period_channels=[4, 8], stft_ffts=[256, 128], stft_channels=4)
    d = Discriminators(config)
    outputs = d(signal(samples=4000))
    assert len(outputs) == 4
    for out in outputs:
        assert out.logits.shape[0] == 2 and out.logits.shape[1] == 1
        assert len(out.features) >= 3 and all(f.shape[0] == 2 for f in out.features)
    mpd = MultiPeriodDiscriminator([5], [4, 8])
    (folded,) = mpd(signal(samples=4003))  # any length: padded to a whole number of periods
    assert folded.logits.shape[-1] == 5
    (spec,) = MultiScaleSTFTDiscriminator([256], 4)(signal(samples=4000))
    assert spec.features[0].shape[-2:] == (4000 // 64 + 1, 129)  # (frames, frequency bins)


def outputs(*logits: float) -> list[DiscriminatorOutput]:
    return [DiscriminatorOutput(torch.full((2, 1, 3), v), [torch.full((2, 4), v)]) for v in logits]


def test_hinge_and_least_squares_adversarial_losses():
    confident_real, confident_fake = outputs(2.0, 3.0), outputs(-2.0, -3.0)
    assert discriminator_loss(confident_real, confident_fake, "hinge") == 0  # outside the margins
    assert discriminator_loss(outputs(0.0), outputs(0.0), "hinge") == 2
    assert generator_loss(outputs(0.0), "hinge") == 1
    assert generator_loss(outputs(1.5), "hinge") == 0
    assert discriminator_loss(outputs(1.0), outputs(0.0), "mse") == 0
    assert discriminator_loss(outputs(0.0), outputs(1.0), "mse") == 2
    assert generator_loss(outputs(0.0, 1.0), "mse") == 0.5
    with pytest.raises(ValueError, match="hinge"):
        generator_loss(outputs(0.0), "wasserstein")


def test_feature_matching_is_relative_l1_of_features():
    real = [DiscriminatorOutput(torch.zeros(1), [torch.full((3,), 2.0), torch.full((3,), -4.0)])]
    fake = [DiscriminatorOutput(torch.zeros(1), [torch.full((3,), 3.0), torch.full((3,), -4.0)])]
    assert feature_matching_loss(real, real) == 0
    # layer 1: |3 - 2| / 2 = 0.5; layer 2: 0  -> mean 0.25
    assert feature_matching_loss(real, fake).item() == pytest.approx(0.25)


def test_discriminator_loss_trains_only_the_discriminator_on_detached_fakes():
    d = Discriminators(DiscriminatorConfig(periods=[2], period_channels=[4], stft_ffts=[128], stft_channels=4))
    real = signal(samples=2000)
    generator_out = signal(samples=2000, seed=3).requires_grad_()
    discriminator_loss(d(real), d(generator_out.detach())).backward()
    assert generator_out.grad is None
    assert all(p.grad is not None for p in d.parameters())
    generator_loss(d(generator_out)).backward()
    assert generator_out.grad is not None and generator_out.grad.abs().sum() > 0


def test_the_balancer_gives_each_loss_its_weight_as_share_of_the_gradient():
    from anyseq.tokenizers.audio_losses import Balancer

    out = torch.randn(2, 1, 100, requires_grad=True)
    target = torch.randn(2, 1, 100)

    def combined(scale_b: float, balance: bool = True) -> torch.Tensor:
        out.grad = None
        balancer = Balancer({"a": 1.0, "b": 3.0}, balance=balance)
        losses = {"a": waveform_l1(out, target), "b": scale_b * (out - target).pow(2).mean()}
        balancer.surrogate(losses, out).backward()
        return out.grad.clone()

    g_a = torch.sign(out - target).detach() / out.numel()
    g_b = 2 * (out - target).detach() / out.numel()
    expected = 0.25 * g_a / g_a.norm() + 0.75 * g_b / g_b.norm()
    assert torch.allclose(combined(1.0), expected, atol=1e-6)
    assert torch.allclose(combined(1000.0), expected, atol=1e-6)  # a loss's scale does not matter
    assert torch.allclose(combined(1.0, balance=False), g_a + 3 * g_b, atol=1e-6)  # plain weighted sum
    with pytest.raises(KeyError, match="no weight"):
        Balancer({"a": 1.0}).surrogate({"c": out.sum()}, out)
