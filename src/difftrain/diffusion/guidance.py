"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6), as a denoiser that every sampler accepts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from difftrain.diffusion.denoiser import Cond

DenoiserFn = Callable[[Tensor, Tensor, Cond | None], Tensor]


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
