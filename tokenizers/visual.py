"""Image + video tokenizer: one causal 3D convolutional VQ autoencoder (MAGVIT-v2 / Cosmos style).

    video (B, 3, T, H, W) -> Encoder (causal 3D convs, strided) -> latent (B, D, t, h, w)
        -> Quantizer (FSQ by default) -> codes (B, t, h, w)
        -> Decoder (causal 3D convs, nearest / depth-to-time upsampling) -> (B, 3, 1 + ft (t - 1), H, W)

Every temporal convolution pads on the past side only (repeating the first frame) and every
normalisation works frame by frame, so latent frame ``j`` depends on input frames up to
``ft * j`` and nothing later. The first frame therefore lands alone in latent frame 0:
``T = 1 + ft k`` frames give ``1 + k`` latent frames, a prefix of a clip encodes to a prefix of
its codes, and an image is exactly a one-frame video through the same code path and codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyseq.tokenizers.base import MediaTokenizer, inference
from anyseq.tokenizers.quantizer import Quantizer, QuantizerConfig


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if exists(x) else d


def _fsq_default() -> QuantizerConfig:
    return QuantizerConfig(kind="fsq", codebook_size=16384)


@dataclass
class VisualTokenizerConfig:
    """Architecture of the tokenizer. Codes per image: ``(H / spatial) * (W / spatial)``.

    Args:
        spatial_compression: 4, 8 or 16 (pixels per code along height and width).
        temporal_compression: 1, 2 or 4 (frames per latent frame after the first).
        channels: width of the first resolution level.
        channel_mult: width multiplier per resolution level, ``log2(spatial_compression) + 1``
            entries; defaults to ``[1, 2, 4]`` (4x), ``[1, 2, 2, 4]`` (8x) or ``[1, 1, 2, 2, 4]`` (16x).
        num_res_blocks: residual blocks per resolution level (the decoder uses one more).
        latent_dim: width of the features handed to the quantizer.
        mid_attention: per-frame spatial self-attention in the bottleneck (keeps causality).
        quantizer: codebook; FSQ with 16384 codes by default.
    """

    spatial_compression: int = 8
    temporal_compression: int = 4
    channels: int = 64
    channel_mult: list[int] | None = None
    num_res_blocks: int = 2
    latent_dim: int = 16
    mid_attention: bool = False
    quantizer: QuantizerConfig = field(default_factory=_fsq_default)

    def __post_init__(self):
        if self.spatial_compression not in (4, 8, 16):
            raise ValueError(f"VisualTokenizerConfig.spatial_compression must be 4, 8 or 16, got {self.spatial_compression}")
        if self.temporal_compression not in (1, 2, 4):
            raise ValueError(
                f"VisualTokenizerConfig.temporal_compression must be 1, 2 or 4, got {self.temporal_compression}"
            )
        mult = self.resolved_channel_mult()
        if len(mult) != self.spatial_levels + 1:
            raise ValueError(
                f"VisualTokenizerConfig.channel_mult needs log2({self.spatial_compression}) + 1 = "
                f"{self.spatial_levels + 1} entries (one per resolution level), got {mult}"
            )

    @property
    def spatial_levels(self) -> int:
        return int(math.log2(self.spatial_compression))

    @property
    def temporal_levels(self) -> int:
        return int(math.log2(self.temporal_compression))

    def resolved_channel_mult(self) -> list[int]:
        if exists(self.channel_mult):
            return list(self.channel_mult)
        return {4: [1, 2, 4], 8: [1, 2, 2, 4], 16: [1, 1, 2, 2, 4]}[self.spatial_compression]


# -- building blocks ----------------------------------------------------------------------------
def num_groups(channels: int, most: int = 32, least_per_group: int = 4) -> int:
    """GroupNorm groups: the most (<= ``most``) that divide ``channels`` with >= ``least_per_group`` channels each.

    One channel per group would be instance norm, which erases each channel's mean (a small
    image's overall colour) from the features.
    """
    return max(g for g in range(1, most + 1) if channels % g == 0 and channels // g >= min(least_per_group, channels))


class FrameNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: they never mix frames, so the network stays causal."""

    def __init__(self, channels: int):
        super().__init__(num_groups(channels), channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return super().forward(frames).reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Module):
    """3D conv that sees only the current and past frames.

    The past is padded with ``kernel - 1`` copies of the first frame, so the first output
    frame sees the first input frame alone, as a static clip: it is computed as a 2D conv
    with the kernel summed over time (a third of the work for images, and the same op for
    an image and for the first frame of any clip). The other outputs come from one 3D conv;
    with a temporal stride ``s`` there are ``1 + (T - 1) // s`` outputs and output ``j``
    covers inputs ``[s j - kernel + 1, s j]``. Space is zero-padded "same".
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.time_stride, self.space_stride = stride[0], stride[1:]
        self.time_pad = kernel - 1 - self.time_stride  # past frames the second output needs
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.conv.weight, self.conv.bias
        first = F.conv2d(x[:, :, 0], w.sum(2), b, self.space_stride, self.conv.padding[1:]).unsqueeze(2)
        if x.shape[2] == 1:
            return first
        if self.time_pad > 0:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        elif self.time_pad < 0:  # kernel 1: the second output starts at frame 1
            x = x[:, :, -self.time_pad :]
        if x.shape[2] < self.conv.kernel_size[0]:  # e.g. 2 frames with stride 2: one output
            return first
        return torch.cat([first, self.conv(x)], dim=2)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            FrameNorm(c_in), nn.SiLU(), CausalConv3d(c_in, c_out), FrameNorm(c_out), nn.SiLU(), CausalConv3d(c_out, c_out)
        )
        self.skip = CausalConv3d(c_in, c_out, kernel=1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class FrameAttention(nn.Module):
    """Single-head self-attention over the positions of each frame separately."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = FrameNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        out = self.proj(F.scaled_dot_product_attention(q, k, v))
        return x + out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class Downsample(nn.Module):
    """Halves height and width (and time, causally, when ``time``) with one strided conv."""

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(2 if time else 1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Doubles height and width (nearest + conv); with ``time``, ``1 + m`` frames become ``1 + 2m``.

    Time goes up by depth-to-time: a causal conv makes two frames' worth of channels per latent
    frame, they are interleaved, and the first frame is dropped (latent frame 0 is one frame).
    """

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.to_time = CausalConv3d(channels, 2 * channels) if time else None
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        if exists(self.to_time):
            b, c, t, h, w = x.shape
            x = self.to_time(x).view(b, c, 2, t, h, w).transpose(2, 3).reshape(b, c, 2 * t, h, w)[:, :, 1:]
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


def _middle(channels: int, attention: bool) -> nn.Sequential:
    layers = [ResBlock(channels, channels)]
    if attention:
        layers += [FrameAttention(channels), ResBlock(channels, channels)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, c: VisualTokenizerConfig):
        super().__init__()
        widths = [c.channels * m for m in c.resolved_channel_mult()]
        layers: list[nn.Module] = [CausalConv3d(3, widths[0])]
        for level, (w_in, w_out) in enumerate(zip([widths[0], *widths], widths)):
            layers += [ResBlock(w_in if i == 0 else w_out, w_out) for i in range(c.num_res_blocks)]
            if level < c.spatial_levels:  # temporal downsampling in the first stages (cheapest)
                layers.append(Downsample(w_out, time=level < c.temporal_levels))
        layers += [_middle(widths[-1], c.mid_attention), FrameNorm(widths[-1]), nn.SiLU()]
        layers.append(CausalConv3d(widths[-1], c.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, c: VisualTokenizerConfig):
        super().__init__()
        widths = [c.channels * m for m in c.resolved_channel_mult()]
        layers: list[nn.Module] = [CausalConv3d(c.latent_dim, widths[-1]), _middle(widths[-1], c.mid_attention)]
        for level in reversed(range(len(widths))):
            w_in = widths[min(level + 1, len(widths) - 1)]
            layers += [ResBlock(w_in if i == 0 else widths[level], widths[level]) for i in range(c.num_res_blocks + 1)]
            if level > 0:  # mirrors the encoder's downsampling between level - 1 and level
                layers.append(Upsample(widths[level], time=level - 1 < c.temporal_levels))
        layers += [FrameNorm(widths[0]), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = CausalConv3d(widths[0], 3)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(self.net(z))


# -- the tokenizer --------------------------------------------------------------------------------
class VisualTokenizerOutput(NamedTuple):
    recon: Tensor  # same layout as the input: (B, 3, H, W) or (B, 3, T', H, W); unclamped
    codes: Tensor  # (B, h, w) or (B, t, h, w) int64
    aux_loss: Tensor  # quantizer loss (0 for FSQ)


class VisualTokenizer(MediaTokenizer):
    """Images ``(B, 3, H, W)`` and videos ``(B, 3, T, H, W)`` in [-1, 1] <-> codes in one codebook."""

    modality = "visual"
    config_class = VisualTokenizerConfig

    def __init__(self, config: VisualTokenizerConfig | None = None):
        super().__init__(default(config, VisualTokenizerConfig()))
        c = self.config
        self.encoder = Encoder(c)
        self.quantizer = Quantizer(c.latent_dim, c.quantizer)
        self.decoder = Decoder(c)

    # -- protocol properties -------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.codebook_size]

    @property
    def compression(self) -> dict[str, int]:
        c = self.config
        return {"time": c.temporal_compression, "height": c.spatial_compression, "width": c.spatial_compression}

    @property
    def bits_per_pixel(self) -> float:
        """Bits per pixel of an image's codes: ``log2(K) / spatial^2``."""
        return math.log2(self.codebook_size) / self.config.spatial_compression**2

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output weight (the GAN's adaptive weight balances gradients there)."""
        return self.decoder.conv_out.conv.weight

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.config.temporal_compression

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.config.temporal_compression * (latent_frames - 1)

    # -- training path ---------------------------------------------------------------------------
    def _as_video(self, x: Tensor) -> Tensor:
        """Image -> one-frame video; a clip is cut to the ``1 + ft k`` frames its codes cover."""
        if x.ndim not in (4, 5) or x.shape[1] != 3:
            raise ValueError(f"VisualTokenizer expects (B, 3, H, W) images or (B, 3, T, H, W) videos, got {tuple(x.shape)}")
        s = self.config.spatial_compression
        height, width = x.shape[-2:]
        if height % s or width % s or height == 0 or width == 0:
            raise ValueError(
                f"VisualTokenizer: height and width must be positive multiples of {s} (the spatial "
                f"compression), got {height}x{width}; crop or resize to e.g. {max(s, height // s * s)}x{max(s, width // s * s)}"
            )
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 0:
            raise ValueError("VisualTokenizer got a video with 0 frames")
        x = x[:, :, : self.pixel_frames(self.latent_frames(x.shape[2]))]
        return x.to(self.device, torch.float32)

    def latent(self, x: Tensor) -> Tensor:
        """Image or video -> continuous encoder features (B, latent_dim, t, h, w)."""
        return self.encoder(self._as_video(x))

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, d, t, h, w = z.shape
        quantized, codes, aux = self.quantizer(z.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, d))
        quantized = quantized.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)
        return quantized, codes[..., 0].reshape(b, t, h, w), aux

    def forward(self, x: Tensor) -> VisualTokenizerOutput:
        """Reconstruct ``x`` through the quantizer (straight-through); for training."""
        quantized, codes, aux = self._quantize(self.latent(x))
        recon = self.decoder(quantized)
        if x.ndim == 4:
            return VisualTokenizerOutput(recon[:, :, 0], codes[:, 0], aux)
        return VisualTokenizerOutput(recon, codes, aux)

    # -- the protocol ----------------------------------------------------------------------------
    @inference
    def encode(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, h, w); (B, 3, T, H, W) -> (B, 1 + (T - 1) // ft, h, w); int64 in [0, K)."""
        codes = self._quantize(self.latent(x))[1]
        return codes[:, 0] if x.ndim == 4 else codes

    @inference
    def decode(self, codes: Tensor) -> Tensor:
        """(B, h, w) -> (B, 3, H, W); (B, t, h, w) -> (B, 3, 1 + ft (t - 1), H, W); in [-1, 1]."""
        if codes.ndim not in (3, 4) or 0 in codes.shape:
            raise ValueError(f"VisualTokenizer.decode expects codes (B, h, w) or (B, t, h, w), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise ValueError(f"VisualTokenizer.decode expects integer codes, got {codes.dtype}")
        k = self.codebook_size
        if codes.min() < 0 or codes.max() >= k:
            raise ValueError(f"visual codes must lie in [0, {k}), got [{int(codes.min())}, {int(codes.max())}]")
        grid = codes.unsqueeze(1) if codes.ndim == 3 else codes
        b, t, h, w = grid.shape
        quantized = self.quantizer.decode(grid.reshape(b, t * h * w, 1).to(self.device, torch.long))
        video = self.decoder(quantized.float().reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)).clamp(-1, 1)
        return video[:, :, 0] if codes.ndim == 3 else video
