"""Losses and discriminators for training the audio codec (SoundStream / EnCodec / DAC recipe).

Each piece is its own module or function so it can be tested on known inputs:

- reconstruction: :func:`waveform_l1`, :class:`MultiScaleMelLoss` (log-mel L1 over several
  window sizes), :class:`MultiScaleSTFTLoss` (spectral convergence + log-magnitude L1);
- :func:`si_sdr`: scale-invariant signal-to-distortion ratio (a metric, differentiable);
- adversarial: :class:`MultiPeriodDiscriminator` (HiFi-GAN), :class:`MultiScaleSTFTDiscriminator`
  (EnCodec), combined by :class:`Discriminators`; :func:`discriminator_loss`,
  :func:`generator_loss` (hinge or least squares) and :func:`feature_matching_loss`.

Spectral features are computed in float32 with autocast off: bf16 STFTs lose the quiet bins
the log-magnitude losses care about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

AdversarialKind = Literal["hinge", "mse"]


def _fp32(x: Tensor) -> Tensor:
    return x.float().reshape(-1, x.shape[-1])  # (B, 1, N) or (B, N) -> (B, N)


def _no_autocast(x: Tensor):
    return torch.autocast(x.device.type, enabled=False)


def _non_persistent(module: nn.Module) -> None:
    """Windows and filterbanks are rebuilt from the arguments: keep them out of checkpoints."""
    for m in module.modules():
        for name, buf in list(m.named_buffers(recurse=False)):
            m.register_buffer(name, buf, persistent=False)


# -- reconstruction --------------------------------------------------------------------------------
def waveform_l1(estimate: Tensor, target: Tensor) -> Tensor:
    return F.l1_loss(estimate.float(), target.float())


def si_sdr(estimate: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-signal SI-SDR in dB, ``(B, [1,] N) -> (B,)``; higher is better, gain does not matter."""
    est, ref = _fp32(estimate), _fp32(target)
    est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    projection = scale * ref
    noise = est - projection
    return 10 * torch.log10((projection.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


class MultiScaleMelLoss(nn.Module):
    """Mean over window sizes of the L1 distance between log10 mel spectrograms (DAC-style).

    ``n_mels`` grows with the window (``window // 8``, at least 5) so short windows do not get
    empty mel filters. The value doubles as the evaluation's "mel distance".
    """

    def __init__(self, sample_rate: int, windows: Sequence[int] = (64, 128, 256, 512, 1024, 2048), floor: float = 1e-5):
        super().__init__()
        self.floor = floor
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=w,
                win_length=w,
                hop_length=w // 4,
                n_mels=max(5, w // 8),
                power=1.0,
                center=True,
                norm="slaney",
                mel_scale="slaney",
            )
            for w in windows
        )
        _non_persistent(self.mels)

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        with _no_autocast(estimate):
            est, ref = _fp32(estimate), _fp32(target)
            losses = [
                F.l1_loss(mel(est).clamp_min(self.floor).log10(), mel(ref).clamp_min(self.floor).log10())
                for mel in self.mels
            ]
        return torch.stack(losses).mean()


class MultiScaleSTFTLoss(nn.Module):
    """Mean over FFT sizes of spectral convergence + log-magnitude L1 (Parallel WaveGAN)."""

    def __init__(self, windows: Sequence[int] = (256, 512, 1024, 2048), floor: float = 1e-5):
        super().__init__()
        self.windows, self.floor = list(windows), floor
        for w in self.windows:
            self.register_buffer(f"window_{w}", torch.hann_window(w), persistent=False)

    def magnitude(self, x: Tensor, w: int) -> Tensor:
        spec = torch.stft(x, w, hop_length=w // 4, window=getattr(self, f"window_{w}"), return_complex=True)
        return spec.abs().clamp_min(self.floor)

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        with _no_autocast(estimate):
            est, ref = _fp32(estimate), _fp32(target)
            losses = []
            for w in self.windows:
                e, r = self.magnitude(est, w), self.magnitude(ref, w)
                convergence = torch.linalg.norm(r - e) / torch.linalg.norm(r)  # over the batch: silent clips are fine
                losses.append(convergence + F.l1_loss(e.log(), r.log()))
        return torch.stack(losses).mean()


# -- discriminators ------------------------------------------------------------------------------
class DiscriminatorOutput(NamedTuple):
    logits: Tensor
    features: list[Tensor]


def _conv2d(c_in: int, c_out: int, kernel, stride=1, dilation=1, padding=0) -> nn.Module:
    return weight_norm(nn.Conv2d(c_in, c_out, kernel, stride=stride, dilation=dilation, padding=padding))


class PeriodDiscriminator(nn.Module):
    """Looks at every ``period``-th sample: the waveform folded into a (N / period, period) image."""

    def __init__(self, period: int, channels: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        self.period = period
        widths = [1, *channels]
        self.convs = nn.ModuleList(
            _conv2d(a, b, (5, 1), stride=(3, 1), padding=(2, 0)) for a, b in zip(widths, widths[1:])
        )
        self.convs.append(_conv2d(widths[-1], widths[-1], (5, 1), padding=(2, 0)))
        self.out = _conv2d(widths[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, wav: Tensor) -> DiscriminatorOutput:
        x = wav.reshape(wav.shape[0], 1, -1)
        pad = -x.shape[-1] % self.period
        x = F.pad(x, (0, pad), mode="reflect" if pad < x.shape[-1] else "constant")
        x = x.reshape(x.shape[0], 1, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        return DiscriminatorOutput(self.out(x), features)


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, wav: Tensor) -> list[DiscriminatorOutput]:
        return [d(wav) for d in self.discriminators]


class STFTDiscriminator(nn.Module):
    """2D convs over the complex STFT (real and imaginary parts as channels), EnCodec-style."""

    def __init__(self, n_fft: int, channels: int = 32, dilations: Sequence[int] = (1, 2, 4)):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([_conv2d(2, channels, (3, 9), padding=(1, 4))])
        for d in dilations:
            self.convs.append(_conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)))
        self.convs.append(_conv2d(channels, channels, (3, 3), padding=(1, 1)))
        self.out = _conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, wav: Tensor) -> DiscriminatorOutput:
        with _no_autocast(wav):
            spec = torch.stft(_fp32(wav), self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, time, freq)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return DiscriminatorOutput(self.out(x), features)


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, n_ffts: Sequence[int] = (2048, 1024, 512), channels: int = 32):
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, channels) for n in n_ffts)

    def forward(self, wav: Tensor) -> list[DiscriminatorOutput]:
        return [d(wav) for d in self.discriminators]


