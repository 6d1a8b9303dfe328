"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6), as a denoiser that every sampler accepts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

DenoiserFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


class ClassifierFreeGuidance:
    """D_w(x | c) = D(x | null) + w (D(x | c) - D(x | null)); w = 1 is plain conditional sampling.

    `null_label` is the label the network was trained to read as "no class" (label dropout).
    Both predictions come from one batched network call.
    """

    def __init__(self, denoiser: DenoiserFn, scale: float, null_label: int):
        self.denoiser, self.scale, self.null_label = denoiser, scale, null_label

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is None or self.scale == 1:
            return self.denoiser(x, sigma, class_labels)
        null = torch.full_like(class_labels, self.null_label)
        sigma2 = sigma.expand(x.shape[0]).repeat(2) if sigma.ndim == 0 else sigma.repeat(2)
        cond, uncond = self.denoiser(
            torch.cat([x, x]), sigma2, torch.cat([class_labels, null])
        ).chunk(2)
        return uncond + self.scale * (cond - uncond)
