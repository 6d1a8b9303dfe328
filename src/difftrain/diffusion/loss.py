"""Losses: the weighted training loss in the raw network's output space, and a comparable x0 error."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difftrain.diffusion.denoiser import Cond, Denoiser
from difftrain.diffusion.noise_levels import NoiseLevels
from difftrain.diffusion.objectives import expand_like
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.diffusion.weighting import EDMWeighting, Weighting


class DenoisingLoss(nn.Module):
    """lambda(sigma) c_out^2 ||F - target||^2 at injected noise levels (Karras et al. 2022, Eq. 8)."""

    def __init__(self, noise_levels: NoiseLevels, weighting: Weighting):
        super().__init__()
        self.noise_levels, self.weighting = noise_levels, weighting

    def forward(
        self, denoiser: Denoiser, schedule: NoiseSchedule, x0: Tensor, cond: Cond | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-example weighted losses (B,) of clean x0 (B, *shape), and the levels drawn (B,)."""
        sigma, importance = self.noise_levels(x0.shape[0], schedule, x0.device)
        sigma = sigma.to(x0.dtype)
        error, c_out = denoiser.error(x0, sigma, torch.randn_like(x0), cond)
        loss = self.weighting(sigma, c_out).float() * error
        self.noise_levels.update(loss)
        return loss * importance, sigma


@torch.no_grad()
def x0_error(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    cond: Cond | None = None,
    sigma_data: float = 0.5,
) -> Tensor:
    """EDM-weighted denoising error lambda(sigma) ||D(x0 + sigma noise) - x0||^2 per example, (B,).

    It does not depend on the objective, weighting or schedule, so it compares any two runs;
    EDM's lambda makes every noise level count about equally.
    """
    x = x0 + expand_like(sigma, x0) * noise
    error = (denoiser(x, sigma, cond).float() - x0.float()).square().flatten(1).mean(1)
    return EDMWeighting(sigma_data).x0_weight(sigma.float()) * error
