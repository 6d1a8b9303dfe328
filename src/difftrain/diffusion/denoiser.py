"""`Denoiser`: wraps a raw network with an objective's preconditioning (Karras et al. 2022, Eq. 7)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from difftrain.diffusion.noise import NoiseModel, independent
from difftrain.diffusion.objectives import Objective, expand_like
from difftrain.nets.protocol import Cond

# What samplers and guidance call: (x, sigma, cond) -> the x0-estimate (a Denoiser, or one wrapped).
DenoiserFn = Callable[[Tensor, Tensor, Cond | None], Tensor]


class Denoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise): an x0-estimate whatever the objective.

    `net(x, c_noise, **cond)` is any network mapping x (B, *shape) to the same shape
    (`nets.protocol.Net`). `noise` shapes the standard-normal draws of x = x0 + sigma n, in
    training and sampling alike (`diffusion.noise`; independent by default).
    """

    def __init__(self, net: nn.Module, objective: Objective, noise: NoiseModel | None = None):
        super().__init__()
        self.net = net
        self.objective = objective
        self.noise = noise or independent

    def forward(
        self, x: Tensor, sigma: Tensor, cond: Cond | None = None, raw: bool = False
    ) -> Tensor:
        """The x0-estimate for noisy x (B, *shape); sigma is a scalar or shape (B,). With
        `raw`, the net's own output F instead: what the loss trains (`diffusion.loss`)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.dtype)
        c_skip, c_out, c_in, c_noise = self.objective.scalings(sigma)
        f = self.net(expand_like(c_in, x) * x, c_noise, **(cond or {}))
        if raw:
            return f
        return expand_like(c_skip, x) * x + expand_like(c_out, x) * f.to(x.dtype)


class Ensemble(nn.Module):
    """Averages the x0-estimates of several denoisers at every sampling step.

    Members share the input and output spaces (x0-estimates in VE form), so they may differ in
    weights, seeds, EMA lengths or even objectives; `net` is the first member's network.
    """

    def __init__(self, members: list[Denoiser]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one denoiser")
        self.members = nn.ModuleList(members)

    @property
    def net(self) -> nn.Module:
        return self.members[0].net

    @property
    def noise(self) -> NoiseModel:
        return self.members[0].noise

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond | None = None) -> Tensor:
        return torch.stack([member(x, sigma, cond) for member in self.members]).mean(0)
