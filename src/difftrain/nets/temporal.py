"""Temporal layers of a factorized space-time net (Ho et al. 2022, "Video Diffusion Models",
Sec. 3): the spatial layers run on each frame as on an image, (B*T, C, H, W); these mix the T
frames of each clip at every pixel. Both are residual branches initialised to zero, so a video
net starts as its image net applied frame by frame (what inflating an image net needs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difftrain.nets.layers import attention_heads, zero_init


def as_clips(h: Tensor, frames: int) -> Tensor:
    """Per-frame features (B*T, C, H, W) -> clips (B, C, T, H, W)."""
    return h.unflatten(0, (-1, frames)).transpose(1, 2)


def as_frames(x: Tensor) -> Tensor:
    """Clips (B, C, T, H, W) -> per-frame features (B*T, C, H, W)."""
    return x.transpose(1, 2).flatten(0, 1)


def given_input(given: Tensor, given_mask: Tensor) -> Tensor:
    """Given frames (B, C, T, H, W), 0 where not given, and their mask (B, 1, T, 1, 1) as frames
    of one more channel (B*T, C + 1, H, W): what a net's given-frames input layer reads."""
    mask = given_mask.to(given.dtype).expand_as(given[:, :1])
    return as_frames(torch.cat([given, mask], dim=1))


class TemporalConv(nn.Module):
    """GroupNorm-SiLU, then a convolution across frames: `kernel` (time, height, width), by
    default 3 x 1 x 1 (the frames only, Ho et al. 2022); a spatial extent lets it follow what
    moves a pixel or two between frames (3 x 3 x 3, as a full 3-D convolution)."""

    def __init__(self, channels: int, frames: int, groups: int, kernel: Sequence[int] = (3, 1, 1)):
        super().__init__()
        self.frames = frames
        self.norm = nn.GroupNorm(groups, channels)
        kernel = tuple(kernel)
        padding = tuple(k // 2 for k in kernel)
        self.conv = zero_init(nn.Conv3d(channels, channels, kernel, padding=padding))

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        clips = as_clips(F.silu(self.norm(h)), self.frames)  # (B, C, T, H, W)
        return h + as_frames(self.conv(clips))


class TemporalAttention(nn.Module):
    """Multi-head attention across the frames at each pixel, with a learned bias per head and
    relative frame offset (the relative position bias of Ho et al. 2022, Sec. 3; Shaw et al.
    2018)."""

    def __init__(self, channels: int, frames: int, head_channels: int, groups: int):
        super().__init__()
        self.frames, self.heads = frames, attention_heads(channels, head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.bias = nn.Parameter(torch.zeros(self.heads, 2 * frames - 1))
        self.proj = zero_init(nn.Linear(channels, channels))

    def position_bias(self, frames: int) -> Tensor:
        """(heads, T, T): the bias of query frame i attending to key frame j, by j - i."""
        offsets = torch.arange(frames, device=self.bias.device)
        return self.bias[:, offsets[None, :] - offsets[:, None] + self.frames - 1]

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        BT, C, H, W = h.shape
        T = self.frames
        x = self.norm(h).unflatten(0, (-1, T))  # (B, T, C, H, W)
        x = x.permute(0, 3, 4, 1, 2).reshape(-1, T, C)  # (B*H*W, T, C)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, C // self.heads)).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # each (B*H*W, heads, T, head_channels)
        bias = self.position_bias(T).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B*H*W, heads, T, hc)
        out = self.proj(out.transpose(1, 2).reshape(-1, T, C))  # (B*H*W, T, C)
        out = out.reshape(BT // T, H, W, T, C).permute(0, 3, 4, 1, 2).reshape(BT, C, H, W)
        return h + out


class SpaceTimeAttention(TemporalAttention):
    """Multi-head attention among all T * H * W positions of a clip, with the same learned bias
    per head and relative frame offset as `TemporalAttention`: where a low resolution holds what
    the clip shows, every frame sees every other frame's whole picture (the joint space-time
    attention of video transformers; Arnab et al. 2021, ViViT model 1), so the frames can agree
    on one object and one path. Cost grows as (T H W)^2: for the lowest resolutions."""

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        BT, C, H, W = h.shape
        T = self.frames
        x = self.norm(h).unflatten(0, (-1, T)).flatten(3)  # (B, T, C, H*W)
        x = x.transpose(2, 3).flatten(1, 2)  # (B, T*H*W, C): frame-major tokens
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, C // self.heads)).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # each (B, heads, T*H*W, head_channels)
        bias = self.position_bias(T).to(q.dtype)  # (heads, T, T) -> (heads, T*H*W, T*H*W)
        bias = bias.repeat_interleave(H * W, 1).repeat_interleave(H * W, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, T*H*W, C)
        out = out.unflatten(1, (T, H * W)).transpose(2, 3)  # (B, T, C, H*W)
        return h + out.reshape(BT, C, H, W)


def inflate(net: nn.Module, image_weights: Mapping[str, Tensor]) -> list[str]:
    """Load an image net's weights into a video net of the same spatial layout (each image layer
    under its own name); returns the names left as initialised (the temporal layers). Refuses,
    naming them, weights the video net has no place for or holds in another shape."""
    own = net.state_dict()
    foreign = [k for k in image_weights if k not in own]
    reshaped = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in image_weights.items()
        if k in own and own[k].shape != v.shape
    ]
    if foreign or reshaped:
        raise ValueError(
            "the checkpoint's net weights do not fit this net (a video net: its spatial layers)"
            + (f"; no place for {foreign[:3]}" if foreign else "")
            + (f"; other shapes: {reshaped[:3]}" if reshaped else "")
            + ": give this net the checkpoint's net settings (channels, channel_mult, "
            "num_res_blocks, attention, classes, patch_size: its experiment)"
        )
    net.load_state_dict(image_weights, strict=False)
    return [k for k in own if k not in image_weights]