@dataclass
class DiscriminatorConfig:
    """Sizes of the two discriminators (HiFi-GAN periods; EnCodec FFT sizes)."""

    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    period_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    stft_ffts: list[int] = field(default_factory=lambda: [2048, 1024, 512])
    stft_channels: int = 32


class Discriminators(nn.Module):
    """MPD + multi-scale STFT discriminator; ``forward`` lists the outputs of every sub-discriminator."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        c = config if config is not None else DiscriminatorConfig()
        self.mpd = MultiPeriodDiscriminator(c.periods, c.period_channels)
        self.msstftd = MultiScaleSTFTDiscriminator(c.stft_ffts, c.stft_channels)

    def forward(self, wav: Tensor) -> list[DiscriminatorOutput]:
        return self.mpd(wav) + self.msstftd(wav)


# -- adversarial objectives ----------------------------------------------------------------------
def discriminator_loss(real: list[DiscriminatorOutput], fake: list[DiscriminatorOutput], kind: AdversarialKind = "hinge") -> Tensor:
    """Real logits pushed up, fake logits down; mean over sub-discriminators."""
    losses = []
    for r, f in zip(real, fake, strict=True):
        r, f = r.logits.float(), f.logits.float()
        if kind == "hinge":
            losses.append(F.relu(1 - r).mean() + F.relu(1 + f).mean())
        elif kind == "mse":
            losses.append((r - 1).pow(2).mean() + f.pow(2).mean())
        else:
            raise ValueError(f"adversarial loss kind must be 'hinge' or 'mse', got {kind!r}")
    return torch.stack(losses).mean()


def generator_loss(fake: list[DiscriminatorOutput], kind: AdversarialKind = "hinge") -> Tensor:
    """The generator wants its outputs judged real; mean over sub-discriminators."""
    losses = []
    for f in fake:
        logits = f.logits.float()
        if kind == "hinge":
            losses.append(F.relu(1 - logits).mean())
        elif kind == "mse":
            losses.append((logits - 1).pow(2).mean())
        else:
            raise ValueError(f"adversarial loss kind must be 'hinge' or 'mse', got {kind!r}")
    return torch.stack(losses).mean()


def feature_matching_loss(real: list[DiscriminatorOutput], fake: list[DiscriminatorOutput]) -> Tensor:
    """L1 between discriminator features of real and generated audio, each layer relative to the
    mean magnitude of its real features (EnCodec), averaged over layers and sub-discriminators."""
    losses = []
    for r, f in zip(real, fake, strict=True):
        for fr, ff in zip(r.features, f.features, strict=True):
            fr = fr.detach().float()
            losses.append(F.l1_loss(ff.float(), fr) / (fr.abs().mean() + 1e-8))
    return torch.stack(losses).mean()


# -- combining the losses --------------------------------------------------------------------------
class Balancer:
    """Combines losses of the generator's output by their share of its gradient (EnCodec).

    With ``balance=True`` each loss's gradient with respect to the output is rescaled so its
    norm (a bias-corrected running average) is ``weight / sum(weights)`` of the total: the
    weights become the losses' shares of the update, whatever their scales. Without it the
    weights multiply the losses (a plain weighted sum, as in DAC). In both cases
    :meth:`surrogate` returns a scalar whose gradient is the combined one: back-propagate it
    once (``manual_backward`` works, as do precision plugins and DDP).

    Why: phase-blind spectral losses have far larger gradients than the waveform loss; summed
    with fixed weights they drown it, and in our CPU runs the codec then never learned to
    match the waveform (SI-SDR at chance) however the fixed weights were set.
    """

    def __init__(self, weights: dict[str, float], balance: bool = True, decay: float = 0.99):
        self.weights, self.balance, self.decay = dict(weights), balance, decay
        self.norms: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def state_dict(self) -> dict[str, dict[str, float]]:
        """The running gradient norms (a resumed run must not start them over)."""
        return {"norms": dict(self.norms), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        self.norms, self.counts = dict(state["norms"]), dict(state["counts"])

    def _norm(self, name: str, value: float) -> float:
        self.norms[name] = self.decay * self.norms.get(name, 0.0) + (1 - self.decay) * value
        self.counts[name] = self.decay * self.counts.get(name, 0.0) + (1 - self.decay)
        return self.norms[name] / self.counts[name]

    def surrogate(self, losses: dict[str, Tensor], output: Tensor) -> Tensor:
        unknown = set(losses) - set(self.weights)
        if unknown:
            raise KeyError(f"Balancer has no weight for {sorted(unknown)}; it knows {sorted(self.weights)}")
        if not self.balance:
            return sum(self.weights[k] * v for k, v in losses.items())
        total = sum(self.weights[k] for k in losses)
        combined = torch.zeros_like(output, dtype=torch.float32)
        for name, loss in losses.items():
            (grad,) = torch.autograd.grad(loss, output, retain_graph=True)
            norm = self._norm(name, float(grad.norm()))
            combined += self.weights[name] / total * grad.float() / (norm + 1e-12)
        return (output.float() * combined).sum()
