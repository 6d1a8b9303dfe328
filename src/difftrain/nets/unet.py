"""A UNet denoiser network (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM" without the BigGAN blocks)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from difftrain.nets.layers import (
    Downsample,
    NoiseEmbedding,
    ResBlock,
    SelfAttention,
    Upsample,
    null_class,
    zero_init,
)
from difftrain.nets.protocol import Cond


class UNet(nn.Module):
    """F(x, c_noise, class_labels, augment_labels) -> (B, C, H, W), for images (B, C, H, W) with
    H = W = image_size; implements `nets.protocol.Net`.

    Level i works at resolution image_size / 2^i with channels * channel_mult[i] channels and
    `num_res_blocks` residual blocks; self-attention follows each block at `attn_resolutions`.
    With num_classes > 0 the net is class-conditional; label `num_classes` is the null class
    (unconditional), which is what `class_labels=None` means. With augment_dim > 0 the net also
    takes non-leaking augmentation labels (B, augment_dim); None means "not augmented".

    With `checkpoint_activations`, each block's activations are recomputed in the backward pass
    instead of kept (torch.utils.checkpoint): training memory falls to about the blocks' outputs,
    for about one more forward pass of compute. Evaluation and sampling are unaffected.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (),
        head_channels: int = 64,
        dropout: float = 0.0,
        norm_groups: int = 32,
        num_classes: int = 0,
        augment_dim: int = 0,
        checkpoint_activations: bool = False,
    ):
        super().__init__()
        self.checkpoint_activations = checkpoint_activations
        levels = len(channel_mult)
        self.channel_mult = list(channel_mult)
        self.check_image_size(image_size)
        resolutions = [image_size // 2**i for i in range(levels)]
        if unknown := set(attn_resolutions) - set(resolutions):
            raise ValueError(
                f"attn_resolutions {sorted(unknown)} not among the UNet's resolutions {resolutions}"
            )
        widths = [channels * m for m in channel_mult]
        if bad := [w for w in widths if w % norm_groups]:
            raise ValueError(f"channel widths {bad} are not divisible by norm_groups={norm_groups}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        emb_ch = 4 * channels

        self.noise_emb = NoiseEmbedding(channels, emb_ch)
        self.class_emb = nn.Embedding(num_classes + 1, emb_ch) if num_classes else None
        self.augment_dim = augment_dim
        self.augment_emb = nn.Linear(augment_dim, emb_ch, bias=False) if augment_dim else None
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_ch, dropout, norm_groups)]
            if res in attn_resolutions:
                layers.append(SelfAttention(cout, min(head_channels, cout), norm_groups))
            return nn.ModuleList(layers)

        # Encoder: record the width of every skip connection.
        self.down, skips, ch = nn.ModuleList(), [widths[0]], widths[0]
        for i, (w, res) in enumerate(zip(widths, resolutions, strict=True)):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, w, res))
                ch = w
                skips.append(ch)
            if i < levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)

        # Middle: residual block, attention, residual block.
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_ch, dropout, norm_groups),
                SelfAttention(ch, min(head_channels, ch), norm_groups),
                ResBlock(ch, ch, emb_ch, dropout, norm_groups),
            ]
        )

        # Decoder: each block consumes one skip connection.
        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), widths[i], resolutions[i]))
                ch = widths[i]
            if i > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))

        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, in_channels, 3, padding=1))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        return null_class(cond, self.num_classes)

    def check_image_size(self, size: int) -> None:
        """Fail with the sizes involved unless `size` can be halved once per level but the last."""
        levels = len(self.channel_mult)
        factor = 2 ** (levels - 1)
        if size % factor:
            raise ValueError(
                f"image size {size} cannot be halved {levels - 1} times by a UNet with "
                f"{levels} levels (channel_mult={self.channel_mult}): use an image size divisible "
                f"by {factor} (e.g. {size + factor - size % factor}) or fewer levels"
            )

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        *,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        emb = self.noise_emb(c_noise.expand(x.shape[0]))
        if self.augment_emb is not None and augment_labels is not None:
            emb = emb + self.augment_emb(augment_labels.to(emb.dtype))
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, device=x.device)
            emb = emb + self.class_emb(class_labels)

        run = _run
        if self.checkpoint_activations and torch.is_grad_enabled():
            run = partial(checkpoint, _run, use_reentrant=False)
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = run(layers, h, emb)
            skips.append(h)
        h = run(self.mid, h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = run(layers, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    for layer in layers:
        h = layer(h, emb)
    return h
