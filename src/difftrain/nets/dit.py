"""A diffusion transformer (Peebles & Xie 2023, "DiT"), with cross-attention to text tokens, and
for clips spatial and temporal blocks interleaved (Ma et al. 2024, "Latte", variant 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from difftrain.nets.conditioning import add_labels, null_class, read_prompt
from difftrain.nets.layers import NoiseEmbedding, zero_init
from difftrain.nets.protocol import Cond
from difftrain.nets.temporal import as_clips, as_frames, given_input


def sincos(positions: Tensor, dim: int) -> Tensor:
    """Fixed sine-cosine embeddings (N, dim) of positions (N,): sines, then cosines."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    angles = positions[:, None].float() * freqs  # (N, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_positions(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid * grid, dim), as DiT's: half for the row,
    half for the column."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos(ys.flatten(), dim // 2), sincos(xs.flatten(), dim // 2)], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Self-attention, cross-attention to text (with a text encoder), and an MLP, each a residual
    branch; the conditioning vector c sets the self-attention's and the MLP's shift, scale and
    gate (adaLN-Zero: the gates start at zero, so every block starts as the identity)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cross: bool):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True) if cross else None
        self.norm_cross = nn.LayerNorm(dim) if cross else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)
        if cross:
            nn.init.zeros_(self.cross.out_proj.weight)
            nn.init.zeros_(self.cross.out_proj.bias)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        context: tuple[Tensor, Tensor] | None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """x (B, N, D), c (B, D); `positions` (N, D), where given, are added to what the
        self-attention reads, not to the residual stream."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        B, N, D = x.shape
        h = modulate(self.norm1(x), shift1, scale1)
        if positions is not None:
            h = h + positions.to(h.dtype)
        qkv = self.qkv(h).reshape(B, N, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        x = x + gate1[:, None] * self.proj(h)
        if self.cross is not None and context is not None:
            states, mask = context
            states = states.to(x.dtype)
            x = x + self.cross(self.norm_cross(x), states, states, key_padding_mask=~mask)[0]
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """F(x, c_noise, class_labels, augment_labels, text_tokens) -> (B, C, H, W); implements
    `nets.protocol.Net`.

    The image is cut into patch_size x patch_size patches, each a token of width `dim` with a
    fixed sine-cosine position; `depth` DiT blocks with `heads` heads follow. The conditioning
    vector (the noise level's embedding, plus the class's and the pooled text state's) modulates
    every block (adaLN-Zero). With a `text_encoder`, each block also cross-attends to the prompt's
    token states (the "cross-attention" DiT variant). Class labels, the null class, text tokens and
    the empty caption work as in `nets.unet.UNet`.

    Given a `sample_shape` (C, T, H, W), it takes clips: every frame is cut into patches alike,
    and the blocks alternate between attention among one frame's patches (even blocks, which
    also cross-attend to the prompt) and attention across the T frames at one patch position
    (odd blocks: Latte, Ma et al. 2024, Sec. 3.2, variant 1). The frames' sine-cosine positions
    enter what each temporal attention reads, not the residual stream as in Latte, so that with
    the temporal blocks at their zero start the net is its image DiT frame by frame.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        patch_size: int = 2,
        dim: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        augment_dim: int = 0,
        text_encoder: nn.Module | None = None,
        checkpoint_activations: bool = False,
        given_frames: bool = False,
    ):
        super().__init__()
        self.patch_size = patch_size
        shape = tuple(int(n) for n in sample_shape)
        if len(shape) not in (3, 4) or shape[-2] != shape[-1]:
            raise ValueError(
                f"a DiT takes square images (C, H, W) or clips (C, T, H, W), not sample_shape "
                f"{list(shape)}"
            )
        self._sample_shape, self.frames = shape, shape[1] if len(shape) == 4 else 0
        in_channels, image_size = shape[0], shape[-1]
        self.check_shape(shape)
        if dim % heads or dim % 4:
            raise ValueError(f"DiT dim {dim} must be divisible by heads={heads} and by 4")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.augment_dim, self.checkpoint_activations = augment_dim, checkpoint_activations
        self.patchify = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        if given_frames and not self.frames:
            raise ValueError("net.given_frames=true needs clips: a sample_shape (C, T, H, W)")
        # The given frames and their mask, as the UNet reads them: one more patch embedding, zero
        # at first and without bias, added to each patch's token (no frame given: no change).
        given_in = nn.Conv2d(in_channels + 1, dim, patch_size, stride=patch_size, bias=False)
        self.given_in = zero_init(given_in) if given_frames else None
        grid = image_size // patch_size
        self.register_buffer("positions", sincos_positions(grid, dim), persistent=False)
        frame_positions = sincos(torch.arange(self.frames), dim)  # (T, dim); (0, dim) for images
        self.register_buffer("frame_positions", frame_positions, persistent=False)
        self.noise_emb = NoiseEmbedding(dim, dim)
        self.class_emb = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.augment_emb = nn.Linear(augment_dim, dim, bias=False) if augment_dim else None
        self.text_encoder = text_encoder
        self.tokenizer = getattr(text_encoder, "tokenizer", None)
        self.text_pool = nn.Linear(text_encoder.dim, dim) if text_encoder is not None else None
        self.text_proj = nn.Linear(text_encoder.dim, dim) if text_encoder is not None else None
        # Clips: odd blocks attend across frames (no text there); images: every block is spatial.
        self.temporal = [bool(self.frames) and i % 2 == 1 for i in range(depth)]
        self.blocks = nn.ModuleList(
            DiTBlock(dim, heads, mlp_ratio, cross=text_encoder is not None and not temporal)
            for temporal in self.temporal
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch_size * patch_size * in_channels)
        for layer in (self.ada_out[1], self.out):  # the net starts by predicting zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        return null_class(cond, self.num_classes)

    def check_shape(self, shape: Sequence[int]) -> None:
        """Fail unless samples of `shape` are square images (or clips of this net's frames) of a
        whole number of patches."""
        size, own = shape[-1], self._sample_shape
        if len(shape) != len(own) or shape[-2] != size or tuple(shape[:-2]) != own[:-2]:
            kind = f"clips {list(own[:-2])} + (H, W)" if self.frames else "square images (C, H, W)"
            raise ValueError(f"this DiT takes {kind}, not {list(shape)}")
        if size % self.patch_size:
            raise ValueError(
                f"image size {size} is not a whole number of {self.patch_size}-pixel patches: use "
                f"an image size divisible by {self.patch_size}, or another net.patch_size"
            )

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        *,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        text_tokens: Tensor | None = None,
        given: Tensor | None = None,
        given_mask: Tensor | None = None,
    ) -> Tensor:
        if given is not None and self.given_in is None:
            raise ValueError("frames given, but this DiT does not read them: net.given_frames=true")
        B = x.shape[0]
        c = self.noise_emb(c_noise.expand(B))
        c = add_labels(
            c, self.num_classes, self.class_emb, class_labels, self.augment_emb, augment_labels
        )
        context = None
        if self.text_encoder is not None:
            states, mask, pooled = read_prompt(self.text_encoder, text_tokens, B, x.device)
            c = c + self.text_pool(pooled.to(c.dtype))
            context = (self.text_proj(states), mask)
        T = max(self.frames, 1)
        if self.frames:  # every frame through the spatial blocks, with its clip's conditioning
            x = as_frames(x)  # (B, C, T, H, W) -> (B*T, C, H, W)
            c = c.repeat_interleave(T, 0)  # (B, D) -> (B*T, D)
            if context is not None:
                context = tuple(t.repeat_interleave(T, 0) for t in context)
        C, H, W = x.shape[1:]
        tokens = self.patchify(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)
        if given is not None:  # (B, C, T, H, W) and its mask as one more channel, per frame
            read = self.given_in(given_input(given, given_mask).to(tokens.dtype))
            tokens = tokens + read.flatten(2).transpose(1, 2)
        N = tokens.shape[1]  # (B*T, N, D): N patches per frame
        per_patch = c[::T].repeat_interleave(N, 0)  # (B, D) -> (B*N, D)
        run = (
            partial(checkpoint, use_reentrant=False)
            if self.checkpoint_activations and torch.is_grad_enabled()
            else (lambda f, *args: f(*args))
        )
        for block, temporal in zip(self.blocks, self.temporal, strict=True):
            if not temporal:
                tokens = run(block, tokens, c, context)
                continue
            across = tokens.unflatten(0, (B, T)).transpose(1, 2).flatten(0, 1)  # (B*N, T, D)
            across = run(block, across, per_patch, None, self.frame_positions)
            tokens = across.unflatten(0, (B, N)).transpose(1, 2).flatten(0, 1)  # (B*T, N, D)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        out = self.out(modulate(self.norm_out(tokens), shift, scale))  # (B*T, N, p * p * C)
        p, g = self.patch_size, H // self.patch_size
        out = out.reshape(-1, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(-1, C, H, W)
        return as_clips(out, self.frames) if self.frames else out  # (B, C, [T,] H, W)
