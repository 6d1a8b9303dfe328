"""A diffusion transformer (Peebles & Xie 2023, "DiT"), with cross-attention to text tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from difftrain.nets.conditioning import add_labels, null_class, read_prompt
from difftrain.nets.layers import NoiseEmbedding
from difftrain.nets.protocol import Cond


def sincos_positions(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid * grid, dim), as DiT's."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = [
        f(pos.flatten()[:, None].float() * freqs)
        for pos in (ys, xs)
        for f in (torch.sin, torch.cos)
    ]
    return torch.cat(parts, dim=1)


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

    def forward(self, x: Tensor, c: Tensor, context: tuple[Tensor, Tensor] | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        B, N, D = x.shape
        qkv = self.qkv(modulate(self.norm1(x), shift1, scale1)).reshape(B, N, 3, self.heads, -1)
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
    ):
        super().__init__()
        self.patch_size = patch_size
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(
                f"a DiT takes square images (C, H, W), not sample_shape {list(sample_shape)}"
            )
        in_channels, image_size = int(sample_shape[0]), int(sample_shape[-1])
        self.check_shape(sample_shape)
        if dim % heads or dim % 4:
            raise ValueError(f"DiT dim {dim} must be divisible by heads={heads} and by 4")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.augment_dim, self.checkpoint_activations = augment_dim, checkpoint_activations
        self.patchify = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        grid = image_size // patch_size
        self.register_buffer("positions", sincos_positions(grid, dim), persistent=False)
        self.noise_emb = NoiseEmbedding(dim, dim)
        self.class_emb = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.augment_emb = nn.Linear(augment_dim, dim, bias=False) if augment_dim else None
        self.text_encoder = text_encoder
        self.tokenizer = getattr(text_encoder, "tokenizer", None)
        self.text_pool = nn.Linear(text_encoder.dim, dim) if text_encoder is not None else None
        self.text_proj = nn.Linear(text_encoder.dim, dim) if text_encoder is not None else None
        self.blocks = nn.ModuleList(
            DiTBlock(dim, heads, mlp_ratio, cross=text_encoder is not None) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch_size * patch_size * in_channels)
        for layer in (self.ada_out[1], self.out):  # the net starts by predicting zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        return null_class(cond, self.num_classes)

    def check_shape(self, shape: Sequence[int]) -> None:
        """Fail unless samples of `shape` are square images of a whole number of patches."""
        size = shape[-1]
        if len(shape) != 3 or shape[-2] != size:
            raise ValueError(f"a DiT takes square images (C, H, W), not {list(shape)}")
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
    ) -> Tensor:
        B, C, H, W = x.shape
        c = self.noise_emb(c_noise.expand(B))
        c = add_labels(
            c, self.num_classes, self.class_emb, class_labels, self.augment_emb, augment_labels
        )
        context = None
        if self.text_encoder is not None:
            states, mask, pooled = read_prompt(self.text_encoder, text_tokens, B, x.device)
            c = c + self.text_pool(pooled.to(c.dtype))
            context = (self.text_proj(states), mask)
        tokens = self.patchify(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)
        run = (
            partial(checkpoint, use_reentrant=False)
            if self.checkpoint_activations and torch.is_grad_enabled()
            else (lambda f, *args: f(*args))
        )
        for block in self.blocks:
            tokens = run(block, tokens, c, context)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        out = self.out(modulate(self.norm_out(tokens), shift, scale))  # (B, N, p * p * C)
        p, g = self.patch_size, H // self.patch_size
        return out.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
