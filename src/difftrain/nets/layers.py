"""Building blocks of the nets: the UNet's (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM") and the
noise embedding every net uses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias so a residual branch starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of the noise conditioning (Vaswani et al. 2017, Sec. 3.5), then an MLP.

    c_noise = log(sigma) / 4 spans a few units; it is multiplied by `scale` so that it covers the
    same range as DDPM's integer timesteps, for which the embedding's frequencies were chosen.
    """

    def __init__(
        self, channels: int, emb_channels: int, scale: float = 1000.0, max_period: float = 10000.0
    ):
        super().__init__()
        half = channels // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", freqs * scale, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        args = c_noise.float()[:, None] * self.freqs[None]  # (B, channels / 2)
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a scale and shift of the second norm (ADM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def attention_heads(channels: int, head_channels: int) -> int:
    """How many heads of head_channels split `channels`; fail where they do not divide it."""
    if channels % head_channels:
        raise ValueError(
            f"attention channels {channels} not divisible by head_channels {head_channels}"
        )
    return channels // head_channels


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, as a residual branch."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = attention_heads(channels, head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, H*W, head_channels)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, head_channels)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class CrossAttention(nn.Module):
    """Multi-head attention from the pixels of a feature map to text token states, as a residual
    branch (Stable Diffusion's cross-attention): queries from the pixels, keys and values from
    the tokens (B, L, context_dim), masked tokens ignored."""

    def __init__(self, channels: int, context_dim: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = attention_heads(channels, head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: tuple[Tensor, Tensor]) -> Tensor:
        states, mask = context  # (B, L, context_dim), (B, L) true for tokens to attend to
        B, C, H, W = x.shape
        q = self.q(self.norm(x)).reshape(B, self.heads, C // self.heads, H * W).transpose(-1, -2)
        k, v = self.kv(states.to(x.dtype)).reshape(B, -1, 2, self.heads, C // self.heads).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, head_channels)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
