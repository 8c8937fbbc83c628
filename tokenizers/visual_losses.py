"""Losses of visual tokenizer training: PatchGAN discriminators, hinge loss, adaptive weight, perceptual plugin.

The GAN follows taming-transformers / LlamaGen: a PatchGAN judges overlapping patches
(2D on images, 3D on clips), hinge losses, and the generator's GAN term is scaled so its
gradient at the decoder's last layer matches the reconstruction loss's (adaptive weight).

Perceptual losses need pretrained networks, which are never downloaded here. They are a
plugin: a network file on disk (``torch.export`` ``.pt2``, or TorchScript) that maps images
in [-1, 1] to feature maps (e.g. an exported VGG16 for LPIPS-style losses). Without the file
the plugin switches off with a warning and training goes on with pixel losses only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyseq.tokenizers.visual import num_groups


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided convs to a map of real/fake logits, one per overlapping patch.

    ``dims=2`` judges images (B, 3, H, W); ``dims=3`` judges clips (B, 3, T, H, W) with
    kernels that span 3 frames and keep the time axis, so any clip length works. GroupNorm
    (not BatchNorm) keeps it independent of the batch split across devices.
    """

    def __init__(self, dims: int = 2, channels: int = 64, layers: int = 3):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"PatchDiscriminator dims must be 2 (images) or 3 (videos), got {dims}")
        self.dims = dims
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        kernel, pad = (4, 1) if dims == 2 else ((3, 4, 4), (1, 1, 1))
        down = 2 if dims == 2 else (1, 2, 2)
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [conv(3, widths[0], kernel, down, pad), nn.LeakyReLU(0.2)]
        for i, (w_in, w_out) in enumerate(zip(widths, widths[1:])):
            stride = down if i < layers - 1 else 1
            blocks += [conv(w_in, w_out, kernel, stride, pad, bias=False), nn.GroupNorm(num_groups(w_out), w_out), nn.LeakyReLU(0.2)]
        blocks.append(conv(widths[-1], 1, kernel, 1, pad))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.dims + 2:
            layout = "(B, 3, H, W)" if self.dims == 2 else "(B, 3, T, H, W)"
            raise ValueError(f"this {self.dims}D PatchDiscriminator expects {layout}, got {tuple(x.shape)}")
        return self.net(x)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss: push real logits above +1 and fake logits below -1."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """``|grad rec| / |grad gan|`` at the decoder's last layer, so the GAN term neither dominates nor vanishes."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0, max_weight).detach()


# -- perceptual plugin ------------------------------------------------------------------------------
def load_feature_net(path: str | Path | None, purpose: str = "perceptual loss") -> nn.Module | None:
    """A frozen feature network from disk, or None (with a warning) when the file is absent.

    The network takes images (B, 3, H, W) in [-1, 1] and returns one feature tensor or a
    list/tuple of them. ``.pt2`` files are ``torch.export`` programs (export with a dynamic
    batch dimension), anything else is TorchScript. Nothing is downloaded: export one
    yourself, e.g. ``torch.export.save(torch.export.export(vgg.eval(), (x,), dynamic_shapes=...), "vgg.pt2")``.
    """
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        warnings.warn(f"{path}: no feature network on disk, so the {purpose} is switched off", stacklevel=2)
        return None
    if path.suffix == ".pt2":
        net = torch.export.load(str(path)).module()  # exported in eval mode; has no train()/eval()
    else:
        net = torch.jit.load(str(path), map_location="cpu").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _feature_list(out: Tensor | list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance: channel-normalised features, squared difference, mean over layers.

    Without learned per-channel weights every channel counts equally (LPIPS's "baseline").
    Videos are judged frame by frame. The network stays frozen and in eval mode.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> "PerceptualLoss":
        self.training = mode  # the frozen network keeps the eval mode it was saved in
        return self

    @staticmethod
    def _frames(x: Tensor) -> Tensor:
        return x.transpose(1, 2).flatten(0, 1) if x.ndim == 5 else x

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample distances (N,) between batches ``x`` and ``y`` (frames count as samples)."""
        fx = _feature_list(self.net(self._frames(x)))
        fy = _feature_list(self.net(self._frames(y)))
        total = 0.0
        for a, b in zip(fx, fy):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (a - b).pow(2).sum(1).flatten(1).mean(1)
        return total / len(fx)
