"""Guidance as denoisers that every sampler accepts: classifier-free guidance (Ho & Salimans 2022,
Eq. 6) and autoguidance (Karras et al. 2024), which guides with a weaker model instead of the
unconditional one and so also guides unconditional models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from difftrain.diffusion.denoiser import DenoiserFn
from difftrain.nets.protocol import Cond


class ClassifierFreeGuidance:
    """D_w(x | c) = D(x | null) + w (D(x | c) - D(x | null)); w = 1 is plain conditional sampling.

    `null_cond(cond)` gives the unconditional counterpart of a conditioning mapping (the net's
    `null_cond`: the null class the net was trained on with label dropout). Both predictions come
    from one batched network call.
    """

    def __init__(self, denoiser: DenoiserFn, scale: float, null_cond: Callable[[Cond], Cond]):
        self.denoiser, self.scale, self.null_cond = denoiser, scale, null_cond

    def __call__(self, x: Tensor, sigma: Tensor, cond: Cond | None = None) -> Tensor:
        if not cond or self.scale == 1:
            return self.denoiser(x, sigma, cond)
        null = self.null_cond(cond)
        both = {name: torch.cat([value, null[name]]) for name, value in cond.items()}
        sigma2 = sigma.expand(x.shape[0]).repeat(2) if sigma.ndim == 0 else sigma.repeat(2)
        conditional, unconditional = self.denoiser(torch.cat([x, x]), sigma2, both).chunk(2)
        return unconditional + self.scale * (conditional - unconditional)


class Autoguidance:
    """D_w(x) = D_guide(x) + w (D(x) - D_guide(x)): "Guiding a diffusion model with a bad version
    of itself" (Karras et al. 2024, Eq. 2). The guide is a weaker model of the same data (fewer
    training steps, e.g. an earlier post-hoc EMA, or a smaller net); pushing away from its errors
    sharpens samples without the loss of variety that classifier-free guidance brings, and needs
    no condition. Both see the same conditioning; w = 1 is the model alone."""

    def __init__(self, denoiser: DenoiserFn, guide: DenoiserFn, scale: float):
        self.denoiser, self.guide, self.scale = denoiser, guide, scale

    def __call__(self, x: Tensor, sigma: Tensor, cond: Cond | None = None) -> Tensor:
        good = self.denoiser(x, sigma, cond)
        if self.scale == 1:
            return good
        bad = self.guide(x, sigma, cond)
        return bad + self.scale * (good - bad)
