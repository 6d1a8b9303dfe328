"""Non-leaking augmentation (Karras et al. 2022, App. C.4; after Karras et al. 2020, ADA).

Each training image is, with probability p per transform, flipped, rotated by a multiple of 90
degrees, translated and scaled. The transform's parameters are fed to the network as conditioning
(`augment_labels`), so it learns to produce augmented images only when asked; at sampling the
labels are zero and no augmentation leaks into the samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from difftrain.streams import WHOLE, Share

LABEL_DIM = 7  # xflip, yflip, cos(rotation) - 1, sin(rotation), x and y translation, log2 scale


class AugmentPipe:
    """Geometric augmentation of a batch (B, C, H, W) in the model's value range."""

    label_dim = LABEL_DIM

    def __init__(self, p: float = 0.12, xflip: bool = True, yflip: bool = True, rotate90: bool = True,
                 translate: float = 0.125, scale_std: float = 0.2):  # fmt: skip
        if not 0 <= p <= 1:
            raise ValueError(f"augment.p must be in [0, 1], got {p}")
        self.p, self.xflip, self.yflip, self.rotate90 = p, xflip, yflip, rotate90
        self.translate, self.scale_std = translate, scale_std

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None, share: Share = WHOLE
    ) -> tuple[Tensor, Tensor]:
        """Augmented images (B, C, H, W) and their augmentation labels (B, LABEL_DIM); the
        choices are drawn from `generator` for the global batch, and this `share` kept."""
        b, n = images.shape[0], images.shape[0] * share.world
        options = {"device": images.device, "generator": generator}

        def chosen() -> Tensor:
            return (share.of(torch.rand(n, **options)) < self.p).float()

        xflip = chosen() * self.xflip
        yflip = chosen() * self.yflip
        quarter_turns = share.of(torch.randint(1, 4, (n,), **options))
        angle = chosen() * self.rotate90 * quarter_turns * (math.pi / 2)
        shift = (
            chosen()[:, None] * (share.of(torch.rand(n, 2, **options)) * 2 - 1) * self.translate * 2
        )
        log2_scale = chosen() * share.of(torch.randn(n, **options)) * self.scale_std
        device = images.device

        # The inverse map from output to input coordinates, for affine_grid (normalized [-1, 1]).
        cos, sin, scale = torch.cos(angle), torch.sin(angle), torch.exp2(-log2_scale)
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0] = cos * scale * (1 - 2 * xflip)
        theta[:, 0, 1] = -sin * scale
        theta[:, 1, 0] = sin * scale
        theta[:, 1, 1] = cos * scale * (1 - 2 * yflip)
        theta[:, :, 2] = -shift
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        labels = torch.stack(
            [xflip, yflip, cos - 1, sin, shift[:, 0], shift[:, 1], log2_scale], dim=1
        )
        return out, labels
